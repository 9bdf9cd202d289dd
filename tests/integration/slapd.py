"""pytest fixtures around app.dev.servers.slapd (a real OpenLDAP slapd on a loopback port)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from app.dev.servers.slapd import *  # noqa: F401,F403 - the tests use the constants and helpers
from app.dev.servers.slapd import SKIP_REASON, TLS_SKIP_REASON, Slapd, have_slapd, have_tls, start_slapd


def require_slapd() -> None:
    if not have_slapd():
        pytest.skip(SKIP_REASON)


@pytest.fixture
def slapd_tls_server(tmp_path: Path) -> Iterator[Slapd]:
    """Like ``slapd_server`` with StartTLS on ``uri``, LDAPS on ``ldaps_uri`` and ``ca_file``."""
    require_slapd()
    if not have_tls():
        pytest.skip(TLS_SKIP_REASON)
    server = start_slapd(tmp_path, tls=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slapd_server(tmp_path: Path) -> Iterator[Slapd]:
    """A fresh slapd per test with ``BASE_TREE`` loaded; skipped when slapd is not installed."""
    require_slapd()
    server = start_slapd(tmp_path)
    try:
        yield server
    finally:
        server.stop()
