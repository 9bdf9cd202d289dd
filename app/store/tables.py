"""The tables. Every datetime is stored as UTC and read back aware (``UTCDateTime``).

States are written only through ``app/store/requests.py`` and ``app/store/grants.py``, which
check ``app/domain/states.py``'s table."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


class UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC in, aware UTC out; naive datetimes are refused.

    SQLite keeps a datetime as text: this type writes and reads that text itself, in the form
    SQLAlchemy's SQLite DATETIME uses (``2026-11-24 09:05:00.000000``, naive UTC), instead of
    handing a datetime to a second converter (a tenth of the sync's insert time)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return dialect.type_descriptor(sa.String() if dialect.name == "sqlite" else self.impl)

    def process_bind_param(self, value: Optional[datetime], dialect: Any) -> Optional[datetime | str]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC")
        if value.tzinfo is not timezone.utc:
            value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None).isoformat(" ", "microseconds") if dialect.name == "sqlite" else value

    def process_result_value(self, value: Optional[datetime | str], dialect: Any) -> Optional[datetime]:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class JSONText(str):
    """A JSON column's value already written as JSON text (``audit.canonical``): ``insert_rows``
    stores it as it is instead of encoding it again, and ``audit.canonical`` embeds it as it is."""


def _when(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


def _json(**kw: Any) -> Any:
    return Field(sa_type=sa.JSON, **kw)


class RequestRow(SQLModel, table=True):
    __tablename__ = "access_request"
    __table_args__ = (sa.UniqueConstraint("source_ref", name="uq_access_request_source_ref"),
                      sa.Index("ix_access_request_requester_state", "requester", "state"))  # migration 0006
    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str = "request"  # request | bypass
    requester: str
    target: str
    role: str
    environment: Optional[str] = None
    tier: Optional[str] = None
    backend: Optional[str] = None
    params: dict = _json(default_factory=dict)
    reason: str
    ticket: Optional[str] = Field(default=None, index=True)  # migration 0005
    ticket_sys_id: Optional[str] = Field(default=None, index=True)  # the ticket's sys_id: the link (migration 0008)
    state: str = Field(index=True)
    approval_model: str
    approver_groups: list = _json(default_factory=list)
    checks: list = _json(default_factory=list)
    scheduled: bool = False  # an explicit --start: the window is fixed
    duration_s: int
    starts_at: datetime = _when()
    expires_at: datetime = _when()
    created_at: datetime = _when()
    updated_at: datetime = _when()
    escalated_at: Optional[datetime] = _when(default=None)
    closed_by: Optional[str] = None
    closed_reason: Optional[str] = None
    source_ref: Optional[str] = Field(default=None)  # e.g. change_request:<sys_id>, unique (migration 0002)
    version: int = 1


class ApprovalRow(SQLModel, table=True):
    __tablename__ = "approval"
    __table_args__ = (sa.UniqueConstraint("request_id", "approver"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    request_id: int = Field(foreign_key="access_request.id", index=True)
    approver: str
    groups: list = _json(default_factory=list)
    comment: str = ""
    at: datetime = _when()


class GrantRow(SQLModel, table=True):
    __tablename__ = "grant_record"
    __table_args__ = (sa.Index("ix_grant_record_status_expires_at", "status", "expires_at"),)  # migration 0007
    id: Optional[int] = Field(default=None, primary_key=True)
    request_id: int = Field(foreign_key="access_request.id", unique=True)
    backend: str
    person: str
    target: str
    role: str
    params: dict = _json(default_factory=dict)
    starts_at: datetime = _when()
    expires_at: datetime = _when(index=True)
    status: str  # applying | active | revoking | revoked | failed
    ref: Optional[str] = None
    end_state: Optional[str] = None  # what the request becomes once revoked: expired | released | revoked
    end_actor: Optional[str] = None
    end_reason: Optional[str] = None
    owner: Optional[str] = None  # host:pid of the process working on it
    lease_until: Optional[datetime] = _when(default=None)
    attempts: int = 0
    last_error: Optional[str] = None
    next_attempt_at: Optional[datetime] = _when(default=None)
    applied_at: Optional[datetime] = _when(default=None)
    revoked_at: Optional[datetime] = _when(default=None)
    warned_at: Optional[datetime] = _when(default=None)  # "expires in 15 minutes" sent
    shared_key: Optional[str] = Field(default=None, index=True)  # artifact shared with other grants
    updated_at: datetime = _when()
    version: int = 1


class ReviewRow(SQLModel, table=True):
    __tablename__ = "bypass_review"
    id: Optional[int] = Field(default=None, primary_key=True)
    request_id: int = Field(foreign_key="access_request.id", unique=True)
    bypasser: str = Field(index=True)
    state: str = "open"  # open | justified | violation
    reviewer: Optional[str] = None
    comment: Optional[str] = None
    opened_at: datetime = _when()
    reviewed_at: Optional[datetime] = _when(default=None)
    cleared_by: Optional[str] = None  # a violation holds the bypasser's next bypass until a security
    cleared_at: Optional[datetime] = _when(default=None)  # operator clears it (migration 0011)
    clear_comment: Optional[str] = None
    version: int = 1


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = _when()
    actor: str
    action: str
    request_id: Optional[int] = Field(default=None, index=True)
    details: str  # canonical JSON, hashed as stored
    prev_hash: str
    hash: str


class OutboxRow(SQLModel, table=True):
    """A message owed to the outside (a ServiceNow work note, a webhook), written in the same
    transaction as the event it reports and delivered later, exactly once per ``key``."""

    __tablename__ = "outbox"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(unique=True)
    channel: str  # servicenow | webhook
    request_id: Optional[int] = Field(default=None, index=True)
    ticket: Optional[str] = None
    payload: dict = _json(default_factory=dict)
    state: str = Field(default="pending", index=True)  # pending | sent | failed
    attempts: int = 0
    last_error: Optional[str] = None
    next_attempt_at: datetime = _when()
    claimed_until: Optional[datetime] = _when(default=None)
    created_at: datetime = _when()
    sent_at: Optional[datetime] = _when(default=None)


class SyncState(SQLModel, table=True):
    __tablename__ = "sync_state"
    name: str = Field(primary_key=True)
    watermark: Optional[datetime] = _when(default=None)
    last_run_at: Optional[datetime] = _when(default=None)
    last_ok_at: Optional[datetime] = _when(default=None)
    last_error: Optional[str] = None
    errors: list = _json(default_factory=list)  # the most recent errors, newest last
    processed: int = 0
    behind_s: Optional[float] = None


class TicketDecisionRow(SQLModel, table=True):
    """A ServiceNow change the sync refused, and the version of it that was refused (a digest of
    the fields the decision reads): the same version is never decided again, however often the
    product's own work notes make it look updated (migration 0010)."""

    __tablename__ = "ticket_decision"
    source_ref: str = Field(primary_key=True)  # change_request:<sys_id>
    digest: str
    decided_at: datetime = _when()


class HostReportRow(SQLModel, table=True):
    """What a host's ``jit agent`` last said it holds: one row per host, replaced by each report
    (migration 0009). The ``agent`` backend reads it to know a grant is in place, or gone."""

    __tablename__ = "host_report"
    host: str = Field(primary_key=True)
    held: list = _json(default_factory=list)  # [{grant_id, person, not_before, not_after, ref}]
    refused: list = _json(default_factory=list)  # [{grant_id, error}]: grants the host would not write
    reported_at: datetime = _when()


HEARTBEAT_PREFIX = "engine:"  # sync_state rows "engine:<host:pid>": when each engine was last seen


class AuditHead(SQLModel, table=True):
    __tablename__ = "audit_head"
    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    hash: str
