"""What each host should hold now: every grant on the ``agent`` backend that is being applied or is
active, under each host its rule names (``integrations.sudo.hosts_of``). One query for every host
at once, so a server with many agents reads the grants once per change of the audit head, not
once per agent."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlmodel import select

from app.domain.states import LIVE
from app.store import GrantRow, Store
from app.store import audit as audit_store
from app.store.grants import spec_of
from integrations.base import GrantSpec, InvalidGrant
from integrations.sudo import hosts_of

BACKEND = "agent"


def grant_json(spec: GrantSpec) -> dict[str, Any]:
    """A grant as its host's agent is told it (the agent checks every field again before writing)."""
    return {"grant_id": spec.grant_id, "request_id": spec.request_id, "person": spec.person,
            "target": spec.target, "role": spec.role, "starts_at": spec.starts_at.isoformat(),
            "expires_at": spec.expires_at.isoformat(), "params": dict(spec.params)}


def version_of(grants: list[dict[str, Any]]) -> str:
    """A short digest of what a host should hold: the long poll answers when it changes."""
    return hashlib.sha256(json.dumps(grants, sort_keys=True).encode()).hexdigest()[:32]


def by_host(store: Store) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """The audit head's sequence number, read first, and per host (lower case) the grants it should
    hold, oldest first. Every change of a grant's status writes an audit event, so what is read
    here is at least as new as that sequence number."""
    hosts: dict[str, list[dict[str, Any]]] = {}
    with store.transaction() as s:
        seq = audit_store.newest_seq(s)
        rows = s.exec(select(GrantRow).where(GrantRow.backend == BACKEND, GrantRow.status.in_(LIVE))
                      .order_by(GrantRow.id)).all()
        for g in rows:
            spec = spec_of(g)
            try:
                names = hosts_of(spec)
            except InvalidGrant:
                continue  # its apply fails with the reason; no host is told anything
            for host in names:
                hosts.setdefault(host, []).append(grant_json(spec))
    return seq, hosts
