"""Shared fixtures: a clean environment, a frozen clock, SQLite and PostgreSQL stores, a wired world."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.clock import FrozenClock
from app.config import EngineSettings
from app.dev.sandbox import PEOPLE
from app.identity import StaticDirectory
from app.lifecycle import Lifecycle
from app.store import Store
from integrations.fake import FakeBackend
from policies.loader import load_policy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = ROOT / "policies" / "default.toml"
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)  # a Tuesday
PG_URL = os.environ.get("JIT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-load", type=int, default=0, metavar="N",
                     help="keep N CPU-bound processes running for the whole run (make stress): proofs under load")


@pytest.fixture(scope="session", autouse=True)
def _cpu_load(request: pytest.FixtureRequest):
    """With --cpu-load N, N busy loops compete with the suite for the cores until it ends."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(request.config.getoption("--cpu-load"))]
    yield
    for hog in hogs:
        hog.kill()
        hog.wait()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's own config, identity and crash points out of the tests."""
    for var in ("JIT_CONFIG", "JIT_USER", "JIT_FAILPOINTS", "JIT_SERVER", "JIT_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="session")
def pg_database() -> str:
    """A fresh PostgreSQL database for this run, or a skip that says why."""
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"jit_test_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} ({str(exc.orig).splitlines()[0]}): "
                    "skipping the PostgreSQL part; set JIT_TEST_POSTGRES to point at a server")
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The run's PostgreSQL database with a clean, empty schema for this test."""
    engine = sa.create_engine(pg_database)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    return pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jit.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def store(db_url: str):
    s = Store(db_url)
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path):
    """One SQLite database, for tests about something else than the database (backends, time)."""
    s = Store(f"sqlite:///{tmp_path / 'jit.db'}")
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend("sudo")


@pytest.fixture
def policy():
    return load_policy(DEFAULT_POLICY)


@pytest.fixture
def lifecycle(store, policy, backend, clock) -> Lifecycle:
    directory = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})
    settings = EngineSettings(retry_backoff=timedelta(0))
    return Lifecycle(store, policy, directory, {"sudo": backend}, clock, settings)
