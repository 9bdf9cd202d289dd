"""Helpers for tests and benchmarks of ``jit agent``: a sandbox whose sudo targets are on the
``agent`` backend, and agents run as real processes, each in its own UTS namespace
(``unshare --uts``) so that the host name the kernel reports, and the agent sends to the dev
server, is the one the test gives; optionally in a private mount namespace with its drop-in
directory bind-mounted over ``/etc/sudoers.d``, so that real ``sudo`` there reads what it writes."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.dev.sandbox import write_sandbox

ROOT = Path(__file__).resolve().parents[2]
JIT = str(Path(sys.executable).with_name("jit"))
TOOLS = ("unshare", "hostname", "mount", "nsenter", "visudo", "cvtsudoers")
CAN_RUN = os.geteuid() == 0 and all(shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") for t in TOOLS)
WHY_NOT = "agent tests need root, unshare, hostname, mount, nsenter, visudo and cvtsudoers (CI runs them as root)"


def agent_sandbox(where: Path, *, people: dict[str, list[str]] | None = None, wait: str = "5s",
                  extra_roles: str = "", max_concurrent: int = 3) -> Path:
    """A sandbox (ServiceNow off) whose two hosts are on the ``agent`` backend, self-service up to
    15 minutes; ``people``: more entries for its directory (name -> groups)."""
    config = write_sandbox(where, servicenow_url=None)
    policy = where / "policy.toml"
    text = policy.read_text().replace('backend = "sudo"', 'backend = "agent"').replace('tier = "high"', 'tier = "low"')
    text = text.replace("max_concurrent = 3", f"max_concurrent = {max_concurrent}")
    policy.write_text(text + extra_roles)
    extra = "".join(f'\n[directory.people.{name}]\ndisplay_name = "{name}"\ngroups = {groups!r}\n'
                    for name, groups in (people or {}).items())
    config.write_text(config.read_text().replace("[directory]", f'[backends.agent]\nenabled = true\nwait = "{wait}"\n\n'
                                                 "[directory]", 1) + extra)
    return config


class AgentProcess:
    """One ``jit agent`` for ``host`` against the dev server at ``socket``."""

    def __init__(self, host: str, socket: Path, where: Path, *, mount: bool = False,
                 failpoints: str = "", timestamp_dir: str = "") -> None:
        self.host, self.socket, self.where, self.mount = host, socket, where, mount
        self.sudoers = where / "sudoers.d"
        self.state = where / "state"
        self.log = where / "agent.log"
        self.sudoers.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.failpoints, self.timestamp_dir = failpoints, timestamp_dir
        self.proc: subprocess.Popen | None = None

    def start(self, failpoints: str | None = None) -> "AgentProcess":
        script = 'hostname "$1" && shift && '
        if self.mount:
            script += 'mount --bind "$1" /etc/sudoers.d && '
        script += 'shift && exec "$@"'
        argv = ["unshare", "--uts", *(["-m", "--propagation", "private"] if self.mount else []), "/bin/sh", "-c",
                script, "sh", self.host, str(self.sudoers), JIT, "agent", "--server", f"unix://{self.socket}",
                "--sudoers-dir", str(self.sudoers), "--state-dir", str(self.state),
                "--timestamp-dir", self.timestamp_dir, "--visudo", shutil.which("visudo", path="/usr/sbin:/usr/bin"),
                "--cvtsudoers", shutil.which("cvtsudoers", path="/usr/sbin:/usr/bin")]
        env = {**os.environ, "JIT_FAILPOINTS": self.failpoints if failpoints is None else failpoints}
        env.pop("JIT_USER", None)
        self.proc = subprocess.Popen(argv, env=env, stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_reported(self, reports, timeout: float = 20.0, since=None) -> None:
        """Until the server holds a report from this host newer than ``since``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = reports.of(self.host)
            if r is not None and (since is None or r.reported_at > since):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent {self.host} exited {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.02)
        raise AssertionError(f"agent {self.host} never reported:\n{self.log.read_text()}")

    def files(self) -> list[str]:
        return sorted(p.name for p in self.sudoers.iterdir() if p.name.startswith("jit_g"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def died(self, timeout: float = 20.0) -> int:
        """Wait for a failpoint's SIGKILL; the exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def agent_pid(self) -> int:
        """The agent's own pid (the shell execs it, so it is the process started)."""
        assert self.proc is not None
        return self.proc.pid


def wait_for(check, timeout: float, step: float = 0.01) -> float:
    """Seconds until ``check()`` is true; AssertionError after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start
