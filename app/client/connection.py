"""Finding ``jit server`` and calling its API.

The server is ``--server URL``, else ``$JIT_SERVER``, else ``[client] server`` in the client's
config (``--config``, else ``$JIT_CONFIG``, else ``$XDG_CONFIG_HOME/jit/jit.toml``; only its
``[client]`` table is read), else ``unix:///run/jit/jit.sock``. URLs are ``unix://PATH`` or
``https://HOST:PORT`` (with ``[client] cert``, ``key``, ``ca``, or a bearer token in ``$JIT_TOKEN``).

HTTP itself is ``http11.py``: httpx costs a quarter of a second of imports (it pulls in rich),
the standard library's ``http.client`` 40 ms, against a budget of about 130 ms for the whole
``jit list``. The client sends what it
wants and nothing about who it is: the server learns that from the kernel, the certificate or
the token. ``JIT_USER`` is passed on as ``X-Jit-User``, which only a dev server honours."""
from __future__ import annotations

import json
import os
import re
import socket
from typing import Any, Iterator, Mapping, NamedTuple

from app.client.http11 import Closed, Connection, Response
from app.domain.errors import BadInput, Conflict, ConfigError, IdentityError, JitError, NotFound, Refused
from policies.names import PERSON

DEFAULT_SERVER = "unix:///run/jit/jit.sock"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 300.0  # a reconcile of a large fleet takes a while


class ServerUnavailable(JitError):
    """No server answers at the URL (exit 5, like an unreachable database before)."""

    exit_code = 5


class ServerError(JitError):
    """The server answered with an error that is not the caller's (5xx, 429)."""

    exit_code = 5


class ClientSettings(NamedTuple):
    server: str
    cert: str = ""
    key: str = ""
    ca: str = ""
    token: str = ""
    impersonate: str = ""  # $JIT_USER: honoured only by a dev server
    agent_host: str = ""  # `jit agent`: the host it runs on, sent as X-Jit-Host (honoured only by a dev server)
    source: str = "default"


def client_settings(explicit_server: str | None, config_file: str | None,
                    environ: Mapping[str, str]) -> ClientSettings:
    table, source = _client_table(config_file, environ)
    server = explicit_server or environ.get("JIT_SERVER") or table.get("server") or DEFAULT_SERVER
    where = ("--server" if explicit_server else "$JIT_SERVER" if environ.get("JIT_SERVER") else
             f"[client] in {source}" if table.get("server") else "default")
    for key in ("server", "cert", "key", "ca"):
        if key in table and not isinstance(table[key], str):
            raise ConfigError(source, [f"client.{key}: must be a string"])
    unknown = set(table) - {"server", "cert", "key", "ca"}
    if unknown:
        raise ConfigError(source, [f"client.{sorted(unknown)[0]}: unknown key (server, cert, key, ca)"])
    impersonate = environ.get("JIT_USER", "")
    if impersonate and not re.fullmatch(PERSON, impersonate):
        raise IdentityError(f"user name {impersonate[:40]!r} is not a valid account name (JIT_USER)")
    token = environ.get("JIT_TOKEN", "")
    if token and not re.fullmatch(r"[A-Za-z0-9._~+/=-]{1,16384}", token):
        raise IdentityError("JIT_TOKEN is not a bearer token (one line of base64url text)")
    return ClientSettings(server=server, cert=table.get("cert", ""), key=table.get("key", ""),
                          ca=table.get("ca", ""), token=token, impersonate=impersonate, source=where)


def _client_table(config_file: str | None, environ: Mapping[str, str]) -> tuple[dict, str]:
    path = config_file or environ.get("JIT_CONFIG")
    if not path:
        base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME", "~"), ".config")
        candidate = os.path.join(os.path.expanduser(base), "jit", "jit.toml")
        if not os.path.isfile(candidate):
            return {}, "default"
        path = candidate
    import tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except PermissionError:
        return {}, path  # a server's own config, not readable here: only [client] would matter
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, [f"cannot read: {exc}"]) from None
    table = data.get("client", {})
    if not isinstance(table, dict):
        raise ConfigError(path, ["client: must be a table"])
    base = os.path.dirname(os.path.realpath(path))
    for key in ("cert", "key", "ca"):  # relative to the file, like every path in it
        if isinstance(table.get(key), str) and table[key] and not os.path.isabs(table[key]):
            table[key] = os.path.join(base, table[key])
    return table, path


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _pct(text: str, safe: str = "") -> str:
    """Percent-encoding (RFC 3986) of everything but the unreserved characters and ``safe``."""
    keep = _UNRESERVED | frozenset(safe.encode())
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in text.encode())


