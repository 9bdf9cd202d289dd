"""What the use-cases hand back: frozen snapshots of a request, its approvals and grant, and an
action's outcome. Plain data for the CLI, the console and the tests; no database objects."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
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
