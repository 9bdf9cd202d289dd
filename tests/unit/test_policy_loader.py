"""policies.loader: load_policy and the one-line-per-problem PolicyError."""
from __future__ import annotations

from pathlib import Path

import pytest

from policies.loader import PolicyError, load_policy

DEFAULT = Path(__file__).parents[2] / "policies" / "default.toml"
BASE = DEFAULT.read_text()

PROD_ENV = 'max_duration = "8h"\ntimezone = "UTC"'
HIGH_GROUPS = 'approver_groups = ["managers", "system-owners"]'


def edit(*pairs: tuple[str, str]) -> str:
    """default.toml with each ``old`` replaced once by ``new`` (the edit must apply)."""
    text = BASE
    for old, new in pairs:
        assert text.count(old) == 1, f"edit does not apply uniquely: {old!r}"
        text = text.replace(old, new)
    return text


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.source == str(path)
    assert info.value.problems
    return info.value.problems


def test_default_loads() -> None:
    policy = load_policy(DEFAULT)
    assert set(policy.targets) == {"web-prod-01", "web-dev-01"}
    assert policy.tiers["high"].approval == "dual"
    assert policy.emergency is not None and policy.emergency.group == "oncall"


BROKEN = {
    "unknown top-level key": (
        edit(("version = 1", "version = 1\ncolour = 'blue'")),
        "colour: unknown key"),
    "unknown nested key": (
        edit(('eligible_groups = ["engineers", "oncall"]\ncommands = [\n  "/usr/bin/systemctl restart nginx",\n'
              '  "/usr/bin/systemctl status nginx",\n  "/usr/bin/journalctl -u nginx",\n]\n\n'
              '[targets.web-prod-01.roles.log-auditor]',
              'eligible_group = ["engineers"]\n\n[targets.web-prod-01.roles.log-auditor]')),
        "targets.web-prod-01.roles.service-admin.eligible_group: unknown key"),
    "unknown environment": (
        edit(('environment = "non-production"', 'environment = "staging"')),
        "targets.web-dev-01.environment: unknown environment 'staging'"),
    "unknown tier": (
        edit(('tier = "high"', 'tier = "hihg"')),
        "targets.web-prod-01.tier: unknown tier 'hihg'"),
    "bad duration": (
        edit(('max_duration = "8h"', 'max_duration = "8x"')),
        "environments.production.max_duration: '8x' is not a duration"),
    "zero duration": (
        edit(('max_duration = "24h"', 'max_duration = "0h"')),
        "environments.non-production.max_duration: '0h' must be longer than zero"),
    "bad timezone": (
        edit((PROD_ENV, 'max_duration = "8h"\ntimezone = "Mars/Olympus"')),
        "environments.production.timezone: unknown time zone 'Mars/Olympus'"),
    "bad hours": (
        edit(('hours = "00:00-24:00"', 'hours = "18:00-08:00"')),
        "environments.production.hours: '18:00-08:00' ends before it starts"),
    "malformed hours": (
        edit(('hours = "00:00-24:00"', 'hours = "8-18"')),
        "environments.production.hours: '8-18' is not a range of hours"),
    "bad day": (
        edit(('days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]', 'days = ["mon", "funday"]')),
        "environments.production.days.1:"),
    "dual with one group": (
        edit((HIGH_GROUPS, 'approver_groups = ["managers"]')),
        "tiers.high: dual approval needs exactly two distinct approver_groups"),
    "dual with the same group twice": (
        edit((HIGH_GROUPS, 'approver_groups = ["managers", "managers"]')),
        "tiers.high: dual approval needs exactly two distinct approver_groups"),
    "auto-approval on dual": (
        edit((HIGH_GROUPS, HIGH_GROUPS + '\nauto_approve_up_to = "15m"')),
        "tiers.high: auto_approve_up_to applies to self-service tiers only"),
    "unknown approval model": (
        edit(('approval = "dual"', 'approval = "triple"')),
        "tiers.high.approval:"),
    "emergency reviewer is the group": (
        edit(('reviewer_group = "security"', 'reviewer_group = "oncall"')),
        "emergency: reviewer_group must differ from group"),
    "SoD names an unknown role": (
        edit(('"web-prod-01/log-auditor"]', '"web-prod-01/log-reader"]')),
        "separation_of_duties.0.roles: 'web-prod-01/log-reader' names no role of a known target"),
    "SoD names an unknown target": (
        edit(('"web-prod-01/log-auditor"]', '"web-prod-99/log-auditor"]')),
        "separation_of_duties.0.roles: 'web-prod-99/log-auditor' names no role"),
    "SoD role conflicts with itself": (
        edit(('"web-prod-01/log-auditor"]', '"web-prod-01/service-admin"]')),
        "separation_of_duties.0.roles: a role cannot conflict with itself"),
    "invalid ticket regex": (
        edit(('ticket_pattern = "^(CHG|INC|RITM)[0-9]{7}$"', 'ticket_pattern = "^(CHG[0-9"')),
        "defaults.ticket_pattern: not a regular expression"),
    "lapse before escalation": (
        edit(('lapse_after = "24h"', 'lapse_after = "10m"')),
        "defaults: lapse_after must be longer than escalate_after"),
    "missing required key": (
        edit(('max_duration = "24h"\n', '')),
        "environments.non-production.max_duration: required key is missing"),
    "not TOML": ("version = 1\n[targets\n", "not valid TOML"),
}


