"""API latency under 50 concurrent clients: submit and approve through ``jit server``.

Starts ``jit server --dev`` (a real process: the API, the engine, visudo-checked sudoers drop-ins)
on a sandbox with ``--clients`` engineers user0..userN-1, on SQLite and then on PostgreSQL. Each
of ``--clients`` threads, with its own keep-alive connection (the CLI's own client,
``app.client.connection``), submits a production request for its engineer (dual approval), then
has bob and carol approve it; the second approval applies the grant before it answers. A
separate client follows ``/v1/events``. Prints per call p50/p99, approval to drop-in written
(the final approval's call, checked by the file being there when it returns), and the time from a
call's answer to its event reaching the other client's stream.

    .venv/bin/python tests/benchmarks/api_latency.py [--clients 50] [--rounds 4] [--postgres URL | --postgres '']

Goals (issue 14): p99 per call <= 50 ms; approval to drop-in p99 <= 100 ms; event p99 <= 200 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PG_DEFAULT, ROOT, make_config, percentile, pg_database  # noqa: E402

from app.client.connection import Client, client_settings  # noqa: E402

REASON = "restart nginx after the TLS renewal"


def client(config: Path, person: str) -> Client:
    return Client(client_settings(None, str(config), {"JIT_USER": person}))


def follow(config: Path, seen: dict[int, float], stop: threading.Event, ready: threading.Event) -> None:
    with client(config, "erin") as c:
        ready.set()
        for line in c.lines("/v1/events", {"after": 0}):
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["action"] == "request.submitted" and event["request_id"] is not None:
                    seen[event["request_id"]] = time.perf_counter()
            if stop.is_set():
                return


def run(label: str, db_url: str, clients: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="jit-bench-api-") as tmp:
        config = make_config(Path(tmp) / "sb", clients, db_url)
        text = config.read_text().replace('socket = "jit.sock"', 'socket = "jit.sock"\nrate_limit = 100000\n'
                                                                   'rate_burst = 100000')
        config.write_text(text.replace('poll_interval = "5s"', 'poll_interval = "1s"'))
        server = subprocess.Popen([sys.executable, "-m", "app", "server", "--dev", str(config.parent)], cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert server.stdout.readline().startswith("serving on"), "jit server --dev did not start"
            seen: dict[int, float] = {}
            stop, ready = threading.Event(), threading.Event()
            threading.Thread(target=follow, args=(config, seen, stop, ready), daemon=True).start()
            ready.wait(10)
            calls: dict[str, list[float]] = {"submit": [], "approve": [], "approve+apply": []}
            answered: dict[int, float] = {}
            lock = threading.Lock()
            sudoers = config.parent / "sudoers.d"

            def one(i: int) -> None:
                person = f"user{i}"
                with client(config, person) as me, client(config, "bob") as bob, client(config, "carol") as carol:
                    for _ in range(rounds):
                        t0 = time.perf_counter()
                        out = me.post("/v1/requests", {"target": "web-prod-01", "role": "service-admin",
                                                       "duration": "1h", "reason": REASON, "ticket": "CHG0000001"})
                        t1 = time.perf_counter()
                        rid = out["request"]["id"]
                        bob.post(f"/v1/requests/{rid}/approve", {"comment": "ok"})
                        t2 = time.perf_counter()
                        done = carol.post(f"/v1/requests/{rid}/approve", {"comment": "go"})
                        t3 = time.perf_counter()
                        grant = done["request"]["grant"]
                        assert done["request"]["state"] == "active" and (sudoers / grant["ref"]).exists(), done
                        me.post(f"/v1/requests/{rid}/release")  # back under the concurrency limit
                        with lock:
                            calls["submit"].append(t1 - t0)
                            calls["approve"].append(t2 - t1)
                            calls["approve+apply"].append(t3 - t2)
                            answered[rid] = t1
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(one, range(clients)))
            wall = time.perf_counter() - started
            deadline = time.monotonic() + 10
            while len([r for r in answered if r in seen]) < len(answered) and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()
            events = [max(0.0, seen[r] - t) for r, t in answered.items() if r in seen]
        finally:
            server.terminate()
            server.wait(30)
    every = calls["submit"] + calls["approve"] + calls["approve+apply"]
    return {"label": label, "calls": len(every), "wall": wall, "p50": percentile(every, 50), "p99": percentile(every, 99),
            **{f"{k} p99": percentile(v, 99) for k, v in calls.items()},
            "drop-in p50": percentile(calls["approve+apply"], 50), "drop-in p99": percentile(calls["approve+apply"], 99),
            "event p50": percentile(events, 50) if events else float("nan"),
            "event p99": percentile(events, 99) if events else float("nan"),
            "events": f"{len(events)}/{len(answered)}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--postgres", default=PG_DEFAULT, help="server URL; '' to skip PostgreSQL")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(run("SQLite", f"sqlite:///{tmp}/jit.db", args.clients, args.rounds))
    with pg_database(args.postgres) as url:
        if url:
            results.append(run("PostgreSQL", url, args.clients, args.rounds))
    print(f"API latency, {args.clients} concurrent clients x {args.rounds} rounds of submit, approve, "
          "approve (applies), release")
    print(f"{'database':11} {'calls':>6} {'per s':>6} {'p50 ms':>7} {'p99 ms':>7} {'drop-in p50':>12} "
          f"{'drop-in p99':>12} {'event p50':>10} {'event p99':>10}")
    for r in results:
        print(f"{r['label']:11} {r['calls']:6} {r['calls'] / r['wall']:6.0f} {r['p50'] * 1000:7.1f} "
              f"{r['p99'] * 1000:7.1f} {r['drop-in p50'] * 1000:12.1f} {r['drop-in p99'] * 1000:12.1f} "
              f"{r['event p50'] * 1000:10.1f} {r['event p99'] * 1000:10.1f}  ({r['events']} events seen)")
    print("goals: p99 per call <= 50 ms, approval to drop-in p99 <= 100 ms, event p99 <= 200 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
