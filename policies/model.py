"""The policy file's schema: what the security team writes in ``policies/*.toml``.

Validated with pydantic so that a bad file gives one message per problem, each
with its key path (``targets.web-prod-01.tier: unknown tier 'hihg'``).
"""
from __future__ import annotations

import re
from functools import cached_property
from datetime import time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, field_validator,
                      model_validator)

from policies.durations import parse_duration
from policies.names import NAME, TARGET

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
APPROVAL_MODELS = ("self-service", "single", "dual")


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return parse_duration(value)  # type: ignore[arg-type]


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Regex = Annotated[str, AfterValidator(_regex)]
GroupName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Strict):
    auto_approve_up_to: Duration = timedelta(minutes=15)
    max_concurrent: StrictInt = Field(default=3, ge=1, le=100)
    escalate_after: Duration = timedelta(minutes=30)
    lapse_after: Duration = timedelta(hours=24)
    min_reason_length: StrictInt = Field(default=10, ge=1, le=1000)
    ticket_pattern: Regex = r"^(CHG|INC|RITM)[0-9]{7}$"

    @model_validator(mode="after")
    def _order(self) -> "Defaults":
        if self.lapse_after <= self.escalate_after:
            raise ValueError("lapse_after must be longer than escalate_after")
        return self


class Environment(_Strict):
    max_duration: Duration
    timezone: str = "UTC"
    days: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = DAYS
    hours: str = "00:00-24:00"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name like 'Europe' is a folder
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'Europe/London'") from None
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        _parse_hours(value)
        return value

    @cached_property  # the model is frozen: parsed once
    def window(self) -> tuple[time, time | None]:
        return _parse_hours(self.hours)


def _parse_hours(value: str) -> tuple[time, time | None]:
    """``"08:00-18:00"`` -> (08:00, 18:00); an end of ``24:00`` is None (end of day)."""
    match = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a range of hours; write e.g. '08:00-18:00'")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise ValueError(f"{value!r} has a time outside 00:00-24:00")
    start = time(h1, m1)
    end = None if h2 == 24 else time(h2, m2)
    if end is not None and end <= start:
        raise ValueError(f"{value!r} ends before it starts")
    return start, end


class Tier(_Strict):
    approval: Literal["self-service", "single", "dual"]
    approver_groups: tuple[GroupName, ...] = ()
    auto_approve_up_to: Duration | None = None
    ticket_required: StrictBool = False
    servicenow_approval_counts: StrictBool = False  # ServiceNow approvers may stand for jit's (ticket-driven; README)

    @model_validator(mode="after")
    def _groups(self) -> "Tier":
        if self.approval == "dual" and len(set(self.approver_groups)) != 2:
            raise ValueError("dual approval needs exactly two distinct approver_groups")
        if self.approval != "dual" and not self.approver_groups:
            raise ValueError(f"{self.approval} approval needs at least one approver group "
                             "(self-service: who approves requests above the auto-approval threshold)")
        if self.approval != "self-service" and self.auto_approve_up_to is not None:
            raise ValueError("auto_approve_up_to applies to self-service tiers only (no auto-approval for higher risk)")
        return self


class Emergency(_Strict):
    group: GroupName
    reviewer_group: GroupName
    max_duration: Duration = timedelta(hours=2)
    incident_pattern: Regex = r"^INC[0-9]{7}$"

    @model_validator(mode="after")
    def _distinct(self) -> "Emergency":
        if self.group == self.reviewer_group:
            raise ValueError("reviewer_group must differ from group: bypassers never review themselves")
        return self


