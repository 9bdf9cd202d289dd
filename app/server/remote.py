"""Who is calling over TCP (``[server] listen``): a verified client certificate (``tls.py``), else an
OIDC bearer token (``oidc.py``), else 401, and each 401 audited with the caller's address.

``serve()`` builds a ``Listener`` before it starts (a bad certificate, key, CA or JWKS file stops
it there) and sets ``Listener.remote`` on the app as ``auth.REMOTE``; the ``authenticate``
middleware hands it every TCP request and every refusal.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from aiohttp import web

from app.config import split_listen
from app.domain.errors import IdentityError, JitError
from app.server.api import POOL, SERVICES
from app.server.auth import Principal
from app.server.oidc import OidcVerifier
from app.server.tls import Issuers, cert_principal, server_context
from app.store import audit

if TYPE_CHECKING:
    import ssl

    from app.bootstrap import Services
    from app.config import Server

log = logging.getLogger("jit.server")


class RefusalLimiter:
    """Which refusals are written to the audit, so that a flood of bad requests cannot fill the
    database: at most one event per address per ``window`` seconds, and at most ``budget`` events
    per window from all addresses together (many addresses, e.g. an IPv6 prefix, are one flood),
    so at most ``budget / window`` events a second whatever comes in. Nothing is lost from the
    count: a refusal not written is counted, and the next event written for that address carries
    ``suppressed`` (its own since its last event), and the next event written at all carries
    ``suppressed_elsewhere`` (those dropped by the budget, and the counts of addresses forgotten). At
    most ``max_addresses`` are remembered, each until two windows after its last event. Called on the
    event loop only."""

    def __init__(self, *, window: float = 10.0, budget: int = 10, max_addresses: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.budget, self.max_addresses, self.clock = window, budget, max_addresses, clock
        self._seen: dict[str, list[float | int]] = {}  # address -> [written at, refusals since, not written]
        self._window_start = clock()
        self._written = 0
        self._elsewhere = 0

    def admit(self, address: str) -> tuple[int, int] | None:
        """None: count this refusal, write nothing. Otherwise write one event now, with
        ``(suppressed, suppressed_elsewhere)``."""
        now = self.clock()
        if now - self._window_start >= self.window:
            self._window_start, self._written = now, 0
            for old in [a for a, (at, _) in self._seen.items() if now - at >= 2 * self.window]:
                self._elsewhere += int(self._seen.pop(old)[1])
        seen = self._seen.get(address)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return None
        if self._written >= self.budget or (seen is None and len(self._seen) >= self.max_addresses):
            self._elsewhere += 1
            return None
        suppressed = int(seen[1]) if seen is not None else 0
        self._seen[address] = [now, 0]
        self._written += 1
        elsewhere, self._elsewhere = self._elsewhere, 0
        return suppressed, elsewhere


class RemoteAuth:
    """``auth.Remote`` for the TCP listener."""

    def __init__(self, server: Server, verifier: OidcVerifier | None, limiter: RefusalLimiter | None = None,
                 issuers: Issuers | None = None) -> None:
        self.server = server
        self.issuers = issuers
        self.verifier = verifier
        self.limiter = limiter or RefusalLimiter()

    async def principal(self, request: web.Request) -> Principal:
        found = cert_principal(request, self.server, self.issuers)  # a presented certificate wins over a token
        if found is not None:
            return found
        token = _bearer(request)
        if token is None:
            raise IdentityError("no client certificate and no bearer token: a TCP caller must prove who it is")
        if self.verifier is None:
            raise IdentityError("bearer tokens are not accepted here ([server.oidc] is not configured)")
        # off the event loop: verifying may have to fetch the provider's keys (bounded by a timeout)
        return await asyncio.get_running_loop().run_in_executor(request.app[POOL], self.verifier.principal, token)

    async def refused(self, request: web.Request, reason: IdentityError) -> None:
        """Audit the 401 (actor ``anonymous``, action ``auth.refused``) as the limiter allows."""
        address = request.remote or "unknown"
        admitted = self.limiter.admit(address)
        if admitted is None:
            return
        suppressed, elsewhere = admitted
        sv: Services = request.app[SERVICES]
        details = {"address": address, "reason": str(reason), "method": request.method, "path": request.path[:200],
                   "suppressed": suppressed, "suppressed_elsewhere": elsewhere}

        def write() -> None:
            with sv.store.transaction() as s:
                audit.append(s, at=sv.clock(), actor="anonymous", action="auth.refused", **details)
        try:
            await asyncio.get_running_loop().run_in_executor(request.app[POOL], write)
        except JitError as exc:  # the caller still gets its 401; the failure is the operator's to see
            log.error("auth.refused from %s not audited: %s", address, exc)


def _bearer(request: web.Request) -> str | None:
    values = request.headers.getall("Authorization", [])
    if not values:
        return None
    scheme, _, token = values[0].partition(" ")
    if len(values) != 1 or scheme.lower() != "bearer" or not token.strip():
        raise IdentityError("the Authorization header must be one 'Bearer TOKEN'")
    return token.strip()


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    context: ssl.SSLContext
    remote: RemoteAuth


def tcp_listener(services: Services) -> Listener:
    """The TCP listener ``[server] listen`` asks for, checked before anything listens: the TLS
    context, and the OIDC verifier with its keys read (``ConfigError`` when unusable)."""
    config = services.config
    server = config.settings.server
    host, port = split_listen(server.listen)
    context = server_context(config)
    verifier = None
    if server.oidc.issuer:
        verifier = OidcVerifier.from_config(server.oidc, config.path)
        verifier.preload()
    issuers = Issuers(config) if server.agent_ca else None
    return Listener(host, port, context, RemoteAuth(server, verifier, issuers=issuers))
