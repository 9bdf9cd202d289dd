"""What each host should hold now: every grant on the ``agent`` backend that is being applied or is
active, under each host its rule names (``integrations.sudo.hosts_of``).

Kept for every host at once and brought up to date from the audit chain: every change of a
grant's status or window writes an audit event naming its request in the same transaction, and
sequence numbers are handed out in commit order (the head row is locked until commit), so the
requests of the events after the last sequence read are exactly the ones whose grants may have
changed. Those grants are read again; the rest stays. A full read every ``FULL_EVERY`` seconds
is the safety net. A server with many agents thus reads the grants that changed, once per move
of the audit head, not every grant once per agent."""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from sqlmodel import select

from app.domain.states import LIVE
from app.store import AuditEvent, GrantRow, Store, among
from app.store import audit as audit_store
from app.store.grants import spec_of
from integrations.base import GrantSpec, InvalidGrant
from integrations.sudo import hosts_of

BACKEND = "agent"
FULL_EVERY = 60.0
MAX_CHANGED = 5000  # requests changed since the last read past which every grant is read again


def grant_json(spec: GrantSpec) -> dict[str, Any]:
    """A grant as its host's agent is told it (the agent checks every field again before writing)."""
    return {"grant_id": spec.grant_id, "request_id": spec.request_id, "person": spec.person,
            "target": spec.target, "role": spec.role, "starts_at": spec.starts_at.isoformat(),
            "expires_at": spec.expires_at.isoformat(), "params": dict(spec.params)}


def version_of(grants: list[dict[str, Any]]) -> str:
    """A short digest of what a host should hold: the long poll answers when it changes."""
    return hashlib.sha256(json.dumps(grants, sort_keys=True).encode()).hexdigest()[:32]


class Desired:
    """Per host, the grants it should hold, as of ``seq``. Not thread-safe: one caller at a time."""

    def __init__(self) -> None:
        self.seq = -1
        self._hosts_of: dict[int, list[str]] = {}  # grant id -> the hosts it is listed under
        self._by_host: dict[str, dict[int, dict[str, Any]]] = {}
        self._answers: dict[str, tuple[str, list[dict[str, Any]]]] = {}  # host -> (version, grants)
        self._full_at = float("-inf")

    def refresh(self, store: Store) -> int:
        """Bring every host's grants up to the audit head; the head's sequence number."""
        with store.transaction() as s:
            seq = audit_store.newest_seq(s)
            live = GrantRow.status.in_(LIVE)
            requests: set[int] = set()
            if 0 <= self.seq < seq:
                requests = set(s.exec(select(AuditEvent.request_id).where(
                    AuditEvent.seq > self.seq, AuditEvent.request_id.is_not(None))).all())
            if self.seq < 0 or time.monotonic() - self._full_at > FULL_EVERY or len(requests) > MAX_CHANGED:
                rows = s.exec(select(GrantRow).where(GrantRow.backend == BACKEND, live)).all()
                self._hosts_of, self._by_host, self._answers = {}, {}, {}
                self._full_at = time.monotonic()
            elif requests:
                rows = s.exec(select(GrantRow).where(GrantRow.backend == BACKEND,
                                                     among(s, GrantRow.request_id, requests))).all()
            else:
                rows = []
            for g in rows:
                self._put(g)
            self.seq = seq
        return seq

    def _put(self, g: GrantRow) -> None:
        for host in self._hosts_of.pop(g.id, []):
            self._by_host.get(host, {}).pop(g.id, None)
            self._answers.pop(host, None)
        if g.status not in LIVE:
            return
        spec = spec_of(g)
        try:
            hosts = hosts_of(spec)
        except InvalidGrant:
            return  # its apply fails with the reason; no host is told anything
        self._hosts_of[g.id] = hosts
        for host in hosts:
            self._by_host.setdefault(host, {})[g.id] = grant_json(spec)
            self._answers.pop(host, None)

    def hosts(self) -> list[str]:
        """Every host some grant names."""
        return sorted(h for h, grants in self._by_host.items() if grants)

    def of(self, host: str) -> tuple[str, list[dict[str, Any]]]:
        """The host's version and grants, oldest first."""
        answer = self._answers.get(host)
        if answer is None:
            grants = [g for _, g in sorted(self._by_host.get(host, {}).items())]
            answer = self._answers[host] = (version_of(grants), grants)
        return answer


def by_host(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every host's grants, read afresh (for tests and tools)."""
    d = Desired()
    d.refresh(store)
    return {host: d.of(host)[1] for host in d.hosts()}
