"""Activation burst: N approved sudo requests all starting at one instant (a change window opening);
how long from that instant until every one is active and its drop-in exists.

A real ``jit server --dev`` process (the continuous engine, its planner and precise
timer, the real clock) is started first. Then ``--workers`` processes submit N self-service
requests through the real lifecycle, each scheduled (``start``) for the same instant, 10 minutes
long, so each is approved and waits for its start with no grant yet. From the instant the script
polls the database and the sudoers directory every 20 ms until all N requests are active and all N
visudo-checked drop-ins exist. It also prints, from the grants' own ``applied_at``, when the
engine recorded the first and the last one.

The reference, measured in the same run right after each burst: the same N drop-ins written
bare, one after another, by the sudo backend's ``apply()`` (render, temporary file, fsync,
``visudo -cf``, rename, directory fsync), with no database and no engine: what activation
one grant at a time costs at the least. The ratio is burst / bare.

    .venv/bin/python tests/benchmarks/activation_burst.py [--grants 1000] [--workers 2] [--lead S]
        [--postgres URL | --postgres '']

Goal (issue 14): all N applied within 2 s of the instant on SQLite, 3 s on PostgreSQL. Not part of
`make test` (a tiny run is, in tests/reliability/test_benchmarks_smoke.py); `make bench` runs it.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PG_DEFAULT, ROOT, make_config, pg_database  # noqa: E402
from revocation_lag import settle  # noqa: E402

from app.bootstrap import build  # noqa: E402
from app.config import load_config  # noqa: E402
from app.store import GrantRow, RequestRow  # noqa: E402
from integrations.base import GrantSpec  # noqa: E402
from integrations.sudo import SudoBackend  # noqa: E402
from sqlmodel import select  # noqa: E402

REASON = "benchmark of an activation burst"
DURATION = timedelta(minutes=10)  # self-service (at most 15 minutes): approved at once, scheduled
GOALS = {"sqlite": 2.0, "postgresql": 3.0}
PLANNED_BEFORE_S = 6.0  # the planner (every 5 s) must see the instant before it comes
POLL_S = 0.02


def submit_slice(config: str, indices: list[int], instant: datetime) -> int:
    """In a worker process: one scheduled request per index, each through the whole lifecycle."""
    sv = build(load_config(Path(config)), migrate=False)
    try:
        for i in indices:
            sv.lifecycle.submit(f"user{i}", "web-dev-01", "service-admin", DURATION, REASON, start=instant)
        return len(indices)
    finally:
        sv.close()


def setup(config: Path, grants: int, workers: int, instant: datetime) -> None:
    slices = [list(range(w, grants, workers)) for w in range(workers)]
    if workers == 1:
        submit_slice(str(config), slices[0], instant)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert sum(pool.map(submit_slice, [str(config)] * workers, slices, [instant] * workers)) == grants


def calibrate(samples: int = 20) -> float:
    """Seconds one scheduled submit takes on this machine now, in a scratch sandbox."""
    with tempfile.TemporaryDirectory(prefix="jit-bench-cal-") as tmp:
        sv = build(load_config(make_config(Path(tmp) / "sb", samples, "")))
        start = datetime.now(timezone.utc) + timedelta(hours=1)
        t0 = time.monotonic()
        for i in range(samples):
            sv.lifecycle.submit(f"user{i}", "web-dev-01", "service-admin", DURATION, REASON, start=start)
        sv.close()
        return (time.monotonic() - t0) / samples


def bare_writes(directory: Path, grants: int, params: dict) -> float:
    """Seconds the sudo backend takes to write ``grants`` drop-ins one by one, nothing else."""
    directory.mkdir(mode=0o750)
    backend = SudoBackend(directory)
    start = datetime.now(timezone.utc).replace(microsecond=0)
    specs = [GrantSpec(grant_id=i, request_id=i, person=f"user{i}", target="web-dev-01", role="service-admin",
                       starts_at=start, expires_at=start + DURATION, params=params) for i in range(1, grants + 1)]
    t0 = time.monotonic()
    for spec in specs:
        backend.apply(spec)
    elapsed = time.monotonic() - t0
    assert len(list(directory.glob("jit_g*"))) == grants
    return elapsed


def start_engine(config: Path) -> tuple[subprocess.Popen, float]:
    """A real ``jit server --dev`` process (the engine and the API); returns once it serves (and
    how long that took)."""
    t0 = time.monotonic()
    engine = subprocess.Popen([sys.executable, "-m", "app", "server", "--dev", str(config.parent)], cwd=ROOT,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in engine.stdout:
        if "serving on" in line:
            break
    else:
        raise SystemExit(f"the engine exited ({engine.wait()}) before it ran")
    threading.Thread(target=lambda: [None for _ in engine.stdout], daemon=True).start()  # keep the pipe drained
    return engine, time.monotonic() - t0


def run(db_label: str, db_url: str, grants: int, workers: int, lead_s: float, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="jit-bench-burst-") as tmp:
        config = make_config(Path(tmp) / "sb", grants, db_url)
        sudoers = Path(tmp) / "sb" / "sudoers.d"
        sv = build(load_config(config))  # migrates before the engine starts
        engine, ready_s = start_engine(config)
        try:
            instant = (datetime.now(timezone.utc) + timedelta(seconds=lead_s)).replace(microsecond=0)
            t0 = time.monotonic()
            setup(config, grants, workers, instant)
            created = time.monotonic() - t0
            settle(sv.store)
            with sv.store.transaction() as s:
                waiting = s.exec(select(sa.func.count()).select_from(RequestRow)
                                 .where(RequestRow.state == "approved", RequestRow.starts_at == instant)).one()
                made = s.exec(select(sa.func.count()).select_from(GrantRow)).one()
            margin = (instant - datetime.now(timezone.utc)).total_seconds()
            if waiting != grants or made or margin < PLANNED_BEFORE_S:
                return {"db": db_label, "error": f"setup took {created:.0f} s and left {waiting} requests waiting, "
                                                 f"{made} grants, {margin:.1f} s before the instant (needs "
                                                 f"{PLANNED_BEFORE_S:g} s): raise --lead (was {lead_s:.0f} s)"}
            # Polled through a plain connection: the store's own transactions begin with BEGIN IMMEDIATE
            # on SQLite and would queue for the lock the engine writes under (and delay it).
            reader = sa.create_engine(sv.store.engine.url)
            count = sa.select(sa.func.count()).select_from(RequestRow).where(RequestRow.state == "active")
            time.sleep(max(0.0, margin - 0.5))
            done_s = None
            while (datetime.now(timezone.utc) - instant).total_seconds() < timeout_s:
                with reader.connect() as conn:
                    active = conn.execute(count).scalar_one()
                if active == grants and len(list(sudoers.glob("jit_g*"))) == grants:
                    done_s = (datetime.now(timezone.utc) - instant).total_seconds()  # when it was seen, at the latest
                    break
                time.sleep(POLL_S)
            reader.dispose()
        finally:
            engine.terminate()
            engine.wait(timeout=60)
        with sv.store.transaction() as s:
            applied = s.exec(select(GrantRow.applied_at).where(GrantRow.status == "active")).all()
            failed = s.exec(select(sa.func.count()).select_from(GrantRow).where(GrantRow.status == "failed")).one()
            params = s.exec(select(GrantRow.params).limit(1)).first() or {}  # the role's commands, as granted
        files = len(list(sudoers.glob("jit_g*")))
        sv.close()
        bare_s = bare_writes(Path(tmp) / "bare", grants, params)
    return {"db": db_label, "grants": grants, "active": len(applied), "failed": failed, "files": files,
            "first_s": (min(applied) - instant).total_seconds() if applied else None,
            "last_s": (max(applied) - instant).total_seconds() if applied else None,
            "done_s": done_s, "bare_s": bare_s, "created_s": created, "ready_s": ready_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grants", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="processes submitting the requests")
    ap.add_argument("--lead", type=float, default=None,
                    help="seconds from the start of setup to the instant (default: scales with --grants)")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up this many seconds after the instant")
    ap.add_argument("--postgres", default=PG_DEFAULT, help="server for the PostgreSQL run ('' to skip)")
    args = ap.parse_args(argv)
    if args.grants < 1 or args.workers < 1:
        ap.error("--grants and --workers must be at least 1")
    if args.lead is None:  # three times the setup time measured now, so a busier machine still fits
        per_request = calibrate()
        lead = PLANNED_BEFORE_S + 4 + 3 * args.grants * per_request / min(args.workers, 2)
        print(f"setup measured at {per_request * 1000:.1f} ms per request: the instant is {lead:.0f} s after "
              f"setup begins")
    else:
        lead = args.lead
    results = [run("sqlite", "", args.grants, args.workers, lead, args.timeout)]
    with pg_database(args.postgres) as url:
        if url:
            results.append(run("postgresql", url, args.grants, args.workers, lead, args.timeout))
    print(f"\nActivation burst: {args.grants} approved sudo requests starting at one instant, a real jit server "
          f"process (goal: all active <= 2 s after the instant on SQLite, <= 3 s on PostgreSQL)")
    print(f"{'database':11} {'grants':>6} {'active':>6} {'failed':>6} {'files':>6} {'first s':>8} {'last s':>7} "
          f"{'all active s':>12} {'goal s':>6} {'met':>4} {'bare s':>7} {'ratio':>6} {'setup s':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['db']:11} not measured: {r['error']}")
            continue
        done = f"{r['done_s']:.2f}" if r["done_s"] is not None else f"> {args.timeout:g}"
        ratio = f"{r['done_s'] / r['bare_s']:.2f}x" if r["done_s"] is not None else "-"
        met = "yes" if r["done_s"] is not None and r["done_s"] <= GOALS[r["db"]] else "no"
        first = f"{r['first_s']:.2f}" if r["first_s"] is not None else "-"
        last = f"{r['last_s']:.2f}" if r["last_s"] is not None else "-"
        print(f"{r['db']:11} {r['grants']:>6} {r['active']:>6} {r['failed']:>6} {r['files']:>6} {first:>8} "
              f"{last:>7} {done:>12} {GOALS[r['db']]:>6g} {met:>4} {r['bare_s']:>7.2f} {ratio:>6} "
              f"{r['created_s']:>8.1f}")
    print("(seconds after the instant; 'first'/'last': the grants' applied_at as the engine recorded them; "
          "'all active': polled, every request active and every drop-in written; 'bare': the same drop-ins "
          "written one by one by the sudo backend alone, same run; ratio: all active / bare)")
    return 0 if all("error" not in r and r["done_s"] is not None and r["files"] == r["grants"]
                    for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
