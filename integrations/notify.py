"""A generic JSON webhook (Slack/Teams-compatible ``{"text": ...}``) over httpx.

Its text is escaped for the receiver's markup (Slack's: ``&``, ``<``, ``>``), so what a person typed
(a reason with ``<!channel>`` or a disguised ``<https://...|link>``) reaches approvers as plain
text. With a shared secret each message is signed as Slack and GitHub sign theirs: the headers
``X-Jit-Request-Timestamp`` (Unix seconds) and ``X-Jit-Signature: v1=<hex>``, the HMAC-SHA256 of
``v1:<timestamp>:<body>`` under the secret; a receiver recomputes it, compares in constant time and
refuses a timestamp more than five minutes off (``verify``, the check README shows).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import httpx


class NotifyError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


REPLAY_WINDOW_S = 300  # a receiver refuses a signature whose timestamp is further off than this


def escape_markup(text: str) -> str:
    """Slack's escaping of message text: ``&``, ``<`` and ``>`` as entities (links, mentions and
    ``<!channel>`` are written with angle brackets, so none can be typed into a message)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``v1=`` and the hex HMAC-SHA256 of ``v1:<timestamp>:<body>`` under ``secret``."""
    return "v1=" + hmac.new(secret, b"v1:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, given: str, now: float | None = None) -> bool:
    """A receiver's check: the signature matches (constant time) and the timestamp is recent."""
    try:
        fresh = abs((time.time() if now is None else now) - int(timestamp)) <= REPLAY_WINDOW_S
    except ValueError:
        return False
    return fresh and hmac.compare_digest(signature(secret, timestamp, body), given)


class Webhook:
    """Posts one JSON message per call. The URL and the signing secret are secrets: neither appears
    in errors."""

    def __init__(self, url: str, *, timeout: float = 5.0, transport: httpx.BaseTransport | None = None,
                 secret: str | None = None, clock: Callable[[], float] = time.time) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError("webhook URL must be http(s)")
        import httpx  # imported when a webhook is configured, not by every command line
        self._httpx = httpx
        self._url = url
        self._secret = secret.encode() if secret else None
        self._clock = clock
        self._client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    @property
    def signed(self) -> bool:
        return self._secret is not None

    def send(self, payload: Mapping[str, Any]) -> None:
        """Post ``payload`` as JSON. Raises ``NotifyError``: transient for timeouts, 429 and 5xx;
        permanent for other refusals and for a payload that is not JSON text (NaN, bytes, lone surrogates)."""
        payload = dict(payload)
        if isinstance(payload.get("text"), str):
            payload["text"] = escape_markup(payload["text"])
        try:
            body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:  # ValueError covers UnicodeEncodeError
            raise NotifyError(f"webhook payload is not JSON text ({type(exc).__name__}: {str(exc)[:80]})",
                              transient=False) from None
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            timestamp = str(int(self._clock()))
            headers["X-Jit-Request-Timestamp"] = timestamp
            headers["X-Jit-Signature"] = signature(self._secret, timestamp, body)
        httpx = self._httpx
        try:
            response = self._client.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise NotifyError("webhook timed out", transient=True) from None
        except httpx.HTTPError as exc:
            raise NotifyError(f"webhook unreachable ({type(exc).__name__})", transient=True) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise NotifyError(f"webhook answered {response.status_code}", transient=True)
        if response.status_code >= 300:
            raise NotifyError(f"webhook refused the message ({response.status_code})", transient=False)

    def close(self) -> None:
        self._client.close()
