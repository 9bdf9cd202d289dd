"""Ticket checks: the referenced ServiceNow ticket is real, approved, assigned, in its window.

Pure: the caller looks the ticket up and hands over ``TicketFacts``. Each failure is a named
check with a sentence; an unreachable ServiceNow fails closed for requests.
"""
from __future__ import annotations

from datetime import timezone

from policies.decision import AccessRequest, Check, TicketFacts

CHANGE_STATES = {"-5": "New", "-4": "Assess", "-3": "Authorize", "-2": "Scheduled", "-1": "Implement",
                 "0": "Review", "3": "Closed", "4": "Canceled"}
INCIDENT_STATES = {"1": "New", "2": "In Progress", "3": "On Hold", "6": "Resolved", "7": "Closed", "8": "Canceled"}
ITEM_STATES = {"-5": "Pending", "1": "Open", "2": "Work in Progress", "3": "Closed Complete", "4": "Closed Incomplete",
               "7": "Closed Skipped"}


def state_label(kind: str, state: str) -> str:
    """ServiceNow's label for a ticket's state code, with the code: ``Implement (-1)``; the code
    alone when it is not one of these."""
    labels = {"change": CHANGE_STATES, "incident": INCIDENT_STATES, "item": ITEM_STATES}.get(kind, {})
    return f"{labels[state]} ({state})" if state in labels else state


def _utc(value) -> str:
    return f"{value.astimezone(timezone.utc).isoformat(' ', 'minutes')[:16]} UTC"  # as %Y-%m-%d %H:%M, faster


def ticket_checks(req: AccessRequest, facts: TicketFacts) -> list[Check]:
    if facts.status == "unavailable":
        return [Check("ticket_exists", False, f"{facts.number} could not be validated: ServiceNow did not answer "
                                              f"({facts.error or 'unreachable'}); try again later.")]
    if facts.status == "missing":
        return [Check("ticket_exists", False, f"{facts.number} does not exist in ServiceNow.")]
    found = [Check("ticket_exists", True, f"{facts.number} exists in ServiceNow.")]
    inactive = "" if facts.active else " (inactive)"
    if facts.kind == "incident":
        label = INCIDENT_STATES.get(facts.state, facts.state) + inactive
        is_open = facts.state not in ("6", "7", "8") and facts.active
        found.append(Check("incident_open", is_open, f"incident {facts.number} is {label}" +
                           ("." if is_open else "; it must be open (not Resolved, Closed or Canceled).")))
        return found
    if facts.kind == "item":
        label = ITEM_STATES.get(facts.state, facts.state) + inactive
        is_open = facts.state not in ("3", "4", "7") and facts.active
        found.append(Check("item_open", is_open, f"requested item {facts.number} is {label}" +
                           ("." if is_open else "; it must be open (not Closed Complete, Closed Incomplete or "
                                                "Closed Skipped).")))
        return found
    if facts.kind != "change":
        return found
    label = CHANGE_STATES.get(facts.state, facts.state) + inactive
    approved = facts.approval == "approved" and facts.state in ("-2", "-1") and facts.active
    found.append(Check("change_approved", approved,
                       f"change {facts.number} is {label} with approval '{facts.approval}'" +
                       ("." if approved else "; it must be approved and Scheduled or Implement.")))
    assigned = req.requester == facts.assignee or req.requester in facts.group_members
    found.append(Check("change_assignee", assigned,
                       f"{req.requester} is the assignee or in the assignment group of {facts.number}."
                       if assigned else
                       f"{req.requester} is neither the assignee ({facts.assignee or 'nobody'}) nor in the "
                       f"assignment group ({facts.group_name or 'none'}) of {facts.number}."))
    if facts.start is None or facts.end is None:
        found.append(Check("change_window", False, f"change {facts.number} has no planned start and end dates."))
    elif facts.start <= req.starts_at and req.expires_at <= facts.end:
        found.append(Check("change_window", True, f"the requested period lies inside the change window "
                                                  f"{_utc(facts.start)}..{_utc(facts.end)}."))
    else:
        found.append(Check("change_window", False,
                           f"the requested period {_utc(req.starts_at)}..{_utc(req.expires_at)} is outside the "
                           f"change window {_utc(facts.start)}..{_utc(facts.end)}."))
    clash = [(n, s, e) for n, s, e in facts.blackouts if s < req.expires_at and req.starts_at < e]
    found.append(Check("change_blackout", not clash,
                       "no blackout window overlaps the requested period." if not clash else
                       f"the requested period overlaps the blackout '{clash[0][0]}' "
                       f"({_utc(clash[0][1])}..{_utc(clash[0][2])})."))
    return found
