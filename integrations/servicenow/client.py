"""ServiceNow Table API client: pysnow behind an adapter that owns what pysnow does not.

pysnow has no paging, updates with PUT after a GET, raises ``requests.HTTPError``, and
shares parameters between calls on one resource. This adapter:
- pages with ``sysparm_offset``/``sysparm_limit`` over a fresh resource per call, a whole page at a
  time, ended by the instance's count of matches (counted before its ACLs), else by an empty page;
- updates with PATCH on ``/{sys_id}``;
- retries timeouts, dropped connections, 429 and 5xx with exponential backoff, honouring
  ``Retry-After``;
- opens a circuit breaker after repeated failures so a dead instance costs callers
  nothing but a fast ``Unavailable`` until the cool-down has passed;
- maps every ``requests``/``pysnow`` exception to ``ServiceNowError`` subclasses.
Credentials are held privately and never appear in messages or logs.
"""
from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, NamedTuple
from urllib.parse import urlsplit

import pysnow
import requests
from pysnow import exceptions as snow_exc

from integrations.servicenow.errors import AuthFailed, NotFound, ServiceNowError, Unavailable  # noqa: F401

log = logging.getLogger("jit.servicenow")

TABLE_RE = r"^[a-z][a-z0-9_]{0,79}$"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive failures -> half-open after ``cooldown`` s."""

    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.held_until: float | None = None  # the instance's Retry-After: no call before this
        self.held_until_wall: float | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.held_until is not None and self.clock() < self.held_until:
            return "rate-limited"
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        with self._lock:
            return self.state not in ("open", "rate-limited")

    def hold(self, seconds: float) -> None:
        """The instance said when to come back (``Retry-After``): no call until then."""
        with self._lock:
            self.held_until = self.clock() + seconds
            self.held_until_wall = time.time() + seconds

    def success(self) -> None:
        with self._lock:
            self.failures, self.opened_at = 0, None

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.failures >= self.threshold or self.opened_at is not None:
                self.opened_at = self.clock()


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date (RFC 9110); None if neither."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo else None


def _wall(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch or 0))


class Page(NamedTuple):
    rows: list[dict[str, Any]]
    more: bool | None  # the instance counts matches past this page (True: even if ACLs hid every row
    # of this one; False: none); None when it sends no count (sysparm_no_count): only an empty page ends


class ServiceNowClient:
    """Table API calls with paging, PATCH, retries, a breaker and error mapping."""

    def __init__(self, url: str, credentials: Credentials, *, timeout: float = 10.0, retries: int = 4,
                 backoff: float = 0.5, max_backoff: float = 30.0, page_size: int = 500,
                 breaker: CircuitBreaker | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"servicenow url {url!r} must look like https://instance.service-now.com")
        if not 1 <= page_size <= 10000:
            raise ValueError("page_size must be between 1 and 10000")
        self.url = url.rstrip("/")
        self._host, self._ssl = parts.netloc, parts.scheme == "https"
        self._credentials = credentials
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.page_size = page_size
        self.breaker = breaker or CircuitBreaker()
        self._sleep = sleep
        self._client: Any = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------ connection
    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        c = self._credentials
        if c.client_id:
            if not self._ssl:
                if self._host.split(":")[0] not in ("127.0.0.1", "localhost", "[::1]"):
                    raise ServiceNowError("OAuth over plain http is refused except on loopback")
                os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
            client = pysnow.OAuthClient(client_id=c.client_id, client_secret=c.client_secret,
                                        host=self._host, use_ssl=self._ssl)
            try:
                client.set_token(client.generate_token(c.user, c.password))
            except snow_exc.TokenCreateError:
                raise AuthFailed("ServiceNow refused the OAuth credentials", status=401) from None
            except requests.RequestException as exc:
                raise Unavailable(f"cannot reach ServiceNow for a token: {type(exc).__name__}") from None
        else:
            client = pysnow.Client(host=self._host, user=c.user, password=c.password, use_ssl=self._ssl)
        client.parameters.exclude_reference_link = True
        self._client = client
        return client

    def _resource(self, table: str) -> Any:
        if not re.fullmatch(TABLE_RE, table):
            raise ServiceNowError(f"table name {table!r} is not valid")
        resource = self._connect().resource(api_path=f"/table/{table}")
        resource.kwargs["timeout"] = self.timeout  # OAuthClient.resource() drops it otherwise
        return resource

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ------------------------------------------------------------ calls
    def _call(self, what: str, fn: Callable[[], Any], retry: bool = True) -> Any:
        """Run one API call with retries and the breaker; map every failure.

        ``retry=False`` for writes that must not be sent twice blindly (a note whose answer was
        lost may have been written): the caller checks and retries itself."""
        with self._lock:
            if not self.breaker.allow():
                if self.breaker.state == "rate-limited":
                    raise Unavailable(f"ServiceNow rate limit: {what} deferred until "
                                      f"{_wall(self.breaker.held_until_wall)} (its Retry-After)")
                raise Unavailable(f"ServiceNow circuit open after repeated failures; {what} not attempted")
            delay = self.backoff
            for attempt in range(1, (self.retries if retry else 0) + 2):
                try:
                    result = fn()
                    self.breaker.success()
                    return result
                except Exception as exc:  # noqa: BLE001 - everything is mapped below
                    error, wait = self._map(exc, what)
                if not error.transient:
                    if not isinstance(error, NotFound):
                        self.breaker.success()  # the instance answered: it is alive
                    raise error
                if error.status == 429 and wait is not None and wait > self.max_backoff:
                    # an hourly limit spent: waiting here would hold the caller for up to an hour
                    self.breaker.hold(wait)
                    log.warning("ServiceNow rate limit reached; calls deferred for %.0fs (Retry-After)", wait)
                    raise Unavailable(f"{error}; deferred until {_wall(self.breaker.held_until_wall)} "
                                      "(its Retry-After)")
                self.breaker.failure()
                if not retry or attempt > self.retries or not self.breaker.allow():
                    raise Unavailable(f"{error} (gave up after {attempt} attempt(s))")
                pause = min(self.max_backoff, wait if wait is not None else delay)
                log.warning("ServiceNow %s failed (attempt %d), retrying in %.1fs: %s", what, attempt, pause, error)
                self._sleep(pause + random.uniform(0, pause * 0.1))
                delay = min(self.max_backoff, delay * 2)
        raise AssertionError("unreachable")

    @staticmethod
    def _map(exc: Exception, what: str) -> tuple[ServiceNowError, float | None]:
        """Translate a pysnow/requests exception; return it and any Retry-After in seconds."""
        if isinstance(exc, ServiceNowError):
            return exc, None
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            status = exc.response.status_code
            try:
                message = exc.response.json()["error"]["message"]
            except Exception:  # noqa: BLE001 - not an envelope
                message = exc.response.reason or "error"
            wait = _retry_after(exc.response.headers.get("Retry-After"))
            if status in (401, 403):
                return AuthFailed(f"ServiceNow {what}: {status} {message}", status=status), None
            if status == 404:
                return NotFound(f"ServiceNow {what}: {message}", status=404), None
            transient = status == 429 or status >= 500
            return ServiceNowError(f"ServiceNow {what}: {status} {message}", transient=transient,
                                   status=status), wait
        if isinstance(exc, requests.Timeout):
            return ServiceNowError(f"ServiceNow {what}: timed out", transient=True), None
        if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            return ServiceNowError(f"ServiceNow {what}: connection failed", transient=True), None
        if isinstance(exc, snow_exc.NoResults):
            return NotFound(f"ServiceNow {what}: no record", status=404), None
        if isinstance(exc, (snow_exc.ResponseError, snow_exc.MissingResult, ValueError)):
            return ServiceNowError(f"ServiceNow {what}: unexpected answer ({type(exc).__name__})",
                                   transient=True), None
        if isinstance(exc, requests.RequestException):
            return ServiceNowError(f"ServiceNow {what}: {type(exc).__name__}", transient=True), None
        return ServiceNowError(f"ServiceNow {what}: {type(exc).__name__}: {exc}"), None

    # ------------------------------------------------------------ API
    def query(self, table: str, query: str, fields: list[str] | None = None,
              limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Yield every matching record, a page at a time (offset paging, stable order). An instance
        applies ``sysparm_limit`` before its ACLs remove rows, so a page may come back short, or
        empty, in the middle: the next page starts a whole page further on, and the query ends when
        the instance's count of matches (``X-Total-Count``, counted before its ACLs) says none lie
        further on, or, where it sends no count, at an empty page, or at ``limit`` records. Where rows may change between pages use a keyset (``page`` with a condition
        after the last row read), as ``Tickets.changes_since`` does."""
        if "ORDERBY" not in query:
            query = f"{query}^ORDERBYsys_id" if query else "ORDERBYsys_id"
        offset, seen = 0, 0
        while True:
            size = self.page_size if limit is None else min(self.page_size, limit - seen)
            if size <= 0:
                return
            page = self.page(table, query, fields, size, offset)
            yield from page.rows
            if page.more is False or (page.more is None and not page.rows):
                return
            seen += len(page.rows)
            offset += size

    def page(self, table: str, query: str, fields: list[str] | None, size: int, offset: int = 0) -> Page:
        """One page of a query: at most ``size`` records from ``offset`` (fewer when ACLs hid some),
        and whether the instance counts matches past it."""
        def call() -> Page:
            try:
                response = self._resource(table).get(query=query, fields=fields or [], limit=size, offset=offset)
                rows = list(response.all())
                total = response.headers.get("X-Total-Count", "")
            except requests.HTTPError as exc:  # v1-style "No Record found" for an empty page
                if exc.response is not None and exc.response.status_code == 404:
                    return Page([], False)
                raise
            return Page(rows, int(total) > offset + size if total.isdigit() else None)
        return self._call(f"query {table}", call)

    def journal(self, table: str, sys_id: str, element: str = "work_notes") -> str | None:
        """A record's journal field as the instance shows it (its entries, newest first), read on the
        record itself with ``sysparm_display_value``: what a user allowed to read the record may see,
        unlike ``sys_journal_field``, which needs a role of its own. None when there is no such record."""
        if not sys_id.isalnum() or not re.fullmatch(r"[a-z_]{1,40}", element):
            raise ServiceNowError(f"journal of {sys_id!r}.{element!r} is not valid")

        def call() -> str | None:
            try:
                response = self._resource(table).get(query=f"sys_id={sys_id}", fields=[element], limit=1,
                                                     display_value=True)
                rows = list(response.all())
            except requests.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:
                    return None
                raise
            if not rows:
                return None
            value = rows[0].get(element)
            return str(value.get("display_value", "") if isinstance(value, dict) else value or "")
        return self._call(f"read {table} {element}", call)

    def get(self, table: str, sys_id: str) -> dict[str, Any] | None:
        if not sys_id.isalnum():
            raise ServiceNowError(f"sys_id {sys_id!r} is not valid")
        try:
            return self._call(f"get {table}", lambda: self._resource(table).request(
                "GET", path_append=f"/{sys_id}").one())
        except NotFound:
            return None

    def find_one(self, table: str, query: str, fields: list[str] | None = None) -> dict[str, Any] | None:
        rows = list(self.query(table, query, fields, limit=2))
        if len(rows) > 1:
            raise ServiceNowError(f"ServiceNow query on {table} matched more than one record")
        return rows[0] if rows else None

    def create(self, table: str, payload: Mapping[str, Any], *, retry: bool = True) -> dict[str, Any]:
        return self._call(f"create {table}", lambda: self._resource(table).create(payload=dict(payload)).one(),
                          retry)

    def pause(self, attempt: int) -> None:
        """The backoff before retry ``attempt`` (1-based), for callers that retry themselves."""
        self._sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))

    def update(self, table: str, sys_id: str, payload: Mapping[str, Any], *, retry: bool = True) -> dict[str, Any]:
        """PATCH the given fields only."""
        if not sys_id.isalnum():
            raise ServiceNowError(f"sys_id {sys_id!r} is not valid")
        body = json.dumps(dict(payload))
        return self._call(f"update {table}", lambda: self._resource(table).request(
            "PATCH", path_append=f"/{sys_id}", data=body).one(), retry)
