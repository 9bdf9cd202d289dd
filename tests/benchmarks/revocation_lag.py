"""Revocation lag of the continuous engine: N grants expiring within one minute.

Creates N active sudo grants (real visudo-checked drop-ins) whose expiries are spread over
one minute, runs the continuous engine (APScheduler) with the real clock, and prints p50,
p99 and max of (revoked time - expiry) per database.

    .venv/bin/python tests/benchmarks/revocation_lag.py [--grants 1000] [--postgres URL]

Not part of `make test` (it takes about two minutes); `make bench` runs it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app.bootstrap import build  # noqa: E402
from app.config import load_config  # noqa: E402
from app.sandbox import write_sandbox  # noqa: E402
from app.store import GrantRow  # noqa: E402
from sqlmodel import select  # noqa: E402


def make_config(directory: Path, people: int, db_url: str) -> Path:
    config = write_sandbox(directory, servicenow_url=None)
    text = config.read_text().replace('url = ""', f'url = "{db_url}"')
    text = text.replace('sweep_interval = "30s"', 'sweep_interval = "10m"')  # the timer, not the sweep
    text += "".join(f'\n[directory.people.user{i}]\ngroups = ["engineers"]\n' for i in range(people))
    config.write_text(text)
    return config


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run(db_label: str, db_url: str, grants: int, lead_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="jit-bench-") as tmp:
        config = make_config(Path(tmp) / "sb", grants, db_url)
        sv = build(load_config(config))
        lc = sv.lifecycle
        window_start = datetime.now(timezone.utc) + timedelta(seconds=lead_s)
        t0 = time.monotonic()
        for i in range(grants):
            expiry = window_start + timedelta(seconds=60 * i / grants)
            seconds = max(1, round((expiry - datetime.now(timezone.utc)).total_seconds()))
            lc.submit(f"user{i}", "web-dev-01", "service-admin", timedelta(seconds=seconds),
                      "benchmark of the revocation lag")
        created = time.monotonic() - t0
        files = len(list((Path(tmp) / "sb" / "sudoers.d").glob("jit_g*")))
        with sv.store.transaction() as s:
            expiries = s.exec(select(GrantRow.expires_at).where(GrantRow.status == "active")).all()
        first, last = min(expiries), max(expiries)
        if len(expiries) != grants or first < datetime.now(timezone.utc) + timedelta(seconds=2):
            raise SystemExit(f"setup took {created:.0f}s and ate the lead: expiries must all lie after the "
                             "engine starts; raise --lead")
        stop = threading.Event()
        runner = threading.Thread(target=sv.engine.run_forever, args=(stop,), daemon=True)
        runner.start()
        deadline = time.monotonic() + (last - datetime.now(timezone.utc)).total_seconds() + 60
        while time.monotonic() < deadline:
            with sv.store.transaction() as s:
                left = s.exec(select(sa.func.count()).select_from(GrantRow)
                              .where(GrantRow.status != "revoked")).one()
            if not left:
                break
            time.sleep(0.5)
        stop.set()
        runner.join(timeout=30)
        with sv.store.transaction() as s:
            rows = s.exec(select(GrantRow)).all()
        lags = [(g.revoked_at - g.expires_at).total_seconds() * 1000 for g in rows if g.revoked_at]
        remaining = len(list((Path(tmp) / "sb" / "sudoers.d").glob("jit_g*")))
        sv.close()
    return {"db": db_label, "window_s": (last - first).total_seconds(), "grants": grants, "files": files, "revoked": len(lags), "left": remaining,
            "created_s": created, "p50": percentile(lags, 50), "p99": percentile(lags, 99), "max": max(lags),
            "min": min(lags), "mean": statistics.mean(lags)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grants", type=int, default=1000)
    ap.add_argument("--lead", type=float, default=90.0, help="seconds between start and the first expiry")
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                    help="server for the PostgreSQL run ('' to skip)")
    args = ap.parse_args()
    results = [run("sqlite", "", args.grants, args.lead)]
    if args.postgres:
        admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        name = f"jit_bench_{uuid.uuid4().hex[:8]}"
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
        except sa.exc.OperationalError as exc:
            print(f"PostgreSQL skipped: not reachable at {args.postgres} ({str(exc.orig).splitlines()[0]})")
        else:
            try:
                results.append(run("postgresql", args.postgres.rsplit("/", 1)[0] + f"/{name}", args.grants,
                                   args.lead))
            finally:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(f"\nRevocation lag, continuous engine, sudo backend, {args.grants} grants expiring within one minute")
    print(f"{'database':11} {'grants':>6} {'revoked':>7} {'files left':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'min ms':>7} {'window s':>8} {'setup s':>8}")
    for r in results:
        print(f"{r['db']:11} {r['grants']:>6} {r['revoked']:>7} {r['left']:>10} {r['p50']:>8.1f} {r['p99']:>8.1f} "
              f"{r['max']:>8.1f} {r['min']:>7.1f} {r['window_s']:>8.1f} {r['created_s']:>8.1f}")
    return 0 if all(r["revoked"] == r["grants"] and r["left"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
