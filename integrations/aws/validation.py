"""The shapes of the names and ARNs the AWS backend accepts, and the checks built on them.

Persons (IAM / Identity Center user names), role and permission set ARNs, Identity
Center instance and identity store ids, regions and session names; ``role_arn_error``
and the ``_check_*`` helpers raise or report ``InvalidGrant`` reasons.
"""
from __future__ import annotations

import re
from typing import Any

from integrations.base import InvalidGrant

PERSON_RE = re.compile(r"[A-Za-z0-9+=,.@_-]{1,64}")
ROLE_ARN_RE = re.compile(r"arn:aws(?:-cn|-us-gov)?:iam::(\d{12}):role/([\w+=,.@/-]{1,512})", re.ASCII)
ACCOUNT_ID_RE = re.compile(r"[0-9]{12}")
# Real AWS: arn:aws:sso:::permissionSet/ssoins-<16 hex>/ps-<16 hex>. moto 5 generates
# arn:aws:sso:::instance/ssoins-<16 [a-z0-9]>/ps-<16 [a-z0-9]>, which is accepted too.
PERMISSION_SET_ARN_RE = re.compile(
    r"arn:aws(?:-cn|-us-gov)?:sso:::(?:permissionSet|instance)/(ssoins-[0-9a-z]{16})/ps-[0-9a-z]{16}"
)
INSTANCE_ARN_RE = re.compile(r"arn:aws(?:-cn|-us-gov)?:sso:::instance/(ssoins-[0-9a-z]{16})")
# Real AWS: d-<10 hex> or a UUID; moto: d-<10 [a-z0-9]>.
IDENTITY_STORE_RE = re.compile(
    r"d-[0-9a-z]{10}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
SESSION_NAME_RE = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)


def _check_int(field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidGrant(field_name, "must be a non-negative integer")
    return value


def _check_person(person: Any) -> str:
    if not isinstance(person, str) or not PERSON_RE.fullmatch(person):
        raise InvalidGrant("person", "must be 1-64 characters of letters, digits and +=,.@_-")
    return person


def role_arn_error(value: Any) -> str | None:
    """Why ``value`` is not an IAM role ARN, or None."""
    if not isinstance(value, str) or not ROLE_ARN_RE.fullmatch(value):
        return "must be an IAM role ARN (arn:aws:iam::<12 digits>:role/<name>)"
    if "//" in value.split(":role/", 1)[1]:
        return "must not contain an empty path segment"
    return None


def _role_name(role_arn: str) -> str:
    return role_arn.rsplit("/", 1)[1]
