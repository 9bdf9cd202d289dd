"""ServiceNow sync: N changed change requests through the simulator, against a bare paged fetch.

The simulator (``jit snow-sim``) runs in its own process over real HTTP, loaded with N change
requests carrying JIT fields, each for its own assignee: approved and Scheduled for a window
tomorrow on web-prod-01 (most of them: each becomes an approved, scheduled request), a few
closed, a few not approved (refused by policy). Each phase runs in a fresh process so its peak
memory is its own:
- fetch: the same client (ServiceNowClient, the configured page size) reads the same records
  with the sync's own read (``Tickets.changes_since``: keyset pages, the same query and fields),
  and does nothing with them;
- sync: one TicketSync.run_once() on an empty database (after start-up, as `jit engine` does, what
  start-up built is frozen out of the cyclic collector's way), then a second run over the same
  (already handled) tickets, which must create nothing.
Each round is a fetch then a sync; ``--repeat`` rounds (3) per database. Prints each round's times,
the peak RSS of each phase, and the ratio sync / fetch of each round and of the medians.

    .venv/bin/python tests/benchmarks/snow_sync.py [--tickets 10000] [--repeat 3] [--postgres URL | --postgres '']

Goal (issue 6): the sync within 1.5x of the bare fetch.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PG_DEFAULT, ROOT, make_config, pg_database  # noqa: E402

SN = "%Y-%m-%d %H:%M:%S"


def _sid() -> str:
    return uuid.uuid4().hex


def write_data(path: Path, tickets: int, now: datetime) -> dict[str, int]:
    """The simulator's data file: users user0..N-1 and two approvers, one group, one CI, N changes
    (each with its fields' insert audited, one in ten also an edit before its approval; the
    approved ones approved by bob and carol, each approval's state audited), one blackout."""
    stamp = (now - timedelta(hours=1)).strftime(SN)

    def rec(**fields: str) -> dict[str, str]:
        return {"sys_id": _sid(), "sys_created_on": stamp, "sys_created_by": "admin", "sys_updated_on": stamp,
                "sys_updated_by": "admin", "sys_mod_count": "0", **fields}
    users = [rec(user_name=f"user{i}", name=f"User {i}", email=f"user{i}@example.com", active="true")
             for i in range(tickets)]
    approvers = [rec(user_name=name, name=name.title(), email=f"{name}@example.com", active="true")
                 for name in ("bob", "carol")]  # the sandbox's manager and system owner
    group = rec(name="Web Operations", active="true")
    ci = rec(name="web-prod-01")
    members = [rec(user=u["sys_id"], group=group["sys_id"]) for u in users[:50]]
    changes, kinds = [], {"approved": 0, "closed": 0, "not approved": 0}
    approvals, audits = [], []
    start = now + timedelta(days=1)
    for i, user in enumerate(users):
        kind = "closed" if i % 20 == 7 else "not approved" if i % 20 == 13 else "approved"
        kinds[kind] += 1
        updated = (now - timedelta(minutes=30) + timedelta(seconds=i * 1800 / tickets)).strftime(SN)
        changes.append(rec(
            number=f"CHG{i + 1:07d}", short_description=f"Planned work {i}", description="", type="normal",
            state={"approved": "-2", "closed": "3", "not approved": "-3"}[kind],
            approval="requested" if kind == "not approved" else "approved", risk="3",
            start_date=start.strftime(SN), end_date=(start + timedelta(hours=2)).strftime(SN),
            assigned_to=user["sys_id"], assignment_group=group["sys_id"], cmdb_ci=ci["sys_id"],
            close_code="", close_notes="", work_notes="", comments="", u_jit_target="web-prod-01",
            u_jit_role="service-admin", sys_updated_on=updated))
        change = changes[-1]
        bound = ("u_jit_target", "u_jit_role", "start_date", "end_date", "assigned_to", "assignment_group", "cmdb_ci")
        audits += [rec(tablename="change_request", fieldname=f, documentkey=change["sys_id"], oldvalue="",
                       newvalue=change[f], user="admin", record_checkpoint="0", reason="") for f in bound]
        if i % 10 == 3:  # one in ten edited before it was approved: its approvals' times are read too
            audits.append(rec(tablename="change_request", fieldname="end_date", documentkey=change["sys_id"],
                              oldvalue="", newvalue=change["end_date"], user="admin", record_checkpoint="1",
                              reason="", sys_created_on=(now - timedelta(hours=2)).strftime(SN)))
        if kind != "not approved":  # as an instance records them: an approver row, its state audited
            for person in approvers:
                approvals.append(rec(sysapproval=change["sys_id"], approver=person["sys_id"], state="approved",
                                     comments=""))
                audits.append(rec(tablename="sysapproval_approver", fieldname="state",
                                  documentkey=approvals[-1]["sys_id"], oldvalue="requested", newvalue="approved",
                                  user=person["user_name"], record_checkpoint="1", reason=""))
    blackout = rec(name="Year-end freeze", time_zone="UTC", type="blackout", cmdb_ci="")
    span = rec(schedule=blackout["sys_id"], name="Year-end freeze",
               start_date_time=(now + timedelta(days=30)).strftime("%Y%m%dT%H%M%S"),
               end_date_time=(now + timedelta(days=40)).strftime("%Y%m%dT%H%M%S"), repeat_type="", repeat_count="1",
               days_of_week="", repeat_until="", all_day="false", type="exclude")
    data = {"sys_user": users + approvers, "sysapproval_approver": approvals, "sys_audit": audits,
            "sys_user_group": [group], "sys_user_grmember": members, "cmdb_ci": [ci],
            "change_request": changes, "cmn_schedule_blackout": [blackout], "cmn_schedule_span": [span],
            "_counters": {"change_request": tickets}}
    path.write_text(json.dumps(data))
    return kinds


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def phase(name: str, config: str) -> dict:
    """In a child process: one phase, timed; its peak RSS and the RSS it started from."""
    from app.bootstrap import build, build_tickets
    from app.config import load_config
    from app.store import RequestRow
    import os
    import sqlalchemy as sa
    cfg = load_config(Path(config))
    base = _rss_mib()
    if name == "fetch":
        tickets = build_tickets(cfg, os.environ)
        watermark = datetime.now(timezone.utc) - cfg.settings.servicenow.initial_lookback
        t0 = time.perf_counter()
        count = sum(1 for _ in tickets.changes_since(watermark))  # the sync's own read: keyset pages
        seconds = time.perf_counter() - t0
        tickets.client.close()
        result = {"read": count}
    else:
        sv = build(cfg)
        gc.collect()
        gc.freeze()  # as `jit engine` does once started (Engine.run_forever)
        t0 = time.perf_counter()
        report = sv.sync.run_once()
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        again = sv.sync.run_once()
        with sv.store.transaction() as s:
            made = s.exec(sa.select(sa.func.count()).select_from(RequestRow)
                          .where(RequestRow.source_ref.is_not(None))).scalar_one()
            by_servicenow = s.exec(sa.select(sa.func.count()).select_from(RequestRow)
                                   .where(RequestRow.approval_model == "servicenow")).scalar_one()
        result = {"read": report.read, "created": report.created, "refused": report.refused,
                  "error": report.error, "again_s": time.perf_counter() - t1, "again_created": again.created,
                  "again_read": again.read, "requests": made, "by_servicenow": by_servicenow}
        sv.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**result, "seconds": seconds, "peak_mib": peak, "base_mib": base}


