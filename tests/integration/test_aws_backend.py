"""AwsBackend against a moto server over real HTTP (server mode, nothing patched in-process).

Role-assumption mode and IAM Identity Center mode. What the server stores is read back
through ordinary boto3 clients, and the requests that reached it through moto's recorder.
The Identity Center asynchronous-status polling (moto always answers SUCCEEDED at once)
and the error mapping are checked at unit level with botocore's Stubber / hand-built errors.

One module over 600 lines: every case of one adapter against one moto server and its fixtures."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moto_server import ACCOUNT_ID, MISSING_REASON, MotoServer, have_moto, session, start_moto  # noqa: E402

pytestmark = pytest.mark.skipif(not have_moto(), reason=MISSING_REASON)

from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError  # noqa: E402
from botocore.stub import Stubber  # noqa: E402

from integrations.aws import AwsBackend, to_backend_error  # noqa: E402
from integrations.base import Backend, BackendError, GrantSpec, InvalidGrant  # noqa: E402

ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/ops-admin"
TRUST = {
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
        "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
    }],
}
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
PLUS2 = timezone(timedelta(hours=2))
TARGET_ACCOUNT = "111122223333"


def _scrub(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for var in list(os.environ):
        if var.startswith("AWS_") or var.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(autouse=True)
def _no_developer_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the developer's AWS profile, keys, region nor proxy may reach these tests."""
    _scrub(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    moto_server.reset()
    return moto_server


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def role_grant(**changes: Any) -> GrantSpec:
    grant = GrantSpec(
        grant_id=42,
        request_id=7,
        person="alice",
        target="aws-prod",
        role="ops-admin",
        starts_at=datetime(2026, 11, 24, 12, 0, tzinfo=PLUS2),  # 10:00Z
        expires_at=datetime(2026, 11, 24, 14, 30, 15, 999000, tzinfo=PLUS2),  # 12:30:15.999Z
        params={"role_arn": ROLE_ARN},
    )
    return replace(grant, **changes)


def role_backend(moto: MotoServer, **kwargs: Any) -> AwsBackend:
    kwargs.setdefault("clock", Clock(T0))
    return AwsBackend(mode="role", endpoint_url=moto.endpoint_url, session=session(), **kwargs)


@pytest.fixture
def iam(moto: MotoServer) -> Any:
    client = moto.client("iam")
    for user in ("alice", "bob"):
        client.create_user(UserName=user)
    client.create_role(RoleName="ops-admin", AssumeRolePolicyDocument=json.dumps(TRUST))
    return client


def user_policies(iam: Any, user: str) -> list[str]:
    return iam.list_user_policies(UserName=user)["PolicyNames"]


def sent_params(moto: MotoServer) -> list[dict[str, list[str]]]:
    """The form parameters of every query-protocol request the server received."""
    return [parse_qs(r["body"]) for r in moto.recorded_requests() if r["method"] == "POST"]


# -- role mode: apply / inspect ----------------------------------------------------------


def test_is_a_backend_and_init_does_no_io() -> None:
    backend = AwsBackend(mode="role", endpoint_url="http://127.0.0.1:9")  # nothing listens there
    assert isinstance(backend, Backend)
    assert backend.name == "aws"
    assert backend._session is None  # not even a boto3.Session (which reads config files)
    assert backend.shared_key(role_grant()) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "sso"}, "mode"),
    ({"mode": "role", "region": "moon-1"}, "region"),
    ({"mode": "role", "endpoint_url": "ftp://x"}, "endpoint_url"),
    ({"mode": "role", "max_attempts": 0}, "max_attempts"),
    ({"mode": "identity_center"}, "identity_center_instance_arn"),
    ({"mode": "identity_center", "identity_center_instance_arn": "arn:aws:sso:::instance/ssoins-0123456789abcdef"},
     "identity_store_id"),
    ({"mode": "role", "managed_assignments": [(TARGET_ACCOUNT, "x")]}, "managed_assignments"),
])
def test_init_refuses_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AwsBackend(**kwargs)


