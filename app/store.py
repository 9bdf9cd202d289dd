"""Tables, the database connection and migrations. SQLite (WAL) by default, PostgreSQL too.

Every datetime is stored as UTC and read back aware. On SQLite every transaction starts
with ``BEGIN IMMEDIATE`` so writers queue instead of failing half-way; on PostgreSQL the
audit head row is locked ``FOR UPDATE`` so the hash chain stays linear.
"""
from __future__ import annotations

import json
import operator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Field, Session, SQLModel


class StoreError(Exception):
    """The database is unreachable or refused an operation."""


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


class AuditHead(SQLModel, table=True):
    __tablename__ = "audit_head"
    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    hash: str


# PostgreSQL column types insert_rows writes in COPY's binary form (a JSON value goes as its text)
_BINARY_COPY = {"VARCHAR": "text", "TEXT": "text", "INTEGER": "int4", "BIGINT": "int8", "SMALLINT": "int2",
                "BOOLEAN": "bool", "TIMESTAMP WITH TIME ZONE": "timestamptz", "JSON": "text"}


def insert_rows(session: Session, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """INSERT many rows of one table (dicts with the same keys, every NOT NULL column given) in
    ``session``'s transaction: COPY on PostgreSQL (binary, when every column's type is one it
    knows), one ``executemany`` on SQLite. Each value is converted by its column's type as an ORM
    insert would; a ``JSONText`` value is already JSON and goes in as it is. For pages of
    thousands of rows: psycopg's ``executemany`` spends ~30 us a row in Python, SQLAlchemy's own
    ~10 us, a text COPY ~3 us, a binary one ~1 us."""
    if not rows:
        return
    conn = session.connection()
    dialect, names = conn.dialect, list(rows[0])
    columns = [table.c[name] for name in names]
    types = [_BINARY_COPY.get(c.type.compile(dialect=dialect).split("(")[0]) for c in columns] \
        if dialect.name == "postgresql" else []
    binary = bool(types) and None not in types
    convert = []
    for i, column in enumerate(columns):
        is_json = isinstance(column.type, sa.JSON)
        f = json.dumps if binary and is_json else column.type.dialect_impl(dialect).bind_processor(dialect)
        if f:  # (json.dumps: what SQLAlchemy's JSON type writes, with no serializer configured)
            convert.append((i, f, is_json))
    values, pick = [], operator.itemgetter(*names)
    for row in rows:
        value = list(pick(row)) if len(names) > 1 else [pick(row)]
        for i, f, is_json in convert:
            if not (is_json and type(value[i]) is JSONText):
                value[i] = f(value[i])
        values.append(tuple(value))
    if dialect.name != "postgresql":  # the names are the table's own columns, never outside text
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(names)}) VALUES "
                             f"({', '.join('?' * len(names))})", values)
        return
    from psycopg import sql
    statement = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
        sql.Identifier(table.name), sql.SQL(", ").join(sql.Identifier(n) for n in names),
        sql.SQL(" (FORMAT BINARY)" if binary else ""))
    try:
        with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
            if binary:
                copy.set_types(types)
            for value in values:
                copy.write_row(value)
    except dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy would raise it: IntegrityError, OperationalError...
        raise sa.exc.DBAPIError.instance(f"COPY {table.name}", None, exc, dialect.loaded_dbapi.Error) from exc


def among(session: Session, column: Any, values: Iterable[Any]) -> Any:
    """``column IN values`` for a page's worth of values: on PostgreSQL one array parameter
    (``= ANY(...)``), since psycopg spends ~3 ms a query on 500 separate ones; IN elsewhere."""
    values = list(values)
    if session.get_bind().dialect.name == "postgresql":
        return column == sa.any_(sa.literal(values, sa.ARRAY(column.type)))
    return column.in_(values)


def next_ids(session: Session, table: sa.Table, count: int) -> list[int]:
    """``count`` new ids for ``table``'s integer key, ascending, for rows inserted with their id
    given (so a page's rows need not be read back for their ids): from the key's sequence on
    PostgreSQL; on SQLite the ones after the largest, which no one else can take before this
    transaction ends (it began with BEGIN IMMEDIATE)."""
    if count <= 0:
        return []
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        return sorted(conn.execute(sa.select(sa.func.nextval(sa.func.pg_get_serial_sequence(table.name, "id")))
                                   .select_from(sa.func.generate_series(1, count))).scalars())
    last = conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0))).scalar_one()
    return list(range(last + 1, last + 1 + count))


MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """The database. ``transaction()`` is one unit of work: commit on success, roll back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            _sqlite_setup(self.engine)
        else:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic)."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7355608)")  # one migrator at a time
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise StoreError(f"cannot open the database: {_brief(exc)}") from None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                with session.begin():
                    yield session
        except OperationalError as exc:
            raise StoreError(f"database error: {_brief(exc)}") from None

    def dispose(self) -> None:
        self.engine.dispose()


def _brief(exc: OperationalError) -> str:
    """The driver's message without the SQL and parameters (they may carry personal data)."""
    return str(exc.orig).strip().splitlines()[0] if exc.orig else exc.__class__.__name__
