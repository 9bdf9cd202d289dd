"""A ServiceNow REST Table API simulator: real HTTP, standard library only.

Faithful to the documented Table API where a client can tell the difference (paths and
versions, status codes, error envelopes, reference links, display values, paging headers,
OAuth password grant), so a client proven against it works against an instance. On top
of that it injects the failures a client must survive (``Faults``: 500s, dropped
connections, timeouts, writes applied but unanswered, rate limiting) and keeps counters
(``stats``) so tests can see how many attempts reached the server.

Use it in-process (``Simulator(...).start()``) or blocking (``serve_forever`` for the CLI).
All data lives in memory under one lock; with ``data_file`` it is reloaded at start and
written atomically after every write.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
import secrets
import random
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from datetime import datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl, urlencode

from integrations.servicenow import query as snquery
from integrations.servicenow import seed as snseed
from integrations.servicenow.simulator.http import (
    _DROP,
    _TABLE_PATH,
    _error,
    _json_object,
    _oauth_denied,
    _Request,
    _Response,
    _Server,
    _unauthenticated,
)
from integrations.servicenow.simulator.options import Faults, SimulatorOptions
from integrations.servicenow.simulator.render import _MISSING, _format_time, _params, _to_str, _truthy, _utc, _View
from integrations.servicenow.simulator.schema import _FIELD_NAME, _SYS_ID, JOURNAL_FIELDS, SYS_FIELDS, TABLES

ACCESS_TOKEN_TTL = timedelta(seconds=1799)
INDEXED = ("sys_id", "number", "documentkey", "sysapproval", "element_id")  # as an instance indexes them
REFRESH_TOKEN_TTL = timedelta(days=100)


class Simulator:
    """The ServiceNow Table API on ``base_url``; binds in ``__init__``, serves after ``start``."""

    def __init__(self, options: SimulatorOptions | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.options = options or SimulatorOptions()
        self.faults = Faults(latency_ms=self.options.latency_ms)
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._lock = threading.RLock()
        self._data: dict[str, list[dict[str, str]]] = {table: [] for table in TABLES}
        self._index: dict[str, dict[str, dict[str, str]]] = {table: {} for table in TABLES}
        unknown = sorted(set(self.options.custom_fields) - set(TABLES))
        if unknown:
            raise ValueError(f"custom_fields: no table {unknown[0]!r} in the simulator")
        self._extra: dict[str, set[str]] = {table: set(self.options.custom_fields.get(table, ()))  # custom columns
                                            for table in TABLES}
        self._writes: Counter[str] = Counter()                              # per table: indexes stale when it moves
        self._indexes: dict[tuple[str, str], tuple[int, dict[str, list[tuple[int, dict[str, str]]]]]] = {}
        self._counters: dict[str, int] = {}
        # What a real instance does that tests switch on (set directly; not part of the options file):
        self.tie_order: random.Random | None = None  # rows equal on every ORDERBY key come back in this random order
        self.hidden: Callable[[str, str, Mapping[str, str]], bool] | None = None  # (user, table, row): an ACL
        # removes it from a page after sysparm_limit was applied, as an instance does (a page can be short)
        self.before_list: Callable[[str, Mapping[str, str]], None] | None = None  # (table, params): another
        # client's writes between two pages of a list
        self.forbidden: Callable[[str, str], bool] | None = None  # (user, table): the table's ACL denies: 403
        self.no_count = False  # never send X-Total-Count, as with sysparm_no_count=true on every call
        self.blanked: Callable[[str, str, str], bool] | None = None  # (user, table, field as asked, dot-walks
        # included): a field-level read ACL denies it, so it comes back empty, as an instance sends it
        self._tokens: dict[str, tuple[str, datetime]] = {}                  # access token -> user, expiry
        self._refresh: dict[str, tuple[str, str, datetime]] = {}            # refresh -> user, client, expiry
        self._hits: dict[str, deque[float]] = {}
        self._rate_lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = False
        self._thread: threading.Thread | None = None
        data_file = self.options.data_file
        if data_file is not None and Path(data_file).exists():
            self._load(Path(data_file))
        elif self.options.seed is not None:
            self.load_seed(self.options.seed)
        self._httpd = _Server((host, port))
        self._httpd.sim = self
        scheme = "http"
        if (self.options.tls_cert is None) != (self.options.tls_key is None):
            self._httpd.server_close()
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.options.tls_cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                context.load_cert_chain(self.options.tls_cert, self.options.tls_key)
            except ssl.SSLError:
                self._httpd.server_close()
                raise
            except OSError as exc:
                self._httpd.server_close()
                raise ValueError(f"cannot read the certificate or its key: {exc.strerror or exc}") from None
            # the handshake runs in each connection's own thread, on its first read, not in accept()
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True,
                                                     do_handshake_on_connect=False)
            scheme = "https"
        bound_host, bound_port = self._httpd.server_address[:2]
        self.base_url = f"{scheme}://{bound_host}:{bound_port}"

    # -- lifecycle

    def start(self) -> "Simulator":
        """Serve in a daemon thread; return self."""
        self._started = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="snow-sim", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until ``stop`` is called from another (or an exception, e.g. Ctrl-C)."""
        self._started = True
        self._httpd.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers, close the listening and all open sockets."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._started:
            self._httpd.shutdown()
        self._httpd.server_close()
        with self._httpd.connections_lock:
            open_connections = list(self._httpd.connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- direct helpers (no HTTP)

    def insert(self, table: str, record: Mapping[str, Any], user: str = "system") -> dict[str, str]:
        """Insert like a POST would (sys fields, number, journal); return a copy of the stored record."""
        if table not in TABLES:
            raise ValueError(f"Invalid table {table}")
        with self._lock:
            stored = self._insert_locked(table, record, user)
            self._save_locked()
            return dict(stored)

    def approve(self, number: str, *user_names: str, state: str = "approved") -> None:
        """Record approvers of change ``number`` (``sysapproval_approver`` rows, by user name) in
        ``state``, as the approval engine of an instance would; ``approval`` is set to match."""
        with self._lock:
            change = next(r for r in self._data["change_request"] if r["number"] == number)
            for name in user_names:
                user = next(u for u in self._data["sys_user"] if u["user_name"] == name)
                self._insert_locked("sysapproval_approver", {"sysapproval": change["sys_id"],
                                                             "approver": user["sys_id"], "state": state}, name)
            if state == "approved":
                self._update_locked("change_request", change, {"approval": "approved"}, "system")
            self._save_locked()

    def records(self, table: str) -> list[dict[str, str]]:
        """Copies of the stored records of ``table``, in insertion order."""
        with self._lock:
            return [dict(r) for r in self._data[table]]

    def journal(self, sys_id: str) -> list[dict[str, str]]:
        """The sys_journal_field rows written for record ``sys_id``, oldest first."""
        with self._lock:
            return [dict(r) for r in self._data["sys_journal_field"] if r["element_id"] == sys_id]

    def load_seed(self, name: str) -> None:
        """Insert a named seed data set ("demo")."""
        if name != "demo":
            raise ValueError(f"unknown seed {name!r} (known: demo)")
        with self._lock:
            for table, rows in snseed.demo(self.options.clock()).items():
                for row in rows:
                    self._insert_locked(table, row, "system")
            self._save_locked()

    # -- request handling

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _handle(self, req: _Request) -> _Response:
        """Route one request; never raises."""
        try:
            if req.path == "/oauth_token.do":
                return self._oauth(req)
            if req.path.startswith("/sim/admin/"):
                return self._admin(req)
            return self._api(req)
        except Exception as exc:  # noqa: BLE001 - a simulator answers 500, like the real thing
            self._count("500")
            return _error(500, "Internal Server Error", f"{type(exc).__name__}: {exc}")

    def _api(self, req: _Request) -> _Response:
        match = _TABLE_PATH.fullmatch(req.path)
        if match:
            self._count(f"{req.method} /api/now/table/{match['table']}")
        injected = self._inject_faults()
        if injected is not None:
            return injected
        user = self._authenticate(req.headers)
        if user is None:
            self._count("401")
            return _unauthenticated()
        limited, rate_headers = self._rate_limit(user)
        if limited is not None:
            return limited
        if match is None:
            return _error(400, "Requested URI does not represent any resource", None)
        response = self._table(req, match["version"], match["table"], match["sys_id"], user)
        response.headers.update(rate_headers)
        if (req.method in ("POST", "PUT", "PATCH", "DELETE") and response.status < 300
                and self.faults.take("fail_after_write_next")):
            self._count("dropped")
            return _DROP
        return response

    def _inject_faults(self) -> _Response | None:
        if self.faults.latency_ms > 0:
            self._stopping.wait(self.faults.latency_ms / 1000)
        if self.faults.down or self.faults.take("drop_next"):
            self._count("dropped")
            return _DROP
        if self.faults.take("fail_next"):
            self._count("500")
            return _error(500, "Internal Server Error", "Simulated failure (fail_next)")
        if self.faults.take("timeout_next"):
            self._stopping.wait(self.faults.timeout_s)
        return None

    def _authenticate(self, headers: Message) -> str | None:
        """The user behind a valid Basic or Bearer Authorization header, else None."""
        scheme, _, credential = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            user_pass = _decode_basic(credential)
            if user_pass and _same(user_pass[0], self.options.user) and _same(user_pass[1], self.options.password):
                return self.options.user
            return None
        if scheme.lower() == "bearer":
            with self._lock:
                entry = self._tokens.get(credential.strip())
                if entry is None:
                    return None
                if _utc(self.options.clock()) >= entry[1]:
                    del self._tokens[credential.strip()]
                    return None
                return entry[0]
        return None

    def _rate_limit(self, user: str) -> tuple[_Response | None, dict[str, str]]:
        """429 when ``user`` already made ``rate_limit`` requests in the last ``rate_window`` seconds;
        else None and the headers an instance with a rate limit rule sends on every answer (the
        limit, what is left of it, and when the oldest request counted leaves the window)."""
        limit, window = self.options.rate_limit, self.options.rate_window
        if limit is None:
            return None, {}
        now = time.monotonic()
        with self._rate_lock:
            hits = self._hits.setdefault(user, deque())
            while hits and hits[0] <= now - window:
                hits.popleft()
            allowed = len(hits) < limit
            if allowed:
                hits.append(now)
            left, wait = limit - len(hits), hits[0] + window - now
        headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(left),
                   "X-RateLimit-Reset": str(math.ceil(time.time() + wait))}
        if allowed:
            return None, headers
        self._count("429")
        return _error(429, "Rate limit exceeded",
                      f"More than {limit} requests in {window:g} seconds for user {user}; retry later",
                      {"Retry-After": str(max(1, math.ceil(wait))), **headers}), {}

    # -- OAuth

    def _oauth(self, req: _Request) -> _Response:
        """``POST /oauth_token.do``: password and refresh_token grants."""
        if req.method != "POST":
            return _oauth_denied()
        form = dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if not client_id:
            scheme, _, credential = (req.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() == "basic":
                client_id, client_secret = _decode_basic(credential) or (None, None)
        expected = self.options.oauth_clients.get(client_id or "")
        if expected is None or not _same(client_secret or "", expected):
            return _oauth_denied()
        now = _utc(self.options.clock())
        with self._lock:
            grant = form.get("grant_type")
            if grant == "password":
                if not (_same(form.get("username", ""), self.options.user)
                        and _same(form.get("password", ""), self.options.password)):
                    return _oauth_denied()
                user, refresh = self.options.user, secrets.token_urlsafe(32)
                self._refresh[refresh] = (user, client_id or "", now + REFRESH_TOKEN_TTL)
            elif grant == "refresh_token":
                refresh = form.get("refresh_token", "")
                entry = self._refresh.get(refresh)
                if entry is None or entry[1] != client_id or now >= entry[2]:
                    return _oauth_denied()
                user = entry[0]
            else:
                return _oauth_denied()
            access = secrets.token_urlsafe(32)
            self._tokens[access] = (user, now + ACCESS_TOKEN_TTL)
        return _Response(200, {"access_token": access, "refresh_token": refresh, "scope": "useraccount",
                               "token_type": "Bearer", "expires_in": int(ACCESS_TOKEN_TTL.total_seconds())})

    # -- admin

    def _admin(self, req: _Request) -> _Response:
        """``/sim/admin/faults`` (GET, POST), ``/sim/admin/stats`` (GET), ``/sim/admin/reset`` (POST)."""
        if self._authenticate(req.headers) is None:
            return _unauthenticated()
        route = (req.method, req.path.rstrip("/"))
        if route == ("GET", "/sim/admin/faults"):
            return _Response(200, self.faults.snapshot())
        if route == ("POST", "/sim/admin/faults"):
            body = _json_object(req.body)
            if isinstance(body, _Response):
                return body
            try:
                self.faults.update(body)
            except ValueError as exc:
                return _error(400, "Invalid fault", str(exc))
            return _Response(200, self.faults.snapshot())
        if route == ("GET", "/sim/admin/stats"):
            with self._stats_lock:
                return _Response(200, dict(self.stats))
        if route == ("POST", "/sim/admin/reset"):
            self.faults.clear()
            with self._stats_lock:
                self.stats.clear()
            return _Response(200, {"faults": self.faults.snapshot(), "stats": {}})
        return _error(400, "Requested URI does not represent any resource", f"{req.method} {req.path}")

    # -- the Table API

    def _table(self, req: _Request, version: str | None, table: str, sys_id: str | None, user: str
               ) -> _Response:
        if table not in TABLES:
            return _error(400, f"Invalid table {table}", None)
        if self.forbidden is not None and self.forbidden(user, table):
            return _error(403, "User Not Authorized", "User is not authorized to access this table (ACL)")
        params = _params(req.query)
        view = _View.from_params(params)
        method = req.method
        if sys_id is None and method == "GET":
            return self._list(req, version, table, params, view, user)
        if sys_id is None and method == "POST":
            body = _json_object(req.body)
            if isinstance(body, _Response):
                return body
            with self._lock:
                record = self._insert_locked(table, body, user)
                self._save_locked()
                rendered = self._render(table, record, view, user)
            location = f"{self.base_url}/api/now/table/{table}/{record['sys_id']}"
            return self._written(req, 201, rendered, {"Location": location})
        if sys_id is None or method == "POST":
            return _error(405, "Method not Supported", f"{method} is not supported for this resource")
        with self._lock:
            record = self._index[table].get(sys_id)
            if record is None:
                return _error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
            if method == "GET":
                return _Response(200, {"result": self._render(table, record, view, user)})
            if method == "DELETE":
                self._writes[table] += 1
                self._data[table].remove(record)
                del self._index[table][sys_id]
                self._save_locked()
                return _Response(204)
            body = _json_object(req.body)       # PUT and PATCH: both update only the given fields
            if isinstance(body, _Response):
                return body
            self._update_locked(table, record, body, user)
            self._save_locked()
            rendered = self._render(table, record, view, user)
        return self._written(req, 200, rendered)

    @staticmethod
    def _written(req: _Request, status: int, rendered: dict[str, Any], headers: dict[str, str] | None = None
                 ) -> _Response:
        """The answer to a write, honouring ``X-no-response-body: true``."""
        if _truthy(req.headers.get("X-no-response-body")):
            return _Response(status, None, headers or {})
        return _Response(status, {"result": rendered}, headers or {})

    def _list(self, req: _Request, version: str | None, table: str, params: Mapping[str, str], view: _View,
              user: str = "") -> _Response:
        try:
            limit = int(params.get("sysparm_limit") or 10000)
            offset = int(params.get("sysparm_offset") or 0)
            if limit <= 0 or offset < 0:
                raise ValueError
        except ValueError:
            return _error(400, "Invalid parameter",
                          "sysparm_limit must be a positive integer and sysparm_offset a non-negative integer")
        try:
            parsed = snquery.parse(params.get("sysparm_query"))
        except snquery.UnsupportedQuery as exc:
            return _error(400, "Unsupported query", f"the simulator does not implement this: {exc}")
        if self.before_list is not None:
            self.before_list(table, params)
        with self._lock:
            getter = lambda rec, name: self._value(table, rec, name)  # noqa: E731
            candidates = parsed.filter(self._candidates(table, parsed), getter)
            if self.tie_order is not None:
                self.tie_order.shuffle(candidates)  # the sort is stable: ties keep this order
            matched = parsed.order(candidates, getter)
            window = matched[offset:offset + limit]
            if self.hidden is not None:
                window = [rec for rec in window if not self.hidden(user, table, rec)]
            page = [self._render(table, rec, view, user) for rec in window]
        if not page and version == "v1":
            return _error(404, "No Record found",
                          "Records matching query not found. Check query parameter or offset parameter")
        counted = not (self.no_count or _truthy(params.get("sysparm_no_count")))
        headers = {"X-Total-Count": str(len(matched))} if counted else {}
        if not _truthy(params.get("sysparm_suppress_pagination_header")):
            headers["Link"] = self._link_header(req, offset, limit, len(matched))
        return _Response(200, {"result": page}, headers)

    def _link_header(self, req: _Request, offset: int, limit: int, total: int) -> str:
        """``<url>;rel="first",<url>;rel="prev",<url>;rel="next",<url>;rel="last"`` as an instance sends it."""
        pairs = parse_qsl(req.query, keep_blank_values=True)

        def url(new_offset: int) -> str:
            changed = [(k, str(new_offset) if k == "sysparm_offset" else v) for k, v in pairs]
            if not any(k == "sysparm_offset" for k, _ in pairs):
                changed.append(("sysparm_offset", str(new_offset)))
            return f"{self.base_url}{req.path}?{urlencode(changed)}"

        links = [f'<{url(0)}>;rel="first"']
        if offset > 0:
            links.append(f'<{url(max(0, offset - limit))}>;rel="prev"')
        if offset + limit < total:
            links.append(f'<{url(offset + limit)}>;rel="next"')
        links.append(f'<{url((total - 1) // limit * limit if total else 0)}>;rel="last"')
        return ",".join(links)

    # -- data (callers hold self._lock)

    def _candidates(self, table: str, parsed: snquery.Query) -> list[dict[str, str]]:
        """The records a query may match, in insertion order: all of them, or, when it requires one
        of the fields an instance indexes (``INDEXED``) to equal one of some values, only those
        (found through an index rebuilt after writes), so a batched lookup costs what it would on
        an instance rather than a scan per query. The query still filters them."""
        if len(parsed.groups) == 1:
            for term in parsed.groups[0]:
                values = snquery.equal_to(term[0]) if len(term) == 1 else None
                if values is not None and term[0].field in INDEXED and self._known(table, term[0].field):
                    index = self._field_index(table, term[0].field)
                    hits = {pos: rec for v in values for pos, rec in index.get(v, ())}
                    return [hits[pos] for pos in sorted(hits)]
        return self._data[table]

    def _field_index(self, table: str, name: str) -> dict[str, list[tuple[int, dict[str, str]]]]:
        version, index = self._indexes.get((table, name), (-1, {}))
        if version != self._writes[table]:
            index = {}
            for pos, rec in enumerate(self._data[table]):
                index.setdefault(rec.get(name, ""), []).append((pos, rec))
            self._indexes[(table, name)] = (self._writes[table], index)
        return index

    def _known(self, table: str, name: str) -> bool:
        return name in TABLES[table].fields or name in SYS_FIELDS or name in self._extra[table]

    def _value(self, table: str, record: Mapping[str, str], name: str) -> str | None:
        """A field's raw value for queries, dot-walking references; None for an unknown field."""
        if "." in name:
            ref_field, sub = name.split(".", 1)
            target_table = TABLES[table].references.get(ref_field)
            if target_table is None:
                return None
            target = self._index[target_table].get(record.get(ref_field, ""))
            if target is None:
                return "" if self._known(target_table, sub.split(".")[0]) else None
            return self._value(target_table, target, sub)
        if name in record:
            return record[name]
        return "" if self._known(table, name) else None

    def _render(self, table: str, record: Mapping[str, str], view: _View, user: str = "") -> dict[str, Any]:
        """A record as the API returns it under ``view`` to ``user``; unknown names in sysparm_fields
        are left out, and fields ``blanked`` for the user come back empty."""
        out: dict[str, Any] = {}
        for name in view.fields or tuple(record):
            value = self._render_field(table, record, name, view)
            if value is not _MISSING:
                if self.blanked is not None and self.blanked(user, table, name):
                    value = {k: "" for k in value} if isinstance(value, dict) else ""
                out[name] = value
        return out

    def _render_field(self, table: str, record: Mapping[str, str], name: str, view: _View) -> Any:
        schema = TABLES[table]
        if "." in name:
            ref_field, sub = name.split(".", 1)
            target_table = schema.references.get(ref_field)
            if target_table is None or ref_field not in record:
                return _MISSING
            target = self._index[target_table].get(record[ref_field])
            if target is None:
                return {"display_value": "", "value": ""} if view.display == "all" else ""
            return self._render_field(target_table, target, sub, view)
        if schema.journal and name in JOURNAL_FIELDS:  # its history, newest first, as display text only
            if view.display == "false":
                return ""
            entries = [j for j in self._data["sys_journal_field"]
                       if j["element_id"] == record.get("sys_id") and j["element"] == name]
            label = "Work notes" if name == "work_notes" else "Additional comments"
            text = "".join(f"{j['sys_created_on']} - {j['sys_created_by']} ({label})\n{j['value']}\n\n"
                           for j in reversed(entries))
            return {"display_value": text, "value": ""} if view.display == "all" else text
        if name not in record:
            return _MISSING
        raw = record[name]
        target_table = schema.references.get(name)
        if target_table is not None:
            if raw == "":
                return {"display_value": "", "value": ""} if view.display == "all" else ""
            target = self._index[target_table].get(raw)
            display = target.get(TABLES[target_table].display_field, "") if target else ""
            link = f"{self.base_url}/api/now/table/{target_table}/{raw}"
            if view.display == "false":
                return raw if view.exclude_links else {"link": link, "value": raw}
            if view.display == "true":
                return display if view.exclude_links else {"display_value": display, "link": link}
            both = {"display_value": display, "value": raw}
            return both if view.exclude_links else {**both, "link": link}
        display = schema.choices.get(name, {}).get(raw, raw)
        if view.display == "true":
            return display
        if view.display == "all":
            return {"display_value": display, "value": raw}
        return raw

    def _resolve_reference(self, target_table: str, value: str) -> str:
        """A sys_id as given; otherwise the sys_id of the record with that display value, as an instance does."""
        if value == "" or value in self._index[target_table]:
            return value
        display_field = TABLES[target_table].display_field
        for candidate in self._data[target_table]:
            if candidate.get(display_field) == value:
                return candidate["sys_id"]
        return value

    def _assign(self, table: str, record: dict[str, str], values: Mapping[str, Any]
                ) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
        """Copy writable values into ``record``; return (field -> (old, new) for those changed, journal entries)."""
        schema = TABLES[table]
        changed: dict[str, tuple[str, str]] = {}
        notes: dict[str, str] = {}
        for name, value in values.items():
            if name in SYS_FIELDS or not _FIELD_NAME.fullmatch(name):
                continue
            text = _to_str(value)
            if schema.journal and name in JOURNAL_FIELDS:
                notes[name] = text
                continue
            if name in schema.references:
                text = self._resolve_reference(schema.references[name], text)
            if not self._known(table, name):
                continue  # not a field of this table on this instance: ignored, as an instance does
            if record.get(name) != text:
                changed[name] = (record.get(name, ""), text)
                record[name] = text
        return changed, notes

    def _insert_locked(self, table: str, values: Mapping[str, Any], user: str) -> dict[str, str]:
        schema = TABLES[table]
        now = _format_time(self.options.clock())
        record = {name: schema.defaults.get(name, "") for name in schema.fields}
        changed, notes = self._assign(table, record, values)
        self._close_rule(table, record, changed)
        sys_id = _to_str(values.get("sys_id")).lower()
        if not _SYS_ID.fullmatch(sys_id) or sys_id in self._index[table]:
            sys_id = uuid.uuid4().hex
        if schema.number_prefix:
            counter = self._counters.get(table, 0)
            given = record.get("number", "")
            if given:   # keep a supplied number; move the counter past it so numbers stay unique
                digits = given[len(schema.number_prefix):]
                if given.startswith(schema.number_prefix) and digits.isdigit():
                    self._counters[table] = max(counter, int(digits))
            else:
                self._counters[table] = counter + 1
                record["number"] = f"{schema.number_prefix}{counter + 1:07d}"
        record.update(sys_id=sys_id, sys_created_on=now, sys_created_by=user, sys_updated_on=now,
                      sys_updated_by=user, sys_mod_count="0")
        self._writes[table] += 1
        self._data[table].append(record)
        self._index[table][sys_id] = record
        self._journal_locked(table, sys_id, notes, user)
        self._audit_locked(table, record, {k: v for k, v in changed.items() if v[1]}, user)
        return record

    def _update_locked(self, table: str, record: dict[str, str], values: Mapping[str, Any], user: str) -> None:
        self._writes[table] += 1
        changed, notes = self._assign(table, record, values)
        self._close_rule(table, record, changed)
        if changed or any(notes.values()):   # an update that changes nothing is not a write, as on an instance
            record.update(sys_updated_on=_format_time(self.options.clock()), sys_updated_by=user,
                          sys_mod_count=str(int(record.get("sys_mod_count") or 0) + 1))
        self._journal_locked(table, record["sys_id"], notes, user)
        self._audit_locked(table, record, changed, user)

    @staticmethod
    def _close_rule(table: str, record: dict[str, str], changed: dict) -> None:
        """An instance's business rule: a task put in a closed state becomes inactive."""
        if record.get("state") in TABLES[table].closed_states and record.get("active") != "false":
            changed["active"] = (record.get("active", ""), "false")
            record["active"] = "false"

    def _audit_locked(self, table: str, record: Mapping[str, str], changed: Mapping[str, tuple[str, str]],
                      user: str) -> None:
        """sys_audit rows for an audited table: one per field set (insert) or changed (update)."""
        if not TABLES[table].audited:
            return
        for name, (old, new) in changed.items():
            self._insert_locked("sys_audit", {"tablename": table, "fieldname": name, "documentkey": record["sys_id"],
                                              "oldvalue": old, "newvalue": new, "user": user,
                                              "record_checkpoint": record.get("sys_mod_count") or "0"}, user)

    def _journal_locked(self, table: str, sys_id: str, notes: Mapping[str, str], user: str) -> None:
        for element, text in notes.items():
            if text:
                self._insert_locked("sys_journal_field",
                                    {"element": element, "element_id": sys_id, "name": table, "value": text}, user)

    # -- persistence

    def _load(self, path: Path) -> None:
        """Replace the data with the JSON file's ``{table: [records], "_counters": {...}}``."""
        saved = json.loads(path.read_text(encoding="utf-8"))
        self._counters = {k: int(v) for k, v in saved.get("_counters", {}).items()}
        for table in TABLES:
            rows = [{k: _to_str(v) for k, v in row.items()} for row in saved.get(table, [])]
            self._data[table] = rows
            self._writes[table] += 1
            self._index[table] = {row["sys_id"]: row for row in rows}
            self._extra[table] = {k for row in rows for k in row if not self._known(table, k)}

    def _save_locked(self) -> None:
        """Write the data file atomically (temp file in the same directory, then os.replace)."""
        if self.options.data_file is None:
            return
        path = Path(self.options.data_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {**self._data, "_counters": self._counters}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _decode_basic(credential: str) -> tuple[str, str] | None:
    try:
        user, sep, password = base64.b64decode(credential.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())
