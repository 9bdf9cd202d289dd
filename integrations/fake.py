"""In-memory backend: a test double for lifecycle code.

Holds one ``Artifact`` per grant id. Set ``fail_apply`` / ``fail_revoke`` to make the
next N calls of that method raise a transient ``BackendError`` (nothing changes then).
``calls`` records every ``(method, grant_id)`` for apply, revoke and inspect, failed
calls included; ``apply_many`` records an ``apply`` per grant (it calls ``apply``) and the
grant ids of each batch in ``batches``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from integrations.base import Artifact, BackendError, GrantSpec


class FakeBackend:
    """A ``Backend`` that keeps its artifacts in a dict keyed by grant id."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.artifacts: dict[int | str, Artifact] = {}  # by grant id, or by shared key when shared
        self.fail_apply: int = 0
        self.fail_revoke: int = 0
        self.calls: list[tuple[str, int]] = []
        self.batches: list[list[int]] = []
        self.shared = False

    def validate_role(self, params: Mapping[str, Any]) -> list[str]:
        """Accept any mapping."""
        return [] if isinstance(params, Mapping) else ["params: must be a mapping"]

    def shared_key(self, grant: GrantSpec) -> str | None:
        """With ``shared`` set, grants of one person on one target and role share one artifact."""
        return f"fake:{grant.target}|{grant.role}|{grant.person}" if self.shared else None

    def apply(self, grant: GrantSpec) -> str:
        """Store (or replace) the grant's artifact; return its ref."""
        self.calls.append(("apply", grant.grant_id))
        if self.fail_apply > 0:
            self.fail_apply -= 1
            raise BackendError(f"fake: apply of grant {grant.grant_id} failed", transient=True)
        ref = self.shared_key(grant) or f"fake:{grant.grant_id}"
        self.artifacts[self._key(grant)] = Artifact(
            ref=ref,
            grant_id=grant.grant_id,
            person=grant.person,
            target=grant.target,
            role=grant.role,
            not_before=grant.starts_at,
            not_after=grant.expires_at,
            details=dict(grant.params),
        )
        return ref

    def apply_many(self, grants: Sequence[GrantSpec]) -> list[str | BackendError]:
        """``apply`` for each grant in turn (each counts against ``fail_apply``), failures as values."""
        self.batches.append([g.grant_id for g in grants])
        results: list[str | BackendError] = []
        for grant in grants:
            try:
                results.append(self.apply(grant))
            except BackendError as exc:
                results.append(exc)
        return results

    def revoke(self, grant: GrantSpec) -> None:
        """Drop the grant's artifact; succeed when it is already gone."""
        self.calls.append(("revoke", grant.grant_id))
        if self.fail_revoke > 0:
            self.fail_revoke -= 1
            raise BackendError(f"fake: revoke of grant {grant.grant_id} failed", transient=True)
        self.artifacts.pop(self._key(grant), None)

    def inspect(self, grant: GrantSpec) -> Artifact | None:
        """Return the stored artifact, or None."""
        self.calls.append(("inspect", grant.grant_id))
        return self.artifacts.get(self._key(grant))

    def list_managed(self) -> list[Artifact]:
        """Return every stored artifact, by grant id."""
        return [self.artifacts[k] for k in sorted(self.artifacts, key=str)]

    def _key(self, grant: GrantSpec) -> int | str:
        return self.shared_key(grant) or grant.grant_id
