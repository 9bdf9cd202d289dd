"""Restart catch-up: the engine is down while N sudo grants expire; how long from its start until
every one is revoked.

Creates N active grants through the real lifecycle (visudo-checked drop-ins, ``--workers``
processes), each expiring about a second after it was made, with no server running. Once all
have expired, starts a real ``jit server --dev`` process (interpreter start, config, migrations,
the engine, the API) and polls the database until every grant is revoked and every drop-in is
gone. Prints the time from process start to the server's "serving on" line and to all revoked.

    .venv/bin/python tests/benchmarks/restart_catchup.py [--grants 1000] [--postgres URL | --postgres '']

Goal (issues 6 and 14): all revoked within 5 s of the server's start.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PG_DEFAULT, ROOT, compiled, make_config, pg_database  # noqa: E402
from revocation_lag import setup  # noqa: E402

from app.bootstrap import build  # noqa: E402
from app.config import load_config  # noqa: E402
from app.store import GrantRow  # noqa: E402
from sqlmodel import select  # noqa: E402


def run(db_label: str, db_url: str, grants: int, workers: int, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="jit-bench-restart-") as tmp:
        config = make_config(Path(tmp) / "sb", grants, db_url, sweep="30s")
        sudoers = Path(tmp) / "sb" / "sudoers.d"
        sv = build(load_config(config))
        t0 = time.monotonic()
        setup(config, grants, workers, datetime.now(timezone.utc), 0.0)  # each expires ~1 s after it is made
        created = time.monotonic() - t0
        with sv.store.transaction() as s:
            last = s.exec(select(sa.func.max(GrantRow.expires_at))).one()
            active = s.exec(select(sa.func.count()).select_from(GrantRow).where(GrantRow.status == "active")).one()
        files = len(list(sudoers.glob("jit_g*")))
        if active != grants or files != grants:
            raise SystemExit(f"{db_label}: setup made {active} active grants and {files} files, not {grants}")
        time.sleep(max(0.0, (last - datetime.now(timezone.utc)).total_seconds()) + 0.5)  # all expired, unrevoked
        ready: list[float] = []
        start = time.monotonic()
        compiled()
        engine = subprocess.Popen([sys.executable, "-m", "app", "server", "--dev", str(config.parent)], cwd=ROOT,
                                  text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

        def watch() -> None:
            for line in engine.stdout:
                if "serving on" in line and not ready:
                    ready.append(time.monotonic() - start)
        threading.Thread(target=watch, daemon=True).start()
        done_s = None
        # Polled through a plain read (no BEGIN IMMEDIATE, which the store's transactions take on
        # SQLite to queue writers): the watcher must not hold up the writer it is timing.
        watcher = sa.create_engine(sv.store.engine.url)
        try:
            while time.monotonic() - start < timeout_s:
                with watcher.connect() as conn:
                    left = conn.execute(sa.select(sa.func.count()).select_from(GrantRow.__table__)
                                        .where(GrantRow.__table__.c.status != "revoked")).scalar_one()
                if not left and not list(sudoers.glob("jit_g*")):
                    done_s = time.monotonic() - start
                    break
                time.sleep(0.05)
        finally:
            watcher.dispose()
            engine.terminate()
            engine.wait(timeout=30)
        with sv.store.transaction() as s:
            revoked = s.exec(select(sa.func.count()).select_from(GrantRow).where(GrantRow.status == "revoked")).one()
        remaining = len(list(sudoers.glob("jit_g*")))
        sv.close()
    return {"db": db_label, "grants": grants, "revoked": revoked, "left": remaining, "created_s": created,
            "ready_s": ready[0] if ready else None, "done_s": done_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grants", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="processes creating the grants")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    ap.add_argument("--postgres", default=PG_DEFAULT, help="server for the PostgreSQL run ('' to skip)")
    args = ap.parse_args(argv)
    if args.grants < 1 or args.workers < 1:
        ap.error("--grants and --workers must be at least 1")
    results = [run("sqlite", "", args.grants, args.workers, args.timeout)]
    with pg_database(args.postgres) as url:
        if url:
            results.append(run("postgresql", url, args.grants, args.workers, args.timeout))
    print(f"\nRestart catch-up: the engine down while {args.grants} sudo grants expired "
          f"(goal: all revoked <= 5 s after the engine starts)")
    print(f"{'database':11} {'grants':>6} {'revoked':>7} {'files left':>10} {'ready s':>8} {'all revoked s':>13} "
          f"{'setup s':>8}")
    for r in results:
        ready = f"{r['ready_s']:.2f}" if r["ready_s"] is not None else "-"
        done = f"{r['done_s']:.2f}" if r["done_s"] is not None else f"> {args.timeout:g}"
        print(f"{r['db']:11} {r['grants']:>6} {r['revoked']:>7} {r['left']:>10} {ready:>8} {done:>13} "
              f"{r['created_s']:>8.1f}")
    print("(seconds from starting the jit server process; 'ready': it printed 'serving on')")
    return 0 if all(r["done_s"] is not None and r["left"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
