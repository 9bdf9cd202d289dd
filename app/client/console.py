"""The console's data over the API: ``RemoteConsoleData`` answers what ``app.queries.console.ConsoleData``
answers, each read and action one call to ``jit server``, so the same screens run on either.

Live updates: a background thread follows ``/v1/events`` on its own connection and keeps the
newest audit sequence number it has seen; ``change_token()`` returns that number without a call.
The stream reconnects (after the last number seen) when it breaks, and stops on ``close()``."""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from app.client.connection import Client, ClientSettings
from app.domain.console import ActiveItem, AuditItem, EngineStatus, Health, Operator, QueueItem, ticket_from_json
from app.domain.views import Outcome, RequestView
from policies.durations import format_duration

log = logging.getLogger("jit.client")
RETRY_SECONDS = 1.0


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class RemoteConsoleData:
    """``ConsoleData`` through ``client``; the event stream has a connection of its own, to the
    same server with the same settings."""

    poll_seconds = 0.1  # how often the console asks change_token(): a read of memory here...
    token_in_memory = True  # ...so the console asks on its own loop, without a worker thread

    def __init__(self, client: Client, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.client = client
        self.clock = clock
        self.operator = Operator.from_whoami(client.get("/v1/whoami"))
        self.person = self.operator.person
        self._lock = threading.Lock()  # one connection: one call at a time (workers run in threads)
        self._seq = int(self._get("/v1/audit/head")["seq"])  # the stream brings what comes after
        self._stop = threading.Event()
        self._stream: Client | None = None
        self._follower: threading.Thread | None = None

    # ------------------------------------------------------------ live updates
    def start(self) -> None:
        """Follow ``/v1/events`` in a daemon thread (until ``close()``)."""
        if self._follower is None:
            self._follower = threading.Thread(target=self._follow, name="jit-console-events", daemon=True)
            self._follower.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._stream = Client(self.client.settings)
            try:
                for line in self._stream.lines("/v1/events", {"after": self._seq}):
                    if self._stop.is_set():
                        return
                    if line.startswith("id: ") and line[4:].isdigit():
                        self._seq = max(self._seq, int(line[4:]))
            except Exception as exc:  # noqa: BLE001 - the server went away: try again, keep the last number
                if not self._stop.is_set():
                    log.debug("events stream: %s", exc)
            finally:
                self._stream.close()
            self._stop.wait(RETRY_SECONDS)

    def change_token(self) -> int:
        """The newest audit sequence number seen: the head when connecting, then what the event
        stream brings (a read of memory, no network call)."""
        self.start()
        return self._seq

    def close(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.interrupt()  # wakes the thread blocked reading the stream
        if self._follower is not None:
            self._follower.join(5)
        with self._lock:
            self.client.close()

    # ------------------------------------------------------------------ reads
    def _get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        with self._lock:
            return self.client.get(path, query)

    def _post(self, path: str, body: dict[str, Any] | None = None) -> str:
        with self._lock:
            outcome = Outcome.from_json(self.client.post(path, body))
        return " ".join([outcome.message, *outcome.notes])

    def queue(self) -> list[QueueItem]:
        return [QueueItem.from_json(d) for d in self._get("/v1/console/queue")["items"]]

    def active(self) -> list[ActiveItem]:
        return [ActiveItem.from_json(d) for d in self._get("/v1/console/active")["items"]]

    def reviews(self) -> list[RequestView]:
        return [RequestView.from_json(d) for d in self._get("/v1/console/reviews")["items"]]

    def request(self, request_id: int) -> RequestView:
        return RequestView.from_json(self._get(f"/v1/requests/{request_id}"))

    def history(self, request_id: int) -> list[AuditItem]:
        return [AuditItem.from_json(d) for d in self._get(f"/v1/requests/{request_id}/history")["items"]]

    def audit(self, text: str = "", limit: int = 500) -> list[AuditItem]:
        return [AuditItem.from_json(d) for d in self._get("/v1/console/audit", {"text": text, "limit": limit})["items"]]

    def event(self, seq: int) -> dict[str, Any]:
        return self._get("/v1/console/event", {"seq": seq})

    def audit_status(self) -> tuple[bool, str]:
        result = self._get("/v1/audit/verify")
        return bool(result["ok"]), result["message"]

    def ticket(self, number: str) -> dict[str, Any] | None:
        return ticket_from_json(self._get(f"/v1/tickets/{number}")["ticket"])

    def health(self) -> Health:
        return Health.from_json(self._get("/v1/console/health"))

    def engine_status(self) -> EngineStatus:
        return EngineStatus.from_json(self._get("/v1/console/engines"))

    def bypass_choices(self) -> list[tuple[str, str]]:
        return [(target, role) for target, role in self._get("/v1/console/bypass-choices")["items"]]

    def keymap(self) -> dict[str, str]:
        """The server's ``[console] keys``: binding id to key(s)."""
        return dict(self._get("/v1/console/settings")["keys"])

    # ---------------------------------------------------------------- actions
    def approve(self, request_id: int, comment: str = "") -> str:
        return self._post(f"/v1/requests/{request_id}/approve", {"comment": comment})

    def deny(self, request_id: int, reason: str) -> str:
        return self._post(f"/v1/requests/{request_id}/deny", {"reason": reason})

    def revoke(self, request_id: int, reason: str) -> str:
        return self._post(f"/v1/requests/{request_id}/revoke", {"reason": reason})

    def extend(self, request_id: int, by: timedelta, reason: str) -> str:
        return self._post(f"/v1/requests/{request_id}/extend", {"by": format_duration(by), "reason": reason})

    def bypass(self, target: str, role: str, duration: timedelta, incident: str, reason: str) -> str:
        return self._post("/v1/bypass", {"target": target, "role": role, "duration": format_duration(duration),
                                         "incident": incident, "reason": reason})

    def review(self, request_id: int, outcome: str, comment: str) -> str:
        return self._post(f"/v1/requests/{request_id}/review", {"outcome": outcome, "comment": comment})


def connect(settings: ClientSettings) -> RemoteConsoleData:
    """The console's data from the server ``settings`` name (raises ServerUnavailable when none answers)."""
    return RemoteConsoleData(Client(settings))