@pytest.mark.parametrize(("text", "expected"), list(BROKEN.values()), ids=list(BROKEN))
def test_broken_policy(tmp_path: Path, text: str, expected: str) -> None:
    problems = problems_of(tmp_path, text)
    assert any(p.startswith(expected) for p in problems), problems


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "absent.toml")
    assert info.value.problems == ["file not found"]


def test_two_problems_reported_separately(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, edit(
        (PROD_ENV, 'max_duration = "8x"\ntimezone = "Mars/Olympus"'),
        ('reviewer_group = "security"', 'reviewer_group = "oncall"'),
    ))
    assert len(problems) == 3, problems
    assert sum(p.startswith("environments.production.max_duration: '8x'") for p in problems) == 1
    assert sum(p.startswith("environments.production.timezone: unknown time zone") for p in problems) == 1
    assert sum(p.startswith("emergency: reviewer_group must differ") for p in problems) == 1


def test_two_reference_problems_reported_separately(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, edit(('tier = "high"', 'tier = "hihg"'),
                                          ('environment = "non-production"', 'environment = "staging"')))
    assert sorted(p.split(":")[0] for p in problems) == ["targets.web-dev-01.environment",
                                                         "targets.web-prod-01.tier"]


# --- bugs: each test states the correct behaviour and is expected to fail until fixed ---

def test_timezone_naming_a_directory(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, edit((PROD_ENV, 'max_duration = "8h"\ntimezone = "Europe"')))
    assert any(p.startswith("environments.production.timezone: unknown time zone") for p in problems)


def test_overflowing_duration(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, edit(('max_duration = "8h"', 'max_duration = "1000000000d"')))
    assert any(p.startswith("environments.production.max_duration:") for p in problems)


def test_invalid_incident_regex(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, edit(('incident_pattern = "^INC[0-9]{7}$"', 'incident_pattern = "^INC[0-9"')))
    assert any(p.startswith("emergency.incident_pattern:") for p in problems)


def test_sod_wildcard_with_unknown_role(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, edit(('"web-prod-01/log-auditor"]', '"*/log-auditr"]')))
    assert any(p.startswith("separation_of_duties.0.roles: '*/log-auditr'") for p in problems)


def test_schema_and_reference_problems_together(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, edit(('max_duration = "8h"', 'max_duration = "8x"'),
                                          ('environment = "non-production"', 'environment = "staging"')))
    assert len(problems) == 2, problems


def test_a_sudo_target_may_name_its_hosts_and_the_decision_carries_them(tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from policies.decision import AccessRequest, Context
    from policies.evaluate import evaluate
    path = tmp_path / "policy.toml"
    path.write_text(edit(('description = "Production web server"\nenvironment = "production"',
                          'description = "Production web server"\nenvironment = "production"\n'
                          'hosts = ["web-prod-01", "web-prod-01b"]')))
    policy = load_policy(path)
    assert policy.targets["web-prod-01"].hosts == ("web-prod-01", "web-prod-01b")
    req = AccessRequest("alice", "web-prod-01", "service-admin", datetime(2026, 12, 1, 10, tzinfo=timezone.utc),
                        timedelta(hours=1), "renew the TLS certificate", "CHG0000001")
    params = evaluate(policy, req, Context(groups=frozenset({"engineers"}))).params
    assert params["hosts"] == ["web-prod-01", "web-prod-01b"] and params["commands"]
    assert "hosts" not in evaluate(load_policy(DEFAULT), req, Context(groups=frozenset({"engineers"}))).params
    bad = edit(('description = "Production web server"\nenvironment = "production"',
                'description = "Production web server"\nenvironment = "production"\nhosts = ["web prod"]'))
    assert any("hosts" in p for p in problems_of(tmp_path, bad))
    ldap = edit(('description = "Production web server"\nenvironment = "production"\ntier = "high"\nbackend = "sudo"',
                 'description = "Production web server"\nenvironment = "production"\ntier = "high"\nbackend = "ldap"\n'
                 'hosts = ["web-prod-01"]'))
    assert any("only a sudo, sudo_ldap or agent target names hosts" in p for p in problems_of(tmp_path, ldap))
