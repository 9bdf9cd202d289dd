"""policies.checks and policies.evaluate against the shipped default.toml, on a fixed clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from policies import checks
from policies.decision import AccessRequest, Context, Holding
from policies.evaluate import evaluate, evaluate_bypass
from policies.loader import load_policy

DEFAULT = Path(__file__).parents[2] / "policies" / "default.toml"
POLICY = load_policy(DEFAULT)
UTC = timezone.utc
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # a Tuesday; London is on GMT (= UTC)
H = timedelta(hours=1)
REASON = "restart nginx after the config deploy"
ENGINEER = Context(groups=frozenset({"engineers"}))
ONCALL = Context(groups=frozenset({"oncall"}))
COMMANDS = ["/usr/bin/systemctl restart nginx", "/usr/bin/systemctl status nginx", "/usr/bin/journalctl -u nginx"]


def req(target: str = "web-prod-01", role: str = "service-admin", duration: timedelta = H,
        reason: str = REASON, ticket: str | None = "CHG0001234", start: datetime = T0) -> AccessRequest:
    return AccessRequest("alice", target, role, start, duration, reason, ticket)


def hold(target: str, role: str, start: datetime, end: datetime) -> Holding:
    return Holding(target, role, start, end)


def tier_of(target: str):
    return POLICY.tiers[POLICY.targets[target].tier]


# --- business_need -------------------------------------------------------------------------------

@pytest.mark.parametrize(("target", "reason", "ticket", "passed", "fragment"), [
    ("web-prod-01", "fix", "CHG0001234", False, "at least 10 characters"),
    ("web-prod-01", "   short   ", "CHG0001234", False, "(got 5)"),
    ("web-prod-01", REASON, None, False, "requires a ticket"),
    ("web-prod-01", REASON, "   ", False, "requires a ticket"),
    ("web-prod-01", REASON, "CHG12", False, "'CHG12' is not a valid reference"),
    ("web-prod-01", REASON, "chg0000001", False, "is not a valid reference"),
    ("web-prod-01", REASON, "CHG0000001; DROP", False, "is not a valid reference"),
    ("web-prod-01", REASON, "XYZ0000001", False, "is not a valid reference"),
    ("web-prod-01", REASON, "CHG0000001", True, "under ticket CHG0000001"),
    ("web-prod-01", REASON, " RITM0000001 ", True, "under ticket RITM0000001"),
    ("web-dev-01", REASON, None, True, "justified"),
    ("web-dev-01", REASON, "CHG12", False, "is not a valid reference"),  # a given ticket must be valid anywhere
])
def test_business_need(target, reason, ticket, passed, fragment) -> None:
    check = checks.business_need(POLICY, req(target, reason=reason, ticket=ticket), tier_of(target))
    assert (check.name, check.passed) == ("business_need", passed)
    assert fragment in check.message


# --- privilege_appropriate -----------------------------------------------------------------------

@pytest.mark.parametrize(("target", "role", "groups", "passed", "fragment"), [
    ("db-prod-01", "service-admin", {"engineers"}, False, "'db-prod-01' is not managed"),
    ("web-prod-01", "root", {"engineers"}, False, "has no role 'root'"),
    ("web-prod-01", "service-admin", {"security"}, False, "none of the groups eligible"),
    ("web-prod-01", "service-admin", set(), False, "none of the groups eligible"),
    ("web-prod-01", "log-auditor", {"oncall"}, False, "none of the groups eligible"),
    ("web-prod-01", "service-admin", {"engineers"}, True, "through engineers"),
    ("web-prod-01", "service-admin", {"oncall", "security"}, True, "through oncall"),
    ("web-prod-01", "log-auditor", {"security"}, True, "through security"),
])
def test_privilege_appropriate(target, role, groups, passed, fragment) -> None:
    check = checks.privilege_appropriate(POLICY, req(target, role), Context(groups=frozenset(groups)))
    assert (check.name, check.passed) == ("privilege_appropriate", passed)
    assert fragment in check.message


# --- duration_reasonable -------------------------------------------------------------------------

@pytest.mark.parametrize(("target", "duration", "passed", "fragment"), [
    ("web-prod-01", timedelta(hours=8), True, "within the 8h maximum"),
    ("web-prod-01", timedelta(hours=8, minutes=1), False, "8h1m exceeds the 8h maximum for production"),
    ("web-dev-01", timedelta(hours=24), True, "within the 1d maximum"),
    ("web-dev-01", timedelta(hours=25), False, "1d1h exceeds the 1d maximum for non-production"),
    ("web-dev-01", timedelta(0), False, "longer than zero"),
])
def test_duration_reasonable(target, duration, passed, fragment) -> None:
    env_name = POLICY.targets[target].environment
    check = checks.duration_reasonable(req(target, duration=duration), POLICY.environments[env_name].max_duration,
                                       env_name)
    assert (check.name, check.passed) == ("duration_reasonable", passed)
    assert fragment in check.message


# --- separation_of_duties ------------------------------------------------------------------------

@pytest.mark.parametrize(("role", "held", "passed"), [
    ("service-admin", hold("web-prod-01", "log-auditor", T0 - H, T0 + H), False),
    ("service-admin", hold("web-prod-01", "log-auditor", T0 + 30 * timedelta(minutes=1), T0 + 3 * H), False),
    ("log-auditor", hold("web-prod-01", "service-admin", T0 - H, T0 + H), False),  # reverse direction
    ("service-admin", hold("web-prod-01", "log-auditor", T0 - 3 * H, T0 - H), True),  # ended before start
    ("service-admin", hold("web-prod-01", "log-auditor", T0 - H, T0), True),  # ends exactly at start
    ("service-admin", hold("web-prod-01", "log-auditor", T0 + H, T0 + 2 * H), True),  # starts at expiry
    ("log-auditor", hold("web-prod-01", "log-auditor", T0 - H, T0 + H), True),  # same role: no rule
    ("service-admin", hold("web-dev-01", "service-admin", T0 - H, T0 + H), True),  # other target
])
def test_separation_of_duties(role, held, passed) -> None:
    check = checks.separation_of_duties(POLICY, req(role=role), Context(holdings=(held,)))
    assert (check.name, check.passed) == ("separation_of_duties", passed)
    if not passed:
        assert f"conflicts with {held.role} on web-prod-01" in check.message
        assert "must not also audit its logs" in check.message


def test_separation_of_duties_message_is_in_utc() -> None:
    start = datetime(2026, 7, 7, 10, 0, tzinfo=UTC)
    london = ZoneInfo("Europe/London")
    held = hold("web-prod-01", "log-auditor", start.astimezone(london), datetime(2026, 7, 7, 13, 0, tzinfo=london))
    check = checks.separation_of_duties(POLICY, req(role="service-admin", start=start), Context(holdings=(held,)))
    assert not check.passed
    assert "held until 2026-07-07 12:00 UTC" in check.message


# --- approved_hours ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def london(tmp_path_factory: pytest.TempPathFactory):
    old = ('max_duration = "8h"\ntimezone = "UTC"\ndays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\n'
           'hours = "00:00-24:00"')
    new = ('max_duration = "8h"\ntimezone = "Europe/London"\ndays = ["mon", "tue", "wed", "thu", "fri"]\n'
           'hours = "08:00-18:00"')
    text = DEFAULT.read_text()
    assert text.count(old) == 1
    path = tmp_path_factory.mktemp("policy") / "london.toml"
    path.write_text(text.replace(old, new))
    return load_policy(path)


@pytest.mark.parametrize(("start", "passed", "fragment"), [
    (datetime(2026, 11, 28, 12, 0, tzinfo=UTC), False, "Sat 12:00 Europe/London is outside"),
    (datetime(2026, 11, 29, 12, 0, tzinfo=UTC), False, "Sun 12:00"),
    (datetime(2026, 11, 24, 7, 59, tzinfo=UTC), False, "Tue 07:59 Europe/London is outside"),
    (datetime(2026, 11, 24, 8, 0, tzinfo=UTC), True, "Tue 08:00 Europe/London is within"),
    (datetime(2026, 11, 24, 17, 59, tzinfo=UTC), True, "Tue 17:59"),
    (datetime(2026, 11, 24, 18, 0, tzinfo=UTC), False, "Tue 18:00"),
    # British Summer Time began on 2026-03-29: 07:30 UTC is 08:30 local on the Monday after ...
    (datetime(2026, 3, 30, 7, 30, tzinfo=UTC), True, "Mon 08:30 Europe/London is within"),
    # ... but 07:30 local on the Friday before.
    (datetime(2026, 3, 27, 7, 30, tzinfo=UTC), False, "Fri 07:30 Europe/London is outside"),
    # 17:30 UTC in summer is 18:30 local: outside.
    (datetime(2026, 7, 7, 17, 30, tzinfo=UTC), False, "Tue 18:30"),
    # Friday 23:30 in New York is Saturday 04:30 in London: the local day decides.
    (datetime(2026, 11, 27, 23, 30, tzinfo=ZoneInfo("America/New_York")), False, "Sat 04:30"),
])
def test_approved_hours(london, start, passed, fragment) -> None:
    check = checks.approved_hours(req(start=start), "production", london.environments["production"])
    assert (check.name, check.passed) == ("approved_hours", passed)
    assert fragment in check.message
    if not passed:
        assert "(mon, tue, wed, thu, fri 08:00-18:00 Europe/London)" in check.message


def test_approved_hours_default_is_always_open() -> None:
    check = checks.approved_hours(req(start=datetime(2026, 11, 29, 23, 59, tzinfo=UTC)), "production",
                                  POLICY.environments["production"])
    assert check.passed


# --- concurrency ---------------------------------------------------------------------------------

def _dev(i: int, start: datetime, end: datetime) -> Holding:
    return hold(f"web-dev-{i:02d}", "service-admin", start, end)


@pytest.mark.parametrize(("holdings", "passed", "fragment"), [
    ([_dev(i, T0 - H, T0 + H) for i in range(3)], False, "would hold 4 elevations at once; the limit is 3"),
    ([_dev(i, T0 - H, T0 + H) for i in range(2)], True, "3 of at most 3"),
    ([_dev(i, T0 - 3 * H, T0 - H) for i in range(3)], True, "1 of at most 3"),
    ([_dev(0, T0 - H, T0), _dev(1, T0 + H, T0 + 2 * H), _dev(2, T0 - H, T0 + H)], True, "2 of at most 3"),
    ([], True, "1 of at most 3"),
])
def test_concurrency(holdings, passed, fragment) -> None:
    check = checks.concurrency(POLICY, req(), Context(holdings=tuple(holdings)))
    assert (check.name, check.passed) == ("concurrency", passed)
    assert fragment in check.message


# --- evaluate ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("request_", "approval", "groups", "allowed", "auto"), [
    (req("web-prod-01"), "dual", ("managers", "system-owners"), True, False),
    (req("web-dev-01", duration=timedelta(minutes=10), ticket=None), "self-service", ("managers",), True, True),
    (req("web-dev-01", duration=timedelta(minutes=15), ticket=None), "self-service", ("managers",), True, True),
    (req("web-dev-01", duration=timedelta(minutes=16), ticket=None), "single", ("managers",), True, False),
    (req("web-dev-01", duration=2 * H, ticket=None), "single", ("managers",), True, False),
    (req("web-dev-01", duration=timedelta(minutes=10), reason="x"), "self-service", ("managers",), False, False),
    (req("web-prod-01", ticket=None), "dual", ("managers", "system-owners"), False, False),
])
def test_evaluate_approval_model(request_, approval, groups, allowed, auto) -> None:
    decision = evaluate(POLICY, request_, ENGINEER)
    assert (decision.approval, decision.approver_groups) == (approval, groups)
    assert (decision.allowed, decision.auto_approved) == (allowed, auto)


def test_evaluate_runs_every_check_and_carries_params() -> None:
    decision = evaluate(POLICY, req(), ENGINEER)
    assert [c.name for c in decision.checks] == ["business_need", "privilege_appropriate", "duration_reasonable",
                                                 "separation_of_duties", "approved_hours", "concurrency"]
    assert (decision.environment, decision.tier, decision.backend) == ("production", "high", "sudo")
    assert decision.params == {"commands": COMMANDS}
    assert evaluate(POLICY, req(role="log-auditor"), ENGINEER).params == {"commands": ["/usr/bin/journalctl -u nginx"]}


def test_evaluate_failure_is_explained() -> None:
    decision = evaluate(POLICY, req(duration=9 * H), Context(groups=frozenset({"security"})))
    assert not decision.allowed and not decision.auto_approved
    assert [c.name for c in decision.failures] == ["privilege_appropriate", "duration_reasonable"]
    assert "duration_reasonable: 9h exceeds the 8h maximum" in decision.refusal()


def test_evaluate_unknown_target() -> None:
    decision = evaluate(POLICY, req("db-prod-01"), ENGINEER)
    assert not decision.allowed
    assert (decision.environment, decision.tier, decision.params) == (None, None, {})
    assert "not managed by this policy" in decision.refusal()


# --- evaluate_bypass -----------------------------------------------------------------------------

@pytest.mark.parametrize(("request_", "ctx", "failed", "fragment"), [
    (req(ticket="INC0001234"), ENGINEER, "emergency_group", "not in the emergency group 'oncall'"),
    (req(ticket="INC0001234", duration=3 * H), ONCALL, "duration_reasonable", "3h exceeds the 2h maximum"),
    (req(ticket="CHG0000001"), ONCALL, "business_need", "incident reference"),
    (req(ticket=None), ONCALL, "business_need", "incident reference"),
    (req(ticket="INC0001234", reason="down"), ONCALL, "business_need", "at least 10 characters"),
    (req(ticket="INC0001234"), Context(groups=frozenset({"oncall"}), unreviewed_bypasses=1), "open_review",
     "awaiting post-hoc review"),
    (req(ticket="INC0001234", role="root"), ONCALL, "privilege_appropriate", "has no role 'root'"),
])
def test_evaluate_bypass_refusals(request_, ctx, failed, fragment) -> None:
    decision = evaluate_bypass(POLICY, request_, ctx)
    assert not decision.allowed and not decision.auto_approved
    assert [c.name for c in decision.failures] == [failed]
    assert fragment in decision.failures[0].message


def test_evaluate_bypass_good() -> None:
    decision = evaluate_bypass(POLICY, req(ticket="INC0001234", duration=2 * H), ONCALL)
    assert decision.allowed and decision.auto_approved
    assert decision.approval == "emergency"
    assert (decision.environment, decision.params) == ("production", {"commands": COMMANDS})