def _host_port(authority: str, source: str, url: str) -> tuple[str, int]:
    host, _, port = authority.rpartition(":") if authority.rfind(":") > authority.rfind("]") else (authority, "", "443")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(source, [f"server: {url!r} is not https://HOST:PORT"])
    return host, int(port)


def _unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(READ_TIMEOUT)
    return sock


def _tcp(host: str, port: int, context: Any) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    try:
        tls = context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    tls.settimeout(READ_TIMEOUT)
    return tls


class Client:
    """One server, one connection kept open (HTTP/1.1 keep-alive) for the commands of a process."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.url = settings.server
        if self.url.startswith("unix://"):
            path = self.url[len("unix://"):]
            if not path:
                raise ConfigError(settings.source, [f"server: {self.url!r} names no socket (unix:///run/jit/jit.sock)"])
            self._conn = Connection(lambda: _unix(path))
        elif self.url.startswith("https://"):
            host, port = _host_port(self.url[len("https://"):].split("/", 1)[0], settings.source, self.url)
            context = self._tls()
            self._conn = Connection(lambda: _tcp(host, port, context))
        else:
            raise ConfigError(settings.source, [f"server: {self.url!r} is neither unix://PATH nor https://HOST:PORT"])

    def _tls(self) -> Any:
        import ssl
        s = self.settings
        try:
            context = ssl.create_default_context(cafile=s.ca or None)
            if s.cert:
                context.load_cert_chain(s.cert, s.key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(s.source, [f"client certificate or CA: {exc}"]) from None
        return context

    def close(self) -> None:
        self._conn.close()

    def interrupt(self) -> None:
        """From another thread: end a stream this client is reading (``lines()`` then returns)."""
        self._conn.interrupt()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ calls
    def get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        return self._json(self._send("GET", path, query, None))

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self._json(self._send("POST", path, None, body or {}))

    def put(self, path: str, body: Mapping[str, Any]) -> Any:
        return self._json(self._send("PUT", path, None, body))

    def lines(self, path: str, query: Mapping[str, Any] | None = None) -> Iterator[str]:
        """A streamed answer, line by line (``/v1/audit/export``, ``/v1/events``)."""
        response = self._send("GET", path, query, None)
        if response.status >= 400:
            self._json(response)
        try:
            while line := response.readline():
                yield line.decode().rstrip("\n")
        finally:
            response.close()
            self.close()  # a stream read to its end or abandoned leaves the connection unusable

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "Host": "jit"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        if self.settings.impersonate:
            headers["X-Jit-User"] = self.settings.impersonate
        if self.settings.agent_host:
            headers["X-Jit-Host"] = self.settings.agent_host
        return headers

    def _send(self, method: str, path: str, query: Mapping[str, Any] | None,
              body: Mapping[str, Any] | None) -> Response:
        pairs = [f"{_pct(k)}={_pct(str(v))}" for k, v in (query or {}).items() if v is not None]
        target = _pct(path, safe="/") + ("?" + "&".join(pairs) if pairs else "")
        data = json.dumps(body).encode() if body is not None else None
        reused = self._conn.is_open
        try:
            return self._conn.request(method, target, self._headers(data), data)
        except (Closed, BrokenPipeError, ConnectionResetError):
            self.close()
            if reused and method in ("GET", "PUT"):  # the server closed an idle kept-alive connection: once more
                return self._send(method, path, query, body)
            raise ServerUnavailable(f"the jit server at {self.url} closed the connection"
                                    + (" (the call may have been done: check with 'jit show')"
                                       if method == "POST" else "")) from None
        except OSError as exc:  # no socket file, refused, unreachable, timed out, TLS failure
            self.close()
            raise ServerUnavailable(f"no jit server answers at {self.url} ({exc.strerror or exc})") from None

    def _json(self, response: Response) -> Any:
        raw = response.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            raise ServerError(f"the server at {self.url} answered {response.status} with something that is "
                              "not JSON") from None
        if response.status < 400:
            return data
        err = (data or {}).get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict):
            raise ServerError(f"the server at {self.url} answered {response.status}")
        rule, message, field = err.get("rule", "error"), err.get("message", ""), err.get("field")
        status = response.status
        if status == 401:
            raise IdentityError(message)
        if status == 404:
            raise NotFound(rule, message)
        if status == 409:
            raise Conflict(rule, message)
        if status == 403:
            raise Refused(rule, message)
        if status in (400, 413, 422):
            raise BadInput(field or rule, message)
        if status == 429:
            raise ServerError(f"{message} (the server's rate limit)")
        raise ServerError(f"{rule}: {message}")
