"""One function per concern the policy weighs. Each returns a ``Check`` with a sentence."""
from __future__ import annotations

import difflib
import re
from datetime import timedelta, timezone
from zoneinfo import ZoneInfo

from policies.decision import AccessRequest, Check, Context
from policies.durations import format_duration
from policies.model import Environment, PolicySet, Tier


def business_need(policy: PolicySet, req: AccessRequest, tier: Tier | None) -> Check:
    reason = (req.reason or "").strip()
    minimum = policy.defaults.min_reason_length
    if len(reason) < minimum:
        return Check("business_need", False,
                     f"a justification of at least {minimum} characters is required (got {len(reason)}).")
    ticket = (req.ticket or "").strip()
    if ticket and not re.fullmatch(policy.defaults.ticket_pattern, ticket):
        return Check("business_need", False,
                     f"ticket {ticket!r} is not a valid reference (expected e.g. CHG0001234 or INC0001234).")
    if tier is not None and tier.ticket_required and not ticket:
        return Check("business_need", False, "this target's risk tier requires a ticket reference (--ticket).")
    detail = f" under ticket {ticket}" if ticket else ""
    return Check("business_need", True, f"justified{detail}: {reason[:60]!r}.")


def privilege_appropriate(policy: PolicySet, req: AccessRequest, ctx: Context) -> Check:
    target = policy.targets.get(req.target)
    if target is None:
        near = difflib.get_close_matches(req.target, list(policy.targets), n=3, cutoff=0.75)
        hint = f" Did you mean {' or '.join(near)}?" if near else ""
        return Check("privilege_appropriate", False, f"target {req.target!r} is not managed by this policy.{hint}")
    role = target.roles.get(req.role)
    if role is None:
        return Check("privilege_appropriate", False,
                     f"target {req.target} has no role {req.role!r} (roles: {', '.join(sorted(target.roles))}).")
    eligible = sorted(set(role.eligible_groups) & ctx.groups)
    if not eligible:
        return Check("privilege_appropriate", False,
                     f"{req.requester} is in none of the groups eligible for {req.role} on {req.target} "
                     f"({', '.join(role.eligible_groups)}).")
    return Check("privilege_appropriate", True,
                 f"{req.requester} is eligible for {req.role} on {req.target} through {', '.join(eligible)}.")


def duration_reasonable(req: AccessRequest, maximum: timedelta, where: str) -> Check:
    if req.duration <= timedelta(0):
        return Check("duration_reasonable", False, "the duration must be longer than zero.")
    if req.duration > maximum:
        return Check("duration_reasonable", False,
                     f"{format_duration(req.duration)} exceeds the {format_duration(maximum)} maximum for {where}.")
    return Check("duration_reasonable", True,
                 f"{format_duration(req.duration)} is within the {format_duration(maximum)} maximum for {where}.")


def _matches(ref: str, target: str, role: str) -> bool:
    rt, rr = ref.split("/", 1)
    return rr == role and rt in ("*", target)


def separation_of_duties(policy: PolicySet, req: AccessRequest, ctx: Context) -> Check:
    end = req.expires_at
    for rule in policy.separation_of_duties:
        a, b = rule.roles
        for mine, other in ((a, b), (b, a)):
            if not _matches(mine, req.target, req.role):
                continue
            for held in ctx.holdings:
                if _matches(other, held.target, held.role) and held.overlaps(req.starts_at, end):
                    return Check("separation_of_duties", False,
                                 f"{req.role} on {req.target} conflicts with {held.role} on {held.target}, "
                                 f"held until {held.expires_at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC: {rule.reason}.")
    return Check("separation_of_duties", True, "no conflicting role is held during the requested period.")


def approved_hours(req: AccessRequest, env_name: str, env: Environment) -> Check:
    local = req.starts_at.astimezone(ZoneInfo(env.timezone))
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[local.weekday()]
    start, end = env.window
    inside_day = day in env.days
    inside_hours = local.time() >= start and (end is None or local.time() < end)
    when = f"{local:%a %H:%M} {env.timezone}"
    if not (inside_day and inside_hours):
        return Check("approved_hours", False,
                     f"{when} is outside the approved hours for {env_name} "
                     f"({', '.join(env.days)} {env.hours} {env.timezone}).")
    return Check("approved_hours", True, f"{when} is within the approved hours for {env_name}.")


def concurrency(policy: PolicySet, req: AccessRequest, ctx: Context) -> Check:
    limit = policy.defaults.max_concurrent
    overlapping = [h for h in ctx.holdings if h.overlaps(req.starts_at, req.expires_at)]
    if len(overlapping) >= limit:
        held = ", ".join(f"{h.role}@{h.target}" for h in overlapping)
        return Check("concurrency", False,
                     f"{req.requester} would hold {len(overlapping) + 1} elevations at once; the limit is {limit} "
                     f"(already: {held}).")
    return Check("concurrency", True,
                 f"{len(overlapping) + 1} of at most {limit} simultaneous elevations.")


def emergency_member(policy: PolicySet, req: AccessRequest, ctx: Context) -> Check:
    if policy.emergency is None:
        return Check("emergency_group", False, "this policy allows no emergency bypass.")
    group = policy.emergency.group
    if group not in ctx.groups:
        return Check("emergency_group", False,
                     f"{req.requester} is not in the emergency group {group!r}; only on-call may bypass approval.")
    return Check("emergency_group", True, f"{req.requester} is on call ({group}).")


def emergency_reference(policy: PolicySet, req: AccessRequest) -> Check:
    reason = (req.reason or "").strip()
    pattern = policy.emergency.incident_pattern if policy.emergency else r"^INC[0-9]{7}$"
    incident = (req.ticket or "").strip()
    if not re.fullmatch(pattern, incident):
        return Check("business_need", False,
                     f"an emergency bypass needs an incident reference such as INC0001234 (got {incident!r}).")
    if len(reason) < policy.defaults.min_reason_length:
        return Check("business_need", False,
                     f"a reason of at least {policy.defaults.min_reason_length} characters is required.")
    return Check("business_need", True, f"incident {incident}: {reason[:60]!r}.")


def open_review(ctx: Context) -> Check:
    if ctx.uncleared_violations:
        ids = ", ".join(f"REQ-{i}" for i in ctx.uncleared_violations)
        return Check("open_review", False,
                     f"an earlier emergency bypass ({ids}) was reviewed as a violation; a security operator "
                     f"must clear it first (jit review {ctx.uncleared_violations[0]} --clear).")
    if ctx.unreviewed_bypasses:
        return Check("open_review", False,
                     "a previous emergency bypass is still awaiting post-hoc review; "
                     "a security operator must review it first.")
    return Check("open_review", True, "no earlier bypass awaits review.")
