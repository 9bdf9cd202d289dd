"""`jit demo` in a real terminal (tmux): a newcomer approves a request end to end."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JIT = Path(sys.executable).with_name("jit")

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")


def screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def wait_for(session: str, text: str, deadline_s: float = 30) -> str:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        shown = screen(session)
        if text in shown:
            return shown
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; screen:\n{screen(session)}")


def test_jit_demo_approve_end_to_end(tmp_path):
    session = f"jit-demo-{os.getpid()}"
    demo_dir = tmp_path / "demo"
    env = f"cd {ROOT} && JIT_DEMO_DIR={demo_dir} JIT_USER=bob TERM=xterm-256color {JIT} demo"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", env], check=True)
    try:
        wait_for(session, "REQ-3")  # the seeded queue is drawn
        shown = screen(session)
        assert "operator bob" in shown and "0/1" in shown
        subprocess.run(["tmux", "send-keys", "-t", session, "Down"], check=True)
        subprocess.run(["tmux", "send-keys", "-t", session, "a"], check=True)
        wait_for(session, "Approve REQ-2")
        subprocess.run(["tmux", "send-keys", "-t", session, "agreed on the load test", "Enter"], check=True)
        shown = wait_for(session, "2 pending")  # REQ-2 has left the queue
        assert "REQ-1" in shown and "REQ-3" in shown
        result = subprocess.run([str(JIT), "show", "2", "--json"], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "JIT_CONFIG": str(demo_dir / "jit.toml")})
        view = json.loads(result.stdout)
        assert view["state"] == "active" and view["approvals"][0]["approver"] == "bob"
        assert view["approvals"][0]["comment"] == "agreed on the load test"
        assert (demo_dir / "sudoers.d" / f"jit_g{view['grant']['id']}").exists()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
