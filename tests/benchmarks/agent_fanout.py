"""Fleet delivery through ``jit agent``: 20 agents, 2,000 grants across them.

Starts ``jit server --dev`` (a real process: the API and the engine) on a sandbox with 20 hosts
``web-00``..``web-19`` on the ``agent`` backend, then one ``jit agent`` per host, each a real
process in its own UTS namespace (``unshare --uts``, so the kernel gives it that host name) with
its own drop-in directory. ``--people`` engineers each ask for one grant on every host
(self-service: approved at once) from ``--clients`` concurrent API clients; a watcher lists the
20 directories every 10 ms. Then a security operator revokes every grant.

Prints, from the approval (its ``grant.applying`` event: the server decided and activation
starts) to the drop-in seen on its host, and from the revocation (``grant.revoking``) to the
drop-in gone, p50/p99/max, and the same from the client's call (queueing included); and the
server's CPU at idle (its CPU time over ``--idle`` seconds) with no agent, with the first (which
starts the shared audit-head watcher) and with all, per agent past the first. Needs root (unshare).

    .venv/bin/python tests/benchmarks/agent_fanout.py [--hosts 20] [--people 100] [--clients 16] [--idle 20]

Goals (issue 16): approval to drop-in p99 <= 1 s; revocation to drop-in gone p99 <= 1 s.
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
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from benchlib import ROOT, compiled, percentile  # noqa: E402

from agents import CAN_RUN, WHY_NOT, AgentProcess, agent_sandbox  # noqa: E402
from app.client.connection import Client, client_settings  # noqa: E402

REASON = "restart nginx after the TLS renewal"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fleet_policy(hosts: list[str]) -> str:
    return "".join(f'''
[targets.{h}]
description = "fleet host {h}"
environment = "non-production"
tier = "low"
backend = "agent"

[targets.{h}.roles.service-admin]
description = "Restart the web service"
eligible_groups = ["engineers"]
commands = ["/usr/bin/systemctl restart nginx"]
''' for h in hosts)


class Watcher(threading.Thread):
    """Lists every agent's directory every 10 ms: when each drop-in was first seen, and gone."""

    def __init__(self, agents: list[AgentProcess]) -> None:
        super().__init__(daemon=True)
        self.agents, self.seen, self.gone, self.stop = agents, {}, {}, threading.Event()

    def run(self) -> None:
        present: set[tuple[str, str]] = set()
        while not self.stop.is_set():
            now = time.time()
            current = {(a.host, n) for a in self.agents for n in os.listdir(a.sudoers) if n.startswith("jit_g")}
            for key in current - present:
                self.seen.setdefault(key, now)
            for key in present - current:
                self.gone.setdefault(key, now)
            present = current
            time.sleep(0.01)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--people", type=int, default=100)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--idle", type=float, default=20.0)
    args = ap.parse_args()
    if args.hosts < 2:
        ap.error("--hosts: at least 2 (the idle cost of the first agent and of the others are told apart)")
    if not CAN_RUN:
        print(f"skipped: {WHY_NOT}")
        return 0
    compiled()
    hosts = [f"web-{i:02d}" for i in range(args.hosts)]
    people = {f"p{i:03d}": ["engineers"] for i in range(args.people)}
    with tempfile.TemporaryDirectory(prefix="jit-bench-fleet-") as tmp:
        config = agent_sandbox(Path(tmp) / "sb", people=people, extra_roles=fleet_policy(hosts),
                               max_concurrent=args.hosts + 1, wait="20s")
        config.write_text(config.read_text().replace('socket = "jit.sock"', 'socket = "jit.sock"\nrate_limit = 100000\n'
                                                                           'rate_burst = 100000'))
        sock = config.parent / "jit.sock"
        server = subprocess.Popen([sys.executable, "-m", "app", "server", "--dev", str(config.parent)], cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        agents = [AgentProcess(h, sock, Path(tmp) / h) for h in hosts]
        try:
            assert server.stdout.readline().startswith("serving on"), "jit server --dev did not start"
            time.sleep(2)
            c0 = cpu_seconds(server.pid)
            time.sleep(args.idle)
            alone = cpu_seconds(server.pid) - c0
            def connect(group: list[AgentProcess]) -> float:
                """Start ``group``; the server's CPU seconds over ``--idle`` once they are connected."""
                for a in group:
                    a.start()
                deadline = time.monotonic() + 60
                while not all("server reachable" in (a.log.read_text() if a.log.exists() else "") for a in group):
                    assert time.monotonic() < deadline, "the agents did not connect"
                    time.sleep(0.1)
                time.sleep(2)
                before = cpu_seconds(server.pid)
                time.sleep(args.idle)
                return cpu_seconds(server.pid) - before
            one = connect(agents[:1])
            connected = connect(agents[1:])
            watcher = Watcher(agents)
            watcher.start()
            asked: dict[tuple[str, str], float] = {}
            lock = threading.Lock()
            ids: list[int] = []

            def ask(job: tuple[str, str]) -> None:
                person, host = job
                with Client(client_settings(f"unix://{sock}", None, {"JIT_USER": person})) as c:
                    t0 = time.time()
                    out = c.post("/v1/requests", {"target": host, "role": "service-admin", "duration": "10m",
                                                  "reason": REASON})
                r = out["request"]
                assert r["state"] == "active", out
                with lock:
                    asked[(host, f"jit_g{r['grant']['id']}")] = t0
                    ids.append(r["id"])
            jobs = [(p, h) for p in people for h in hosts]
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(ask, jobs))
            granting = time.perf_counter() - started
            time.sleep(0.5)
            revoked: dict[tuple[str, str], float] = {}

            def revoke(rid: int) -> None:
                with Client(client_settings(f"unix://{sock}", None, {"JIT_USER": "erin"})) as c:
                    t0 = time.time()
                    out = c.post(f"/v1/requests/{rid}/revoke", {"reason": "the change was rolled back"})
                r = out["request"]
                assert r["state"] == "revoked", out
                with lock:
                    revoked[(r["target"], f"jit_g{r['grant']['id']}")] = t0
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(revoke, ids))
            revoking = time.perf_counter() - started
            time.sleep(1.0)
            watcher.stop.set()
            watcher.join()
            decided: dict[tuple[str, int], float] = {}  # (action, grant id) -> when the server decided
            with Client(client_settings(f"unix://{sock}", None, {"JIT_USER": "erin"})) as c:
                for line in c.lines("/v1/audit/export", {"after": 0}):
                    e = json.loads(line)
                    if e["action"] in ("grant.applying", "grant.revoking"):
                        at = datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp()
                        decided[(e["action"], e["details"]["grant_id"])] = at
        finally:
            for a in agents:
                a.stop()
            server.terminate()
            server.wait(30)
    def gid(key: tuple[str, str]) -> int:
        return int(key[1].removeprefix("jit_g"))
    up = [watcher.seen[k] - decided[("grant.applying", gid(k))] for k in asked if k in watcher.seen]
    down = [watcher.gone[k] - decided[("grant.revoking", gid(k))] for k in revoked if k in watcher.gone]
    up_call = [watcher.seen[k] - t for k, t in asked.items() if k in watcher.seen]
    down_call = [watcher.gone[k] - t for k, t in revoked.items() if k in watcher.gone]
    per_agent = (connected - one) / (args.hosts - 1) / args.idle  # each agent past the first
    shared = (one - alone) / args.idle  # the first: the audit-head watcher starts (it runs while anyone waits)
    print(f"agent fan-out: {args.hosts} agents, {len(asked)} grants ({args.people} people x {args.hosts} hosts), "
          f"{args.clients} concurrent clients")
    print(f"  grants applied in {granting:.1f} s ({len(asked) / granting:.0f}/s), revoked in {revoking:.1f} s "
          f"({len(revoked) / revoking:.0f}/s)")
    print(f"  approval (grant.applying) -> drop-in on its host: p50 {percentile(up, 50) * 1000:.0f} ms, p99 "
          f"{percentile(up, 99) * 1000:.0f} ms, max {max(up) * 1000:.0f} ms ({len(up)}/{len(asked)} seen)")
    print(f"  revocation (grant.revoking) -> drop-in gone:      p50 {percentile(down, 50) * 1000:.0f} ms, p99 "
          f"{percentile(down, 99) * 1000:.0f} ms, max {max(down) * 1000:.0f} ms ({len(down)}/{len(revoked)} seen)")
    print(f"  from the client's call instead (queueing behind {args.clients} clients included): approval "
          f"p99 {percentile(up_call, 99) * 1000:.0f} ms, revoke p99 {percentile(down_call, 99) * 1000:.0f} ms")
    print(f"  server CPU at idle: {alone / args.idle * 1000:.2f} ms/s with no agent, "
          f"{one / args.idle * 1000:.2f} ms/s with 1 (the audit-head watcher: {shared * 1000:.2f} ms/s, shared), "
          f"{connected / args.idle * 1000:.2f} ms/s with {args.hosts}: {per_agent * 1000:.3f} ms/s "
          f"({per_agent * 100:.4f}% of a core) per agent past the first")
    print("goals: approval to drop-in p99 <= 1 s, revocation to drop-in gone p99 <= 1 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
