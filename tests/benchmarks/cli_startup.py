"""Wall time of a CLI call against a bare interpreter, measured in the same run.

Starts ``jit server --dev`` on a fresh sandbox (ServiceNow off so nothing waits on the network),
then times, ``--repeat`` times each, interleaved: ``python -c pass``; ``python -c "import
app.cli.main"`` (what the entry point imports); ``jit list`` and ``jit request`` as alice (the whole
client command: the call over the Unix socket, the server's work, the answer printed). Prints the
median and best of each and the median as a ratio to ``python -c pass``, and which heavy modules a
``jit list`` loaded.

    .venv/bin/python tests/benchmarks/cli_startup.py [--repeat 15]

The project's bytecode is compiled first (``benchlib.compiled``), as ``pip install`` compiles an
installed package: where ``PYTHONDONTWRITEBYTECODE`` is set every run would otherwise time the
compiler. Goal (issue 14): ``jit list`` and ``jit request`` <= 3x a bare interpreter. Not part of `make
test`; `make bench` runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import compiled  # noqa: E402
HEAVY = ("textual", "boto3", "botocore", "ldap3", "pysnow", "pypsrp", "apscheduler", "httpx", "alembic",
         "sqlalchemy", "pydantic", "aiohttp")


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="jit-cli-bench-") as tmp:
        compiled()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JIT_USER": "alice"}
        server = subprocess.Popen([py, "-m", "app", "server", "--dev", tmp], env=env, cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert server.stdout.readline().startswith("serving on"), "jit server --dev did not start"
        env["JIT_CONFIG"] = str(Path(tmp) / "jit.toml")  # its [client] table names the server's socket
        run = "import sys; from app.cli.main import main; sys.exit(main(sys.argv[1:]))"
        jit_list = [py, "-c", run, "list"]
        jit_request = [py, "-c", run, "request", "web-prod-01", "service-admin", "--duration", "1h", "--ticket",
                       "CHG0000001", "--reason", "restart nginx after the TLS renewal", "--json"]  # pending
        subprocess.run(jit_list, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)  # warms the server
        cases = {"python -c pass": [py, "-c", "pass"],
                 "import app.cli.main": [py, "-c", "import app.cli.main"],
                 "jit list": jit_list, "jit request": jit_request}
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):  # interleaved, so a noisy moment hits every case alike
            for name, argv in cases.items():
                times[name].append(timed(argv, env))
            # the pending request counts toward alice's limit of 3 (policy): cancelled, untimed
            newest = json.loads(subprocess.run(jit_list[:-1] + ["list", "--mine", "--limit", "1", "--json"], env=env,
                                               cwd=ROOT, check=True, capture_output=True, text=True).stdout)
            subprocess.run(jit_list[:-1] + ["cancel", str(newest[0]["id"])], env=env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
        probe = ("import sys, json; from app.cli.main import main; main(['list']); "
                 f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)")
        loaded = json.loads(subprocess.run([py, "-c", probe], env=env, cwd=ROOT, check=True, capture_output=True,
                                           text=True).stderr.strip().splitlines()[-1])
        server.terminate()
        server.wait(20)
    base = statistics.median(times["python -c pass"])
    print(f"CLI start-up, {args.repeat} runs each, interleaved (wall time; ratio of medians to python -c pass)")
    print(f"{'command':24} {'median ms':>10} {'best ms':>9} {'ratio':>7}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:24} {med * 1000:10.1f} {min(values) * 1000:9.1f} {med / base:6.1f}x")
    print(f"heavy modules a 'jit list' loaded: {', '.join(loaded) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
