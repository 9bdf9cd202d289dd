"""AWS backend (IAM role assumption or Identity Center assignments); see ``backend``."""
from __future__ import annotations

from integrations.aws.backend import (  # noqa: F401
    ACCOUNT_ID_RE,
    AwsBackend,
    CLOCK_SKEW_SECONDS,
    GRANT_POLICY_PREFIX,
    IDENTITY_STORE_RE,
    INSTANCE_ARN_RE,
    log,
    Mode,
    PERMISSION_SET_ARN_RE,
    PERSON_RE,
    REGION_RE,
    REVOKE_POLICY_PREFIX,
    role_arn_error,
    ROLE_ARN_RE,
    SESSION_NAME_RE,
    STS_DEFAULT_MAX_SECONDS,
    STS_MAX_SECONDS,
    STS_MIN_SECONDS,
    to_backend_error,
    TRANSIENT_ERROR_CODES,
)
from integrations.aws.backend import __all__  # noqa: F401
