"""What the simulator knows of each table (``TABLES``: columns, references, choices,
defaults, numbering) and of every record (the ``sys_*`` fields, what a sys_id and a
field name look like).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

SYS_FIELDS = ("sys_id", "sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by", "sys_mod_count")
JOURNAL_FIELDS = ("work_notes", "comments")
_FIELD_NAME = re.compile(r"[A-Za-z0-9_]+")
_SYS_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class TableSchema:
    """What the simulator knows about a table: its columns, references, choices and numbering."""

    fields: tuple[str, ...]
    references: Mapping[str, str] = field(default_factory=dict)   # field -> target table
    choices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)   # field -> value -> label
    defaults: Mapping[str, str] = field(default_factory=dict)
    number_prefix: str | None = None
    display_field: str = "name"          # what a reference to this table displays
    journal: bool = False                # work_notes/comments are write-only journal fields
    audited: bool = False                # every field set on insert or changed by an update: a sys_audit row
    closed_states: tuple[str, ...] = ()  # a task in one of these is made inactive, as an instance's rules do


_TASK_FIELDS = ("work_notes", "comments", "active")  # the journal, and "active": false once the task is closed
_APPROVAL = {"not requested": "Not Yet Requested", "requested": "Requested", "approved": "Approved",
             "rejected": "Rejected"}

TABLES: dict[str, TableSchema] = {
    "change_request": TableSchema(
        fields=("number", "short_description", "description", "state", "type", "approval", "start_date",
                "end_date", "assigned_to", "assignment_group", "cmdb_ci", "risk", "close_code", "close_notes",
                *_TASK_FIELDS, "u_jit_target", "u_jit_role"),
        references={"assigned_to": "sys_user", "assignment_group": "sys_user_group", "cmdb_ci": "cmdb_ci"},
        choices={
            "state": {"-5": "New", "-4": "Assess", "-3": "Authorize", "-2": "Scheduled", "-1": "Implement",
                      "0": "Review", "3": "Closed", "4": "Canceled"},
            "type": {"normal": "Normal", "standard": "Standard", "emergency": "Emergency"},
            "approval": _APPROVAL,
            "risk": {"1": "Very High", "2": "High", "3": "Moderate", "4": "Low"},
            "close_code": {"successful": "Successful", "successful_issues": "Successful with issues",
                           "unsuccessful": "Unsuccessful"},
        },
        defaults={"state": "-5", "type": "normal", "approval": "not requested", "risk": "3", "active": "true"},
        number_prefix="CHG", display_field="number", journal=True, audited=True, closed_states=("3", "4")),
    "incident": TableSchema(
        fields=("number", "short_description", "description", "state", "assigned_to", "assignment_group",
                "caller_id", "priority", "close_code", "close_notes", *_TASK_FIELDS),
        references={"assigned_to": "sys_user", "assignment_group": "sys_user_group", "caller_id": "sys_user"},
        choices={
            "state": {"1": "New", "2": "In Progress", "3": "On Hold", "6": "Resolved", "7": "Closed",
                      "8": "Canceled"},
            "priority": {"1": "1 - Critical", "2": "2 - High", "3": "3 - Moderate", "4": "4 - Low",
                         "5": "5 - Planning"},
        },
        defaults={"state": "1", "priority": "5", "active": "true"},
        number_prefix="INC", display_field="number", journal=True, closed_states=("6", "7", "8")),
    "sc_req_item": TableSchema(
        fields=("number", "short_description", "description", "state", "approval", "requested_for",
                *_TASK_FIELDS),
        references={"requested_for": "sys_user"},
        choices={"state": {"-5": "Pending", "1": "Open", "2": "Work in Progress", "3": "Closed Complete",
                           "4": "Closed Incomplete", "7": "Closed Skipped"},
                 "approval": _APPROVAL},
        defaults={"state": "1", "approval": "not requested", "active": "true"},
        number_prefix="RITM", display_field="number", journal=True, closed_states=("3", "4", "7")),
    "sys_user": TableSchema(fields=("user_name", "name", "email", "active"), defaults={"active": "true"}),
    "sys_user_group": TableSchema(fields=("name", "active"), defaults={"active": "true"}),
    "sys_user_grmember": TableSchema(fields=("user", "group"),
                                     references={"user": "sys_user", "group": "sys_user_group"},
                                     display_field="sys_id"),
    "sys_journal_field": TableSchema(fields=("element", "element_id", "name", "value"), display_field="value"),
    "cmdb_ci": TableSchema(fields=("name",)),
    # who was asked to approve a task, and their answer (the change's ``approval`` rolls these up)
    "sysapproval_approver": TableSchema(
        fields=("sysapproval", "approver", "state", "comments"),
        references={"sysapproval": "change_request", "approver": "sys_user"},
        choices={"state": {"not requested": "Not Yet Requested", "requested": "Requested", "approved": "Approved",
                           "rejected": "Rejected", "cancelled": "Cancelled", "not_required": "No Longer Required"}},
        defaults={"state": "requested"}, display_field="sys_id", audited=True),
    # one row per field set or changed on an audited record; record_checkpoint 0 for the insert
    "sys_audit": TableSchema(fields=("tablename", "fieldname", "documentkey", "oldvalue", "newvalue", "user",
                                     "record_checkpoint", "reason"), display_field="sys_id"),
    # a blackout schedule (its time zone; jit reads cmdb_ci as the CI it applies to, none: all) and its
    # entries: start and end as GlideScheduleDateTime in that zone, optionally repeated
    "cmn_schedule_blackout": TableSchema(fields=("name", "time_zone", "type", "cmdb_ci"),
                                         references={"cmdb_ci": "cmdb_ci"}, defaults={"type": "blackout",
                                                                                      "time_zone": "UTC"}),
    "cmn_schedule_span": TableSchema(fields=("schedule", "name", "start_date_time", "end_date_time", "repeat_type",
                                             "repeat_count", "days_of_week", "repeat_until", "all_day", "type"),
                                     references={"schedule": "cmn_schedule_blackout"},
                                     defaults={"repeat_count": "1", "all_day": "false", "type": "exclude"}),
}
