"""The simulator's HTTP plumbing: the threaded server, the request handler, the request
and response it passes to ``Simulator._handle``, ServiceNow's error answers, and reading
a request body as a JSON object.

The handler reads one request (chunked bodies included), hands it to the simulator and
writes the answer, or withholds it when the response says ``drop``.
"""
from __future__ import annotations

import json
import re
import socket
import threading
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from integrations.servicenow.simulator.simulator import Simulator


@dataclass
class _Request:
    method: str
    path: str
    query: str
    headers: Message
    body: bytes


@dataclass
class _Response:
    status: int
    body: Any = None                     # JSON-able, or None for no body
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False                   # close the connection without answering


_DROP = _Response(0, drop=True)
_TABLE_PATH = re.compile(r"/api/now(?:/(?P<version>v1|v2))?/table/(?P<table>[^/]+)(?:/(?P<sys_id>[^/]+))?/?")


def _error(status: int, message: str, detail: str | None = None, headers: dict[str, str] | None = None
           ) -> _Response:
    return _Response(status, {"error": {"message": message, "detail": detail}, "status": "failure"},
                     headers or {})


def _unauthenticated() -> _Response:
    return _error(401, "User Not Authenticated", "Required to provide Auth information",
                  {"WWW-Authenticate": 'Basic realm="Service-now"'})


def _oauth_denied() -> _Response:
    return _Response(401, {"error_description": "access_denied", "error": "server_error"})


class _Server(ThreadingHTTPServer):
    """Threaded server that remembers open connections so ``stop`` can cut keep-alive ones."""

    daemon_threads = True
    sim: "Simulator"

    def __init__(self, address: tuple[str, int]) -> None:
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients that go away mid-request are part of the job."""


class _Handler(BaseHTTPRequestHandler):
    """Reads one request, hands it to the Simulator, writes (or withholds) the answer."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True       # headers and body are separate writes: avoid 40 ms delayed-ACK stalls
    server_version = "ServiceNow"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing per request (and so never a credential)."""

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        url = urlsplit(self.path)
        response = self.server.sim._handle(_Request(self.command, url.path, url.query, self.headers, body))
        if response.drop:
            self.close_connection = True
            return
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        try:
            self.send_response(response.status)
            if response.status != 204:
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""


def _json_object(body: bytes) -> dict[str, Any] | _Response:
    """The request body as a JSON object (empty body -> {}), or a 400 error response."""
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        return _error(400, "Exception while reading request", f"Cannot decode: {exc}")
    if not isinstance(parsed, dict):
        return _error(400, "Exception while reading request", "The payload is not a JSON object")
    return parsed
