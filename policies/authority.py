"""Who may do what to a request, once: the lifecycle enforces these rules, the console and the CLI
only use them to decide what to offer. Pure: groups and names in, a refusal (or None) out.

Each ``may_*`` returns None when the actor may, or the reason they may not (the lifecycle raises
it as ``Refused`` under the rule's name). Who may *approve* is ``policies/approvals.judge`` (it
needs the approvals given so far); who may extend depends on the fresh decision and is
``may_extend``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from policies.model import PolicySet

DEFAULT_OPERATORS = "security"  # the security operators' group when the policy names no emergency section


def operators(policy: PolicySet) -> str:
    """The security operators' group: the emergency section's reviewers, else ``security``."""
    return policy.emergency.reviewer_group if policy.emergency else DEFAULT_OPERATORS


def may_deny(policy: PolicySet, actor: str, groups: frozenset[str], requester: str,
             approver_groups: Iterable[str]) -> str | None:
    approver_groups = tuple(approver_groups)
    if actor == requester:
        return "a requester cancels their own request ('jit cancel'), not denies it"
    if not groups & (set(approver_groups) | {operators(policy)}):
        return f"{actor} is neither an approver ({', '.join(approver_groups)}) nor a security operator"
    return None


def may_cancel(actor: str, requester: str, request_label: str) -> str | None:
    return None if actor == requester else f"only the requester ({requester}) can cancel {request_label}"


def may_release(actor: str, requester: str, request_label: str) -> str | None:
    return None if actor == requester else f"only {requester} can release {request_label}; operators revoke"


def may_revoke(policy: PolicySet, actor: str, groups: frozenset[str], approver_groups: Iterable[str]) -> str | None:
    if groups & {operators(policy), *approver_groups}:
        return None
    return f"{actor} is not a security operator or an approver of this tier"


def may_review(policy: PolicySet, actor: str, groups: frozenset[str], bypasser: str) -> str | None:
    if actor == bypasser:
        return "the person who bypassed can never review their own bypass"
    reviewers = operators(policy)
    if reviewers not in groups:
        return f"{actor} is not in the reviewer group {reviewers!r}"
    return None


STRICTNESS = ("self-service", "single", "dual")  # approval models, each asking more than the one before


def may_extend(actor: str, groups: frozenset[str], requester: str, granted: str, auto_approved: bool,
               approval: str, approver_groups: Iterable[str], duration_text: str, label: str,
               expires_at: datetime) -> str | None:
    """After the policy allowed the longer request: it needs the stricter of the model the request
    was granted under (``granted``) and the one the longer request needs (``approval``). One
    person extends only what one person could grant: the requester alone within self-service,
    else one approver from the groups the new decision names. A dual-approved request, one
    ServiceNow approved, or a bypass is never extended by one person: more time is a new request
    (starting when this one ends), approved the same way."""
    approver_groups = tuple(approver_groups)
    if granted not in STRICTNESS:
        how = "approved in ServiceNow" if granted == "servicenow" else f"granted as {granted}"
        return (f"{label} was {how}; jit cannot extend it on one person's word. Request the extra time as a "
                f"new request starting at {expires_at:%Y-%m-%d %H:%M} UTC")
    needed = max(granted, approval, key=lambda m: STRICTNESS.index(m) if m in STRICTNESS else len(STRICTNESS))
    if needed not in ("self-service", "single"):
        return (f"{label} needs {needed} approval ({' and '.join(approver_groups)}); one person cannot extend it. "
                f"Request the extra time as a new request starting at {expires_at:%Y-%m-%d %H:%M} UTC")
    if actor == requester and not (auto_approved and needed == "self-service"):
        return (f"extending to {duration_text} needs {needed} approval: an approver from "
                f"{' or '.join(approver_groups)} must extend it")
    if actor != requester and not (groups & set(approver_groups)):
        return f"{actor} is not an approver for this request ({', '.join(approver_groups)})"
    return None


def may_take_credentials(actor: str, requester: str, request_label: str) -> str | None:
    return None if actor == requester else f"only {requester} may take credentials for {request_label}"


def may_fix_drift(policy: PolicySet, actor: str, groups: frozenset[str]) -> str | None:
    group = operators(policy)
    return None if group in groups else f"--fix is for security operators ({group}); {actor} is not one"


@dataclass(frozen=True)
class Capabilities:
    """What a person's groups let them do anywhere in the policy: what the console offers them."""

    can_approve: bool
    can_review: bool
    can_bypass: bool
    can_revoke: bool


def capabilities(policy: PolicySet, groups: frozenset[str]) -> Capabilities:
    approvers = {g for t in policy.tiers.values() for g in t.approver_groups}
    emergency = policy.emergency
    return Capabilities(can_approve=bool(groups & approvers), can_review=operators(policy) in groups,
                        can_bypass=bool(emergency and emergency.group in groups),
                        can_revoke=bool(groups & (approvers | {operators(policy)})))


_OFFERS = {
    "approve": lambda c: c.can_approve,
    "deny": lambda c: c.can_approve or c.can_revoke,  # approvers and security operators
    "revoke": lambda c: c.can_revoke,
    "extend": lambda c: c.can_approve,
    "justified": lambda c: c.can_review,
    "violation": lambda c: c.can_review,
    "bypass": lambda c: c.can_bypass,
}


def offered(caps: Capabilities, action: str) -> bool:
    """Whether to offer ``action`` (an action name) at all; unknown actions are always offered."""
    rule = _OFFERS.get(action)
    return True if rule is None else bool(rule(caps))


def offers(caps: Capabilities) -> list[str]:
    """The gated actions offered, in a fixed order."""
    return [a for a in ("approve", "deny", "revoke", "extend", "bypass") if offered(caps, a)] + (
        ["review"] if caps.can_review else [])
