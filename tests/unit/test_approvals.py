"""policies.approvals: judge() and covered()."""
from __future__ import annotations

import pytest

from policies.approvals import Approver, covered, judge

DUAL = ("managers", "system-owners")


def ap(person: str, *groups: str) -> Approver:
    return Approver(person, frozenset(groups))


M1, M2 = ap("mia", "managers"), ap("max", "managers")
S1 = ap("sam", "system-owners")
B1, B2 = ap("bea", "managers", "system-owners"), ap("bob", "managers", "system-owners")
X = ap("xav", "engineers")


@pytest.mark.parametrize(("model", "required", "prior", "new", "allowed", "complete", "fragment"), [
    # refusals
    ("dual", DUAL, [], ap("alice", "managers"), False, False, "never approve their own"),
    ("single", ("managers",), [], ap("alice", "managers"), False, False, "never approve their own"),
    ("dual", DUAL, [M1], ap("mia", "managers", "system-owners"), False, False, "counts once"),
    ("single", ("managers",), [], X, False, False, "none of the approver groups"),
    ("dual", DUAL, [M1], X, False, False, "none of the approver groups"),
    ("dual", DUAL, [M1], M2, False, False, "adds no coverage"),
    ("dual", DUAL, [S1], ap("sue", "system-owners"), False, False, "adds no coverage"),
    # acceptances
    ("single", ("managers",), [], M1, True, True, "approvals complete (1 of 1)"),
    ("self-service", ("managers",), [], M1, True, True, "approvals complete"),
    ("dual", DUAL, [], M1, True, False, "still needs a member of system-owners"),
    ("dual", DUAL, [], B1, True, False, "1 of 2"),
    ("dual", DUAL, [M1], S1, True, True, "approvals complete (2 of 2)"),
    ("dual", DUAL, [S1], M1, True, True, "approvals complete (2 of 2)"),
    ("dual", DUAL, [B1], S1, True, True, "approvals complete"),
    ("dual", DUAL, [B1], M1, True, True, "approvals complete"),
    ("dual", DUAL, [B1], B2, True, True, "approvals complete"),
    ("dual", DUAL, [M1], B1, True, True, "approvals complete"),
])
def test_judge(model, required, prior, new, allowed, complete, fragment) -> None:
    verdict = judge(model, required, "alice", prior, new)
    assert (verdict.allowed, verdict.complete) == (allowed, complete)
    assert fragment in verdict.message


def test_judge_no_coverage_names_missing_group() -> None:
    verdict = judge("dual", DUAL, "alice", [M1], M2)
    assert "system-owners" in verdict.message and "managers or" not in verdict.message


@pytest.mark.parametrize(("required", "approvers", "expected"), [
    (DUAL, [], 0),
    (DUAL, [X], 0),
    (DUAL, [M1], 1),
    (DUAL, [M1, M2], 1),          # two managers cover one group
    (DUAL, [M1, S1], 2),
    (DUAL, [B1], 1),              # one person fills one slot only
    (DUAL, [B1, B2], 2),
    (DUAL, [B1, M1], 2),          # bea must take system-owners for the maximum
    (DUAL, [M1, B1], 2),          # order does not matter
    (DUAL, [S1, B1, X], 2),
    (("a", "b", "c"), [ap("p", "a", "b"), ap("q", "a")], 2),
    (("a", "b", "c"), [ap("p", "a", "b"), ap("q", "a"), ap("r", "b", "c")], 3),
    (("managers",), [M1, M2], 1),
    ((), [M1], 0),
])
def test_covered(required, approvers, expected) -> None:
    assert covered(required, approvers) == expected
