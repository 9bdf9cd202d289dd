"""The console demo's sandbox: made once, kept until ``jit demo --stop`` (``make demo-clean``).

Its ServiceNow simulator (``jit snow-sim``, records in ``snow.json``) and its ``jit server --dev``
run as processes of their own, detached from the console that started them, so a second console
(``JIT_USER=carol jit console --config DIR/jit.toml``, another terminal) works on the same
sandbox, and a console that closes leaves the others running. ``up()`` starts whichever of the
two is not running (after a reboot, say) and leaves the data as it was. Their pids are in
``DIR/run``, their output in ``DIR/logs``.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

MARKER = ".jit-demo"  # in a directory ``stop()`` may delete: only a demo sandbox has it
ON_CALL = "frank"     # a second on-call engineer: the seeded bypass awaiting review is his, so dave may bypass
START_S = 30.0


class DemoError(RuntimeError):
    """The demo's sandbox cannot be started or stopped; the message says why and what to look at."""


class DemoSandbox:
    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.run_dir, self.logs = self.dir / "run", self.dir / "logs"
        self.config = self.dir / "jit.toml"

    # ------------------------------------------------------------ up
    def up(self, out: TextIO, seed: Callable[[Path], None]) -> bool:
        """Start what is not running; a new sandbox is written and ``seed(config)`` before its server
        starts. True when the sandbox was made now."""
        fresh = not self.config.exists()
        if fresh:
            if self.dir.exists() and any(self.dir.iterdir()):
                raise DemoError(f"{self.dir} exists and is not a demo sandbox; give another --dir")
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / MARKER).write_text("written by `jit demo`; `jit demo --stop` deletes this directory\n")
        elif not (self.dir / MARKER).exists():
            raise DemoError(f"{self.dir} holds a jit.toml that `jit demo` did not write; give another --dir")
        self.run_dir.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not self.running("snow"):
            self._start_simulator(out)
        if fresh:
            from app.dev.sandbox import write_sandbox
            write_sandbox(self.dir, force=True, servicenow_url=f"http://127.0.0.1:{self._port()}")
            with self.config.open("a", encoding="utf-8") as fh:
                fh.write(f'\n[directory.people.{ON_CALL}]\ngroups = ["oncall", "engineers"]\n')
            seed(self.config)  # before the server opens the database: one writer at a time on SQLite
        if not self.running("server"):
            self._start_server(out)
        return fresh

    def _port(self) -> int:
        port_file = self.run_dir / "snow.port"
        if not port_file.exists():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port_file.write_text(str(s.getsockname()[1]))
        return int(port_file.read_text())

    def _start_simulator(self, out: TextIO) -> None:
        port = self._port()
        self._spawn("snow", ["snow-sim", "--seed", "demo", "--port", str(port), "--data", str(self.dir / "snow.json")],
                    lambda text: "ServiceNow simulator on" in text, out,
                    f"the ServiceNow simulator on http://127.0.0.1:{port}")

    def _start_server(self, out: TextIO) -> None:
        self._spawn("server", ["server", "--dev", str(self.dir)], lambda text: "serving on" in text, out,
                    f"jit server --dev {self.dir}")

    def _spawn(self, name: str, args: list[str], started: Callable[[str], bool], out: TextIO, what: str) -> None:
        log = self.logs / f"{name}.log"
        with log.open("ab") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} starting\n".encode())
            offset = fh.tell()
            proc = subprocess.Popen([sys.executable, "-m", "app", *args], stdin=subprocess.DEVNULL, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # outlives the console
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            with log.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
            if started(text):
                out.write(f"started {what} (pid {proc.pid}, log {log})\n")
                return
            if proc.poll() is not None:
                raise DemoError(f"{what} did not start (exit {proc.returncode}); see {log}")
            time.sleep(0.05)
        proc.kill()
        raise DemoError(f"{what} did not start within {START_S:.0f}s; see {log}")

    # ------------------------------------------------------------ state
    def pid(self, name: str) -> int | None:
        try:
            return int((self.run_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def running(self, name: str) -> bool:
        """The process in ``run/NAME.pid`` is alive and is ours (its command line names this sandbox)."""
        pid = self.pid(name)
        if pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return str(self.dir) in cmdline and " -m app " in f" {cmdline}"

    # ------------------------------------------------------------ stop
    def stop(self, out: TextIO) -> None:
        """Stop the sandbox's processes and delete it (only a directory ``jit demo`` made)."""
        if not self.dir.exists():
            out.write(f"no demo sandbox at {self.dir}\n")
            return
        if not (self.dir / MARKER).exists():
            raise DemoError(f"{self.dir} is not a demo sandbox (no {MARKER}); nothing was stopped or deleted")
        for name in ("server", "snow"):
            pid = self.pid(name)
            if pid is None or not self.running(name):
                continue
            os.killpg(pid, signal.SIGTERM)
            for _ in range(200):
                if not self.running(name):
                    break
                time.sleep(0.05)
            else:
                os.killpg(pid, signal.SIGKILL)
            out.write(f"stopped {name} (pid {pid})\n")
        shutil.rmtree(self.dir)
        out.write(f"deleted {self.dir}\n")
