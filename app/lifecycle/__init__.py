"""The use-cases, one module per family, joined into one ``Lifecycle`` (the CLI, the console, the
engine and the tests call its methods; ``app/bootstrap.py`` builds it):

    requests.py      submit, preview, cancel            approvals.py   approve, deny
    bypass.py        bypass, review                     grants.py      apply, revoke, release, extend, retries
    expiry.py        expire_due, next_deadlines         recovery.py    recover (a crash mid-apply or mid-revoke)
    housekeeping.py  activate_due, escalate, lapse, warn
    tickets.py       ServiceNow changes -> requests; closed tickets end them
    credentials.py   AWS credentials for an active role grant
    base.py          what they share: loading, viewing, the audit record, the state check

The state machine is data in ``app/domain/states.py``; every write goes through the store's
version-checked ``transition()``.

Every transition is one transaction with an optimistic version check: the UPDATE names the
version it read, so of two concurrent transitions exactly one changes the row. The grant's
intent is committed before the backend is called and its outcome after, so a crash in
between is finished by ``recover()`` on the next pass.

One winner per race, by construction: see ``app/domain/states.py``. A grant's claim is kept by
``app/store/leases.py`` while its backend call runs; an outcome is written only while the claim
is still this process's.
"""
from __future__ import annotations

from app.lifecycle.approvals import Approvals
from app.lifecycle.base import OutboxSettings
from app.lifecycle.bypass import Bypass
from app.lifecycle.credentials import Credentials
from app.lifecycle.expiry import Expiry
from app.lifecycle.grants import Grants
from app.lifecycle.housekeeping import Housekeeping
from app.lifecycle.recovery import Recovery
from app.lifecycle.requests import Requests
from app.lifecycle.tickets import Tickets

__all__ = ["Lifecycle", "OutboxSettings"]


class Lifecycle(Requests, Approvals, Bypass, Grants, Expiry, Recovery, Housekeeping, Tickets, Credentials):
    """Every use-case; see each family's module."""
