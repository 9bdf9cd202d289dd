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


def keys(session: str, *typed: str) -> None:
    for key in typed:  # one at a time, as a person types: a key and Enter in one write may come as a paste
        subprocess.run(["tmux", "send-keys", "-t", session, key], check=True)
        time.sleep(0.1)


def jit_json(demo_dir: Path, *args: str) -> dict:
    result = subprocess.run([str(JIT), *args, "--json"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "JIT_CONFIG": str(demo_dir / "jit.toml")})
    return json.loads(result.stdout)


def test_jit_demo_approve_end_to_end(tmp_path):
    """As README says: the first console as bob; bob approves; then a second console, as carol,
    on the same sandbox, in another terminal, completes the dual approval bob began; the sandbox
    outlives both consoles until `jit demo --stop` (make demo-clean)."""
    bob, carol = f"jit-demo-bob-{os.getpid()}", f"jit-demo-carol-{os.getpid()}"
    demo_dir = tmp_path / "demo"
    env = f"cd {ROOT} && JIT_DEMO_DIR={demo_dir} JIT_USER=bob TERM=xterm-256color {JIT} demo"
    subprocess.run(["tmux", "new-session", "-d", "-s", bob, "-x", "100", "-y", "30", env], check=True)
    try:
        wait_for(bob, "REQ-3")  # the seeded queue is drawn
        shown = screen(bob)
        assert "operator bob" in shown and "holds REQ-4" in shown  # alice's REQ-2 asks for what REQ-4 gives
        keys(bob, "Down")
        keys(bob, "a")
        wait_for(bob, "Approve REQ-2")
        keys(bob, "agreed on the load test", "Enter")
        shown = wait_for(bob, "2 pending")  # REQ-2 has left the queue
        assert "REQ-1" in shown and "REQ-3" in shown
        view = jit_json(demo_dir, "show", "2")
        assert view["state"] == "active" and view["approvals"][0]["approver"] == "bob"
        assert view["approvals"][0]["comment"] == "agreed on the load test"
        assert (demo_dir / "sudoers.d" / f"jit_g{view['grant']['id']}").exists()

        keys(bob, "/")  # bob gives REQ-1 (dual) its first approval
        keys(bob, "REQ-1", "Enter")
        keys(bob, "a")
        wait_for(bob, "Approve REQ-1")
        keys(bob, "first of two", "Enter")
        wait_for(bob, "1/2")
        subprocess.run(["tmux", "kill-session", "-t", bob], capture_output=True)  # bob's console closes

        second = (f"cd {ROOT} && JIT_USER=carol TERM=xterm-256color {JIT} console "
                  f"--config {demo_dir / 'jit.toml'}")  # README's line for another persona
        subprocess.run(["tmux", "new-session", "-d", "-s", carol, "-x", "100", "-y", "30", second], check=True)
        shown = wait_for(carol, "operator carol")
        wait_for(carol, "REQ-1")
        keys(carol, "/")
        keys(carol, "REQ-1", "Enter")
        keys(carol, "a")
        wait_for(carol, "Approve REQ-1")
        keys(carol, "second of two", "Enter")
        end = time.monotonic() + 30
        while jit_json(demo_dir, "show", "1")["state"] != "active" and time.monotonic() < end:
            time.sleep(0.2)
        view = jit_json(demo_dir, "show", "1")
        assert view["state"] == "active", view
        assert [a["approver"] for a in view["approvals"]] == ["bob", "carol"]
        # the seed leaves dave free to bypass (frank's bypass is the one erin reviews)
        bypass = subprocess.run([str(JIT), "bypass", "web-prod-01", "service-admin", "--duration", "30m",
                                 "--incident", "INC0000043", "--reason", "nginx down for every customer", "--json"],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, "JIT_CONFIG": str(demo_dir / "jit.toml"), "JIT_USER": "dave"})
        assert json.loads(bypass.stdout)["request"]["state"] == "active", bypass.stdout + bypass.stderr
        reviews = jit_json(demo_dir, "list", "--state", "active")
        assert any(r["requester"] == "frank" and r["kind"] == "bypass" for r in reviews)
    finally:
        for session in (bob, carol):
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        stopped = subprocess.run([str(JIT), "demo", "--stop", "--dir", str(demo_dir)], capture_output=True,
                                 text=True, timeout=60)
    assert stopped.returncode == 0 and "deleted" in stopped.stdout and not demo_dir.exists(), stopped
