"""Identity with real local accounts: who acts is the account the kernel runs the process as.

A fixture creates a local account (``useradd``, so root only) and runs Python as it with
``setpriv`` (no PAM, so the environment we hand it is exactly what it sees). Root's own
interpreter lives in root's 0700 home on these machines, so the accounts run a venv built on
``/usr/bin/python3`` (its dependencies installed once per pyproject.toml) over a world-readable
copy of this checkout's code.
"""
from __future__ import annotations

import os
import sys

import pytest

from accounts import ACCOUNT, SKIP, account, code_copy, run_as, shared_dir, system_venv  # noqa: F401

pytestmark = SKIP


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
