"""The actions on a request: what the confirmation asks for, and which data-source call performs it."""
from __future__ import annotations

from dataclasses import dataclass

from app.domain.console import ConsoleSource
from app.tui.formatting import duration_error
from app.tui.modals import Field
from policies.durations import parse_duration


@dataclass(frozen=True)
class ActionSpec:
    verb: str  # "Approve", used as "Approve REQ-42"
    confirm: str  # the confirm button
    variant: str  # button variant: success, error, primary, warning
    fields: tuple[Field, ...]


ACTIONS: dict[str, ActionSpec] = {
    "approve": ActionSpec("Approve", "Approve", "success", (
        Field("comment", "Comment", required=False, placeholder="a note for the record"),)),
    "deny": ActionSpec("Deny", "Deny", "error", (
        Field("reason", "Reason", placeholder="why it is denied (the requester sees this)"),)),
    "revoke": ActionSpec("Revoke", "Revoke now", "error", (
        Field("reason", "Reason", placeholder="why access ends now"),)),
    "extend": ActionSpec("Extend", "Extend", "primary", (
        Field("by", "Extend by", "1h", placeholder="e.g. 30m, 1h", check=duration_error),
        Field("reason", "Reason", placeholder="why more time is needed"))),
    "justified": ActionSpec("Review", "Justified", "success", (
        Field("comment", "Comment", placeholder="what confirmed the emergency"),)),
    "violation": ActionSpec("Review", "Violation", "error", (
        Field("comment", "Comment", placeholder="what made it a violation"),)),
}


def perform(data: ConsoleSource, action: str, request_id: int, values: dict[str, str]) -> str:
    """Run the action through the data source (blocking: call from a worker); raises what it raises."""
    if action == "approve":
        return data.approve(request_id, values.get("comment", ""))
    if action == "deny":
        return data.deny(request_id, values["reason"])
    if action == "revoke":
        return data.revoke(request_id, values["reason"])
    if action == "extend":
        return data.extend(request_id, parse_duration(values["by"]), values["reason"])
    if action in ("justified", "violation"):
        return data.review(request_id, action, values["comment"])
    raise ValueError(f"unknown action {action!r}")
