"""Every benchmark script still runs: each at a tiny size, checked for its table (no timing asserted).

The figures themselves come from `make bench` (README, "Performance"); this only keeps the
scripts from rotting. The PostgreSQL part of each script is left out here (--postgres '').
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

PG_URL = os.environ.get("JIT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

# script: (arguments for a tiny run, a line that heads the table, the first words of a measured row)
CASES = {
    "revocation_lag.py": (["--grants", "6", "--held", "6,8", "--window", "1", "--workers", "2", "--lead", "12",
                           "--postgres", ""], "Revocation lag", ["sqlite", "8"]),  # the larger holding measured
    "restart_catchup.py": (["--grants", "5", "--workers", "1", "--postgres", ""], "Restart catch-up", ["sqlite"]),
    "activation_burst.py": (["--grants", "5", "--workers", "1", "--postgres", ""], "Activation burst", ["sqlite"]),
    "snow_sync.py": (["--tickets", "40", "--repeat", "1", "--postgres", ""], "ServiceNow sync of 40", ["sqlite"]),
    "policy_decisions.py": (["--decisions", "2000", "--distinct", "200"], "Policy decisions per second", ["all"]),
    "console_bench.py": (["--pending", "30", "--active", "10", "--cpu-seconds", "1"], "Console with 30 pending",
                         ["process", "start", "to", "drawn"]),
    "fuzz_inputs.py": (["--inputs", "10"], "entry point", ["total"]),
    "cli_startup.py": (["--repeat", "1"], "CLI start-up", ["jit", "list"]),
    "api_latency.py": (["--clients", "3", "--rounds", "1", "--postgres", ""], "API latency", ["SQLite"]),
    "engines_split.py": (["--grants", "6", "--latency-ms", "1", "--postgres", PG_URL], "expired grants",
                         ["|", "3", "|"]),
    "agent_fanout.py": (["--hosts", "2", "--people", "2", "--clients", "2", "--idle", "0.5"], "agent fan-out",
                        ["approval", "(grant.applying)"]),
}
NEEDS_POSTGRES = {"engines_split.py"}
NEEDS_ROOT = {"agent_fanout.py"}  # agents in their own UTS namespaces (unshare)


def _postgres_down() -> str | None:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except sa.exc.OperationalError as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {str(exc.orig).splitlines()[0]}"
    return None


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_and_prints_its_table(script: str, tmp_path: Path) -> None:
    args, title, row = CASES[script]
    if script in NEEDS_POSTGRES and (why := _postgres_down()):
        pytest.skip(f"{script} needs PostgreSQL: {why}")
    if script in NEEDS_ROOT and os.geteuid() != 0:
        pytest.skip(f"{script} needs root (unshare --uts); CI runs it as root")
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    lines = done.stdout.splitlines()
    heading = next(i for i, line in enumerate(lines) if title in line)
    assert any(line.split()[:len(row)] == row for line in lines[heading:]), done.stdout  # measured, not an error


def test_every_benchmark_script_is_smoke_tested() -> None:
    scripts = {p.name for p in BENCH.glob("*.py")} - {"benchlib.py"}
    assert scripts == set(CASES)
