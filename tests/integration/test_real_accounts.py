"""Identity with real local accounts: who acts is the account the kernel runs the process as.

A fixture creates a local account (``useradd``, so root only) and runs Python as it with
``setpriv`` (no PAM, so the environment we hand it is exactly what it sees). Root's own
interpreter lives in root's 0700 home on these machines, so the accounts run a venv built on
``/usr/bin/python3`` (its dependencies installed once per pyproject.toml) over a world-readable
copy of this checkout's code.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
ACCOUNT = "jitt-alice"

pytestmark = pytest.mark.skipif(
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


@pytest.fixture(scope="session")
def account() -> pwd.struct_passwd:
    created = False
    try:
        entry = pwd.getpwnam(ACCOUNT)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", ACCOUNT], check=True)
        created, entry = True, pwd.getpwnam(ACCOUNT)
    yield entry
    if created:
        subprocess.run(["userdel", ACCOUNT], check=False)


def run_as(entry: pwd.struct_passwd, venv: Path, code: Path, source: str, env: dict[str, str]):
    argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
            str(venv / "bin" / "python"), "-c", source]
    return subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code), **env}, cwd="/",
                          capture_output=True, text=True, timeout=120)


PROBE = """
import os
from pathlib import Path
from app.config import load_config
from app.domain.errors import IdentityError
from app.identity import acting_user
try:
    print(acting_user(load_config(Path(os.environ['PROBE_CONFIG'])), os.environ))
except IdentityError as exc:
    print('refused:', exc)
"""


def test_the_environment_never_names_the_actor(system_venv, code_copy, account, shared_dir):
    config = shared_dir / "jit.toml"
    config.write_text("[identity]\nallow_impersonation = false\n")
    config.chmod(0o644)
    spoof = {"LOGNAME": "bob", "USER": "bob", "LNAME": "bob", "USERNAME": "bob", "PROBE_CONFIG": str(config)}
    done = run_as(account, system_venv, code_copy, PROBE, spoof)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ACCOUNT  # not bob: the kernel's uid, through the account database
    done = run_as(account, system_venv, code_copy, PROBE, {**spoof, "JIT_USER": "bob"})
    assert done.stdout.strip().startswith("refused: JIT_USER is set but [identity] allow_impersonation is false")


def test_the_probe_runs_as_the_account(system_venv, code_copy, account):
    done = run_as(account, system_venv, code_copy, "import os; print(os.getuid())", {})
    assert done.stdout.strip() == str(account.pw_uid) != str(os.getuid()), (done.stdout, done.stderr, sys.executable)


def test_root_never_obeys_a_config_another_account_left_in_the_current_directory(account, shared_dir):
    """The attack of issue 14: a jit.toml in a shared directory naming the owner's own 'visudo'."""
    from app.config import find_config, load_config
    from app.domain.errors import ConfigError
    planted = shared_dir / "planted"
    planted.mkdir()
    (planted / "jit.toml").write_text(f'[backends.sudo]\nvisudo = "{planted}/visudo"\n')
    os.chown(planted / "jit.toml", account.pw_uid, account.pw_gid)
    found = find_config(None, {}, planted)
    assert found == planted / "jit.toml"
    with pytest.raises(ConfigError, match=rf"owned by uid {account.pw_uid}, not by root"):
        load_config(found)
