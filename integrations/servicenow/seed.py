"""Demo data for the simulator: the sandbox's people, two CIs and a few changes and incidents.

:func:`demo` returns records per table, in insertion order. Every record carries a fixed
``sys_id`` (see :func:`sys_id`), so references are plain sys_ids and stay the same from
run to run: a demo script can name ``sys_id("sys_user", "alice")`` without a lookup.
Times are relative to ``now`` so the "approved change in its window" is always current.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

_NAMESPACE = uuid.UUID("5e7a1c3e-0b1d-4c55-9f0e-6a1d2c3b4a59")

USERS = {
    "alice": "Alice Engineer",
    "bob": "Bob Manager",
    "carol": "Carol Owner",
    "dave": "Dave Oncall",
    "erin": "Erin Security",
}
GROUPS = {"Web Operations": ("alice", "dave"), "Change Advisory Board": ("bob", "carol")}
CIS = ("web-prod-01", "web-dev-01")


def sys_id(table: str, key: str) -> str:
    """The stable sys_id of a seeded record (32 hex characters)."""
    return uuid.uuid5(_NAMESPACE, f"{table}:{key}").hex


def _glide(value: datetime) -> str:
    """A GlideScheduleDateTime in UTC (the seed's schedules are in UTC)."""
    return value.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S")


def _ts(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def demo(now: datetime) -> dict[str, list[dict[str, str]]]:
    """Records to insert, by table, with windows placed around ``now``."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    user = lambda name: sys_id("sys_user", name)  # noqa: E731
    web_ops = sys_id("sys_user_group", "Web Operations")
    prod = sys_id("cmdb_ci", "web-prod-01")
    hour, day = timedelta(hours=1), timedelta(days=1)

    def change(number: str, **fields: str) -> dict[str, str]:
        return {"sys_id": sys_id("change_request", number), "number": number, "type": "normal",
                "assigned_to": user("alice"), "assignment_group": web_ops, "cmdb_ci": prod, **fields}

    return {
        "sys_user": [{"sys_id": user(name), "user_name": name, "name": full, "email": f"{name}@example.com",
                      "active": "true"} for name, full in USERS.items()],
        "sys_user_group": [{"sys_id": sys_id("sys_user_group", name), "name": name, "active": "true"}
                           for name in GROUPS],
        "sys_user_grmember": [{"sys_id": sys_id("sys_user_grmember", f"{group}/{member}"),
                               "group": sys_id("sys_user_group", group), "user": user(member)}
                              for group, members in GROUPS.items() for member in members],
        "cmdb_ci": [{"sys_id": sys_id("cmdb_ci", name), "name": name} for name in CIS],
        "change_request": [
            change("CHG0000001", approval="approved", state="-1", risk="3",
                   start_date=_ts(now - hour), end_date=_ts(now + 4 * hour),
                   short_description="Renew TLS certificate on web-prod-01",
                   description="Replace the expiring certificate; needs service-admin on the host.",
                   u_jit_target="web-prod-01", u_jit_role="service-admin"),
            change("CHG0000002", approval="approved", state="-2", risk="3",
                   start_date=_ts(now + day), end_date=_ts(now + day + 4 * hour),
                   short_description="Upgrade nginx on web-prod-01"),
            change("CHG0000003", approval="requested", state="-3", risk="2",
                   start_date=_ts(now - hour), end_date=_ts(now + 4 * hour),
                   short_description="Rotate database credentials"),
            change("CHG0000004", approval="approved", state="3", risk="4", close_code="successful",
                   close_notes="Completed without issues.",
                   start_date=_ts(now - 3 * day), end_date=_ts(now - 2 * day),
                   short_description="Patch kernel on web-prod-01"),
        ],
        # who approved which change: bob (manager) and carol (system owner) for the high tier's dual approval
        "sysapproval_approver": [
            {"sys_id": sys_id("sysapproval_approver", f"{number}/{person}"), "approver": user(person),
             "sysapproval": sys_id("change_request", number), "state": state}
            for number, state in (("CHG0000001", "approved"), ("CHG0000002", "approved"),
                                  ("CHG0000003", "requested"), ("CHG0000004", "approved"))
            for person in ("bob", "carol")],
        "incident": [
            {"sys_id": sys_id("incident", "INC0000042"), "number": "INC0000042", "state": "2", "priority": "1",
             "short_description": "nginx down on web-prod-01", "assigned_to": user("dave"),
             "assignment_group": web_ops, "caller_id": user("erin")},
            {"sys_id": sys_id("incident", "INC0000043"), "number": "INC0000043", "state": "1", "priority": "4",
             "short_description": "Slow page loads on web-dev-01", "assignment_group": web_ops,
             "caller_id": user("bob")},
            {"sys_id": sys_id("incident", "INC0000044"), "number": "INC0000044", "state": "6", "priority": "3",
             "short_description": "Disk space warning on web-prod-01", "assigned_to": user("dave"),
             "assignment_group": web_ops, "caller_id": user("carol")},
        ],
        "cmn_schedule_blackout": [
            {"sys_id": sys_id("cmn_schedule_blackout", "Year-end freeze"), "name": "Year-end freeze",
             "time_zone": "UTC", "type": "blackout", "cmdb_ci": ""},
        ],
        "cmn_schedule_span": [
            {"sys_id": sys_id("cmn_schedule_span", "Year-end freeze"), "name": "Year-end freeze",
             "schedule": sys_id("cmn_schedule_blackout", "Year-end freeze"),
             "start_date_time": _glide(now + 10 * day), "end_date_time": _glide(now + 20 * day),
             "repeat_type": "", "repeat_count": "1", "days_of_week": "", "repeat_until": "", "all_day": "false",
             "type": "exclude"},
        ],
    }
