"""Inputs and outputs of a policy evaluation: plain frozen dataclasses and named tuples, no I/O."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple


@dataclass(frozen=True)
class Holding:
    """An elevation the requester holds or has been granted for a period."""

    target: str
    role: str
    starts_at: datetime
    expires_at: datetime

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.starts_at < end and start < self.expires_at


@dataclass(frozen=True)
class AccessRequest:
    """What a person asks for."""

    requester: str
    target: str
    role: str
    starts_at: datetime  # aware
    duration: timedelta
    reason: str
    ticket: str | None = None

    @property
    def expires_at(self) -> datetime:
        return self.starts_at + self.duration


@dataclass(frozen=True)
class TicketFacts:
    """What ServiceNow says about the referenced ticket, gathered by the caller.

    ``status`` is "found", "missing" (no such ticket) or "unavailable" (ServiceNow did not answer)."""

    number: str
    status: str
    kind: str = ""  # change | incident | item
    state: str = ""
    approval: str = ""
    start: datetime | None = None
    end: datetime | None = None
    assignee: str | None = None
    group_name: str | None = None
    group_members: frozenset[str] = frozenset()
    blackouts: tuple[tuple[str, datetime, datetime], ...] = ()
    error: str = ""
    active: bool = True  # ServiceNow's flag: false once the ticket is closed
    sys_id: str = ""  # the ticket's identity in ServiceNow (its number is only a display value)


@dataclass(frozen=True)
class Context:
    """What the policy needs to know about the requester, gathered by the caller."""

    groups: frozenset[str] = frozenset()
    holdings: tuple[Holding, ...] = ()  # the requester's other requests that count (see LifecycleBase._context)
    unreviewed_bypasses: int = 0
    uncleared_violations: tuple[int, ...] = ()  # the bypasses (request ids) reviewed as violations, not cleared
    ticket: TicketFacts | None = None  # None: no ServiceNow configured, only the format is checked


class Check(NamedTuple):  # (a frozen dataclass took 5 us to build; the sync builds 11 per change)
    name: str
    passed: bool
    message: str


@dataclass(frozen=True)
class Decision:
    checks: tuple[Check, ...]
    approval: str  # self-service | single | dual | emergency
    approver_groups: tuple[str, ...] = ()
    environment: str | None = None
    tier: str | None = None
    backend: str | None = None
    params: dict = field(default_factory=dict)
    allowed: bool = field(init=False)  # every check passed (computed once: the checks never change)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", all(c.passed for c in self.checks))

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    @property
    def auto_approved(self) -> bool:
        """Approved at once: self-service within the threshold, or an emergency bypass."""
        return self.allowed and self.approval in ("self-service", "emergency")

    def refusal(self) -> str:
        """The failing checks, ``name: message`` each, joined by "; " (a message's own full stop
        dropped there, so the join never reads ".; "). ``split_refusal`` takes it apart again."""
        return "; ".join(f"{c.name}: {c.message.rstrip('.') if i < len(self.failures) - 1 else c.message}"
                         for i, c in enumerate(self.failures))


_NEXT_CHECK = re.compile(r"; (?=[a-z][a-z0-9_]*: )")


def split_refusal(message: str) -> list[str]:
    """``Decision.refusal()``'s text as one ``name: message`` per failing check."""
    return _NEXT_CHECK.split(message)
