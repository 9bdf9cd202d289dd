"""How several engines share a burst of expiries on one PostgreSQL database.

N grants are already past their expiry; K engine processes start ``expire_due`` at the same
moment. Prints, per K: wall time until all are revoked, how many grants each engine ended, and
how many intents each lost to another engine (a Conflict: read as active, changed by the time
its UPDATE ran). The backend is the in-memory fake with a fixed latency per call, standing in
for an LDAP or AWS round trip.

    .venv/bin/python tests/benchmarks/engines_split.py [--grants 300] [--latency-ms 20] [--postgres URL]

Not part of `make test`.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app.clock import FrozenClock  # noqa: E402
from app.config import EngineSettings  # noqa: E402
from app.domain.errors import Conflict  # noqa: E402
from app.identity import StaticDirectory  # noqa: E402
from app.lifecycle import Lifecycle  # noqa: E402
from app.store import Store  # noqa: E402
from integrations.fake import FakeBackend  # noqa: E402
from policies.loader import load_policy  # noqa: E402

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


class SlowBackend(FakeBackend):
    def __init__(self, latency: float) -> None:
        super().__init__("sudo")
        self.latency = latency

    def apply(self, grant):  # type: ignore[no-untyped-def]
        time.sleep(self.latency)
        return super().apply(grant)

    def revoke(self, grant):  # type: ignore[no-untyped-def]
        time.sleep(self.latency)
        return super().revoke(grant)


class CountingLifecycle(Lifecycle):
    lost = 0

    def _intend_revoke(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super()._intend_revoke(*args, **kwargs)
        except Conflict:
            self.lost += 1
            raise


def lifecycle(url: str, grants: int, latency: float, now: datetime) -> CountingLifecycle:
    people = {f"user{i}": frozenset({"engineers"}) for i in range(grants)}
    return CountingLifecycle(Store(url), load_policy(ROOT / "policies" / "default.toml"), StaticDirectory(people),
                             {"sudo": SlowBackend(latency)}, FrozenClock(now), EngineSettings(retry_backoff=timedelta(0)))


def engine(url: str, grants: int, latency: float, start: mp.Barrier, out: mp.Queue) -> None:
    lc = lifecycle(url, grants, latency, T0 + timedelta(hours=1))
    start.wait()
    t = time.monotonic()
    ended = lc.expire_due()
    out.put((ended, lc.lost, time.monotonic() - t, time.monotonic()))


def run(url: str, grants: int, latency: float, engines: int) -> tuple[float, list[tuple[int, int]]]:
    db = sa.create_engine(url)
    with db.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    db.dispose()
    lc = lifecycle(url, grants, 0, T0)
    lc.store.migrate()
    for i in range(grants):
        lc.submit(f"user{i}", "web-dev-01", "service-admin", timedelta(minutes=10), "benchmark of several engines")
    lc.store.dispose()
    start, out = mp.Barrier(engines + 1), mp.Queue()
    procs = [mp.Process(target=engine, args=(url, grants, latency, start, out)) for _ in range(engines)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.monotonic()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    wall = max(r[3] for r in results) - t0
    check = lifecycle(url, grants, 0, T0)
    with check.store.transaction() as s:
        left = s.execute(sa.text("SELECT COUNT(*) FROM grant_record WHERE status <> 'revoked'")).scalar()
        ended = s.execute(sa.text("SELECT COUNT(*) FROM audit_event WHERE action = 'request.expired'")).scalar()
    check.store.dispose()
    assert left == 0 and ended == grants, (left, ended)
    return wall, [(r[0], r[1]) for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grants", type=int, default=300)
    ap.add_argument("--latency-ms", type=float, default=20)
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    name = f"jit_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = args.postgres.rsplit("/", 1)[0] + f"/{name}"
    try:
        print(f"{args.grants} expired grants, backend latency {args.latency_ms:g} ms per call")
        print("| engines | wall time | grants ended per engine | intents lost per engine |")
        print("|---|---|---|---|")
        for k in (1, 2, 3):
            wall, per = run(url, args.grants, args.latency_ms / 1000, k)
            print(f"| {k} | {wall:.2f} s | {', '.join(str(e) for e, _ in per)} | {', '.join(str(c) for _, c in per)} |")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


if __name__ == "__main__":
    main()