def run_phase(name: str, config: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--config", str(config)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} phase failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(db_label: str, server: str | None, tickets: int, page_size: int, repeat: int) -> dict:
    """``repeat`` rounds against one simulator, each a fetch then a sync on a new empty database
    (SQLite file, or a database created on ``server``): rounds alternate, so a slow spell of the
    machine hits both phases alike."""
    rounds = []
    with tempfile.TemporaryDirectory(prefix="jit-bench-snow-") as tmp:
        data = Path(tmp) / "snow.json"
        # written by a child: a process's peak RSS is kept across exec on Linux, so building the data
        # here would show up as the peak of every phase started from here
        out = subprocess.run([sys.executable, __file__, "--write-data", str(data), "--tickets", str(tickets)],
                             capture_output=True, text=True, check=True)
        kinds = json.loads(out.stdout.strip().splitlines()[-1])
        sim = subprocess.Popen([sys.executable, "-m", "app", "snow-sim", "--port", "0", "--data", str(data)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = sim.stdout.readline()
            if "http://" not in line:
                raise SystemExit(f"the simulator did not start: {line}{sim.stderr.read()[-2000:]}")
            url = line.split(" on ", 1)[1].split()[0]
            for k in range(repeat):
                with (pg_database(server) if server else nullcontext("")) as db_url:
                    config = make_config(Path(tmp) / f"sb{k}", tickets, db_url, servicenow_url=url)
                    text = config.read_text().replace("retries = 2", f"retries = 2\npage_size = {page_size}")
                    config.write_text(text.replace("[servicenow]", "[servicenow]\ntimeout = \"60s\"", 1))
                    rounds.append((run_phase("fetch", config), run_phase("sync", config)))
        finally:
            sim.terminate()
            sim.wait(timeout=10)
    fetch_s = statistics.median(f["seconds"] for f, _ in rounds)
    sync_s = statistics.median(s["seconds"] for _, s in rounds)
    return {"db": db_label, "tickets": tickets, "kinds": kinds, "rounds": rounds, "fetch_s": fetch_s,
            "sync_s": sync_s, "ratio": sync_s / fetch_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tickets", type=int, default=10000)
    ap.add_argument("--page-size", type=int, default=500, help="the client's page size (as configured)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of fetch then sync; the medians are compared")
    ap.add_argument("--postgres", default=PG_DEFAULT, help="server for the PostgreSQL run ('' to skip)")
    ap.add_argument("--phase", choices=("fetch", "sync"), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--write-data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.write_data:
        print(json.dumps(write_data(Path(args.write_data), args.tickets, datetime.now(timezone.utc))))
        return 0
    if args.phase:
        print(json.dumps(phase(args.phase, args.config)))
        return 0
    if args.tickets < 20:
        ap.error("--tickets must be at least 20 (the mix needs one of each kind)")
    results = [run("sqlite", None, args.tickets, args.page_size, args.repeat)]
    with pg_database(args.postgres) as probe:  # reachable? (prints why not)
        reachable = probe is not None
    if reachable:
        results.append(run("postgresql", args.postgres, args.tickets, args.page_size, args.repeat))
    kinds = results[0]["kinds"]
    print(f"\nServiceNow sync of {args.tickets} changed change requests through the simulator "
          f"({kinds['approved']} approved, {kinds['closed']} closed, {kinds['not approved']} not approved; "
          f"page size {args.page_size}; {args.repeat} round(s) each) (goal: sync <= 1.5x the bare fetch)")
    print(f"{'database':11} {'round':>5} {'fetch s':>8} {'fetch MiB':>9} {'sync s':>8} {'sync MiB':>8} {'ratio':>6} "
          f"{'created':>7} {'refused':>7} {'again s':>8} {'again new':>9}")
    ok = True
    for r in results:
        for k, (f, s) in enumerate(r["rounds"], 1):
            print(f"{r['db']:11} {k:>5} {f['seconds']:>8.2f} {f['peak_mib']:>9.0f} {s['seconds']:>8.2f} "
                  f"{s['peak_mib']:>8.0f} {s['seconds'] / f['seconds']:>5.2f}x {s['created']:>7} {s['refused']:>7} "
                  f"{s['again_s']:>8.2f} {s['again_created']:>9}")
            ok &= (f["read"] == s["read"] == r["tickets"]
                   and s["created"] == kinds["approved"] == s["requests"] == s["by_servicenow"]
                   and s["again_created"] == 0 and not s["error"])
            if s["error"]:
                print(f"  {r['db']}: the sync stopped: {s['error']}")
        print(f"{r['db']:11} {'median':>5} {r['fetch_s']:>8.2f} {'':>9} {r['sync_s']:>8.2f} {'':>8} {r['ratio']:>5.2f}x")
    print("(ratio of the medians on the median line; MiB: peak resident memory of the phase's process,\n"
          " interpreter and libraries included)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
