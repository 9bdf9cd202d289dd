"""The port every elevation backend implements, and the DTOs that cross it.

A backend turns one grant into an artifact on a real system (a sudoers drop-in,
a group membership, an IAM policy) and takes it away again. Every method is
idempotent: applying twice leaves one artifact, revoking what is gone succeeds.
No vendor exception escapes a backend: each is mapped to a ``BackendError``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable


class BackendError(Exception):
    """A backend could not do what was asked. ``transient`` errors may be retried."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class InvalidGrant(BackendError):
    """The grant carries a value the backend refuses to write (bad username, command...).

    Never transient: retrying cannot help. Nothing has been written."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class GrantSpec:
    """What one grant asks of a backend."""

    grant_id: int
    request_id: int
    person: str
    target: str
    role: str
    starts_at: datetime  # aware, UTC
    expires_at: datetime  # aware, UTC
    params: Mapping[str, Any] = field(default_factory=dict)  # the role's backend settings

    def check_window(self) -> None:
        """Raise ``InvalidGrant`` unless both ends are aware datetimes and the window is not empty."""
        for field_name in ("starts_at", "expires_at"):
            value = getattr(self, field_name)
            if not isinstance(value, datetime) or value.utcoffset() is None:
                raise InvalidGrant(field_name, "must be a timezone-aware datetime")
        if self.expires_at <= self.starts_at:
            raise InvalidGrant("expires_at", "must be later than starts_at")


@dataclass(frozen=True)
class Artifact:
    """What a system really holds for a grant this product manages."""

    ref: str  # backend reference: a file path, a group DN, an assignment id
    grant_id: int | None  # the grant it names, when the artifact says so
    person: str
    target: str | None = None
    role: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """An elevation backend. ``__init__`` validates settings and does no I/O."""

    name: str

    def validate_role(self, params: Mapping[str, Any]) -> list[str]:
        """Return one message per problem in a role's backend settings (empty when valid)."""
        ...

    def shared_key(self, grant: GrantSpec) -> str | None:
        """Identity of the artifact when several grants can share it (one LDAP group membership of
        one person), so the lifecycle keeps it until the last grant covering it ends; None when
        every grant has an artifact of its own (a sudoers file per grant). Does no I/O."""
        ...

    def apply(self, grant: GrantSpec) -> str:
        """Create or refresh the artifact for ``grant``; return its reference.

        Raises ``InvalidGrant`` (nothing written) or ``BackendError``."""
        ...

    def revoke(self, grant: GrantSpec) -> None:
        """Remove the artifact for ``grant``; succeed when it is already gone.

        Raises ``BackendError`` when it may still exist."""
        ...

    def inspect(self, grant: GrantSpec) -> Artifact | None:
        """Return what the system holds for ``grant`` now, or None. Raises ``BackendError``."""
        ...

    def list_managed(self) -> list[Artifact]:
        """Return every artifact this product manages on the system. Raises ``BackendError``."""
        ...


@runtime_checkable
class BatchApply(Protocol):
    """What a backend may add when applying many grants at once is cheaper than one at a time (the
    sudo backend checks a batch of drop-ins with one ``visudo`` run). Optional: the lifecycle
    calls ``apply`` per grant on a backend without it."""

    def apply_many(self, grants: Sequence[GrantSpec]) -> list[str | BackendError]:
        """``apply`` for each grant: per grant, in order, its reference or the ``BackendError``
        (``InvalidGrant`` included) that ``apply`` would have raised for it. One grant's failure
        does not stop the others. Raises nothing itself."""
        ...
