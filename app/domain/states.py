"""The state machines, as data: the states, every transition the code may perform, and ``require()``.

Every write of a request's state or a grant's status goes through the store's version-checked
``transition()`` (``app/store/requests.py``, ``app/store/grants.py``), which calls ``require()``
first: a transition not in the table is a bug and raises before anything is written.
README's and ARCHITECTURE's diagrams are tested against ``REQUEST_TRANSITIONS``
(``tests/unit/test_states.py``), and so is the claim that every row is exercised.

One winner per race, by construction: every transition is one transaction whose UPDATE names
the version (and state) it read, so of two racing actions exactly one changes the row; the
loser gets ``Conflict`` (exit 4) with nothing done. The approval that completes a request (and
a submit or bypass approved at once) claims its activation, the grant row in 'applying', in the
same transaction, so a cancel, deny or revoke racing it finds either the request still pending
(and then exactly one of the two version-checked UPDATEs succeeds) or an activation running.
"""
from __future__ import annotations

from contextlib import contextmanager
from enum import StrEnum
from typing import Iterable, Iterator, NamedTuple


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    ACTIVE = "active"
    EXPIRED = "expired"
    RELEASED = "released"
    REVOKED = "revoked"
    DENIED = "denied"
    CANCELLED = "cancelled"
    LAPSED = "lapsed"
    FAILED = "failed"


class GrantStatus(StrEnum):
    APPLYING = "applying"
    ACTIVE = "active"
    REVOKING = "revoking"
    REVOKED = "revoked"
    FAILED = "failed"


class ReviewState(StrEnum):
    OPEN = "open"
    JUSTIFIED = "justified"
    VIOLATION = "violation"


class Transition(NamedTuple):
    source: str | None  # None: the row is created in ``target``
    target: str
    by: str  # what causes it, for people reading the table


R, G = RequestState, GrantStatus

# A row whose source equals its target changes other columns under the same optimistic version check.
REQUEST_TRANSITIONS: tuple[Transition, ...] = (
    Transition(None, R.PENDING, "submit, or a ServiceNow change, needing approval"),
    Transition(None, R.APPROVED, "submit or a change approved at once; an emergency bypass"),
    Transition(R.PENDING, R.PENDING, "an approval that is not the last one; escalation"),
    Transition(R.PENDING, R.APPROVED, "the last approval"),
    Transition(R.PENDING, R.DENIED, "deny"),
    Transition(R.PENDING, R.CANCELLED, "cancel; the linked ticket closed"),
    Transition(R.PENDING, R.LAPSED, "no decision in time, or its window passed"),
    Transition(R.APPROVED, R.APPROVED, "its activation claimed; extend before the start"),
    Transition(R.APPROVED, R.ACTIVE, "the grant applied (or taken apart after a crash mid-apply)"),
    Transition(R.APPROVED, R.FAILED, "the backend refused after retries"),
    Transition(R.APPROVED, R.CANCELLED, "cancel or release before the start; the linked ticket closed"),
    Transition(R.APPROVED, R.REVOKED, "revoke before the start"),
    Transition(R.APPROVED, R.LAPSED, "its scheduled window passed before it could start"),
    Transition(R.ACTIVE, R.ACTIVE, "extend; the revocation's intent written"),
    Transition(R.ACTIVE, R.EXPIRED, "the grant removed at expiry"),
    Transition(R.ACTIVE, R.RELEASED, "the grant removed on release"),
    Transition(R.ACTIVE, R.REVOKED, "the grant removed on revoke, or for a closed ticket"),
)

GRANT_TRANSITIONS: tuple[Transition, ...] = (
    Transition(None, G.APPLYING, "the activation's intent, before the backend call"),
    Transition(G.APPLYING, G.APPLYING, "taken over from a dead engine"),
    Transition(G.APPLYING, G.ACTIVE, "the backend applied it"),
    Transition(G.APPLYING, G.FAILED, "the backend refused after retries"),
    Transition(G.APPLYING, G.REVOKING, "found half-applied for a request that ended"),
    Transition(G.ACTIVE, G.ACTIVE, "extended; the expiry warning sent"),
    Transition(G.ACTIVE, G.REVOKING, "expiry, release or revoke: the intent, before the backend call"),
    Transition(G.REVOKING, G.REVOKING, "a failed removal scheduled for a retry; taken over from a dead engine"),
    Transition(G.REVOKING, G.REVOKED, "the backend removed it"),
)

MACHINES = {"request": REQUEST_TRANSITIONS, "grant": GRANT_TRANSITIONS}
_ALLOWED = {name: frozenset((t.source, t.target) for t in table) for name, table in MACHINES.items()}

OPEN_STATES = (R.PENDING, R.APPROVED, R.ACTIVE)
UNSTARTED = (R.PENDING, R.APPROVED)  # open, and nothing applied yet
REVIEW_OUTCOMES = (ReviewState.JUSTIFIED.value, ReviewState.VIOLATION.value)
HOLDING_STATES = (R.APPROVED, R.ACTIVE)  # what counts as held when the policy weighs a new request
FINAL_STATES = tuple(s for s in RequestState if s not in OPEN_STATES)
CLAIMED = (G.APPLYING, G.REVOKING)  # a grant some engine is working on, under a lease
LIVE = (G.ACTIVE, G.APPLYING)  # a grant whose artifact is (or is being) in place
HELD = (G.ACTIVE, G.REVOKING)  # a grant whose holder still has the access

# What follows an approval without anyone acting: its activation's outcome (when the start has come).
AUTOMATIC = frozenset({(R.APPROVED, R.ACTIVE), (R.APPROVED, R.FAILED)})
# Where each open state may go next, counting the automatic step after it: an action finding the
# request there, past a state it accepts, lost a race (or acted on what it saw before someone else
# did): Conflict, exit 4. Further on, it is simply refused for the state the request is in.
NEXT_STATES = {s: tuple(dict.fromkeys(
    [t.target for t in REQUEST_TRANSITIONS if t.source == s and t.target != s]
    + [b for t in REQUEST_TRANSITIONS if t.source == s for a, b in AUTOMATIC if a == t.target and t.target != s]))
    for s in OPEN_STATES}


class IllegalTransition(AssertionError):
    """The code tried a transition that is not in the table: a bug, raised before any write."""


_performed: set[tuple[str, str | None, str]] | None = None  # filled while ``recording()`` runs


def require(machine: str, source: str | None, target: str) -> None:
    """Raise ``IllegalTransition`` unless ``source -> target`` is a row of ``machine``'s table."""
    if (source, target) not in _ALLOWED[machine]:
        raise IllegalTransition(f"{machine}: {source} -> {target} is not in the transition table")
    if _performed is not None:
        _performed.add((machine, source, target))


def require_all(machine: str, pairs: Iterable[tuple[str | None, str]]) -> None:
    for source, target in pairs:
        require(machine, source, target)


@contextmanager
def recording() -> Iterator[set[tuple[str, str | None, str]]]:
    """Collect the transitions ``require()`` passes while the block runs (for the test of the table)."""
    global _performed
    _performed = set()
    try:
        yield _performed
    finally:
        _performed = None
