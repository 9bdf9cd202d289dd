"""A local moto server, in SERVER mode over real HTTP, for backend integration tests.

``start_moto()`` runs ``python -m moto.server`` in a child process bound to a free
127.0.0.1 port, waits until it answers and returns a ``MotoServer``. Nothing is patched
in-process (no ``mock_aws``): clients talk HTTP to ``endpoint_url``. The child gets a
scrubbed environment (no AWS_* variables, no proxies) and its own recording file, so
tests can check which parameters really reached the server.

Clients built here use explicit dummy credentials and never read the developer's AWS
configuration; tests should still remove AWS_* variables (see ``scrub_aws_env``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any, MutableMapping

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_session_token": "testing"}
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
_START_TIMEOUT = 30.0


def have_moto() -> bool:
    """True when moto and its server extra (flask, flask-cors, werkzeug) are importable."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("moto", "boto3", "flask", "flask_cors", "werkzeug"))


MISSING_REASON = "moto's server extra is not installed (pip install 'moto[server]>=5,<6')"


def scrub_aws_env(env: MutableMapping[str, str], home: str | os.PathLike[str] | None = None) -> None:
    """Remove every AWS_* and proxy variable from ``env``; point the AWS config files at
    paths that do not exist, so no profile, region or credential of the developer leaks."""
    for var in [v for v in env if v.startswith("AWS_") or v in _PROXY_VARS]:
        del env[var]
    base = Path(home) if home is not None else Path(tempfile.gettempdir()) / "jit-no-aws-config"
    env["AWS_CONFIG_FILE"] = str(base / "config-does-not-exist")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(base / "credentials-do-not-exist")
    env["AWS_EC2_METADATA_DISABLED"] = "true"


def session(region: str = REGION) -> Any:
    """A boto3 Session with explicit dummy credentials (no profile, no env lookup)."""
    import boto3

    return boto3.Session(region_name=region, **CREDENTIALS)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


class MotoServer:
    """A running moto server child process."""

    def __init__(self, process: subprocess.Popen[bytes], port: int,
                 workdir: tempfile.TemporaryDirectory[str], log: IO[bytes]):
        self._process = process
        self._log = log
        self._workdir = workdir
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.recording_path = Path(workdir.name) / "recording.jsonl"
        self.log_path = Path(workdir.name) / "server.log"

    def log(self) -> str:
        """What the server wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")

    # -- lifecycle -----------------------------------------------------------

    def alive(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its files."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._log.close()
        self._workdir.cleanup()

    def reset(self) -> None:
        """Forget every resource (POST /moto-api/reset) and any recording."""
        self._post("/moto-api/reset")
        self._post("/moto-api/recorder/stop-recording")
        self._post("/moto-api/recorder/reset-recording")

    # -- clients ---------------------------------------------------------------

    def session(self, region: str = REGION) -> Any:
        return session(region)

    def client(self, service: str, region: str = REGION) -> Any:
        return session(region).client(service, endpoint_url=self.endpoint_url)

    # -- request recording ---------------------------------------------------

    def start_recording(self) -> None:
        """Record every request the server receives from now on (moto's recorder)."""
        self._post("/moto-api/recorder/reset-recording")
        self._post("/moto-api/recorder/start-recording")

    def recorded_requests(self) -> list[dict[str, Any]]:
        """The requests received since ``start_recording``: method, url, headers, body (text)."""
        import base64

        self._post("/moto-api/recorder/stop-recording")
        raw = self._request("GET", "/moto-api/recorder/download-recording").decode()
        entries = []
        for line in raw.splitlines():
            if line.strip():
                entry = json.loads(line)
                body = entry.get("body") or ""
                if entry.get("body_encoded"):
                    body = base64.b64decode(body).decode("utf-8", "replace")
                entry["body"] = body
                entries.append(entry)
        return entries

    # -- plumbing --------------------------------------------------------------

    def _request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.endpoint_url + path, data=data, method=method)
        with _opener().open(req, timeout=10) as resp:
            return bytes(resp.read())

    def _post(self, path: str) -> bytes:
        return self._request("POST", path, data=b"")

    def _answers(self) -> bool:
        try:
            self._request("GET", "/moto-api/data.json")
            return True
        except urllib.error.HTTPError:
            return True  # it answered, even if not with 200
        except (urllib.error.URLError, OSError):
            return False


def start_moto(attempts: int = 3) -> MotoServer:
    """Start moto in server mode on a free 127.0.0.1 port and wait until it answers."""
    if not have_moto():
        raise RuntimeError(MISSING_REASON)
    last_error = ""
    for _ in range(attempts):
        port = _free_port()
        workdir = tempfile.TemporaryDirectory(prefix="jit-moto-")
        env = dict(os.environ)
        scrub_aws_env(env, workdir.name)
        env["MOTO_RECORDER_FILEPATH"] = str(Path(workdir.name) / "recording.jsonl")
        env["MOTO_PORT"] = str(port)
        log = open(Path(workdir.name) / "server.log", "wb")  # a file: a full pipe would block it
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            cwd=workdir.name, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        server = MotoServer(process, port, workdir, log)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline and server.alive():
            if server._answers():
                return server
            time.sleep(0.05)
        if server.alive():
            last_error = f"no answer on port {port} within {_START_TIMEOUT:g}s"
            server.stop()
        else:
            output = server.log()
            last_error = f"moto server exited with {process.returncode}: {output.strip()[-2000:]}"
            server.stop()
    raise RuntimeError(f"cannot start the moto server: {last_error}")
