"""Every benchmark script still runs: each at a tiny size, checked for its table (no timing asserted).

The figures themselves come from `make bench` (README, "Performance"); this only keeps the
scripts from rotting. The PostgreSQL part of each script is left out here (--postgres '').
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

CASES = {
    "revocation_lag.py": (["--grants", "6", "--window", "1", "--workers", "1", "--lead", "8", "--postgres", ""],
                          "Revocation lag", "sqlite"),
    "restart_catchup.py": (["--grants", "5", "--workers", "1", "--postgres", ""], "Restart catch-up", "sqlite"),
    "snow_sync.py": (["--tickets", "40", "--postgres", ""], "ServiceNow sync of 40", "sqlite"),
    "policy_decisions.py": (["--decisions", "2000", "--distinct", "200"], "Policy decisions per second", "all"),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_and_prints_its_table(script: str, tmp_path: Path) -> None:
    args, title, row = CASES[script]
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    lines = done.stdout.splitlines()
    heading = next(i for i, line in enumerate(lines) if title in line)
    table = lines[heading + 1:]
    assert table and table[0].split()[0] in ("database", "mix"), done.stdout
    assert any(line.split()[:1] == [row] for line in table[1:]), done.stdout  # a measured row, not an error


def test_every_benchmark_script_is_smoke_tested() -> None:
    scripts = {p.name for p in BENCH.glob("*.py")} - {"benchlib.py", "console_bench.py"}
    assert scripts == set(CASES)