def test_apply_stores_the_time_boxed_policy(moto: MotoServer, iam: Any) -> None:
    backend = role_backend(moto)
    ref = backend.apply(role_grant())
    assert ref == "iam:user/alice/policy/jit-grant-42"

    stored = iam.get_user_policy(UserName="alice", PolicyName="jit-grant-42")["PolicyDocument"]
    (statement,) = stored["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]
    assert statement["Resource"] == ROLE_ARN
    # The condition exactly as stored by the server: AWS itself stops new sessions at expiry
    # (sub-seconds are cut, which ends the window earlier, never later).
    assert statement["Condition"] == {
        "DateGreaterThan": {"aws:CurrentTime": "2026-11-24T10:00:00Z"},
        "DateLessThan": {"aws:CurrentTime": "2026-11-24T12:30:15Z"},
        "StringEquals": {"sts:SourceIdentity": "alice"},
    }
    assert user_policies(iam, "bob") == []

    artifact = backend.inspect(role_grant())
    assert artifact is not None
    assert (artifact.ref, artifact.grant_id, artifact.person) == (ref, 42, "alice")
    assert artifact.not_before == datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
    assert artifact.not_after == datetime(2026, 11, 24, 12, 30, 15, tzinfo=timezone.utc)
    assert artifact.details["policy_name"] == "jit-grant-42"
    assert artifact.details["role_arn"] == ROLE_ARN
    assert artifact.details["condition"] == statement["Condition"]


def test_apply_twice_is_idempotent_and_extends(moto: MotoServer, iam: Any) -> None:
    backend = role_backend(moto)
    assert backend.apply(role_grant()) == backend.apply(role_grant())
    assert user_policies(iam, "alice") == ["jit-grant-42"]

    longer = role_grant(expires_at=datetime(2026, 11, 24, 16, 0, tzinfo=timezone.utc))
    backend.apply(longer)
    assert user_policies(iam, "alice") == ["jit-grant-42"]
    stored = iam.get_user_policy(UserName="alice", PolicyName="jit-grant-42")["PolicyDocument"]
    assert stored["Statement"][0]["Condition"]["DateLessThan"] == {"aws:CurrentTime": "2026-11-24T16:00:00Z"}
    assert backend.inspect(longer).not_after == datetime(2026, 11, 24, 16, 0, tzinfo=timezone.utc)


def test_inspect_absent_is_none(moto: MotoServer, iam: Any) -> None:
    backend = role_backend(moto)
    assert backend.inspect(role_grant()) is None
    assert backend.inspect(role_grant(person="nobody")) is None  # no such user either


# -- role mode: revoke ---------------------------------------------------------------------


def test_revoke_deletes_the_policy_and_ends_older_sessions(moto: MotoServer, iam: Any) -> None:
    clock = Clock(datetime(2026, 11, 24, 11, 15, 30, 250000, tzinfo=timezone.utc))
    backend = role_backend(moto, clock=clock)
    backend.apply(role_grant())
    backend.apply(role_grant(grant_id=43, person="bob"))

    backend.revoke(role_grant())

    assert user_policies(iam, "alice") == []
    assert user_policies(iam, "bob") == ["jit-grant-43"]  # others untouched
    assert backend.inspect(role_grant()) is None
    assert iam.list_role_policies(RoleName="ops-admin")["PolicyNames"] == ["jit-revoke-alice"]
    stored = iam.get_role_policy(RoleName="ops-admin", PolicyName="jit-revoke-alice")["PolicyDocument"]
    assert stored == {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "JitRevokeSessions",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceIdentity": "alice"},
                # rounded up to the next second: a session issued in this very second dies too
                "DateLessThan": {"aws:TokenIssueTime": "2026-11-24T11:15:31Z"},
            },
        }],
    }

    # Revoking again (already gone) succeeds and moves the cut-off forward.
    clock.now = datetime(2026, 11, 24, 11, 40, tzinfo=timezone.utc)
    backend.revoke(role_grant())
    stored = iam.get_role_policy(RoleName="ops-admin", PolicyName="jit-revoke-alice")["PolicyDocument"]
    assert stored["Statement"][0]["Condition"]["DateLessThan"] == {"aws:TokenIssueTime": "2026-11-24T11:40:01Z"}
    assert iam.list_role_policies(RoleName="ops-admin")["PolicyNames"] == ["jit-revoke-alice"]


