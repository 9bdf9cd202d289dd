"""What role mode writes to IAM and asks of STS: policy names and statement ids, the
time format of policy conditions (``_utc`` writes it, ``_parse_time`` reads it back),
compact policy JSON, and the session lengths STS accepts.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

GRANT_POLICY_PREFIX = "jit-grant-"
REVOKE_POLICY_PREFIX = "jit-revoke-"
_GRANT_POLICY_RE = re.compile(r"jit-grant-(\d+)")
_GRANT_SID = "JitGrant"
_REVOKE_SID = "JitRevokeSessions"
_TIME_FMT = "%Y-%m-%dT%H:%M:%SZ"

STS_MIN_SECONDS = 900  # STS refuses shorter sessions
STS_MAX_SECONDS = 43200  # ... and longer ones (12 h, the largest MaxSessionDuration)
STS_DEFAULT_MAX_SECONDS = 3600  # a role's MaxSessionDuration unless raised
# Credentials are asked to end this much before the grant, so that STS's own clock running
# slightly ahead of ours never lets them outlive it.
CLOCK_SKEW_SECONDS = 5
# A revocation deny is useless once every session issued before it has expired.
_REVOKE_PRUNE_AFTER = timedelta(seconds=STS_MAX_SECONDS + 600)


def _utc(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime(_TIME_FMT)


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.astimezone(timezone.utc)


def _compact(document: Mapping[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))
