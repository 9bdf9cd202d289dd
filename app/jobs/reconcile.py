"""Drift: what the systems really hold against what the grants say, and the exposure figures.

Three kinds of drift, per backend:
- ``standing``: an artifact this product manages that no grant backs (somebody added it by hand);
- ``outlived``: an artifact whose grant has ended (revoked, expired, failed);
- ``missing``: an active grant whose artifact is gone (someone removed it; access the user was
  granted is not there).
``fix`` removes the first two and restores the third; every finding and action is audited.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Mapping

from sqlmodel import select

from app.clock import Clock
from app.store import GrantRow, Store, audit
from app.store.grants import spec_of
from integrations.base import Artifact, Backend, BackendError, GrantSpec

log = logging.getLogger("jit.reconcile")


@dataclass(frozen=True)
class Finding:
    backend: str
    kind: str  # standing | outlived | missing | error
    ref: str
    person: str | None
    grant_id: int | None
    detail: str
    action: str = "none"  # none | removed | restored | failed: ...


def _spec_for_artifact(a: Artifact, now: datetime) -> GrantSpec:
    """Enough of a grant to remove an artifact that no grant backs."""
    return GrantSpec(grant_id=a.grant_id or 0, request_id=0, person=a.person, target=a.target or "",
                     role=a.role or "", starts_at=a.not_before or now, expires_at=a.not_after or now,
                     params=dict(a.details))


class Reconciler:
    def __init__(self, store: Store, backends: Mapping[str, Backend], clock: Clock) -> None:
        self.store, self.backends, self.clock = store, backends, clock

    def run(self, *, fix: bool = False, actor: str = "engine") -> list[Finding]:
        now = self.clock()
        findings: list[Finding] = []
        for name, backend in sorted(self.backends.items()):
            findings += self._backend(name, backend, now, fix)
        with self.store.transaction() as s:
            for f in findings:
                audit.append(s, at=now, actor=actor, action="reconcile.drift", request_id=None, finding=asdict(f))
        return findings

    def _backend(self, name: str, backend: Backend, now: datetime, fix: bool) -> list[Finding]:
        try:  # list first, then read the grants: an artifact listed is then never newer than its grant row
            artifacts = backend.list_managed()
        except BackendError as exc:
            return [Finding(name, "error", "-", None, None, f"list_managed failed: {exc}")]
        with self.store.transaction() as s:
            grants = s.exec(select(GrantRow).where(GrantRow.backend == name)).all()
        by_id = {g.id: g for g in grants}
        by_ref: dict[str, list[GrantRow]] = {}
        for g in grants:
            if g.ref:
                by_ref.setdefault(g.ref, []).append(g)
        out: list[Finding] = []
        for a in artifacts:
            backing = ([by_id[a.grant_id]] if a.grant_id in by_id else []) + by_ref.get(a.ref, [])
            if any(g.status in ("active", "applying", "revoking") for g in backing):
                continue  # backed by a live grant (a revoking one is being removed right now)
            if backing:
                g = max(backing, key=lambda g: g.id)
                try:
                    if backend.inspect(spec_of(g)) is None:
                        continue  # listed just before the engine removed it: gone now, as it should be
                except BackendError:
                    pass  # cannot tell: report it, and removing what is gone is harmless
                finding = Finding(name, "outlived", a.ref, a.person, g.id,
                                  f"grant {g.id} is {g.status} but the artifact is still there")
                spec = spec_of(g)
            else:
                finding = Finding(name, "standing", a.ref, a.person, a.grant_id,
                                  "no grant backs this privilege")
                spec = _spec_for_artifact(a, now)
            out.append(self._act(finding, fix, lambda spec=spec: backend.revoke(spec), "removed"))
        for g in grants:
            if g.status != "active" or g.expires_at <= now:
                continue  # expired-but-active grants are the engine's to revoke
            try:
                present = backend.inspect(spec_of(g))
            except BackendError as exc:
                out.append(Finding(name, "error", g.ref or "-", g.person, g.id, f"inspect failed: {exc}"))
                continue
            if present is None:
                finding = self._missing(name, backend, g, fix)
                if finding is not None:
                    out.append(finding)
        return out

    def _missing(self, name: str, backend: Backend, g: GrantRow, fix: bool) -> Finding | None:
        """An active grant's artifact is gone: restore it, unless the engine ended the grant meanwhile.

        The grant row stays locked while the artifact is restored, so the engine's revocation of
        it waits and then removes what was restored, never the other way round."""
        with self.store.transaction() as s:
            q = select(GrantRow).where(GrantRow.id == g.id)
            current = s.exec(q.with_for_update() if self.store.dialect == "postgresql" else q).first()
            if current is None or current.status != "active" or current.expires_at <= self.clock():
                return None  # revoked (or due) since it was read: nothing is missing
            finding = Finding(name, "missing", current.ref or "-", current.person, current.id,
                              f"grant {current.id} is active until {current.expires_at:%Y-%m-%d %H:%M} UTC "
                              "but its artifact is gone")
            return self._act(finding, fix, lambda: backend.apply(spec_of(current)), "restored")

    @staticmethod
    def _act(finding: Finding, fix: bool, action, done: str) -> Finding:
        if not fix:
            return finding
        try:
            action()
        except BackendError as exc:
            return Finding(**{**asdict(finding), "action": f"failed: {exc}"})
        return Finding(**{**asdict(finding), "action": done})
