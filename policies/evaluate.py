"""``evaluate(policy, request, context)``: the whole decision, pure and clock-free.

The caller supplies the request's start (already resolved from its clock), the
requester's groups and holdings; nothing here reads a file, a database or a clock.
"""
from __future__ import annotations

from policies import checks
from policies.decision import AccessRequest, Check, Context, Decision
from policies.model import PolicySet
from policies.tickets import ticket_checks


def evaluate(policy: PolicySet, req: AccessRequest, ctx: Context) -> Decision:
    """Run every check; name the approval model the request needs."""
    target = policy.targets.get(req.target)
    tier = policy.tiers.get(target.tier) if target else None
    env = policy.environments.get(target.environment) if target else None
    found = [checks.business_need(policy, req, tier), checks.privilege_appropriate(policy, req, ctx)]
    if target is not None and env is not None:
        found.append(checks.duration_reasonable(req, env.max_duration, f"{target.environment} targets"))
        found.append(checks.separation_of_duties(policy, req, ctx))
        found.append(checks.approved_hours(req, target.environment, env))
        found.append(checks.concurrency(policy, req, ctx))
    if ctx.ticket is not None:
        found.extend(ticket_checks(req, ctx.ticket))
    approval, groups = "single", ()
    if tier is not None:
        approval, groups = tier.approval, tier.approver_groups
        if approval == "self-service":
            threshold = tier.auto_approve_up_to or policy.defaults.auto_approve_up_to
            if req.duration > threshold:
                # Longer than the auto-approval threshold: one approver from the tier's groups.
                approval = "single"
    role = target.roles.get(req.role) if target else None
    return Decision(
        checks=tuple(found),
        approval=approval,
        approver_groups=tuple(groups),
        environment=target.environment if target else None,
        tier=target.tier if target else None,
        backend=target.backend if target else None,
        params=_params(target, role),
    )


def _params(target, role) -> dict:
    """What the backend is given: the role's settings, and a host group's hosts (a sudo rule names them)."""
    if role is None:
        return {}
    return {**role.params, "hosts": list(target.hosts)} if target.hosts else dict(role.params)


def evaluate_bypass(policy: PolicySet, req: AccessRequest, ctx: Context) -> Decision:
    """An emergency bypass: on-call only, eligible, capped, with an incident, one open review at a time."""
    target = policy.targets.get(req.target)
    cap = policy.emergency.max_duration if policy.emergency else None
    # On-call skips approval, approved hours and the concurrency limit; never eligibility.
    found = [checks.emergency_member(policy, req, ctx), checks.privilege_appropriate(policy, req, ctx),
             checks.emergency_reference(policy, req), checks.open_review(ctx)]
    if cap is not None:
        found.append(checks.duration_reasonable(req, cap, "an emergency bypass"))
    if ctx.ticket is not None:
        if ctx.ticket.status == "unavailable":  # break-glass must not depend on ITSM being up
            found.append(Check("incident_open", True, f"{ctx.ticket.number} not verified: ServiceNow did not "
                                                      "answer; the post-hoc review will see this."))
        else:
            found.extend(ticket_checks(req, ctx.ticket))
    role = target.roles.get(req.role) if target else None
    return Decision(
        checks=tuple(found),
        approval="emergency",
        environment=target.environment if target else None,
        tier=target.tier if target else None,
        backend=target.backend if target else None,
        params=_params(target, role),
    )
