"""`jit server`'s first step: the API on a Unix socket, the caller known by the kernel's peer uid.

The server runs in this (root) process on a sandbox; a real local account connects with httpx
over the socket, from its own process (setpriv), while naming someone else every way a client
could (a header, $LOGNAME, $USER, $JIT_USER): the server answers with the account's own name.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from accounts import ACCOUNT, SKIP, account, code_copy, run_as, shared_dir, system_venv  # noqa: F401

from app.bootstrap import build
from app.config import load_config
from app.dev.sandbox import write_sandbox
from app.server.run import serve

pytestmark = SKIP


@pytest.fixture
def server(shared_dir):
    where = Path(tempfile.mkdtemp(dir=shared_dir))
    where.chmod(0o755)
    config = write_sandbox(where / "sb", servicenow_url=None)
    sv = build(load_config(config))
    sock = where / "run" / "jit.sock"
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(sv, sock, stop), kwargs={"ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(30), "the server did not start listening"
    yield sv, sock
    stop.set()
    thread.join(30)
    sv.close()
    assert not sock.exists()  # removed on the way out


def client(sock) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://jit", timeout=10)


CALLER = """
import json, os, httpx
c = httpx.Client(transport=httpx.HTTPTransport(uds=os.environ["SOCK"]), base_url="http://jit", timeout=10)
r = c.get("/v1/whoami", headers={"X-Jit-User": "bob", "X-Remote-User": "bob"})
print(json.dumps({"status": r.status_code, **r.json()}))
"""


def test_the_server_names_the_caller_by_peer_uid_whatever_the_client_claims(server, account, system_venv,
                                                                            code_copy):
    _, sock = server
    assert oct(sock.stat().st_mode & 0o777) == "0o666"
    forged = {"SOCK": str(sock), "LOGNAME": "bob", "USER": "bob", "JIT_USER": "bob"}
    done = run_as(account, system_venv, code_copy, CALLER, forged)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["status"] == 200
    assert answer["person"] == ACCOUNT and answer["authenticated_by"] == f"peer-uid:{account.pw_uid}"
    with client(sock) as c:  # and this process, root, is root
        me = c.get("/v1/whoami", headers={"X-Jit-User": "alice"}).json()
    assert me["person"] == "root" and me["authenticated_by"] == f"peer-uid:{os.getuid()}"


def test_requests_are_read_over_the_socket_with_one_error_shape(server):
    sv, sock = server
    rid = sv.lifecycle.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10),
                              "restart nginx after the TLS renewal").request.id
    with client(sock) as c:
        shown = c.get(f"/v1/requests/REQ-{rid}")
        listed = c.get("/v1/requests", params={"state": "active"})
        missing = c.get("/v1/requests/REQ-99999")
        bad = c.get("/v1/requests/one")
        bad_state = c.get("/v1/requests", params={"state": "actve"})
    assert shown.status_code == 200 and shown.json()["requester"] == "alice" and shown.json()["state"] == "active"
    assert [v["id"] for v in listed.json()["items"]] == [rid] and listed.json()["next"] is None
    assert missing.status_code == 404
    assert missing.json() == {"error": {"rule": "request", "message": "REQ-99999 does not exist", "field": None}}
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "id"
    assert bad_state.status_code == 422 and bad_state.json()["error"]["field"] == "state"


def test_a_path_that_is_not_a_socket_is_never_replaced(shared_dir):
    from app.domain.errors import ConfigError
    where = Path(tempfile.mkdtemp(dir=shared_dir))
    sv = build(load_config(write_sandbox(where / "sb", servicenow_url=None)))
    victim = where / "jit.sock"
    victim.write_text("not a socket")
    try:
        with pytest.raises(ConfigError, match="exists and is not a socket"):
            serve(sv, victim, threading.Event())
    finally:
        sv.close()
    assert victim.read_text() == "not a socket"


def test_jit_server_serves_until_sigterm(shared_dir):
    import signal
    import subprocess
    import sys
    where = Path(tempfile.mkdtemp(dir=shared_dir))
    config = write_sandbox(where / "sb", servicenow_url=None)
    sock = where / "run" / "jit.sock"
    proc = subprocess.Popen([sys.executable, "-m", "app", "server", "--dev", str(config.parent), "--socket", str(sock)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == f"serving on unix:{sock}"
        with client(sock) as c:
            assert c.get("/v1/whoami").json()["authenticated_by"] == f"peer-uid:{os.getuid()}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
