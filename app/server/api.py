"""The ``/v1`` application: the route table (``routes.py``) served by aiohttp, behind the
authentication (``auth.py``) and the per-principal rate limit (``limits.py``).

Every error has one shape, ``{"error": {"rule", "message", "field"}}``, mapped once here from the
project's errors: bad input 400 (malformed) or 422 (a field named), refused 403, not found 404,
someone else first 409, too large 413, too many 429, the database down 503. Blocking work (the
database, backends) runs in a bounded thread pool, off the event loop."""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from app.domain.errors import BadInput, Conflict, JitError, NotFound, Refused, StoreError
from app.domain.principal import acting
from app.queries import audit as audit_queries
from app.server import agents, events, openapi
from app.server.auth import IMPERSONATION, PRINCIPAL, authenticate
from app.server.limits import RateLimit
from app.server.routes import ROUTES, Call, Route, request_id, ticket_number

if TYPE_CHECKING:
    from app.bootstrap import Services

log = logging.getLogger("jit.server")
SERVICES = web.AppKey("services", object)
POOL = web.AppKey("pool", ThreadPoolExecutor)
READS = web.AppKey("event_reads", ThreadPoolExecutor)  # the event streams' reads: never queued behind writes
LIMIT = web.AppKey("rate_limit", RateLimit)
MAX_BODY = 64 * 1024
IDLE_SECONDS = 15.0  # a comment on an idle event stream this often keeps proxies from closing it
WAKE_SECONDS = 1.0  # an idle stream looks this often whether its client is still there


def _dumps(value: Any) -> str:
    """orjson: the console's queue of 10,000 is written in a tenth of the time json takes."""
    return orjson.dumps(value).decode()


def error(status: int, rule: str, message: str, field: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"rule": rule, "message": message, "field": field}}, status=status,
                             headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """The project's exceptions as HTTP answers, in one place."""
    try:
        return await handler(request)
    except Malformed as exc:
        return error(400, "body", str(exc), "body")
    except BadInput as exc:
        return error(422, exc.rule, exc.message, exc.field)
    except NotFound as exc:
        return error(404, exc.rule, exc.message)
    except Conflict as exc:
        return error(409, exc.rule, exc.message)
    except Refused as exc:
        return error(403, exc.rule, exc.message)
    except StoreError as exc:
        return error(503, "database", str(exc))
    except JitError as exc:
        return error(500, type(exc).__name__, str(exc))
    except web.HTTPRequestEntityTooLarge:
        return error(413, "body", f"the body is larger than {MAX_BODY} bytes", "body")
    except web.HTTPException as exc:  # aiohttp's own: no such route, wrong method
        if exc.status >= 400:
            return error(exc.status, "http", exc.reason)
        raise


