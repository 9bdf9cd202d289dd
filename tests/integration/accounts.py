"""pytest fixtures for tests with real local accounts: ``useradd`` (root only), ``setpriv`` to run
as the account with exactly the environment given, and a venv on ``/usr/bin/python3`` (root's own
interpreter lives in root's 0700 home) over a world-readable copy of this checkout's code."""
from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
ACCOUNT = "jitt-alice"

SKIP = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv") or not SYSTEM_PYTHON.exists(),
    reason="real-account tests need root, useradd, setpriv and /usr/bin/python3 (CI runs them as root)")


@pytest.fixture(scope="session")
def system_venv() -> Path:
    """A venv on /usr/bin/python3 with the project's dependencies, readable and runnable by anyone."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = Path(f"/var/tmp/jit-system-venv-{key}")
    if not (venv / ".installed").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)], check=True, cwd="/")
        (venv / ".installed").touch()
    venv.chmod(0o755)
    return venv


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """A directory every account can read (pytest's own tmp directories are root's, 0700)."""
    where = Path(tempfile.mkdtemp(prefix="jit-accounts-", dir="/var/tmp"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="session")
def code_copy(shared_dir: Path) -> Path:
    """This checkout's code where any account can read it (the checkout may sit in root's home)."""
    where = shared_dir / "code"
    for package in ("app", "integrations", "policies"):
        shutil.copytree(ROOT / package, where / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "go+rX", str(where)], check=True)
    return where


@contextlib.contextmanager
def local_accounts(*names: str) -> Iterator[dict[str, pwd.struct_passwd]]:
    """Local accounts by name (``useradd`` for those missing, ``userdel`` of those afterwards)."""
    created, entries = [], {}
    try:
        for name in names:
            try:
                entries[name] = pwd.getpwnam(name)
            except KeyError:
                subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
                created.append(name)
                entries[name] = pwd.getpwnam(name)
        yield entries
    finally:
        for name in created:
            subprocess.run(["userdel", name], check=False)


@pytest.fixture(scope="session")
def account() -> pwd.struct_passwd:
    with local_accounts(ACCOUNT) as made:
        yield made[ACCOUNT]


def run_as(entry: pwd.struct_passwd, venv: Path, code: Path, source: str, env: dict[str, str]):
    argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
            str(venv / "bin" / "python"), "-c", source]
    return subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code), **env}, cwd="/",
                          capture_output=True, text=True, timeout=120)




@contextlib.contextmanager
def sudo_box(account: str) -> Iterator[Path]:
    """A root-owned directory outside /tmp (the sudo backend refuses programs and files under /tmp)
    with ``sudoers.d`` (for a bind mount over /etc/sudoers.d) holding test-only settings for
    ``account``: no password asked, sudo's I/O logs kept in the box's ``io``."""
    where = Path(tempfile.mkdtemp(prefix="jit-sudo-", dir="/var/lib"))
    try:
        where.chmod(0o755)
        (where / "sudoers.d").mkdir(mode=0o750)
        (where / "io").mkdir(mode=0o700)
        test_defaults = where / "sudoers.d" / "00_test"
        test_defaults.write_text(f"Defaults:{account} !authenticate, !lecture, iolog_dir={where / 'io'}\n")
        test_defaults.chmod(0o440)
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)
