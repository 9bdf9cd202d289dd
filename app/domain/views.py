"""What the use-cases hand back: frozen snapshots of a request, its approvals and grant, and an
action's outcome. Plain data for the CLI, the console and the tests; no database objects."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from app.domain.times import instant, iso


@dataclass(frozen=True)
class ApprovalView:
    approver: str
    groups: tuple[str, ...]
    comment: str
    at: datetime


@dataclass(frozen=True)
class GrantView:
    id: int
    status: str
    backend: str
    ref: str | None
    starts_at: datetime
    expires_at: datetime
    applied_at: datetime | None
    revoked_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class RequestView:
    """A snapshot of one request, for the CLI, the console and the tests."""

    id: int
    kind: str
    state: str
    requester: str
    target: str
    role: str
    environment: str | None
    tier: str | None
    reason: str
    ticket: str | None
    approval_model: str
    approver_groups: tuple[str, ...]
    starts_at: datetime
    expires_at: datetime
    created_at: datetime
    escalated_at: datetime | None
    closed_by: str | None
    closed_reason: str | None
    checks: tuple[dict, ...]
    approvals: tuple[ApprovalView, ...] = ()
    grant: GrantView | None = None
    review: dict | None = None
    version: int = 1

    @property
    def label(self) -> str:
        return f"REQ-{self.id}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return _jsonable(data)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RequestView":
        """The view back from ``to_json()`` (what a client of the API receives)."""
        d = dict(data)
        for key in ("starts_at", "expires_at", "created_at", "escalated_at"):
            d[key] = instant(d[key])
        d["approver_groups"] = tuple(d["approver_groups"])
        d["checks"] = tuple(d["checks"])
        d["approvals"] = tuple(ApprovalView(a["approver"], tuple(a["groups"]), a["comment"], instant(a["at"]))
                               for a in d["approvals"])
        if g := d.get("grant"):
            d["grant"] = GrantView(**{k: instant(v) if k.endswith("_at") else v for k, v in g.items()})
        if r := d.get("review"):
            d["review"] = {**r, "reviewed_at": instant(r.get("reviewed_at")), "cleared_at": instant(r.get("cleared_at"))}
        return cls(**d)




def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class Outcome:
    """What an action did, for the caller to print."""

    request: RequestView
    message: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "notes": list(self.notes), "request": self.request.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Outcome":
        return cls(RequestView.from_json(data["request"]), data["message"], list(data["notes"]))
