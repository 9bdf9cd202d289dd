"""A generic JSON webhook (Slack/Teams-compatible ``{"text": ...}``) over httpx."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import httpx


class NotifyError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Webhook:
    """Posts one JSON message per call. The URL is a secret: it never appears in errors."""

    def __init__(self, url: str, *, timeout: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError("webhook URL must be http(s)")
        import httpx  # imported when a webhook is configured, not by every command line
        self._httpx = httpx
        self._url = url
        self._client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def send(self, payload: Mapping[str, Any]) -> None:
        """Post ``payload`` as JSON. Raises ``NotifyError``: transient for timeouts, 429 and 5xx;
        permanent for other refusals and for a payload that is not JSON text (NaN, bytes, lone surrogates)."""
        try:
            body = json.dumps(dict(payload), ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:  # ValueError covers UnicodeEncodeError
            raise NotifyError(f"webhook payload is not JSON text ({type(exc).__name__}: {str(exc)[:80]})",
                              transient=False) from None
        httpx = self._httpx
        try:
            response = self._client.post(self._url, content=body, headers={"Content-Type": "application/json"})
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
