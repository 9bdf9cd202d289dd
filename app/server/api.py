"""The ``/v1`` routes served so far: who am I, and reading requests. Every answer that is an error
has one shape, ``{"error": {"rule", "message", "field"}}``, mapped once from the project's errors.
Blocking work (the database) runs in a bounded thread pool, off the event loop."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from app.domain.errors import Conflict, JitError, NotFound, Refused
from app.domain.states import RequestState
from app.server.auth import PRINCIPAL, authenticate

if TYPE_CHECKING:
    from app.bootstrap import Services

SERVICES = web.AppKey("services", object)
POOL = web.AppKey("pool", ThreadPoolExecutor)
MAX_BODY = 64 * 1024


def _error(status: int, rule: str, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": {"rule": rule, "message": message, "field": field}}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """The project's exceptions as HTTP answers, in one place (exit 3 -> 404, exit 4 -> 409)."""
    try:
        return await handler(request)
    except NotFound as exc:
        return _error(404, exc.rule, exc.message)
    except Conflict as exc:
        return _error(409, exc.rule, exc.message)
    except Refused as exc:
        return _error(403, exc.rule, exc.message)
    except JitError as exc:
        return _error(503 if exc.exit_code == 5 else 500, type(exc).__name__, str(exc))


async def _blocking(request: web.Request, call: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(request.app[POOL], call)


async def whoami(request: web.Request) -> web.Response:
    sv: Services = request.app[SERVICES]
    principal = request[PRINCIPAL]
    groups = await _blocking(request, lambda: sorted(sv.directory.groups_of(principal.person)))
    return web.json_response({"person": principal.person, "authenticated_by": principal.how, "groups": groups})


async def show(request: web.Request) -> web.Response:
    sv: Services = request.app[SERVICES]
    text = request.match_info["id"]
    number = text.removeprefix("REQ-")
    if not (number.isdigit() and len(number) <= 10):
        return _error(400, "id", f"{text[:40]!r} is not a request id (REQ-42 or 42)", "id")
    view = await _blocking(request, lambda: sv.lifecycle.get(int(number)))
    return web.json_response(view.to_json())


async def listing(request: web.Request) -> web.Response:
    sv: Services = request.app[SERVICES]
    state = request.query.get("state") or None
    if state is not None and state not in set(RequestState):
        return _error(400, "state", f"{state[:40]!r} is not a state ({', '.join(RequestState)})", "state")
    views = await _blocking(request, lambda: sv.lifecycle.list(state=state))
    return web.json_response([v.to_json() for v in views])


def make_app(services: Services, *, workers: int = 8) -> web.Application:
    app = web.Application(middlewares=[authenticate, errors], client_max_size=MAX_BODY)
    app[SERVICES] = services
    app[POOL] = ThreadPoolExecutor(workers, thread_name_prefix="jit-api")
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_get("/v1/requests", listing)
    app.router.add_get("/v1/requests/{id}", show)

    async def close_pool(app: web.Application) -> None:
        app[POOL].shutdown(wait=False)
    app.on_cleanup.append(close_pool)
    return app
