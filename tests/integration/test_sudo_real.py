"""Issue 15 against real sudo: drop-ins the backend writes, in a private mount namespace
(``unshare -m``) with a test directory bind-mounted over ``/etc/sudoers.d``, run by a local test
account (``useradd``, ``setpriv``). Shows that NOEXEC stops a granted program from running
another, that ``""`` means no arguments, and that a sudoedit entry edits its file."""
from __future__ import annotations

import os
import re
import pwd
import shutil
import socket
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from accounts import local_accounts, sudo_box

from integrations.base import GrantSpec
from integrations.sudo import SudoBackend

ACCOUNT = "jitt-sudo"
TOOLS = ("sudo", "sudoedit", "visudo", "cvtsudoers", "unshare", "setpriv", "useradd", "mount")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None for t in TOOLS),
    reason="real-sudo tests need root, sudo, unshare, setpriv, useradd and mount")


def which(name: str) -> str:
    return shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


@pytest.fixture(scope="module")
def account() -> pwd.struct_passwd:
    with local_accounts(ACCOUNT) as made:
        yield made[ACCOUNT]


@pytest.fixture
def box() -> Path:
    with sudo_box(ACCOUNT) as where:
        yield where


HOST = socket.gethostname().split(".")[0].lower()  # the rule is for this host: sudo here must match it


def grant(params: dict, target: str = HOST, ends: timedelta = timedelta(hours=1)) -> GrantSpec:
    now = datetime.now(timezone.utc)
    return GrantSpec(1, 1, ACCOUNT, target, "ops", now - timedelta(minutes=2), now + ends, params)


def may(box: Path, host: str, command: str) -> bool:
    """Real sudo's answer, as root in the box's namespace: may the account run ``command`` on ``host``?"""
    outer = 'mount --bind "$1" /etc/sudoers.d && shift && exec "$@"'
    r = subprocess.run([which("unshare"), "-m", "/bin/sh", "-c", outer, "sh", str(box / "sudoers.d"),
                        which("sudo"), "-n", "-l", "-U", ACCOUNT, "-h", host, *command.split()],
                       capture_output=True, text=True, timeout=60)
    return r.returncode == 0


def as_account(entry: pwd.struct_passwd, box: Path, script: str, env: dict[str, str] | None = None):
    """``script`` run by the account under sh, where /etc/sudoers.d is the box's for this process only."""
    inner = [which("setpriv"), f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
             which("env"), "-i", "PATH=/usr/bin:/bin", *(f"{k}={v}" for k, v in (env or {}).items()),
             "/bin/sh", "-c", script]
    outer = 'mount --bind "$1" /etc/sudoers.d && shift && exec "$@"'
    return subprocess.run([which("unshare"), "-m", "/bin/sh", "-c", outer, "sh", str(box / "sudoers.d"), *inner],
                          capture_output=True, text=True, timeout=60)


def backend(box: Path) -> SudoBackend:
    return SudoBackend(box / "sudoers.d", visudo=which("visudo"), cvtsudoers=which("cvtsudoers"))


@pytest.fixture
def tryexec(box: Path) -> Path:
    """A test-only program that tries to run another one (as find -exec or python's os.system do)."""
    tool = box / "tryexec"
    tool.write_text("#!/bin/sh\n/usr/bin/id -u && echo EXEC-RAN || echo EXEC-BLOCKED\n")
    tool.chmod(0o755)
    return tool


def test_noexec_stops_a_granted_program_from_running_another(account, box: Path, tryexec: Path) -> None:
    b = backend(box)
    b.apply(grant({"commands": [f'{tryexec} ""']}))
    r = as_account(account, box, f"sudo -n {tryexec}")
    assert "EXEC-BLOCKED" in r.stdout and "EXEC-RAN" not in r.stdout, (r.stdout, r.stderr)
    b.apply(grant({"commands": [f'{tryexec} ""'], "allow_exec": True,
                   "allow_exec_reason": "the test proves the difference"}))
    r = as_account(account, box, f"sudo -n {tryexec}")
    assert r.stdout.split() == ["0", "EXEC-RAN"], (r.stdout, r.stderr)


def test_empty_string_means_no_arguments(account, box: Path, tryexec: Path) -> None:
    backend(box).apply(grant({"commands": [f'{tryexec} ""']}))
    r = as_account(account, box, f"sudo -n {tryexec} --extra")
    assert r.returncode != 0 and "EXEC" not in r.stdout, (r.stdout, r.stderr)


def test_sudoedit_edits_the_granted_file_as_the_person(account, box: Path) -> None:
    target = box / "app.conf"
    target.write_text("listen 80;\n")
    target.chmod(0o644)
    other = box / "other.conf"
    other.write_text("untouched\n")
    editor = box / "editor"
    # Shell built-ins only: NOEXEC covers the editor too (it runs as the person, so nothing is lost
    # but an editor's helper programs); the copy it edits is the person's, in sudo's temporary dir.
    editor.write_text('#!/bin/sh\necho "edited in $1" >> "$1"\n[ -O "$1" ] && echo "as the person" >> "$1"\n'
                      '/usr/bin/id -u >> "$1" 2>/dev/null || echo "no exec" >> "$1"\n')
    editor.chmod(0o755)
    backend(box).apply(grant({"edit": [str(target)]}))
    r = as_account(account, box, f"sudoedit -n {target}; sudoedit -n {other}", env={"SUDO_EDITOR": str(editor)})
    lines = target.read_text().splitlines()
    assert lines[0] == "listen 80;" and lines[1].startswith("edited in /var/tmp/"), (lines, r.stderr)
    assert lines[2:] == ["as the person", "no exec"], (lines, r.stderr)
    assert f"not allowed to execute 'sudoedit {other}'" in r.stderr
    assert other.read_text() == "untouched\n"
    assert target.stat().st_uid == 0


@pytest.mark.skipif(not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", HOST), reason=f"this host's name {HOST!r} is no target")
def test_a_rule_is_for_its_target_host_only(account, box: Path, tryexec: Path) -> None:
    """Reproduction: a grant for one host was written ``ALL = ...`` and real sudo allowed it on
    every host that received the file."""
    b = backend(box)
    b.apply(grant({"commands": [f'{tryexec} ""']}, target="web-dev-01"))
    assert "ALL" not in (box / "sudoers.d" / "jit_g1").read_text().split("=")[0]
    assert may(box, "web-dev-01", str(tryexec))
    assert may(box, "web-dev-01.example.org", str(tryexec))  # the short name matches in any domain
    assert not may(box, "web-prod-01", str(tryexec))
    assert not may(box, "web-dev-01", "/usr/bin/id")  # another command
    b.apply(grant({"commands": [f'{tryexec} ""'], "hosts": ["web-prod-01", "WEB-PROD-02"]}, target="web-tier"))
    assert may(box, "web-prod-01", str(tryexec)) and may(box, "web-prod-02", str(tryexec))  # the Host_Alias
    assert not may(box, "web-dev-01", str(tryexec)) and not may(box, "web-tier", str(tryexec))
    assert b.inspect(grant({}, target="web-tier")).details["hosts"] == ["web-prod-01", "web-prod-02"]
    b.apply(grant({"commands": [f'{tryexec} ""']}, target="web-dev-01", ends=-timedelta(minutes=1)))
    assert not may(box, "web-dev-01", str(tryexec))  # after NOTAFTER
