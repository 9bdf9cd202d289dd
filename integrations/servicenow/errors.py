"""ServiceNow's failures as the product sees them, importable without pysnow or requests
(``client.py`` maps their exceptions to these at the boundary)."""
from __future__ import annotations


class ServiceNowError(Exception):
    """A ServiceNow call failed. ``transient`` ones may succeed later."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class NotFound(ServiceNowError):
    pass


class AuthFailed(ServiceNowError):
    pass


class Unavailable(ServiceNowError):
    """The instance is unreachable or the circuit breaker is open."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)
