"""Issue 15 against real sudo: drop-ins the backend writes, in a private mount namespace
(``unshare -m``) with a test directory bind-mounted over ``/etc/sudoers.d``, run by a local test
account (``useradd``, ``setpriv``). Shows that NOEXEC stops a granted program from running
another, that ``""`` means no arguments, and that a sudoedit entry edits its file."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from accounts import local_accounts

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
    """A root-owned directory outside /tmp (the backend refuses programs and files under /tmp)."""
    where = Path(tempfile.mkdtemp(prefix="jit-sudo-", dir="/var/lib"))
    where.chmod(0o755)
    (where / "sudoers.d").mkdir(mode=0o750)
    (where / "io").mkdir(mode=0o700)
    # Test-only settings beside the drop-in: the account has no password, and sudo's I/O logs go here.
    test_defaults = where / "sudoers.d" / "00_test"
    test_defaults.write_text(f"Defaults:{ACCOUNT} !authenticate, !lecture, iolog_dir={where / 'io'}\n")
    test_defaults.chmod(0o440)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def grant(params: dict) -> GrantSpec:
    now = datetime.now(timezone.utc)
    return GrantSpec(1, 1, ACCOUNT, "localhost", "ops", now - timedelta(minutes=1), now + timedelta(hours=1), params)


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
