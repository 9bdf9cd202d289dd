"""Translating botocore and boto3 exceptions into ``BackendError``.

Transient: throttling (``TRANSIENT_ERROR_CODES``), server-side failures (HTTP 5xx or 429)
and connection problems; everything else is permanent. ``_aws`` wraps each block of AWS
calls, so that no botocore or boto3 exception leaves this package.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from integrations.base import BackendError

TRANSIENT_ERROR_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "SlowDown",
    "PriorRequestNotComplete", "ServiceUnavailable", "ServiceUnavailableException",
    "ServiceFailure", "InternalFailure", "InternalError", "InternalServerError",
    "InternalServerException", "RequestTimeout", "RequestTimeoutException",
    "ConcurrentModification", "ConcurrentModificationException", "ConflictException",
    "IDPCommunicationError",
})


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "") or "")


def to_backend_error(exc: BaseException, action: str) -> BackendError:
    """Map a botocore exception raised while doing ``action`` to a ``BackendError``.

    Transient: throttling, server-side failures (HTTP 5xx or 429) and connection problems.
    Everything else (access denied, validation, missing entities, no credentials) is not."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {}) or {}
        code = _error_code(exc)
        message = error.get("Message") or str(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        transient = code in TRANSIENT_ERROR_CODES or (
            isinstance(status, int) and (status >= 500 or status == 429)
        )
        return BackendError(f"AWS refused to {action}: {code or 'error'}: {message}", transient=transient)
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, BotoConnectionError, HTTPClientError)):
        return BackendError(f"cannot reach AWS to {action}: {exc}", transient=True)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return BackendError(f"no usable AWS credentials to {action}: {exc}")
    if isinstance(exc, BotoCoreError):
        return BackendError(f"cannot {action}: {exc}")
    return BackendError(f"unexpected error while trying to {action}: {exc!r}")


@contextmanager
def _aws(action: str) -> Iterator[None]:
    """Turn every botocore/boto3 exception inside the block into a ``BackendError``."""
    try:
        yield
    except BackendError:
        raise
    except (ClientError, BotoCoreError) as exc:
        raise to_backend_error(exc, action) from exc
    except boto3.exceptions.Boto3Error as exc:
        raise BackendError(f"cannot {action}: {exc}") from exc
