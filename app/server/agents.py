"""``/v1/agent/hosts/{host}/...``: what a host's ``jit agent`` may call, and only for its own host.

The agent is authenticated as ``agent:<host>`` (a certificate from ``[server] agent_ca`` whose CN
is the host's name; in dev mode the host name it sends). Asking for, or reporting, another
host's grants is refused 403 and audited (``agent.refused``): one compromised host learns
nothing of the others. A person never reaches these routes, and an agent no other route
(``auth.authenticate``).

``GET .../grants`` is a long poll: it answers at once when the host's grants differ from the
version the agent knows, else when they change (the audit head moves, as it does with every
grant's status), else after ``wait`` seconds. The grants of every host are read in one query per
change and shared by every waiting agent (``FleetView``), so an idle agent costs the server a
held connection and nothing else."""
from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from aiohttp import web

from app.domain.errors import BadInput, Refused
from app.domain.principal import acting, agent_host
from app.fleet import desired
from app.fleet.reports import Held, HostReports
from app.server import bodies as b
from app.server import events
from app.server.auth import PRINCIPAL
from app.store import GrantRow, among, audit
from policies.names import TARGET
from sqlmodel import select

if TYPE_CHECKING:
    from app.bootstrap import Services

MAX_REPORT = 8 * 1024 * 1024  # a host holding thousands of drop-ins reports them all at once


class FleetView:
    """Every host's grants (``desired.Desired``), brought up to date when the audit head has moved
    past what was read: one refresh at a time, shared by every waiting agent."""

    def __init__(self, services: Services, pool: Executor) -> None:
        self.services, self.pool = services, pool
        self._desired = desired.Desired()
        self._lock = asyncio.Lock()

    async def current(self, seen: int | None, host: str) -> tuple[int, str, list[dict[str, Any]]]:
        """The sequence number read, and ``host``'s version and grants as of it: at least ``seen``
        (the hub's head), or read afresh (None: a new poll, when the hub may not have been watching)."""
        async with self._lock:
            if seen is None or self._desired.seq < 0 or self._desired.seq < seen:
                await asyncio.get_running_loop().run_in_executor(self.pool, self._desired.refresh,
                                                                 self.services.store)
            return (self._desired.seq, *self._desired.of(host))


FLEET = web.AppKey("fleet", FleetView)
REPORTS = web.AppKey("host_reports", HostReports)
AGENT_POOL = web.AppKey("agent_pool", object)  # reports are written here, never behind approvals


def _host(request: web.Request) -> str:
    host = request.match_info["host"]
    if not re.fullmatch(TARGET, host):
        raise BadInput("host", f"{host[:60]!r} is not a host name")
    return host.lower()


async def _authorized(request: web.Request, what: str) -> str:
    """The path's host, when the caller is that host's agent; else 403, audited."""
    host, principal = _host(request), request[PRINCIPAL]
    caller = agent_host(principal)
    if caller == host:
        return host
    from app.server.api import SERVICES
    sv: Services = request.app[SERVICES]  # type: ignore[assignment]
    reason = (f"{principal.person} is not {host}'s agent: a host sees and reports only its own grants"
              if caller is not None else
              "only a host's agent may call this (a host certificate from server.agent_ca, or a --dev server)")

    def write() -> None:
        with acting(principal), sv.store.transaction() as s:
            audit.append(s, at=sv.clock(), actor=principal.person, action="agent.refused", host=host, what=what,
                         reason=reason)
    await asyncio.get_running_loop().run_in_executor(request.app[AGENT_POOL], write)
    raise Refused("agent", reason)


async def grants(request: web.Request) -> web.StreamResponse:
    from app.server.api import _validated
    q = _validated(b.AgentPoll, dict(request.query))
    host = await _authorized(request, "grants")
    hub: events.Hub = request.app[events.HUB]
    fleet = request.app[FLEET]
    deadline = time.monotonic() + q.wait
    hub.listeners += 1
    seen: int | None = None  # the first look reads the head itself: the hub watches only while someone waits
    try:
        while True:
            seq, version, mine = await fleet.current(seen, host)
            left = deadline - time.monotonic()
            if version != q.known or left <= 0 or hub.closing:
                return web.json_response({"host": host, "version": version, "grants": mine})
            await hub.wait_beyond(seq, min(left, 1.0))
            seen = hub.seq
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)
    finally:
        hub.listeners -= 1


async def held(request: web.Request) -> web.StreamResponse:
    from app.server.api import SERVICES, Malformed, _validated
    host = await _authorized(request, "report")
    raw = await request.content.read(MAX_REPORT + 1)
    if len(raw) > MAX_REPORT:
        return web.json_response({"error": {"rule": "body", "field": "body",
                                            "message": f"the report is larger than {MAX_REPORT} bytes"}}, status=413)
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise Malformed(f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Malformed("the body must be a JSON object")
    body = _validated(b.AgentReport, data)
    sv: Services = request.app[SERVICES]  # type: ignore[assignment]
    reports: HostReports = request.app[REPORTS]
    principal = request[PRINCIPAL]

    def write() -> dict[str, Any]:
        before = reports.of(host)
        report = reports.record(host, [Held(h.grant_id, h.person, h.not_before, h.not_after, h.ref)
                                       for h in body.held], {r.grant_id: r.error for r in body.refused})
        new_refusals = [r for r in body.refused if before is None or r.grant_id not in before.refused]
        if body.removed or body.ended or new_refusals:
            _audit(sv, principal, host, body, new_refusals)
        return {"host": host, "held": len(report.held), "reported_at": report.reported_at.isoformat()}
    return web.json_response(await asyncio.get_running_loop().run_in_executor(request.app[AGENT_POOL], write))


def _audit(sv: Services, principal: Any, host: str, body: Any, refused: list[Any]) -> None:
    """What the host did since its last report (and grants it newly refused), each under the
    request of its grant."""
    ids = {x.grant_id for x in [*body.removed, *body.ended, *refused]}
    now = sv.clock()
    with acting(principal), sv.store.transaction() as s:
        requests = dict(s.exec(select(GrantRow.id, GrantRow.request_id).where(among(s, GrantRow.id, ids))).all())
        for r in body.removed:
            audit.append(s, at=now, actor=principal.person, action="agent.removed", request_id=requests.get(r.grant_id),
                         host=host, grant_id=r.grant_id, person=r.person, why=r.why,
                         known=r.grant_id in requests)
        for e in body.ended:
            audit.append(s, at=now, actor=principal.person, action="agent.sessions_ended",
                         request_id=requests.get(e.grant_id), host=host, grant_id=e.grant_id, person=e.person,
                         processes=[p.model_dump() for p in e.processes])
        for r in refused:
            audit.append(s, at=now, actor=principal.person, action="agent.write_refused",
                         request_id=requests.get(r.grant_id), host=host, grant_id=r.grant_id, error=r.error)
