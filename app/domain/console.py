"""What the console shows, as plain frozen dataclasses, and their JSON form: one definition for the
server (``app.queries.console`` builds them from the database, ``app.server.routes`` sends them)
and the client (``app.client.console`` reads them back). No database, no I/O.

On the wire: datetimes are ISO 8601 text in UTC with a ``Z``, timedeltas are seconds (a number),
tuples and frozensets are lists."""
from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Callable, Protocol

from app.domain.times import instant, iso  # noqa: F401 - used here and by the console's screens
from app.domain.views import RequestView


@dataclass(frozen=True)
class Operator:
    person: str
    groups: frozenset[str]
    can_approve: bool
    can_review: bool
    can_bypass: bool
    can_revoke: bool

    @classmethod
    def from_whoami(cls, data: dict[str, Any]) -> "Operator":
        """From ``GET /v1/whoami``: the person, their groups and ``capabilities`` (``can_*``)."""
        caps = data["capabilities"]
        return cls(person=data["person"], groups=frozenset(data["groups"]),
                   **{f.name: bool(caps[f.name]) for f in fields(cls) if f.name.startswith("can_")})


@dataclass(frozen=True)
class QueueItem:
    id: int
    label: str
    requester: str
    target: str
    role: str
    environment: str
    tier: str
    duration: timedelta
    ticket: str | None
    created_at: datetime
    approvals: int
    needed: int
    approvers: tuple[str, ...]
    verdict: str
    escalated: bool
    approval_model: str
    approver_groups: tuple[str, ...]
    holding: str = ""  # the requester already holds this role on this target: "REQ-5 until 11-24 10:30Z"

    def to_json(self) -> dict[str, Any]:
        return {**_plain(self), "duration": self.duration.total_seconds(), "created_at": iso(self.created_at),
                "approvers": list(self.approvers), "approver_groups": list(self.approver_groups)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "QueueItem":
        return cls(**{**d, "duration": timedelta(seconds=d["duration"]), "created_at": instant(d["created_at"]),
                      "approvers": tuple(d["approvers"]), "approver_groups": tuple(d["approver_groups"])})


@dataclass(frozen=True)
class ActiveItem:
    id: int
    label: str
    requester: str
    target: str
    role: str
    kind: str
    starts_at: datetime
    expires_at: datetime
    backend: str

    def to_json(self) -> dict[str, Any]:
        return {**_plain(self), "starts_at": iso(self.starts_at), "expires_at": iso(self.expires_at)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ActiveItem":
        return cls(**{**d, "starts_at": instant(d["starts_at"]), "expires_at": instant(d["expires_at"])})


@dataclass(frozen=True)
class AuditItem:
    seq: int
    at: datetime
    actor: str
    action: str
    request_id: int | None
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {**_plain(self), "at": iso(self.at)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "AuditItem":
        return cls(**{**d, "at": instant(d["at"])})


@dataclass(frozen=True)
class Health:
    engine_running: bool
    engines: tuple[tuple[str, datetime], ...]
    sync_enabled: bool
    sync_last_run: datetime | None
    sync_last_ok: datetime | None
    sync_watermark: datetime | None
    sync_behind_s: float | None
    sync_errors: tuple[str, ...]
    elevated_now: int
    eligible: int
    privilege_hours_7d: float
    bypasses_awaiting_review: int
    audit_ok: bool
    audit_message: str

    _TIMES = ("sync_last_run", "sync_last_ok", "sync_watermark")

    def to_json(self) -> dict[str, Any]:
        return {**_plain(self), **{k: iso(getattr(self, k)) for k in self._TIMES},
                "engines": [[name, iso(seen)] for name, seen in self.engines], "sync_errors": list(self.sync_errors)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Health":
        return cls(**{**d, **{k: instant(d[k]) for k in cls._TIMES},
                      "engines": tuple((name, instant(seen)) for name, seen in d["engines"]),
                      "sync_errors": tuple(d["sync_errors"])})


def clip(text: str, width: int) -> str:
    """At most ``width`` characters: cut after a whole word (with an ellipsis) where one ends in the
    last third, else mid-word."""
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space >= (width * 2) // 3 else cut).rstrip(" ,;:") + "…"


# Every binding id of the console ([console.keys] remaps by these; a test keeps this equal to app/tui's)
BINDING_IDS = ("approve", "back", "bypass", "bypass-cancel", "bypass-submit", "deny", "event-close", "extend", "filter",
               "filter-clear", "help", "help-close", "justified", "modal-cancel", "open", "quit", "revoke", "sort",
               "ticket", "view-audit", "view-grants", "view-health", "view-queue", "view-reviews", "violation")


@dataclass(frozen=True)
class EngineStatus:
    """Whether any engine was heard from within three poll intervals, and when one last was."""

    alive: bool
    last_seen: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"alive": self.alive, "last_seen": iso(self.last_seen)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EngineStatus":
        return cls(bool(d["alive"]), instant(d["last_seen"]))


TICKET_TIMES = ("start", "end")


def ticket_to_json(ticket: dict[str, Any] | None) -> dict[str, Any] | None:
    """The console's view of a ServiceNow ticket (``ConsoleData.ticket``), its times as text."""
    return None if ticket is None else {k: iso(v) if k in TICKET_TIMES else v for k, v in ticket.items()}


def ticket_from_json(data: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if data is None else {k: instant(v) if k in TICKET_TIMES else v for k, v in data.items()}


class ConsoleSource(Protocol):
    """What the console reads and does: ``app.queries.console.ConsoleData`` on the database,
    ``app.client.console.RemoteConsoleData`` over the API. Every method may block (call it from a
    worker); actions return what was done, in words, and raise the project's errors."""

    operator: Operator
    clock: Callable[[], datetime]
    poll_seconds: float  # how often the console asks change_token()

    def change_token(self) -> int: ...
    def queue(self) -> list[QueueItem]: ...
    def active(self) -> list[ActiveItem]: ...
    def reviews(self) -> list[RequestView]: ...
    def request(self, request_id: int) -> RequestView: ...
    def history(self, request_id: int) -> list[AuditItem]: ...
    def audit(self, text: str = "", limit: int = 500) -> list[AuditItem]: ...
    def event(self, seq: int) -> dict[str, Any]: ...
    def audit_status(self) -> tuple[bool, str]: ...
    def ticket(self, number: str) -> dict[str, Any] | None: ...
    def health(self) -> Health: ...
    def engine_status(self) -> EngineStatus: ...
    def bypass_choices(self) -> list[tuple[str, str]]: ...
    def approve(self, request_id: int, comment: str = "") -> str: ...
    def deny(self, request_id: int, reason: str) -> str: ...
    def revoke(self, request_id: int, reason: str) -> str: ...
    def extend(self, request_id: int, by: timedelta, reason: str) -> str: ...
    def bypass(self, target: str, role: str, duration: timedelta, incident: str, reason: str) -> str: ...
    def review(self, request_id: int, outcome: str, comment: str) -> str: ...


def _plain(item: Any) -> dict[str, Any]:
    return {f.name: getattr(item, f.name) for f in fields(item)}
