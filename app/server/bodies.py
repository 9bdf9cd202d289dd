"""What the API accepts: one pydantic model per request body or query, strict (no coercion of
types, unknown fields refused), so a bad call is answered 422 naming the field and writes nothing.
The same models describe the API in ``/v1/openapi.json``."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, StrictBool, StrictStr

from app.domain.inputs import MAX_ID
from app.domain.states import REVIEW_OUTCOMES, RequestState
from policies.durations import format_duration, parse_duration
from policies.names import PERSON


def _duration(value: object) -> timedelta:
    if not isinstance(value, str):
        raise ValueError("must be a duration text such as '2h' or '15m'")
    return parse_duration(value)


def _instant(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 time text, e.g. 2026-11-24T09:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not an ISO 8601 time (e.g. 2026-11-24T09:00:00Z)") from None
    if parsed.tzinfo is None:
        raise ValueError("needs a UTC offset (e.g. 2026-11-24T09:00:00Z)")
    return parsed


Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(format_duration),
                     Field(json_schema_extra={"type": "string", "examples": ["15m", "2h", "1h30m"]})]
Instant = Annotated[datetime, BeforeValidator(_instant),
                    Field(json_schema_extra={"type": "string", "format": "date-time"})]
Text = Annotated[StrictStr, Field(max_length=4000)]  # the lifecycle applies each field's own limit


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Submit(Body):
    target: Text
    role: Text
    duration: Duration
    reason: Text
    ticket: Text | None = None
    start: Instant | None = None


class Explain(Body):
    target: Text
    role: Text
    duration: Duration
    reason: Text = "(explain only: no reason given)"
    ticket: Text | None = None
    start: Instant | None = None


class Approve(Body):
    comment: Text = ""


class WithReason(Body):
    reason: Text


class Extend(Body):
    by: Duration
    reason: Text


class Bypass(Body):
    target: Text
    role: Text
    duration: Duration
    incident: Text
    reason: Text


class Review(Body):
    outcome: Literal[REVIEW_OUTCOMES]  # type: ignore[valid-type]
    comment: Text


class WithComment(Body):
    comment: Text


class Reconcile(Body):
    fix: StrictBool = False


class Empty(Body):
    pass


class ListQuery(Body):
    """``GET /v1/requests``: newest first, ``limit`` at a time; ``before`` is the ``next`` of the
    previous page."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)  # query text is converted
    state: Literal[tuple(RequestState)] | None = None  # type: ignore[valid-type]
    requester: Text | None = None
    mine: bool = False
    limit: int = Field(default=100, ge=1, le=500)
    before: int | None = Field(default=None, ge=1, le=MAX_ID)


class AfterQuery(Body):
    """Where to resume: events after this sequence number (0: from the start)."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    after: int = Field(default=0, ge=0)
    limit: int = Field(default=1000, ge=1, le=5000)


class AuditEventQuery(Body):
    """``GET /v1/console/event``: one event, by its sequence number."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    seq: int = Field(ge=1, le=2**63 - 1)


class ConsoleAuditQuery(Body):
    """``GET /v1/console/audit``: the newest ``limit`` events whose actor, action or details hold ``text``."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    text: Annotated[StrictStr, Field(max_length=200)] = ""
    limit: int = Field(default=500, ge=1, le=5000)


# ------------------------------------------------------------------ a host's agent
class AgentPoll(Body):
    """The host's grants once they differ from ``known`` (the version it holds), or after ``wait`` s."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    known: str = Field(default="", max_length=64)
    wait: float = Field(default=0, ge=0, le=30)


class HeldDropIn(Body):
    grant_id: int = Field(ge=0, le=MAX_ID)
    person: StrictStr = Field(pattern=PERSON)
    not_before: Instant | None = None
    not_after: Instant | None = None
    ref: StrictStr = Field(default="", max_length=4096)


class RefusedGrant(Body):
    grant_id: int = Field(ge=-1, le=MAX_ID)
    error: StrictStr = Field(max_length=500)


class RemovedDropIn(Body):
    grant_id: int = Field(ge=0, le=MAX_ID)
    person: StrictStr = Field(pattern=PERSON)
    why: StrictStr = Field(max_length=200)


class EndedProcess(Body):
    pid: int = Field(ge=1)
    command: StrictStr = Field(max_length=200)


class EndedSessions(Body):
    grant_id: int = Field(ge=0, le=MAX_ID)
    person: StrictStr = Field(pattern=PERSON)
    processes: list[EndedProcess] = Field(max_length=100)


class AgentReport(Body):
    """Everything the host holds now (it replaces the last report), what it would not write, and
    what it removed and ended since the last report."""

    held: list[HeldDropIn] = Field(max_length=20_000)
    refused: list[RefusedGrant] = Field(default_factory=list, max_length=20_000)
    removed: list[RemovedDropIn] = Field(default_factory=list, max_length=20_000)
    ended: list[EndedSessions] = Field(default_factory=list, max_length=20_000)
