"""The seed's measure of exposure: who holds elevated access now against who could, and for how long."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import select

from app.identity import Directory
from app.store import GrantRow, ReviewRow, Store
from app.domain.states import HELD
from policies.model import PolicySet


@dataclass(frozen=True)
class Exposure:
    elevated_now: int
    eligible: int
    privilege_hours_7d: float
    privilege_hours_30d: float
    bypasses_awaiting_review: int

    @property
    def ratio(self) -> float:
        return self.elevated_now / self.eligible if self.eligible else 0.0


def exposure(store: Store, policy: PolicySet, directory: Directory, now: datetime) -> Exposure:
    """The seed's measure: who holds elevated access now against who could, and for how long."""
    eligible_groups = {g for t in policy.targets.values() for r in t.roles.values() for g in r.eligible_groups}
    eligible = {p for g in eligible_groups for p in directory.members_of(g)}
    with store.transaction() as s:
        active = s.exec(select(GrantRow.person).where(GrantRow.status.in_(HELD))).all()
        since = now - timedelta(days=30)
        grants = s.exec(select(GrantRow).where(GrantRow.applied_at.is_not(None),
                                               (GrantRow.revoked_at.is_(None)) | (GrantRow.revoked_at > since))).all()
        awaiting = s.exec(select(ReviewRow.id).where(ReviewRow.state == "open")).all()

    def hours(days: int) -> float:
        start = now - timedelta(days=days)
        total = 0.0
        for g in grants:
            end = min(g.revoked_at or now, now)
            total += max(0.0, (end - max(g.applied_at, start)).total_seconds())
        return round(total / 3600, 2)

    return Exposure(len(set(active)), len(eligible), hours(7), hours(30), len(awaiting))
