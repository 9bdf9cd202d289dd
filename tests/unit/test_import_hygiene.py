"""At run time, what the CLI's entry point loads (harlequin's import-hygiene test): the command line
must not pay for the console or for backends it does not use."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["textual", "boto3", "botocore", "ldap3", "pysnow", "pypsrp", "apscheduler", "httpx", "aiohttp",
         "jwt", "cryptography"]  # the last two: the TCP listener's, loaded only when the server listens on TCP


def loaded_after(statement: str) -> list[str]:
    probe = f"import sys, json; {statement}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("statement", ["import app.cli", "import app.cli.main", "from app.cli.main import main",
                                       "import app.lifecycle", "import app.queries.console"])
def test_the_cli_and_the_core_load_no_console_and_no_backend_library(statement):
    assert loaded_after(statement) == []


def test_the_probe_sees_a_heavy_import():  # the check above can fail: opening the console does load Textual
    assert "textual" in loaded_after("import app.tui.launch")


def test_the_server_loads_the_jose_and_x509_libraries_only_for_tcp():
    assert {"jwt", "cryptography"} & set(loaded_after("import app.server.run")) == set()
    assert {"jwt", "cryptography"} <= set(loaded_after("import app.server.remote"))
