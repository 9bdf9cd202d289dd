"""Which actions the console offers an operator. Only what to show: the lifecycle still decides."""
from __future__ import annotations

from app.console_data import Operator

_OFFERS = {
    "approve": lambda op: op.can_approve,
    "deny": lambda op: op.can_approve or op.can_revoke,  # approvers and security operators
    "revoke": lambda op: op.can_revoke,
    "extend": lambda op: op.can_approve,
    "justified": lambda op: op.can_review,
    "violation": lambda op: op.can_review,
    "bypass": lambda op: op.can_bypass,
}


def offered(operator: Operator, action: str) -> bool:
    """Whether to offer ``action`` (an action name); unknown actions are always offered."""
    rule = _OFFERS.get(action)
    return True if rule is None else bool(rule(operator))


def may(operator: Operator) -> list[str]:
    """The gated actions this operator is offered, in a fixed order."""
    return [a for a in ("approve", "deny", "revoke", "extend", "bypass") if offered(operator, a)] + (
        ["review"] if operator.can_review else [])
