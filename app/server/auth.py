"""Who is calling: the uid the kernel reports for the Unix-socket connection (``SO_PEERCRED``),
mapped through the account database; over TCP (``[server] listen``), a verified client certificate
or an OIDC bearer token, checked by ``REMOTE`` (app/server/remote.py). Never a name in a header, a
body or an environment variable, except in dev mode (``jit server --dev``, Unix socket only), where
the ``X-Jit-User`` header a client sends from its ``JIT_USER`` names the person it plays, recorded
as impersonated by the real caller."""
from __future__ import annotations

import re
import socket
import struct
from typing import Awaitable, Callable, Protocol

from aiohttp import web

from app.domain.errors import IdentityError
from app.domain.principal import AGENT, Principal, agent_host
from app.identity import account_name
from policies.names import PERSON, TARGET

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
IMPERSONATE_HEADER = "X-Jit-User"
HOST_HEADER = "X-Jit-Host"  # dev mode only: the host a ``jit agent`` says it runs on (its uname -n)
AGENT_ROUTES = "/v1/agent/"

PRINCIPAL = web.RequestKey("principal", Principal)  # set by ``authenticate`` before any handler runs
IMPERSONATION = web.AppKey("impersonation", bool)  # dev mode only


class Remote(Protocol):
    """Names TCP callers (app/server/remote.py); ``serve()`` sets one as ``REMOTE`` when it listens on TCP."""

    async def principal(self, request: web.Request) -> Principal: ...  # IdentityError when it cannot

    async def refused(self, request: web.Request, reason: IdentityError) -> None: ...  # audits a 401


REMOTE = web.AppKey("remote", Remote)


def peer_principal(request: web.Request) -> Principal:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise IdentityError("the caller cannot be identified: not a Unix-socket connection")
    _pid, uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return Principal(account_name(uid), f"peer-uid:{uid}")


def impersonated(request: web.Request, real: Principal) -> Principal:
    """Dev mode: the person the client plays, or the host an agent runs on, recorded with who
    really called."""
    host = request.headers.get(HOST_HEADER, "")
    if host:
        if not re.fullmatch(TARGET, host):
            raise IdentityError(f"host name {host[:40]!r} is not a host name ({HOST_HEADER})")
        return Principal(AGENT + host.lower(), f"dev-host:{host.lower()} by {real.how}")
    person = request.headers.get(IMPERSONATE_HEADER, "")
    if not person:
        return real
    if not re.fullmatch(PERSON, person):
        raise IdentityError(f"user name {person[:40]!r} is not a valid account name ({IMPERSONATE_HEADER})")
    return Principal(person, f"dev-impersonation:{person} by {real.how}")
def _tcp(request: web.Request) -> bool:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)


@web.middleware
async def authenticate(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """Runs before every handler: the principal is set from the kernel (Unix socket) or by ``REMOTE``
    (TCP), or the request is 401 (on TCP, audited)."""
    remote = request.app.get(REMOTE) if _tcp(request) else None
    try:
        if remote is not None:
            principal = await remote.principal(request)
        else:
            principal = peer_principal(request)
            if request.app.get(IMPERSONATION):
                principal = impersonated(request, principal)
        request[PRINCIPAL] = principal
    except IdentityError as exc:
        if remote is not None:
            await remote.refused(request, exc)
        return web.json_response({"error": {"rule": "identity", "message": str(exc), "field": None}}, status=401)
    if agent_host(principal) is not None and not request.path.startswith(AGENT_ROUTES):
        return web.json_response({"error": {"rule": "agent", "field": None, "message":
                                            f"a host's agent may only call {AGENT_ROUTES}..."}}, status=403)
    return await handler(request)
