"""Who may approve a request, and when its approvals are complete. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations
from typing import Iterable


@dataclass(frozen=True)
class Approver:
    person: str
    groups: frozenset[str]


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str
    complete: bool = False


def covered(required: tuple[str, ...], approvers: Iterable[Approver]) -> int:
    """How many required groups distinct approvers cover (a maximum matching; groups are few)."""
    return _covered(tuple(required), tuple(frozenset(a.groups) for a in approvers))


@lru_cache(maxsize=1024)  # the sync weighs thousands of changes approved by the same few people
def _covered(required: tuple[str, ...], groups: tuple[frozenset[str], ...]) -> int:
    slots = [*groups, *([None] * len(required))]
    return max((sum(1 for g, a in zip(required, order) if a is not None and g in a)
                for order in permutations(slots, len(required))), default=0)


def _uncovered(required: tuple[str, ...], prior: list[Approver]) -> str:
    missing = [g for g in required if not any(g in a.groups for a in prior)]
    return " or ".join(missing or required)


def approvals_needed(model: str, required: tuple[str, ...]) -> int:
    """How many approvals complete a request: one, or one per required group (dual)."""
    return 1 if model in ("single", "self-service") else len(required)


def judge(model: str, required: tuple[str, ...], requester: str, prior: list[Approver], new: Approver) -> Verdict:
    """May ``new`` approve now, and does it complete the approvals?"""
    if new.person == requester:
        return Verdict(False, "a requester can never approve their own request.")
    if any(a.person == new.person for a in prior):
        return Verdict(False, f"{new.person} has already approved this request; one person counts once.")
    if not set(required) & new.groups:
        return Verdict(False, f"{new.person} is in none of the approver groups ({', '.join(required)}).")
    needed = approvals_needed(model, required)
    before = covered(required, prior) if model == "dual" else len(prior)
    after = covered(required, [*prior, new]) if model == "dual" else len(prior) + 1
    if after <= before:
        return Verdict(False, f"{new.person} adds no coverage: dual approval still needs a member of "
                              f"{_uncovered(required, prior)} other than those who approved.")
    if after >= needed:
        return Verdict(True, f"approved by {new.person}; approvals complete ({after} of {needed}).", True)
    return Verdict(True, f"approved by {new.person}; {after} of {needed} approvals, "
                         f"still needs a member of {_uncovered(required, [*prior, new])}.")


def tally(model: str, required: tuple[str, ...], requester: str,
          approvers: Iterable[Approver]) -> tuple[list[Approver], list[str], bool]:
    """Approvals given elsewhere (ServiceNow's approvers of a change), weighed in the order given by
    the rules jit's own approvals follow (``judge``): those that count, why each other does not,
    and whether the ones that count complete the request."""
    counted: list[Approver] = []
    ignored: list[str] = []
    for approver in approvers:
        verdict = judge(model, required, requester, counted, approver)
        if not verdict.allowed:
            ignored.append(verdict.message)
            continue
        counted.append(approver)
        if verdict.complete:
            return counted, ignored, True
    return counted, ignored, False
