"""AWS backend: time-boxed IAM role assumption, or IAM Identity Center account assignments.

The package's modules:

``backend``
    ``AwsBackend`` (both modes; its docstring describes them and what they need on the
    AWS side).
``errors``
    ``to_backend_error`` and ``TRANSIENT_ERROR_CODES``: botocore and boto3 exceptions
    become ``BackendError`` before they leave the package.
``validation``
    The patterns of person names, ARNs, ids and regions, and ``role_arn_error``.
``policy``
    Policy names and statement ids, the time format of conditions, STS session limits.

Every name below stays importable from ``integrations.aws``.
"""
from __future__ import annotations

from integrations.aws.backend import AwsBackend, Mode, log
from integrations.aws.errors import TRANSIENT_ERROR_CODES, to_backend_error
from integrations.aws.policy import (
    CLOCK_SKEW_SECONDS,
    GRANT_POLICY_PREFIX,
    REVOKE_POLICY_PREFIX,
    STS_DEFAULT_MAX_SECONDS,
    STS_MAX_SECONDS,
    STS_MIN_SECONDS,
)
from integrations.aws.validation import (
    ACCOUNT_ID_RE,
    IDENTITY_STORE_RE,
    INSTANCE_ARN_RE,
    PERMISSION_SET_ARN_RE,
    PERSON_RE,
    REGION_RE,
    ROLE_ARN_RE,
    SESSION_NAME_RE,
    role_arn_error,
)

__all__ = ["AwsBackend", "to_backend_error", "TRANSIENT_ERROR_CODES"]