class Role(_Strict):
    eligible_groups: tuple[GroupName, ...] = Field(min_length=1)
    description: str = ""
    # Backend settings; the target's backend validates the ones it uses (jit policy lint).
    commands: tuple[str, ...] | None = None        # sudo: the commands granted
    edit: tuple[str, ...] | None = None            # sudo: files granted through sudoedit
    allow_any_arguments: bool | None = None        # sudo: a command without arguments takes any (lint warns)
    allow_exec: bool | None = None                 # sudo: no NOEXEC on the role's commands (lint warns)...
    allow_exec_reason: str | None = None           # ...and why
    group_dn: str | None = None                    # ldap: the group the person joins
    role_arn: str | None = None                    # aws role mode: the role the person may assume
    account_id: str | None = None                  # aws identity center: the account...
    permission_set_arn: str | None = None          # ...and the permission set assigned
    local_group: str | None = None                 # windows: a local group, e.g. "Administrators"
    jea_role: str | None = None                    # windows JEA: the role capability name...
    jea_commands: tuple[str, ...] | None = None    # ...and the commands it allows

    @cached_property  # the model is frozen: computed once; evaluate() hands out copies
    def params(self) -> dict[str, object]:
        """The settings handed to the target's backend."""
        fields = ("commands", "edit", "allow_any_arguments", "allow_exec", "allow_exec_reason", "group_dn", "role_arn", "account_id", "permission_set_arn", "local_group",
                  "jea_role", "jea_commands")
        values = ((k, getattr(self, k)) for k in fields)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values if v is not None}


class Target(_Strict):
    environment: str
    tier: str
    backend: Literal["sudo", "sudo_ldap", "agent", "ldap", "aws", "windows"] = "sudo"
    description: str = ""
    roles: dict[Annotated[str, Field(pattern=NAME)], Role] = Field(min_length=1)
    # a sudo target that is a group of hosts: its rules name these (as a Host_Alias), not the target
    hosts: tuple[Annotated[str, Field(pattern=TARGET)], ...] = ()

    @model_validator(mode="after")
    def _hosts_for_sudo(self) -> "Target":
        if self.hosts and self.backend not in ("sudo", "sudo_ldap", "agent"):
            raise ValueError("hosts: only a sudo, sudo_ldap or agent target names hosts (its rules are written "
                             "for them)")
        return self


class SodRule(_Strict):
    roles: tuple[str, str]
    reason: str = "these roles must not be held by one person at once"

    @field_validator("roles")
    @classmethod
    def _refs(cls, value: tuple[str, str]) -> tuple[str, str]:
        for ref in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*/[a-z][a-z0-9-]*|\*/[a-z][a-z0-9-]*", ref):
                raise ValueError(f"{ref!r} must be 'target/role' or '*/role'")
        if value[0] == value[1]:
            raise ValueError("a role cannot conflict with itself")
        return value


class PolicySet(_Strict):
    version: Literal[1] = 1
    defaults: Defaults = Defaults()
    environments: dict[Annotated[str, Field(pattern=NAME)], Environment] = Field(min_length=1)
    tiers: dict[Annotated[str, Field(pattern=NAME)], Tier] = Field(min_length=1)
    emergency: Emergency | None = None
    separation_of_duties: tuple[SodRule, ...] = ()
    targets: dict[Annotated[str, Field(pattern=TARGET)], Target] = Field(min_length=1)


def key_text(part: object) -> str:
    """One part of a key path as printed in a problem line: as written when it is printable, else its
    repr, so a key holding a line break or a bidi override cannot split or disguise the line."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def reference_problems(data: object) -> list[str]:
    """Names that point nowhere (a target's environment or tier, a SoD rule's roles).

    Works on the raw file so that these are reported together with schema problems."""
    if not isinstance(data, dict):
        return []
    envs, tiers, targets = (data.get(k) if isinstance(data.get(k), dict) else {}
                            for k in ("environments", "tiers", "targets"))
    problems = []
    for name, target in targets.items():
        if not isinstance(target, dict):
            continue
        for key, known in (("environment", envs), ("tier", tiers)):
            value = target.get(key)
            if isinstance(value, str) and value not in known:
                problems.append(f"targets.{key_text(name)}.{key}: unknown {key} {value!r} "
                                f"(known: {', '.join(sorted(map(key_text, known)))})")
    roles = {(t, r) for t, v in targets.items() if isinstance(v, dict) and isinstance(v.get("roles"), dict)
             for r in v["roles"]}
    rules = data.get("separation_of_duties")
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        refs = rule.get("roles") if isinstance(rule, dict) else None
        for ref in refs if isinstance(refs, list) else []:
            if not isinstance(ref, str) or "/" not in ref:
                continue
            tname, role = ref.split("/", 1)
            if not any(r == role and tname in ("*", t) for t, r in roles):
                problems.append(f"separation_of_duties.{i}.roles: {ref!r} names no role of a known target")
    return problems