@web.middleware
async def rate_limit(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
    wait = request.app[LIMIT].take(request[PRINCIPAL].person)
    if wait:
        return error(429, "rate", f"too many calls; retry in {wait} s", headers={"Retry-After": str(wait)})
    return await handler(request)


async def blocking(request: web.Request, call: Callable[[], Any], pool: web.AppKey = POOL) -> Any:
    """Run ``call`` in the pool as the authenticated principal."""
    principal = request[PRINCIPAL]

    def as_principal() -> Any:
        with acting(principal):
            return call()
    return await asyncio.get_running_loop().run_in_executor(request.app[pool], as_principal)


def _validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        message = first["msg"].removeprefix("Value error, ")
        raise BadInput(field, message) from None


async def _input(request: web.Request, route: Route) -> Any:
    if route.query is not None:
        return _validated(route.query, dict(request.query))
    if request.query:
        raise BadInput(next(iter(request.query)), "this route takes no query parameters")
    if route.body is None:
        return None
    text = await request.text() if request.can_read_body else ""
    if not text.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            return _malformed(f"the body is not JSON ({exc.msg} at character {exc.pos})")
    if not isinstance(data, dict):
        return _malformed("the body must be a JSON object")
    return _validated(route.body, data)


class Malformed(Exception):
    """The body is not a JSON object at all (400); a wrong field is ``BadInput`` (422)."""


def _malformed(message: str) -> Any:
    raise Malformed(message)


def _handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await _input(request, route)
        rid = request_id(request.match_info["id"]) if "id" in request.match_info else None
        number = ticket_number(request.match_info["number"]) if "number" in request.match_info else None
        call = Call(request.app[SERVICES], request[PRINCIPAL], rid, body, number)
        return web.json_response(await blocking(request, lambda: route.run(call)), status=route.status,
                                 dumps=_dumps)
    return handle


async def audit_export(request: web.Request) -> web.StreamResponse:
    """Every event after ``after``, a JSON line each, read in pages (the chain is append-only, so
    paging by sequence number misses nothing)."""
    q = _validated(ROUTE["/v1/audit/export"].query, dict(request.query))
    sv: Services = request.app[SERVICES]
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    after = q.after
    while page := await blocking(request, lambda: audit_queries.lines_after(sv.store, after, q.limit)):
        await response.write("".join(line + "\n" for _, line in page).encode())
        after = page[-1][0]
    await response.write_eof()
    return response


async def event_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: each audit event after ``after`` (or the ``Last-Event-ID`` a client
    reconnects with) as ``id: SEQ``, ``event: audit``, ``data: <the export line>``; a comment
    every 15 s keeps idle connections open."""
    q = _validated(ROUTE["/v1/events"].query, dict(request.query))
    last = request.headers.get("Last-Event-ID", "")
    after = int(last) if last.isdigit() else q.after
    sv: Services = request.app[SERVICES]
    hub: events.Hub = request.app[events.HUB]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    hub.listeners += 1
    quiet = 0.0
    try:
        while not hub.closing:
            page = await blocking(request, lambda: audit_queries.lines_after(sv.store, after, q.limit), READS)
            if page:
                await response.write("".join(f"id: {seq}\nevent: audit\ndata: {line}\n\n"
                                             for seq, line in page).encode())
                after = page[-1][0]
                continue
            if await hub.wait_beyond(after, WAKE_SECONDS):
                quiet = 0.0
                continue
            if request.transport is None or request.transport.is_closing():
                break  # the client went away while nothing was written
            quiet += WAKE_SECONDS
            if quiet >= IDLE_SECONDS:
                quiet = 0.0
                await response.write(b": idle\n\n")
    finally:  # the client went away (the write raised or its transport closed) or the server stops
        hub.listeners -= 1
    return response


async def serve_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(ROUTES))


ROUTE = {r.path: r for r in ROUTES if r.method == "GET"}
STREAMS = {"/v1/audit/export": audit_export, "/v1/events": event_stream, "/v1/openapi.json": serve_openapi,
           "/v1/agent/hosts/{host}/grants": agents.grants, "/v1/agent/hosts/{host}/held": agents.held}


def make_app(services: Services, *, workers: int = 8, impersonation: bool = False) -> web.Application:
    """The API over ``services``; ``impersonation`` only for ``jit server --dev``."""
    settings = services.config.settings.server
    app = web.Application(middlewares=[errors, authenticate, rate_limit], client_max_size=MAX_BODY)
    app[SERVICES] = services
    app[POOL] = ThreadPoolExecutor(workers, thread_name_prefix="jit-api")
    app[LIMIT] = RateLimit(settings.rate_limit, settings.rate_burst)
    app[READS] = ThreadPoolExecutor(2, thread_name_prefix="jit-events")
    app[events.HUB] = events.Hub(lambda: audit_queries.newest_seq(services.store), app[READS])
    app[IMPERSONATION] = impersonation
    app[agents.AGENT_POOL] = ThreadPoolExecutor(2, thread_name_prefix="jit-agents")
    app[agents.FLEET] = agents.FleetView(services, app[READS])
    app[agents.REPORTS] = services.host_reports
    for route in ROUTES:
        handler = STREAMS[route.path] if route.run is None else _handler(route)
        app.router.add_route(route.method, route.path, handler)

    async def start_hub(app: web.Application) -> None:
        app[events.HUB].start()

    async def end_streams(app: web.Application) -> None:
        app[events.HUB].close()

    async def close(app: web.Application) -> None:
        await app[events.HUB].stop()
        app[POOL].shutdown(wait=False)
        app[READS].shutdown(wait=False)
        app[agents.AGENT_POOL].shutdown(wait=False)
    app.on_startup.append(start_hub)
    app.on_shutdown.append(end_streams)
    app.on_cleanup.append(close)
    return app
