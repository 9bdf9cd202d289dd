"""README's "Deploying" unit is what systemd accepts: extracted from the README, its ExecStart
pointed at this checkout's jit, checked with ``systemd-analyze verify`` (any warning fails)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def unit_from_readme() -> str:
    section = (ROOT / "README.md").read_text().split("## Deploying", 1)[1].split("\n## ", 1)[0]
    [unit] = re.findall(r"```ini\n(.*?)```", section, re.S)
    return unit


def verify(tmp_path: Path, unit: str) -> subprocess.CompletedProcess:
    path = tmp_path / "jit-server.service"
    path.write_text(unit.replace("/opt/jit/venv/bin/jit", str(Path(sys.executable).with_name("jit"))))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True,
                          timeout=60)


def test_the_readme_unit_passes_systemd_analyze_verify(tmp_path):
    unit = unit_from_readme()
    assert "ExecStart=/opt/jit/venv/bin/jit server --config /etc/jit/jit.toml" in unit
    assert "ReadWritePaths=/etc/sudoers.d" in unit and "ProtectSystem=strict" in unit
    done = verify(tmp_path, unit)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_check_sees_a_mistake(tmp_path):  # a misspelt key is a warning, which fails the test above
    done = verify(tmp_path, unit_from_readme().replace("UMask=", "UMaks="))
    assert "Unknown key" in done.stderr
