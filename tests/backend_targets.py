"""The LDAP and AWS targets the backend tests add to the default policy, and the AWS role's trust."""
from __future__ import annotations

from datetime import timedelta

from app.dev.servers.slapd import group_dn
from policies.model import PolicySet

WEB = group_dn("web-admins")
ROLE_ARN = "arn:aws:iam::123456789012:role/jit-admin"
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                                                 "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]}]}


def policy_with_targets(base: PolicySet) -> PolicySet:
    """``base`` plus corp-ldap/web-admins and aws-prod/admin (low tier, self-service up to 30 minutes)."""
    data = base.model_dump(mode="python")
    data["targets"]["corp-ldap"] = {"environment": "production", "tier": "low", "backend": "ldap", "roles": {
        "web-admins": {"eligible_groups": ["engineers"], "group_dn": WEB}}}
    data["targets"]["aws-prod"] = {"environment": "production", "tier": "low", "backend": "aws", "roles": {
        "admin": {"eligible_groups": ["engineers"], "role_arn": ROLE_ARN}}}
    data["tiers"]["low"] = {**data["tiers"]["low"], "auto_approve_up_to": timedelta(minutes=30)}
    return PolicySet.model_validate(data)
