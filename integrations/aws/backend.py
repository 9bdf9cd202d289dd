"""AWS backend: time-boxed IAM role assumption, or IAM Identity Center account assignments.

Over 600 lines as one module because it is one class: ``AwsBackend`` serves both modes,
each Backend method dispatching on ``mode``, and the modes share its settings, client
cache and clock; splitting the modes into modules would cut the class in two. Names and
ARNs (``validation``), policy names and STS limits (``policy``) and the translation of
botocore errors (``errors``) live in the sibling modules.

Two modes, chosen per deployment:

``mode="role"`` (role assumption). The person is an IAM user of the same name. A grant is
one inline user policy ``jit-grant-{grant_id}`` allowing ``sts:AssumeRole`` (with
``sts:SetSourceIdentity`` and ``sts:TagSession``) on the role, conditioned on
``aws:CurrentTime`` lying inside the grant window, and on the session's source identity
being the person's own name. AWS itself refuses new sessions after the expiry even when
the engine is down. Revoking deletes that policy and puts an inline *deny* on the role,
``jit-revoke-{person}``, that kills every session carrying the person's source identity
issued before the revocation (``aws:TokenIssueTime``); sessions of other people, and the
person's sessions issued later under a new grant, are untouched.

Requirements on the AWS side for role mode:

* the role's trust policy must trust the account (``"Principal": {"AWS":
  "arn:aws:iam::<account>:root"}``) for ``sts:AssumeRole``, ``sts:SetSourceIdentity``
  and ``sts:TagSession``, so the IAM user policy written here decides who may assume it;
* the engine's credentials need ``iam:PutUserPolicy``, ``iam:DeleteUserPolicy``,
  ``iam:GetUserPolicy``, ``iam:ListUsers``, ``iam:ListUserPolicies`` and
  ``iam:PutRolePolicy``, ``iam:GetRolePolicy``, ``iam:ListRolePolicies``,
  ``iam:DeleteRolePolicy`` on the roles it manages.

``mode="identity_center"``. A grant is an account assignment of a permission set to the
Identity Center user named like the person. Two grants of one person for one (account,
permission set) share the assignment (``shared_key``). Assignments carry no expiry of
their own: only the engine's revoke takes them away.

No botocore or boto3 exception leaves this package: each becomes a ``BackendError``
(``errors``), transient for throttling, server-side (5xx) errors and connection failures.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Literal, Mapping, Sequence

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from integrations.aws.errors import _aws, _error_code
from integrations.aws.policy import (
    _GRANT_POLICY_RE,
    _GRANT_SID,
    _REVOKE_PRUNE_AFTER,
    _REVOKE_SID,
    CLOCK_SKEW_SECONDS,
    GRANT_POLICY_PREFIX,
    REVOKE_POLICY_PREFIX,
    STS_DEFAULT_MAX_SECONDS,
    STS_MAX_SECONDS,
    STS_MIN_SECONDS,
    _compact,
    _parse_time,
    _utc,
)
from integrations.aws.validation import (
    ACCOUNT_ID_RE,
    IDENTITY_STORE_RE,
    INSTANCE_ARN_RE,
    PERMISSION_SET_ARN_RE,
    REGION_RE,
    SESSION_NAME_RE,
    _check_int,
    _check_person,
    _role_name,
    role_arn_error,
)
from integrations.base import Artifact, BackendError, GrantSpec, InvalidGrant

Mode = Literal["role", "identity_center"]

log = logging.getLogger("jit.aws")


class AwsBackend:
    """Grants AWS access through IAM role assumption or Identity Center assignments."""

    name = "aws"

    def __init__(
        self,
        *,
        mode: Mode,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        session: Any = None,
        identity_center_instance_arn: str | None = None,
        identity_store_id: str | None = None,
        managed_assignments: Sequence[tuple[str, str]] = (),
        clock: Callable[[], datetime] | None = None,
        max_attempts: int = 5,
        assignment_timeout: float = 300.0,
    ) -> None:
        """Check the settings (raises ``ValueError``); makes no AWS call and reads no file.

        ``session`` is a ``boto3.Session`` (or anything with ``client(name, **kwargs)``);
        by default ``boto3.Session(region_name=region)``, created on first use.
        ``managed_assignments`` lists the (account id, permission set ARN) pairs that
        Identity Center mode's ``list_managed`` looks at. ``assignment_timeout`` bounds the
        wait, in seconds, for an asynchronous Identity Center assignment change."""
        if mode not in ("role", "identity_center"):
            raise ValueError(f"mode must be 'role' or 'identity_center', not {mode!r}")
        if not isinstance(region, str) or not REGION_RE.fullmatch(region):
            raise ValueError(f"region {region!r} is not an AWS region name")
        if endpoint_url is not None and (
            not isinstance(endpoint_url, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", endpoint_url)
        ):
            raise ValueError(f"endpoint_url {endpoint_url!r} must be an http(s) URL")
        if session is not None and not callable(getattr(session, "client", None)):
            raise ValueError("session must be a boto3.Session")
        if clock is not None and not callable(clock):
            raise ValueError("clock must be callable")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= 20:
            raise ValueError("max_attempts must be an integer from 1 to 20")
        if not isinstance(assignment_timeout, (int, float)) or assignment_timeout <= 0:
            raise ValueError("assignment_timeout must be a positive number of seconds")
        pairs: list[tuple[str, str]] = []
        if mode == "identity_center":
            if not isinstance(identity_center_instance_arn, str) or not INSTANCE_ARN_RE.fullmatch(
                identity_center_instance_arn
            ):
                raise ValueError(
                    "identity_center mode needs identity_center_instance_arn "
                    "(arn:aws:sso:::instance/ssoins-<16 characters>)"
                )
            if not isinstance(identity_store_id, str) or not IDENTITY_STORE_RE.fullmatch(identity_store_id):
                raise ValueError("identity_center mode needs identity_store_id (d-<10 characters>)")
            for item in managed_assignments:
                if not isinstance(item, (tuple, list)) or len(item) != 2:
                    raise ValueError("managed_assignments must hold (account_id, permission_set_arn) pairs")
                errors = self._ic_errors({"account_id": item[0], "permission_set_arn": item[1]},
                                         identity_center_instance_arn)
                if errors:
                    raise ValueError(f"managed_assignments: {'; '.join(errors)}")
                pairs.append((item[0], item[1]))
        elif managed_assignments:
            raise ValueError("managed_assignments only applies to identity_center mode")
        self.mode: Mode = mode
        self.region = region
        self.endpoint_url = endpoint_url
        self.identity_center_instance_arn = identity_center_instance_arn
        self.identity_store_id = identity_store_id
        self.managed_assignments: tuple[tuple[str, str], ...] = tuple(pairs)
        self.max_attempts = max_attempts
        self.assignment_timeout = float(assignment_timeout)
        self._session = session
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._sleep: Callable[[float], None] = time.sleep
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- Backend protocol --------------------------------------------------

    def validate_role(self, params: Mapping[str, Any]) -> list[str]:
        """Return one "field: reason" message per problem in a role's AWS settings."""
        if not isinstance(params, Mapping):
            return ["params: must be a mapping"]
        if self.mode == "role":
            used = ("role_arn",)
            errors = []
            if "role_arn" not in params:
                errors.append("role_arn: required (the IAM role the person may assume)")
            elif (err := role_arn_error(params["role_arn"])) is not None:
                errors.append(f"role_arn: {err}")
        else:
            used = ("account_id", "permission_set_arn")
            errors = self._ic_errors(params, self.identity_center_instance_arn)
        mode_name = "role mode" if self.mode == "role" else "identity_center mode"
        errors.extend(f"{key}: not used by the aws backend in {mode_name}"
                      for key in params if key not in used)
        return errors

    def shared_key(self, grant: GrantSpec) -> str | None:
        """Role mode: None (one inline policy per grant). Identity Center: one assignment per
        (account, permission set, person), shared by every grant covering it."""
        if self.mode == "role":
            return None
        params = grant.params if isinstance(grant.params, Mapping) else {}
        return f"sso:{params.get('account_id')}|{params.get('permission_set_arn')}|{grant.person}"

    def apply(self, grant: GrantSpec) -> str:
        """Create or refresh the grant's artifact; return its reference."""
        if self.mode == "role":
            return self._role_apply(grant)
        return self._ic_apply(grant)

    def revoke(self, grant: GrantSpec) -> None:
        """Remove the grant's artifact (and, in role mode, end its live sessions)."""
        if self.mode == "role":
            self._role_revoke(grant)
        else:
            self._ic_revoke(grant)

    def inspect(self, grant: GrantSpec) -> Artifact | None:
        """Return what AWS holds for ``grant`` now, or None."""
        if self.mode == "role":
            return self._role_inspect(grant)
        return self._ic_inspect(grant)

    def list_managed(self) -> list[Artifact]:
        """Role mode: every ``jit-grant-*`` inline policy of every IAM user. Identity Center:
        every user assignment of the ``managed_assignments`` pairs."""
        if self.mode == "role":
            return self._role_list()
        return self._ic_list()

    # -- role mode -----------------------------------------------------------

    def credentials(
        self, grant: GrantSpec, session_name: str | None = None, *, sts_session: Any = None
    ) -> dict[str, Any]:
        """Assume the grant's role; return the AWS CLI ``credential_process`` JSON object.

        In real use the call must be made with the PERSON's own credentials (the IAM user
        policy written by ``apply`` is what allows it): pass their ``boto3.Session`` as
        ``sts_session``. By default the backend's own session is used (tests, or an engine
        that itself is the person). The session is tagged ``jit-request=<request_id>`` and
        carries the person as its source identity, which ``revoke`` relies on. Credentials
        end at the grant's expiry (a few seconds before it), at most 12 hours from now;
        when the role's MaxSessionDuration is lower, one hour is asked for instead."""
        if self.mode != "role":
            raise BackendError("credentials are only issued in role mode; Identity Center users sign in "
                               "through the AWS access portal")
        _check_int("grant_id", grant.grant_id)
        person = _check_person(grant.person)
        request_id = _check_int("request_id", grant.request_id)
        role_arn = self._role_arn(grant)
        grant.check_window()
        if session_name is None:
            session_name = f"jit-{request_id}-{person}"[:64]
        elif not isinstance(session_name, str) or not SESSION_NAME_RE.fullmatch(session_name):
            raise InvalidGrant("session_name", "must be 2-64 characters of letters, digits and _+=,.@-")
        now = self._now()
        if now < grant.starts_at:
            raise BackendError(f"the grant only starts at {_utc(grant.starts_at)}")
        remaining = int((grant.expires_at - now).total_seconds()) - CLOCK_SKEW_SECONDS
        if remaining < STS_MIN_SECONDS:
            raise BackendError("less than 15 minutes remain in the grant; STS cannot issue credentials "
                               "that short", transient=False)
        duration = min(remaining, STS_MAX_SECONDS)
        kwargs = {
            "RoleArn": role_arn,
            "RoleSessionName": session_name,
            "SourceIdentity": person,
            "Tags": [{"Key": "jit-request", "Value": str(request_id)}],
        }
        action = f"assume {role_arn} for {person}"
        with _aws(action):
            sts = self._client("sts") if sts_session is None else self._new_client(sts_session, "sts")
            try:
                response = sts.assume_role(DurationSeconds=duration, **kwargs)
            except ClientError as exc:
                message = str(exc.response.get("Error", {}).get("Message", ""))
                if (_error_code(exc) != "ValidationError" or "MaxSessionDuration" not in message
                        or duration <= STS_DEFAULT_MAX_SECONDS):
                    raise
                response = sts.assume_role(DurationSeconds=STS_DEFAULT_MAX_SECONDS, **kwargs)
        try:
            creds = response["Credentials"]
            expiration = creds["Expiration"]
            if isinstance(expiration, str):
                expiration = _parse_time(expiration)
            if not isinstance(expiration, datetime):
                raise TypeError(f"Expiration {expiration!r}")
            if expiration.tzinfo is None:
                expiration = expiration.replace(tzinfo=timezone.utc)
            return {
                "Version": 1,
                "AccessKeyId": creds["AccessKeyId"],
                "SecretAccessKey": creds["SecretAccessKey"],
                "SessionToken": creds["SessionToken"],
                "Expiration": _utc(expiration),
            }
        except (KeyError, TypeError) as exc:
            raise BackendError(f"unexpected AssumeRole answer: {exc}") from exc

    def grant_policy(self, grant: GrantSpec) -> dict[str, Any]:
        """The inline user policy ``apply`` writes for ``grant`` (validates it; no I/O)."""
        _check_int("grant_id", grant.grant_id)
        person = _check_person(grant.person)
        role_arn = self._role_arn(grant)
        grant.check_window()
        return {
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": _GRANT_SID,
                "Effect": "Allow",
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
                "Resource": role_arn,
                "Condition": {
                    "DateGreaterThan": {"aws:CurrentTime": _utc(grant.starts_at)},
                    "DateLessThan": {"aws:CurrentTime": _utc(grant.expires_at)},
                    # Sessions must carry the person's name, so that revoke can end them.
                    "StringEquals": {"sts:SourceIdentity": person},
                },
            }],
        }

    def _role_arn(self, grant: GrantSpec) -> str:
        params = grant.params if isinstance(grant.params, Mapping) else {}
        value = params.get("role_arn")
        if value is None:
            raise InvalidGrant("role_arn", "required (the IAM role the person may assume)")
        if (err := role_arn_error(value)) is not None:
            raise InvalidGrant("role_arn", err)
        return value

    @staticmethod
    def _grant_ref(person: str, grant_id: int) -> str:
        return f"iam:user/{person}/policy/{GRANT_POLICY_PREFIX}{grant_id}"

    def _role_apply(self, grant: GrantSpec) -> str:
        _check_int("request_id", grant.request_id)
        document = self.grant_policy(grant)
        person, grant_id = grant.person, grant.grant_id
        name = f"{GRANT_POLICY_PREFIX}{grant_id}"
        with _aws(f"write IAM policy {name} for user {person}"):
            iam = self._client("iam")
            try:
                iam.put_user_policy(UserName=person, PolicyName=name, PolicyDocument=_compact(document))
            except ClientError as exc:
                if _error_code(exc) == "NoSuchEntity":
                    raise BackendError(f"IAM user {person!r} does not exist", transient=False) from exc
                if _error_code(exc) == "LimitExceeded":  # 2,048 characters of inline policy per user
                    raise BackendError(
                        f"IAM user {person!r} has no room left for another inline policy (too many "
                        f"concurrent grants?): {exc.response.get('Error', {}).get('Message', '')}"
                    ) from exc
                raise
        return self._grant_ref(person, grant_id)

    def revocation_policy(self, person: str, revoked_at: datetime) -> dict[str, Any]:
        """The deny ``revoke`` puts on the role: every session of ``person`` issued before
        ``revoked_at`` loses every permission. (``aws:SourceIdentity`` is the key present in a
        session's requests; ``sts:SourceIdentity`` only exists in the AssumeRole request.)"""
        return {
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": _REVOKE_SID,
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {"aws:SourceIdentity": person},
                    "DateLessThan": {"aws:TokenIssueTime": _utc(revoked_at)},
                },
            }],
        }

    def _role_revoke(self, grant: GrantSpec) -> None:
        grant_id = _check_int("grant_id", grant.grant_id)
        person = _check_person(grant.person)
        # A policy found by reconcile may name no role we can read (role_arn given as None):
        # remove it all the same. A grant without the key at all is refused as ever.
        unknown_role = "role_arn" in grant.params and grant.params["role_arn"] is None
        role_arn = None if unknown_role else self._role_arn(grant)
        name = f"{GRANT_POLICY_PREFIX}{grant_id}"
        with _aws(f"delete IAM policy {name} of user {person}"):
            iam = self._client("iam")
            try:
                iam.delete_user_policy(UserName=person, PolicyName=name)
            except ClientError as exc:
                if _error_code(exc) != "NoSuchEntity":
                    raise
        if role_arn is None:
            log.warning("policy %s of %s named no role: removed, but no live session could be ended", name, person)
            return
        role_name = _role_name(role_arn)
        # The DateLessThan is exclusive and has second precision: round up, so a session
        # issued during this very second is caught too.
        now = self._now().replace(microsecond=0) + timedelta(seconds=1)
        revoke_name = f"{REVOKE_POLICY_PREFIX}{person}"
        with _aws(f"end the sessions of {person} on role {role_name}"):
            try:
                iam.put_role_policy(RoleName=role_name, PolicyName=revoke_name,
                                    PolicyDocument=_compact(self.revocation_policy(person, now)))
            except ClientError as exc:
                if _error_code(exc) == "NoSuchEntity":
                    return  # no role, no session can use it
                if _error_code(exc) == "LimitExceeded":
                    raise BackendError(
                        f"role {role_name} has no room left for inline policies; cannot end the sessions "
                        f"of {person}: {exc.response.get('Error', {}).get('Message', '')}"
                    ) from exc
                raise
        self._prune_revocations(iam, role_name, now)

    def _prune_revocations(self, iam: Any, role_name: str, now: datetime) -> None:
        """Delete revocation denies so old that every session they target has expired."""
        with _aws(f"tidy the revocation policies of role {role_name}"):
            names = [n for page in iam.get_paginator("list_role_policies").paginate(RoleName=role_name)
                     for n in page.get("PolicyNames", []) if n.startswith(REVOKE_POLICY_PREFIX)]
            for policy_name in names:
                try:
                    doc = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
                except ClientError as exc:
                    if _error_code(exc) == "NoSuchEntity":
                        continue
                    raise
                issued = _parse_time(self._condition(doc, _REVOKE_SID).get("DateLessThan", {})
                                     .get("aws:TokenIssueTime"))
                if issued is not None and now - issued > _REVOKE_PRUNE_AFTER:
                    try:
                        iam.delete_role_policy(RoleName=role_name, PolicyName=policy_name)
                    except ClientError as exc:
                        if _error_code(exc) != "NoSuchEntity":
                            raise

    @staticmethod
    def _condition(document: Any, sid: str) -> dict[str, Any]:
        """The Condition of statement ``sid`` in a policy document (a dict or its JSON)."""
        if isinstance(document, str):
            try:
                document = json.loads(document)
            except ValueError:
                return {}
        statements = document.get("Statement", []) if isinstance(document, Mapping) else []
        if isinstance(statements, Mapping):
            statements = [statements]
        for statement in statements:
            if isinstance(statement, Mapping) and statement.get("Sid") == sid:
                condition = statement.get("Condition", {})
                return dict(condition) if isinstance(condition, Mapping) else {}
        return {}

    def _policy_artifact(self, person: str, policy_name: str, document: Any) -> Artifact:
        if isinstance(document, str):
            try:
                document = json.loads(document)
            except ValueError:
                document = {}
        condition = self._condition(document, _GRANT_SID)
        role_arn = None
        for statement in document.get("Statement", []) if isinstance(document, Mapping) else []:
            if not isinstance(statement, Mapping):
                continue
            actions = statement.get("Action")
            actions = [actions] if isinstance(actions, str) else actions if isinstance(actions, list) else []
            # Ours carry _GRANT_SID; one written by hand still names its role in an AssumeRole statement.
            if statement.get("Sid") == _GRANT_SID or (role_arn is None and "sts:AssumeRole" in actions):
                resource = statement.get("Resource")
                role_arn = resource if isinstance(resource, str) and role_arn_error(resource) is None else role_arn
        match = _GRANT_POLICY_RE.fullmatch(policy_name)
        return Artifact(
            ref=f"iam:user/{person}/policy/{policy_name}",
            grant_id=int(match.group(1)) if match else None,
            person=person,
            not_before=_parse_time(condition.get("DateGreaterThan", {}).get("aws:CurrentTime")),
            not_after=_parse_time(condition.get("DateLessThan", {}).get("aws:CurrentTime")),
            details={"policy_name": policy_name, "role_arn": role_arn, "condition": condition},
        )

    def _role_inspect(self, grant: GrantSpec) -> Artifact | None:
        grant_id = _check_int("grant_id", grant.grant_id)
        person = _check_person(grant.person)
        name = f"{GRANT_POLICY_PREFIX}{grant_id}"
        with _aws(f"read IAM policy {name} of user {person}"):
            try:
                response = self._client("iam").get_user_policy(UserName=person, PolicyName=name)
            except ClientError as exc:
                if _error_code(exc) == "NoSuchEntity":
                    return None
                raise
        return self._policy_artifact(person, name, response.get("PolicyDocument"))

    def _role_list(self) -> list[Artifact]:
        found: list[Artifact] = []
        with _aws("list the IAM users' jit-grant policies"):
            iam = self._client("iam")
            for page in iam.get_paginator("list_users").paginate():
                for user in page.get("Users", []):
                    user_name = user["UserName"]
                    try:
                        names = [n for p in iam.get_paginator("list_user_policies").paginate(UserName=user_name)
                                 for n in p.get("PolicyNames", []) if n.startswith(GRANT_POLICY_PREFIX)]
                        for policy_name in names:
                            doc = iam.get_user_policy(UserName=user_name, PolicyName=policy_name)
                            found.append(self._policy_artifact(user_name, policy_name, doc.get("PolicyDocument")))
                    except ClientError as exc:
                        if _error_code(exc) != "NoSuchEntity":  # deleted while we looked
                            raise
        return sorted(found, key=lambda a: (a.grant_id is None, a.grant_id or 0, a.person, a.ref))

    # -- Identity Center mode ------------------------------------------------

    @staticmethod
    def _ic_errors(params: Mapping[str, Any], instance_arn: str | None) -> list[str]:
        errors = []
        account = params.get("account_id")
        if account is None:
            errors.append("account_id: required (the 12-digit AWS account)")
        elif not isinstance(account, str) or not ACCOUNT_ID_RE.fullmatch(account):
            errors.append("account_id: must be a 12-digit AWS account id (a string)")
        ps = params.get("permission_set_arn")
        if ps is None:
            errors.append("permission_set_arn: required (the permission set assigned)")
        elif not isinstance(ps, str) or not (match := PERMISSION_SET_ARN_RE.fullmatch(ps)):
            errors.append("permission_set_arn: must be a permission set ARN "
                          "(arn:aws:sso:::permissionSet/ssoins-<16 characters>/ps-<16 characters>)")
        elif instance_arn is not None:
            instance = INSTANCE_ARN_RE.fullmatch(instance_arn)
            if instance and instance.group(1) != match.group(1):
                errors.append(f"permission_set_arn: belongs to {match.group(1)}, not to the configured "
                              f"Identity Center instance {instance.group(1)}")
        return errors

    def _ic_target(self, grant: GrantSpec) -> tuple[str, str, str]:
        person = _check_person(grant.person)
        params = grant.params if isinstance(grant.params, Mapping) else {}
        errors = self._ic_errors(params, self.identity_center_instance_arn)
        if errors:
            field_name, _, reason = errors[0].partition(": ")
            raise InvalidGrant(field_name, reason)
        return person, params["account_id"], params["permission_set_arn"]

    def _principal_id(self, person: str, *, missing_ok: bool = False) -> str | None:
        with _aws(f"look up Identity Center user {person}"):
            store = self._client("identitystore")
            users = [u for page in store.get_paginator("list_users").paginate(
                        IdentityStoreId=self.identity_store_id,
                        Filters=[{"AttributePath": "UserName", "AttributeValue": person}])
                     for u in page.get("Users", [])]
        if len(users) == 1 and users[0].get("UserId"):
            return str(users[0]["UserId"])
        if not users and missing_ok:
            return None
        if not users:
            raise InvalidGrant("person", f"no Identity Center user is named {person!r}")
        raise InvalidGrant("person", f"{len(users)} Identity Center users are named {person!r}")

    def _assignments(self, account_id: str, permission_set_arn: str) -> list[dict[str, Any]]:
        with _aws(f"list the assignments of {permission_set_arn} in account {account_id}"):
            sso = self._client("sso-admin")
            return [a for page in sso.get_paginator("list_account_assignments").paginate(
                        InstanceArn=self.identity_center_instance_arn, AccountId=account_id,
                        PermissionSetArn=permission_set_arn)
                    for a in page.get("AccountAssignments", [])]

    def _has_assignment(self, account_id: str, permission_set_arn: str, principal_id: str) -> bool:
        return any(a.get("PrincipalType") == "USER" and a.get("PrincipalId") == principal_id
                   for a in self._assignments(account_id, permission_set_arn))

    @staticmethod
    def _ic_ref(account_id: str, permission_set_arn: str, principal_id: str) -> str:
        return f"sso:{account_id}/{permission_set_arn}/{principal_id}"

    def _assignment_args(self, account_id: str, permission_set_arn: str, principal_id: str) -> dict[str, str]:
        return {
            "InstanceArn": self.identity_center_instance_arn or "",
            "TargetId": account_id,
            "TargetType": "AWS_ACCOUNT",
            "PermissionSetArn": permission_set_arn,
            "PrincipalType": "USER",
            "PrincipalId": principal_id,
        }

    def _ic_apply(self, grant: GrantSpec) -> str:
        person, account_id, ps = self._ic_target(grant)
        principal_id = self._principal_id(person)
        assert principal_id is not None
        ref = self._ic_ref(account_id, ps, principal_id)
        if self._has_assignment(account_id, ps, principal_id):
            return ref
        action = f"assign {ps} in account {account_id} to {person}"
        with _aws(action):
            sso = self._client("sso-admin")
            status = sso.create_account_assignment(
                **self._assignment_args(account_id, ps, principal_id))["AccountAssignmentCreationStatus"]
            self._wait(status, action, sso.describe_account_assignment_creation_status,
                       "AccountAssignmentCreationRequestId", "AccountAssignmentCreationStatus")
        return ref

    def _ic_revoke(self, grant: GrantSpec) -> None:
        person, account_id, ps = self._ic_target(grant)
        principal_id = self._principal_id(person, missing_ok=True)
        if principal_id is None:
            return  # no such user any more: nobody can use the assignment
        if not self._has_assignment(account_id, ps, principal_id):
            return
        action = f"remove {ps} in account {account_id} from {person}"
        with _aws(action):
            sso = self._client("sso-admin")
            try:
                status = sso.delete_account_assignment(
                    **self._assignment_args(account_id, ps, principal_id))["AccountAssignmentDeletionStatus"]
            except ClientError as exc:
                if _error_code(exc) == "ResourceNotFoundException":
                    return  # removed meanwhile
                raise
            self._wait(status, action, sso.describe_account_assignment_deletion_status,
                       "AccountAssignmentDeletionRequestId", "AccountAssignmentDeletionStatus")

    def _wait(self, status: Mapping[str, Any], action: str, describe: Callable[..., Any],
              request_key: str, status_key: str) -> None:
        """Poll an asynchronous assignment change until it succeeds, fails or times out."""
        deadline = time.monotonic() + self.assignment_timeout
        delay = 0.25
        while True:
            state = status.get("Status")
            if state == "SUCCEEDED":
                return
            if state == "FAILED":
                raise BackendError(f"AWS failed to {action}: {status.get('FailureReason') or 'no reason given'}")
            request_id = status.get("RequestId")
            if not request_id:
                raise BackendError(f"AWS gave no request id to follow while trying to {action} (status {state!r})")
            if time.monotonic() >= deadline:
                raise BackendError(f"AWS still reports {state} after {self.assignment_timeout:g}s while "
                                   f"trying to {action} (request {request_id})", transient=True)
            self._sleep(delay)
            delay = min(delay * 2, 5.0)
            status = describe(InstanceArn=self.identity_center_instance_arn, **{request_key: request_id})[status_key]

    def _user_names(self, principal_ids: set[str]) -> dict[str, str | None]:
        names: dict[str, str | None] = {}
        with _aws("look up Identity Center user names"):
            store = self._client("identitystore")
            for principal_id in sorted(principal_ids):
                try:
                    names[principal_id] = store.describe_user(
                        IdentityStoreId=self.identity_store_id, UserId=principal_id).get("UserName")
                except ClientError as exc:
                    if _error_code(exc) != "ResourceNotFoundException":
                        raise
                    names[principal_id] = None
        return names

    def _ic_artifact(self, account_id: str, ps: str, principal_id: str, user_name: str | None) -> Artifact:
        return Artifact(
            ref=self._ic_ref(account_id, ps, principal_id),
            grant_id=None,  # an assignment does not name the grant(s) it serves
            person=user_name if user_name is not None else principal_id,
            details={
                "account_id": account_id,
                "permission_set_arn": ps,
                "principal_id": principal_id,
                "instance_arn": self.identity_center_instance_arn,
                "user_found": user_name is not None,
            },
        )

    def _ic_inspect(self, grant: GrantSpec) -> Artifact | None:
        person, account_id, ps = self._ic_target(grant)
        principal_id = self._principal_id(person, missing_ok=True)
        if principal_id is None or not self._has_assignment(account_id, ps, principal_id):
            return None
        return self._ic_artifact(account_id, ps, principal_id, person)

    def _ic_list(self) -> list[Artifact]:
        rows = [(account_id, ps, a["PrincipalId"])
                for account_id, ps in self.managed_assignments
                for a in self._assignments(account_id, ps)
                if a.get("PrincipalType") == "USER" and a.get("PrincipalId")]
        names = self._user_names({principal for _, _, principal in rows})
        found = [self._ic_artifact(account_id, ps, principal, names.get(principal))
                 for account_id, ps, principal in rows]
        return sorted(found, key=lambda a: (a.person, a.ref))

    # -- plumbing --------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.utcoffset() is None:
            raise BackendError("the clock must return a timezone-aware datetime")
        return now.astimezone(timezone.utc)

    def _new_client(self, session: Any, service: str) -> Any:
        config = Config(
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            connect_timeout=10,
            read_timeout=60,
        )
        return session.client(service, region_name=self.region, endpoint_url=self.endpoint_url, config=config)

    def _client(self, service: str) -> Any:
        """The cached client for ``service``; call inside ``_aws`` (creation may fail)."""
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                if self._session is None:
                    self._session = boto3.Session(region_name=self.region)
                client = self._clients[service] = self._new_client(self._session, service)
            return client