def test_revoke_prunes_revocations_older_than_any_session(moto: MotoServer, iam: Any) -> None:
    clock = Clock(T0)
    backend = role_backend(moto, clock=clock)
    backend.revoke(role_grant(person="bob"))
    clock.now = T0 + timedelta(hours=6)
    backend.revoke(role_grant(person="alice"))
    assert sorted(iam.list_role_policies(RoleName="ops-admin")["PolicyNames"]) == [
        "jit-revoke-alice", "jit-revoke-bob"]
    clock.now = T0 + timedelta(hours=12, minutes=20)  # bob's deny is past any 12 h session
    backend.revoke(role_grant(person="alice", grant_id=44))
    assert iam.list_role_policies(RoleName="ops-admin")["PolicyNames"] == ["jit-revoke-alice"]


def test_revoke_when_user_and_role_are_gone(moto: MotoServer) -> None:
    backend = role_backend(moto)
    backend.revoke(role_grant(person="ghost"))  # neither user nor role exists: nothing to do


# -- role mode: credentials ----------------------------------------------------------------


def test_credentials_are_credential_process_json(moto: MotoServer, iam: Any) -> None:
    now = datetime.now(timezone.utc)  # moto stamps Expiration with its real clock
    grant = role_grant(starts_at=now - timedelta(minutes=5), expires_at=now + timedelta(hours=2))
    backend = AwsBackend(mode="role", endpoint_url=moto.endpoint_url, session=session())
    backend.apply(grant)
    moto.start_recording()

    creds = backend.credentials(grant)

    assert set(creds) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert creds["Version"] == 1
    assert all(isinstance(creds[k], str) and creds[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken"))
    assert creds["Expiration"].endswith("Z")
    expiration = datetime.strptime(creds["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert grant.expires_at - timedelta(minutes=1) <= expiration <= grant.expires_at
    json.dumps(creds)  # printable as is by a credential_process helper

    (params,) = [p for p in sent_params(moto) if p.get("Action") == ["AssumeRole"]]
    assert params["RoleArn"] == [ROLE_ARN]
    assert params["RoleSessionName"] == ["jit-7-alice"]
    assert params["SourceIdentity"] == ["alice"]
    assert params["Tags.member.1.Key"] == ["jit-request"]
    assert params["Tags.member.1.Value"] == ["7"]
    assert 7100 <= int(params["DurationSeconds"][0]) <= 7200 - 5

    # The session moto issued really is a session of the role.
    who = session().client("sts", endpoint_url=moto.endpoint_url, aws_access_key_id=creds["AccessKeyId"],
                           aws_secret_access_key=creds["SecretAccessKey"],
                           aws_session_token=creds["SessionToken"]).get_caller_identity()
    assert who["Arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/ops-admin/jit-7-alice"


def test_credentials_are_capped_at_12_hours_and_use_the_persons_session(moto: MotoServer, iam: Any) -> None:
    now = datetime.now(timezone.utc)
    grant = role_grant(starts_at=now, expires_at=now + timedelta(hours=20))
    backend = AwsBackend(mode="role", endpoint_url=moto.endpoint_url, session=session())
    person = __import__("boto3").Session(aws_access_key_id="AKIAALICEPERSONAL01", aws_secret_access_key="x",
                                         region_name="us-east-1")
    moto.start_recording()

    creds = backend.credentials(grant, session_name="alice-laptop", sts_session=person)

    (request,) = [r for r in moto.recorded_requests() if "AssumeRole" in r["body"]]
    params = parse_qs(request["body"])
    assert params["DurationSeconds"] == ["43200"]
    assert params["RoleSessionName"] == ["alice-laptop"]
    assert "Credential=AKIAALICEPERSONAL01/" in request["headers"]["Authorization"]  # signed as the person
    expiration = datetime.strptime(creds["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert expiration <= datetime.now(timezone.utc) + timedelta(hours=12)


def test_credentials_fall_back_to_one_hour_when_the_role_allows_less() -> None:
    """moto ignores a role's MaxSessionDuration, so STS's refusal is stubbed."""
    sts = session().client("sts", endpoint_url="http://127.0.0.1:9")
    stub = Stubber(sts)
    stub.add_client_error("assume_role", service_error_code="ValidationError", http_status_code=400,
                          service_message="The requested DurationSeconds exceeds the MaxSessionDuration set "
                                          "for this role.")
    expiry = T0 + timedelta(hours=1)
    stub.add_response("assume_role", {"Credentials": {"AccessKeyId": "ASIAEXAMPLEEXAMPLE01", "SecretAccessKey": "s",
                                                      "SessionToken": "t", "Expiration": expiry}},
                      {"RoleArn": ROLE_ARN, "RoleSessionName": "jit-7-alice", "DurationSeconds": 3600,
                       "SourceIdentity": "alice", "Tags": [{"Key": "jit-request", "Value": "7"}]})

    class OneClient:
        def client(self, service: str, **kwargs: Any) -> Any:
            return sts

    backend = AwsBackend(mode="role", session=OneClient(), clock=Clock(T0))
    with stub:
        creds = backend.credentials(role_grant(expires_at=T0 + timedelta(hours=3)))
        stub.assert_no_pending_responses()
    assert creds["Expiration"] == "2026-11-24T11:00:00Z"


def test_credentials_refused_under_15_minutes(moto: MotoServer, iam: Any) -> None:
    clock = Clock(T0)
    backend = role_backend(moto, clock=clock)
    grant = role_grant(starts_at=T0 - timedelta(hours=1), expires_at=T0 + timedelta(minutes=14, seconds=59))
    moto.start_recording()
    with pytest.raises(BackendError, match="less than 15 minutes remain") as info:
        backend.credentials(grant)
    assert info.value.transient is False
    with pytest.raises(BackendError, match="only starts at"):
        backend.credentials(role_grant(starts_at=T0 + timedelta(minutes=1)))
    assert moto.recorded_requests() == []  # STS was never asked


def test_credentials_only_in_role_mode() -> None:
    backend = AwsBackend(mode="identity_center", identity_center_instance_arn=IC_INSTANCE,
                         identity_store_id="d-0123456789")
    with pytest.raises(BackendError, match="role mode"):
        backend.credentials(role_grant())


# -- role mode: list_managed -------------------------------------------------------------


def test_list_managed_finds_grant_policies_and_ignores_others(moto: MotoServer, iam: Any) -> None:
    iam.create_user(UserName="carol")
    backend = role_backend(moto)
    backend.apply(role_grant())
    backend.apply(role_grant(grant_id=5, person="bob", expires_at=datetime(2026, 11, 25, tzinfo=timezone.utc)))
    other = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]})
    iam.put_user_policy(UserName="alice", PolicyName="team-readonly", PolicyDocument=other)
    iam.put_user_policy(UserName="carol", PolicyName="jit-grantee-notes", PolicyDocument=other)
    iam.put_role_policy(RoleName="ops-admin", PolicyName="jit-grant-99", PolicyDocument=other)  # a role's, not a user's

    found = backend.list_managed()

    assert [(a.grant_id, a.person, a.ref) for a in found] == [
        (5, "bob", "iam:user/bob/policy/jit-grant-5"),
        (42, "alice", "iam:user/alice/policy/jit-grant-42"),
    ]
    assert found[0].not_after == datetime(2026, 11, 25, tzinfo=timezone.utc)
    assert found[1].not_after == datetime(2026, 11, 24, 12, 30, 15, tzinfo=timezone.utc)
    assert found[1].details["role_arn"] == ROLE_ARN


# -- role mode: refusals and errors ----------------------------------------------------------


@pytest.mark.parametrize("changes, field", [
    ({"person": "alice\nbob"}, "person"),
    ({"person": "alice/../bob"}, "person"),
    ({"person": 'alice", "Resource": "*'}, "person"),
    ({"person": "a" * 65}, "person"),
    ({"person": ""}, "person"),
    ({"person": "al ice"}, "person"),
    ({"person": "alice*"}, "person"),
    ({"params": {"role_arn": f'{ROLE_ARN}", "Resource": "*'}}, "role_arn"),
    ({"params": {"role_arn": "*"}}, "role_arn"),
    ({"params": {"role_arn": f"arn:aws:iam::{ACCOUNT_ID}:role/*"}}, "role_arn"),
    ({"params": {"role_arn": f"arn:aws:iam::{ACCOUNT_ID}:user/alice"}}, "role_arn"),
    ({"params": {}}, "role_arn"),
    ({"grant_id": -1}, "grant_id"),
    ({"expires_at": datetime(2026, 11, 24, 12, 30)}, "expires_at"),
    ({"expires_at": datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)}, "expires_at"),
])
def test_injection_is_refused_before_any_call(moto: MotoServer, iam: Any, changes: dict[str, Any],
                                              field: str) -> None:
    backend = role_backend(moto)
    grant = role_grant(**changes)
    moto.start_recording()
    with pytest.raises(InvalidGrant) as info:
        backend.apply(grant)
    assert info.value.field == field and info.value.transient is False
    if field != "expires_at":
        for call in (backend.revoke, backend.credentials):
            with pytest.raises(InvalidGrant):
                call(grant)
    assert moto.recorded_requests() == []  # nothing reached AWS, so nothing was written
    assert user_policies(iam, "alice") == []


def test_missing_user_is_a_permanent_error(moto: MotoServer, iam: Any) -> None:
    with pytest.raises(BackendError, match="IAM user 'dave' does not exist") as info:
        role_backend(moto).apply(role_grant(person="dave"))
    assert type(info.value) is BackendError and info.value.transient is False


def test_unreachable_endpoint_is_transient() -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = AwsBackend(mode="role", endpoint_url=f"http://127.0.0.1:{port}", session=session(),
                         max_attempts=2, clock=Clock(T0))
    for call in (backend.apply, backend.revoke, backend.inspect):
        with pytest.raises(BackendError) as info:
            call(role_grant())
        assert type(info.value) is BackendError and info.value.transient is True
        assert "cannot reach AWS" in str(info.value)
    with pytest.raises(BackendError) as info:
        backend.list_managed()
    assert info.value.transient is True


def test_unknown_profile_becomes_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile-jit-test")
    backend = AwsBackend(mode="role", endpoint_url="http://127.0.0.1:9")  # default session, lazily
    with pytest.raises(BackendError, match="no-such-profile-jit-test") as info:
        backend.apply(role_grant())
    assert type(info.value) is BackendError and info.value.transient is False


def _client_error(code: str, status: int, operation: str = "PutUserPolicy") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@pytest.mark.parametrize("exc, transient", [
    (lambda: _client_error("Throttling", 400), True),
    (lambda: _client_error("ThrottlingException", 400), True),
    (lambda: _client_error("TooManyRequestsException", 429), True),
    (lambda: _client_error("ServiceFailure", 500), True),
    (lambda: _client_error("SomethingNew", 503), True),
    (lambda: _client_error("ConcurrentModification", 409), True),
    (lambda: _client_error("AccessDenied", 403), False),
    (lambda: _client_error("NoSuchEntity", 404), False),
    (lambda: _client_error("MalformedPolicyDocument", 400), False),
    (lambda: EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
    (lambda: NoCredentialsError(), False),
])
def test_error_mapping(exc: Any, transient: bool) -> None:
    error = to_backend_error(exc(), "write a policy")
    assert type(error) is BackendError and error.transient is transient
    assert "write a policy" in str(error)


def test_validate_role_in_role_mode() -> None:
    backend = AwsBackend(mode="role")
    assert backend.validate_role({"role_arn": ROLE_ARN}) == []
    assert backend.validate_role({"role_arn": f"arn:aws:iam::{ACCOUNT_ID}:role/team/deploy@prod"}) == []
    assert backend.validate_role({}) == ["role_arn: required (the IAM role the person may assume)"]
    assert backend.validate_role({"role_arn": "arn:aws:iam::12345:role/x"}) == [
        "role_arn: must be an IAM role ARN (arn:aws:iam::<12 digits>:role/<name>)"]
    assert backend.validate_role({"role_arn": ROLE_ARN, "commands": ["/bin/true"]}) == [
        "commands: not used by the aws backend in role mode"]


# -- Identity Center mode --------------------------------------------------------------------

IC_INSTANCE = "arn:aws:sso:::instance/ssoins-0123456789abcdef"


class IdentityCenter:
    """An Identity Center instance in moto: its ARN, identity store, a permission set, users."""

    def __init__(self, moto: MotoServer) -> None:
        self.sso = moto.client("sso-admin")
        self.store = moto.client("identitystore")
        instance = self.sso.list_instances()["Instances"][0]
        self.instance_arn = instance["InstanceArn"]
        self.store_id = instance["IdentityStoreId"]
        self.admin = self.permission_set("Admin")
        self.readonly = self.permission_set("ReadOnly")
        self.users = {name: self.user(name) for name in ("alice", "bob")}

    def permission_set(self, name: str) -> str:
        return self.sso.create_permission_set(Name=name, InstanceArn=self.instance_arn)["PermissionSet"][
            "PermissionSetArn"]

    def user(self, name: str) -> str:
        return self.store.create_user(IdentityStoreId=self.store_id, UserName=name, DisplayName=name,
                                       Name={"GivenName": name, "FamilyName": "Test"})["UserId"]

    def assignments(self, ps: str, account: str = TARGET_ACCOUNT) -> list[tuple[str, str]]:
        rows = self.sso.list_account_assignments(InstanceArn=self.instance_arn, AccountId=account,
                                                 PermissionSetArn=ps)["AccountAssignments"]
        return [(r["PrincipalType"], r["PrincipalId"]) for r in rows]

    def backend(self, moto: MotoServer, **kwargs: Any) -> AwsBackend:
        return AwsBackend(mode="identity_center", endpoint_url=moto.endpoint_url, session=session(),
                          identity_center_instance_arn=self.instance_arn, identity_store_id=self.store_id,
                          **kwargs)

    def grant(self, ps: str | None = None, **changes: Any) -> GrantSpec:
        changes.setdefault("params", {"account_id": TARGET_ACCOUNT, "permission_set_arn": ps or self.admin})
        return role_grant(**changes)


@pytest.fixture
def ic(moto: MotoServer) -> IdentityCenter:
    return IdentityCenter(moto)


def test_ic_apply_creates_the_assignment_once(moto: MotoServer, ic: IdentityCenter) -> None:
    backend = ic.backend(moto)
    alice = ic.users["alice"]
    ref = backend.apply(ic.grant())
    assert ref == f"sso:{TARGET_ACCOUNT}/{ic.admin}/{alice}"
    assert ic.assignments(ic.admin) == [("USER", alice)]
    assert backend.apply(ic.grant(grant_id=43)) == ref  # already there: not created twice
    assert ic.assignments(ic.admin) == [("USER", alice)]
    assert ic.assignments(ic.readonly) == []

    artifact = backend.inspect(ic.grant())
    assert artifact is not None and (artifact.ref, artifact.person, artifact.grant_id) == (ref, "alice", None)
    assert artifact.details["principal_id"] == alice
    assert backend.inspect(ic.grant(person="bob")) is None


def test_ic_shared_key(ic: IdentityCenter, moto: MotoServer) -> None:
    backend = ic.backend(moto)
    first, second = ic.grant(grant_id=1), ic.grant(grant_id=2, request_id=9)
    assert backend.shared_key(first) == backend.shared_key(second) == f"sso:{TARGET_ACCOUNT}|{ic.admin}|alice"
    assert backend.shared_key(ic.grant(person="bob")) != backend.shared_key(first)
    assert backend.shared_key(ic.grant(ps=ic.readonly)) != backend.shared_key(first)


def test_ic_revoke_deletes_the_assignment(moto: MotoServer, ic: IdentityCenter) -> None:
    backend = ic.backend(moto)
    backend.apply(ic.grant())
    backend.apply(ic.grant(person="bob"))
    backend.revoke(ic.grant())
    assert ic.assignments(ic.admin) == [("USER", ic.users["bob"])]
    assert backend.inspect(ic.grant()) is None
    backend.revoke(ic.grant())  # already gone
    backend.revoke(ic.grant(person="carol"))  # no such user: nothing can be assigned to her
    assert ic.assignments(ic.admin) == [("USER", ic.users["bob"])]


def test_ic_list_managed_finds_hand_made_assignments(moto: MotoServer, ic: IdentityCenter) -> None:
    other_account = "444455556666"
    backend = ic.backend(moto, managed_assignments=[(TARGET_ACCOUNT, ic.admin), (TARGET_ACCOUNT, ic.readonly)])
    backend.apply(ic.grant())
    for principal, ps, account in ((ic.users["bob"], ic.readonly, TARGET_ACCOUNT),  # by hand
                                   ("00000000-0000-0000-0000-00000000dead", ic.readonly, TARGET_ACCOUNT),
                                   (ic.users["bob"], ic.admin, other_account)):  # not a managed pair
        ic.sso.create_account_assignment(InstanceArn=ic.instance_arn, TargetId=account, TargetType="AWS_ACCOUNT",
                                         PermissionSetArn=ps, PrincipalType="USER", PrincipalId=principal)

    found = backend.list_managed()

    assert [(a.person, a.details["permission_set_arn"], a.details["user_found"]) for a in found] == [
        ("00000000-0000-0000-0000-00000000dead", ic.readonly, False),  # a deleted/unknown user
        ("alice", ic.admin, True),
        ("bob", ic.readonly, True),
    ]
    assert all(a.grant_id is None and a.details["account_id"] == TARGET_ACCOUNT for a in found)


def test_ic_refusals(moto: MotoServer, ic: IdentityCenter) -> None:
    backend = ic.backend(moto)
    moto.start_recording()
    for grant, field in ((ic.grant(person="alice\n"), "person"),
                         (ic.grant(params={"account_id": "1234", "permission_set_arn": ic.admin}), "account_id"),
                         (ic.grant(params={"account_id": TARGET_ACCOUNT, "permission_set_arn": "*"}),
                          "permission_set_arn")):
        with pytest.raises(InvalidGrant) as info:
            backend.apply(grant)
        assert info.value.field == field
    assert moto.recorded_requests() == []
    with pytest.raises(InvalidGrant, match="no Identity Center user is named 'carol'"):
        backend.apply(ic.grant(person="carol"))
    assert ic.assignments(ic.admin) == []


def test_ic_validate_role(ic: IdentityCenter, moto: MotoServer) -> None:
    backend = ic.backend(moto)
    real_format = "arn:aws:sso:::permissionSet/" + ic.instance_arn.rsplit("/", 1)[1] + "/ps-0123456789abcdef"
    assert backend.validate_role({"account_id": TARGET_ACCOUNT, "permission_set_arn": ic.admin}) == []
    assert backend.validate_role({"account_id": TARGET_ACCOUNT, "permission_set_arn": real_format}) == []
    assert backend.validate_role({}) == ["account_id: required (the 12-digit AWS account)",
                                         "permission_set_arn: required (the permission set assigned)"]
    foreign = "arn:aws:sso:::permissionSet/ssoins-ffffffffffffffff/ps-0123456789abcdef"
    (message,) = backend.validate_role({"account_id": TARGET_ACCOUNT, "permission_set_arn": foreign})
    assert message.startswith("permission_set_arn: belongs to ssoins-ffffffffffffffff")
    assert backend.validate_role({"account_id": 111122223333, "permission_set_arn": ic.admin,
                                  "role_arn": ROLE_ARN}) == [
        "account_id: must be a 12-digit AWS account id (a string)",
        "role_arn: not used by the aws backend in identity_center mode"]


# -- Identity Center asynchronous status (moto answers SUCCEEDED at once: botocore Stubber) ----


REQ = "0c5e3a76-1b2d-4f3e-9a8b-7c6d5e4f3a2b"


class StubSession:
    """Hands out botocore-stubbed clients (no network) in place of a boto3.Session."""

    def __init__(self) -> None:
        self.stubs: dict[str, Stubber] = {}
        self._clients: dict[str, Any] = {}
        for service in ("identitystore", "sso-admin"):
            client = session().client(service, endpoint_url="http://127.0.0.1:9")
            self._clients[service] = client
            self.stubs[service] = Stubber(client)
            self.stubs[service].activate()

    def client(self, service: str, **kwargs: Any) -> Any:
        return self._clients[service]


def _stubbed_apply(statuses: list[dict[str, Any]], timeout: float = 30.0) -> tuple[AwsBackend, StubSession]:
    stub = StubSession()
    backend = AwsBackend(mode="identity_center", session=stub, identity_center_instance_arn=IC_INSTANCE,
                         identity_store_id="d-0123456789", assignment_timeout=timeout)
    backend._sleep = lambda seconds: None
    ps = "arn:aws:sso:::permissionSet/ssoins-0123456789abcdef/ps-0123456789abcdef"
    principal = "11111111-2222-3333-4444-555555555555"
    stub.stubs["identitystore"].add_response(
        "list_users", {"Users": [{"UserId": principal, "UserName": "alice", "IdentityStoreId": "d-0123456789",
                                  "UserArn": f"arn:aws:identitystore::{ACCOUNT_ID}:user/{principal}",
                                  "Revision": "1"}]})
    stub.stubs["sso-admin"].add_response("list_account_assignments", {"AccountAssignments": []})
    first, *rest = statuses
    stub.stubs["sso-admin"].add_response("create_account_assignment", {"AccountAssignmentCreationStatus": first})
    for status in rest:
        stub.stubs["sso-admin"].add_response(
            "describe_account_assignment_creation_status", {"AccountAssignmentCreationStatus": status},
            {"InstanceArn": IC_INSTANCE, "AccountAssignmentCreationRequestId": REQ})
    return backend, stub


def _ic_stub_grant() -> GrantSpec:
    return role_grant(params={"account_id": TARGET_ACCOUNT,
                              "permission_set_arn": "arn:aws:sso:::permissionSet/ssoins-0123456789abcdef/"
                                                    "ps-0123456789abcdef"})


def test_ic_apply_waits_for_the_asynchronous_creation() -> None:
    backend, stub = _stubbed_apply([{"Status": "IN_PROGRESS", "RequestId": REQ},
                                    {"Status": "IN_PROGRESS", "RequestId": REQ},
                                    {"Status": "SUCCEEDED", "RequestId": REQ}])
    assert backend.apply(_ic_stub_grant()).startswith(f"sso:{TARGET_ACCOUNT}/")
    stub.stubs["sso-admin"].assert_no_pending_responses()


def test_ic_apply_reports_a_failed_creation() -> None:
    backend, _ = _stubbed_apply([{"Status": "IN_PROGRESS", "RequestId": REQ},
                                 {"Status": "FAILED", "RequestId": REQ,
                                  "FailureReason": "Permission set is not provisioned"}])
    with pytest.raises(BackendError, match="Permission set is not provisioned") as info:
        backend.apply(_ic_stub_grant())
    assert info.value.transient is False


def test_ic_apply_gives_up_after_the_deadline() -> None:
    backend, _ = _stubbed_apply([{"Status": "IN_PROGRESS", "RequestId": REQ}] * 3, timeout=1e-9)
    with pytest.raises(BackendError, match="still reports IN_PROGRESS") as info:
        backend.apply(_ic_stub_grant())
    assert info.value.transient is True
