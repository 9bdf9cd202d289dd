"""A ServiceNow ticket in the product's own terms, and the patterns of its identifiers: plain data,
importable without pysnow (the lifecycle and the sync use it; ``tickets.py`` builds it)."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

NUMBER_RE = re.compile(r"^(CHG|INC|RITM)[0-9]{7}$")
SYS_ID_RE = re.compile(r"^[0-9a-f]{32}$")
USER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
FIELD_RE = re.compile(r"^u_[a-z0-9_]{1,60}$")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
TABLES = {"CHG": "change_request", "INC": "incident", "RITM": "sc_req_item"}
SN_TIME = "%Y-%m-%d %H:%M:%S"
SN_TIME_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.ASCII)
CLOSED_CHANGE = ("3", "4")  # Closed, Canceled
CLOSED_INCIDENT = ("6", "7", "8")  # Resolved, Closed, Canceled
CLOSED_ITEM = ("3", "4", "7")  # Closed Complete, Closed Incomplete, Closed Skipped


@dataclass(frozen=True)
class ChangeApprovals:
    """What ServiceNow records of a change's approval: who approved it (``sysapproval_approver``
    rows in state approved, by user_name) and when (``sys_audit``: the approval row's state set to
    approved; read only for a change with edits, None when not read or no audit row says), and
    the updates, after the change was created, of the fields an approval binds (field, when)."""

    approvers: tuple[tuple[str, datetime | None], ...] = ()
    edits: tuple[tuple[str, datetime], ...] = ()


@dataclass(frozen=True)
class Ticket:
    number: str
    table: str
    sys_id: str
    state: str
    approval: str
    type: str
    start: datetime | None
    end: datetime | None
    assignee: str | None  # user_name
    group: str | None  # assignment group sys_id
    group_name: str | None
    cmdb_ci: str | None  # CI name
    jit_target: str | None
    jit_role: str | None
    updated_on: datetime | None
    approvals: ChangeApprovals | None = None  # read for the changes whose approval may count (the sync)
    active: bool = True  # ServiceNow's own flag: false once a task is closed, whatever its state says

    def digest(self) -> str:
        """This version of the ticket as a decision reads it: every field but ``updated_on`` (which
        a work note moves), so a note alone is never a new version."""
        parts = (self.number, self.table, self.sys_id, self.state, self.approval, self.type,
                 self.start.isoformat() if self.start else "", self.end.isoformat() if self.end else "",
                 self.assignee or "", self.group or "", self.group_name or "", self.cmdb_ci or "",
                 self.jit_target or "", self.jit_role or "", str(self.active))
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]

    @property
    def closed(self) -> bool:
        closed = {"change_request": CLOSED_CHANGE, "sc_req_item": CLOSED_ITEM}.get(self.table, CLOSED_INCIDENT)
        return self.state in closed or not self.active
