"""The database: connections, transactions, migrations. SQLite (WAL) by default, PostgreSQL too.

On SQLite every transaction starts with ``BEGIN IMMEDIATE`` so writers queue instead of failing
half-way; on PostgreSQL the audit head row is locked ``FOR UPDATE`` so the hash chain stays linear.
SQLAlchemy's ``OperationalError`` is mapped to ``StoreError`` here, once.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

import app.store.tables  # noqa: F401  (registers the tables)
from app.domain.errors import StoreError

MIGRATIONS = Path(__file__).parent / "migrations"
AFTER_COMMIT = "after_commit"


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


def _create_private(path: Path) -> None:
    """Create the SQLite file 0600 in a 0700 directory when they do not exist yet, whatever the
    umask (SQLite gives its -wal and -shm files the database file's mode). Existing ones are left
    as their owner set them."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
        path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.chmod(path, 0o600)
    except FileExistsError:
        pass


class Store:
    """The database. ``transaction()`` is one unit of work: commit on success, roll back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                _create_private(Path(path))
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
        """Bring the schema to the newest revision (Alembic, imported only here)."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

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
        """A session in one transaction, committed when the block ends; then the callables queued
        in ``session.info["after_commit"]`` run (what must only be said of committed work: log lines)."""
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                with session.begin():
                    yield session
                for then in session.info.pop(AFTER_COMMIT, ()):
                    then()
        except OperationalError as exc:
            raise StoreError(f"database error: {_brief(exc)}") from None

    def dispose(self) -> None:
        self.engine.dispose()


def _brief(exc: OperationalError) -> str:
    """The driver's message without the SQL and parameters (they may carry personal data)."""
    return str(exc.orig).strip().splitlines()[0] if exc.orig else exc.__class__.__name__
