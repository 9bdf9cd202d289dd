"""What the benchmark scripts share: a sandbox config, a throwaway PostgreSQL database, percentiles.

Not a test module (no ``test_`` prefix): the scripts import it from their own directory.
"""
from __future__ import annotations

import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.dev.sandbox import write_sandbox  # noqa: E402

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def make_config(directory: Path, people: int, db_url: str, *, servicenow_url: str | None = None,
                sweep: str = "10m") -> Path:
    """A sandbox config with ``people`` engineers user0..userN-1; the sweep slowed so the timer does the work."""
    config = write_sandbox(directory, servicenow_url=servicenow_url)
    text = config.read_text().replace('url = ""', f'url = "{db_url}"')
    text = text.replace('sweep_interval = "30s"', f'sweep_interval = "{sweep}"')
    text += "".join(f'\n[directory.people.user{i}]\ngroups = ["engineers"]\n' for i in range(people))
    config.write_text(text)
    return config


def compiled() -> None:
    """The project's bytecode written next to its sources (``__pycache__``, ignored by git), as
    ``pip install`` compiles an installed package, even where ``PYTHONDONTWRITEBYTECODE`` is set:
    a process started by a benchmark then times the product, not the compiler."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "app", "integrations", "policies"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


@contextmanager
def pg_database(server_url: str) -> Iterator[str | None]:
    """A fresh database on ``server_url`` (dropped afterwards), or None with a printed reason."""
    if not server_url:
        yield None
        return
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"jit_bench_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL skipped: not reachable at {server_url} ({str(exc.orig).splitlines()[0]})")
        yield None
        return
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
