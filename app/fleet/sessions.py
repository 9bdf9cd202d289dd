"""Ending a person's live sudo sessions on this host when their grant ends.

A drop-in removed stops new ``sudo`` commands; what the person already started under it would
run on as root. At revoke the agent ends them: every ``sudo`` process whose real user is the
person and that started no earlier than the grant, with everything it started (its descendants,
and every process in a session one of them leads: sudo runs a command with I/O logging in a new
session on its own pseudo-terminal). SIGTERM first, SIGKILL to whatever is left after
``GRACE`` seconds. When the person still holds another grant on this host, only the sessions
running one of the ended grant's programs (and none of the remaining grants') are ended.

Not reached: a process that left both the tree and the session (``setsid`` and a double fork);
the audit lists what was ended so a reviewer sees what was not."""
from __future__ import annotations

import os
import pwd
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

GRACE = 0.3  # seconds between SIGTERM and SIGKILL
_PROC = "/proc"


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    uid: int  # real uid
    name: str
    started: float  # epoch seconds
    argv: tuple[str, ...]


def _boot_time() -> float:
    with open(f"{_PROC}/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def processes() -> list[Proc]:
    """Every process on this host (those that end while being read are left out)."""
    ticks, boot = os.sysconf("SC_CLK_TCK"), _boot_time()
    found = []
    for entry in os.listdir(_PROC):
        if not entry.isdigit():
            continue
        try:
            with open(f"{_PROC}/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"{_PROC}/{entry}/status", "rb") as f:
                uid = next(int(line.split()[1]) for line in f.read().decode(errors="replace").splitlines()
                           if line.startswith("Uid:"))
            with open(f"{_PROC}/{entry}/cmdline", "rb") as f:
                argv = tuple(a.decode(errors="replace") for a in f.read().split(b"\0") if a)
        except (OSError, StopIteration, ValueError):
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ... starttime is field 22
        found.append(Proc(int(entry), int(rest[1]), int(rest[3]), uid, name, boot + int(rest[19]) / ticks, argv))
    return found


def _program(argv: tuple[str, ...]) -> str | None:
    """The program a ``sudo`` command line runs (after sudo's own options), or None."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-"):
            break
        if arg in ("-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-T", "-U", "--user", "--group", "--host",
                   "--prompt", "--close-from", "--chdir", "--role", "--type", "--command-timeout", "--other-user"):
            i += 1
        i += 1
    return argv[i] if i < len(argv) else None


def sessions_of(person: str, since: datetime, programs: Iterable[str] | None,
                spared: Iterable[str] = (), procs: list[Proc] | None = None) -> list[Proc]:
    """The ``sudo`` processes of ``person`` started at ``since`` or later (with a second's slack:
    the kernel counts in clock ticks) and everything they started. ``programs``: only sessions
    running one of these (None: every one); ``spared``: never those running one of these."""
    try:
        uid = pwd.getpwnam(person).pw_uid
    except KeyError:
        return []
    procs = processes() if procs is None else procs
    wanted = set(programs) if programs is not None else None
    keep = set(spared)
    start = since.astimezone(timezone.utc).timestamp() - 1.0
    roots = []
    for p in procs:
        if p.name not in ("sudo", "sudoedit") or p.uid != uid or p.started < start:
            continue
        program = "sudoedit" if p.name == "sudoedit" else _program(p.argv)
        if program in keep or (wanted is not None and program not in wanted):
            continue
        roots.append(p.pid)
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    tree: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, ()))
    leaders = {p.pid for p in procs if p.pid in tree and p.sid == p.pid}
    tree |= {p.pid for p in procs if p.sid in leaders}
    return [p for p in procs if p.pid in tree]


def end(procs: list[Proc]) -> list[Proc]:
    """SIGTERM to each, SIGKILL to those left after ``GRACE``; the ones that were signalled."""
    ended = []
    for p in sorted(procs, key=lambda p: -p.pid):
        try:
            os.kill(p.pid, signal.SIGTERM)
            ended.append(p)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + GRACE
    left = list(ended)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if _alive(p)]
    for p in left:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return ended


def _alive(p: Proc) -> bool:
    """Still the same process (not a new one that reused the pid), and not a zombie."""
    try:
        with open(f"{_PROC}/{p.pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return False
    rest = stat[stat.rindex(")") + 2:].split()
    return rest[0] != "Z" and abs(_boot_time() + int(rest[19]) / os.sysconf("SC_CLK_TCK") - p.started) < 0.5
