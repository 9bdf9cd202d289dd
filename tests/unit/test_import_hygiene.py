"""At run time, what the CLI's entry point loads (harlequin's import-hygiene test): the command line
must not pay for the console or for backends it does not use."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["textual", "boto3", "botocore", "ldap3", "pysnow", "pypsrp", "apscheduler", "httpx", "aiohttp",
         "jwt", "cryptography"]  # the last two: the TCP listener's, loaded only when the server listens on TCP


def loaded_after(statement: str, heavy: list[str] = HEAVY) -> list[str]:
    probe = f"import sys, json; {statement}; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("statement", ["import app.lifecycle", "import app.queries.console"])
def test_the_core_loads_no_console_and_no_backend_library(statement):
    assert loaded_after(statement) == []


# A client holds no database and no backend: not even their libraries are loaded.
CLIENT_HEAVY = HEAVY + ["sqlalchemy", "sqlmodel", "alembic", "psycopg", "pydantic", "jwt", "cryptography"]
RUN = "from app.cli.main import main; main([{argv}], {{'HOME': '/nonexistent'}})"


@pytest.mark.parametrize("statement", ["import app.cli.main", "import app.client.console", "import app.fleet.agent", RUN.format(argv="'--server', 'unix:///nowhere', 'list'"),
                                       RUN.format(argv="'--server', 'unix:///nowhere', 'request', 'web-dev-01', "
                                                       "'service-admin', '--duration', '1h', '--reason', 'x'"),
                                       RUN.format(argv="'--server', 'unix:///nowhere', 'audit', 'export'")])
def test_a_client_command_loads_no_database_backend_or_console_library(statement):
    assert loaded_after(statement, CLIENT_HEAVY) == []


def test_the_client_probe_sees_the_database_library():  # ...and it can fail: a local command does load it
    assert "sqlalchemy" in loaded_after(RUN.format(argv="'--config', '/nowhere.toml', 'engine', '--once'"),
                                        CLIENT_HEAVY)


def test_the_probe_sees_a_heavy_import():  # the check above can fail: opening the console does load Textual
    assert "textual" in loaded_after("import app.tui.launch")


def test_the_server_loads_the_jose_and_x509_libraries_only_for_tcp():
    assert {"jwt", "cryptography"} & set(loaded_after("import app.server.run")) == set()
    assert {"jwt", "cryptography"} <= set(loaded_after("import app.server.remote"))


def test_the_console_as_a_client_loads_no_database_or_server_library():
    # `jit console` opens Textual on RemoteConsoleData: the screens read the domain's dataclasses.
    # (pydantic comes with policies.authority, whose `offered` the screens ask what to show.)
    loaded = loaded_after("import app.tui.launch, app.client.console", CLIENT_HEAVY)
    assert set(loaded) == {"textual", "pydantic"}
