"""LdapBackend and LdapDirectory against a real OpenLDAP slapd (no mocks).

The only stand-in is a recording ``ldap3.Connection`` subclass for Active Directory mode: OpenLDAP
does not understand ``<TTL=...>`` member values, so those tests assert on the exact modify
operations sent and forward them to slapd with the plain DN.
"""
from __future__ import annotations

import copy
import re
import time
import traceback
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import ldap3
import pytest
from ldap3 import MODIFY_ADD, MODIFY_DELETE

from integrations.base import Artifact, Backend, BackendError, GrantSpec, InvalidGrant
from integrations.ldap import LdapBackend, LdapDirectory
from slapd import (  # noqa: F401 - slapd_server is a fixture
    ADMIN_PASSWORD,
    GROUPS_DN,
    PEOPLE_DN,
    PLACEHOLDER_DN,
    SKIP_REASON,
    Slapd,
    group_dn,
    have_slapd,
    slapd_server,
    slapd_tls_server,
    start_slapd,
    user_dn,
)

# Tests that need slapd get it through the slapd_server fixture, which skips with SKIP_REASON when
# it is not installed; the checks that do no I/O run everywhere.

WEB = group_dn("web-admins")
DB = group_dn("db-admins")
ALICE = user_dn("alice")
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
INJECTIONS = ["alice)(uid=*", "*", "alice,ou=x", "\\2a", "alice\n", "alice\x00", "", "a" * 65, "alice bob", "ålice"]


def make_grant(**changes: object) -> GrantSpec:
    grant = GrantSpec(
        grant_id=42,
        request_id=7,
        person="alice",
        target="corp-ldap",
        role="web-admin",
        starts_at=T0,
        expires_at=T0 + timedelta(hours=2),
        params={"group_dn": WEB},
    )
    return replace(grant, **changes)


def make_backend(server: Slapd, **changes: object) -> LdapBackend:
    settings: dict[str, object] = dict(
        user_base=PEOPLE_DN.split(",", 1)[1],  # the whole tree, so that both twins are found
        user_object_class="inetOrgPerson",
        group_base=GROUPS_DN,
        managed_groups=[WEB, DB],
        timeout=2,
        clock=lambda: T0,
    )
    settings.update(changes)
    uri = settings.pop("uri", server.uri)
    password = settings.pop("bind_password", server.admin_password)
    return LdapBackend(uri, server.admin_dn, password, **settings)


@pytest.fixture
def backend(slapd_server: Slapd) -> LdapBackend:
    b = make_backend(slapd_server)
    yield b
    b.close()


def members(server: Slapd, group: str) -> list[str]:
    """The group's member values, read over a separate connection."""
    conn = server.connection()
    try:
        conn.search(group, "(objectClass=*)", ldap3.BASE, attributes=["member"])
        return sorted(conn.response[0]["attributes"].get("member", []))
    finally:
        conn.unbind()


def modify(server: Slapd, dn: str, changes: dict) -> None:
    conn = server.connection()
    try:
        conn.modify(dn, changes)
    finally:
        conn.unbind()


def never_connect(*args: object, **kwargs: object) -> ldap3.Connection:
    raise AssertionError("the backend opened an LDAP connection")


# -- settings and role checks (no I/O) ---------------------------------------------------


def test_is_a_backend_and_init_does_no_io() -> None:
    b = LdapBackend("ldap://127.0.0.1:1", "cn=admin,dc=example,dc=org", "pw", user_base="ou=people,dc=example,dc=org",
                    connection_factory=never_connect)
    assert isinstance(b, Backend)
    assert b.name == "ldap"


@pytest.mark.parametrize("changes, message", [
    ({"uri": "http://127.0.0.1"}, "ldap://"),
    ({"uri": "ldap://user:pw@host"}, "credentials"),
    ({"uri": "ldaps://host"}, "ldaps"),
    ({"tls": "sometimes"}, "tls must be"),
    ({"bind_dn": "not a dn"}, "bind_dn"),
    ({"bind_password": ""}, "bind_password"),
    ({"user_base": "ou=people,dc=example,dc=org)(x"}, "user_base"),
    ({"user_base": ""}, "user_base"),
    ({"group_base": "nope"}, "group_base"),
    ({"user_attr": "uid)(x"}, "user_attr"),
    ({"managed_groups": ["cn=x,dc=elsewhere"]}, "group_base"),
    ({"managed_groups": "cn=web-admins,ou=groups,dc=example,dc=org"}, "list"),
    ({"timeout": 0}, "timeout"),
])
def test_init_refuses_bad_settings(changes: dict, message: str) -> None:
    settings: dict = dict(uri="ldap://127.0.0.1:389", bind_dn="cn=admin,dc=example,dc=org",
                          bind_password="Sup3r-secret", user_base=PEOPLE_DN, group_base=GROUPS_DN)
    settings.update(changes)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        LdapBackend(settings.pop("uri"), settings.pop("bind_dn"), settings.pop("bind_password"), **settings)
    assert "Sup3r-secret" not in str(info.value)


def test_ad_mode_accepts_upn_bind_names() -> None:
    b = LdapBackend("ldaps://dc1.corp.example", "svc-jit@corp.example", "pw", user_base="DC=corp,DC=example",
                    user_attr="sAMAccountName", user_object_class="user", active_directory=True, tls="ldaps")
    assert b.bind_dn == "svc-jit@corp.example"


def test_validate_role() -> None:
    b = LdapBackend("ldap://127.0.0.1:1", "cn=admin,dc=example,dc=org", "pw", user_base=PEOPLE_DN,
                    group_base=GROUPS_DN, connection_factory=never_connect)
    assert b.validate_role({"group_dn": WEB}) == []
    assert b.validate_role({"group_dn": "CN=Web-Admins,OU=Groups,DC=example,DC=org"}) == []
    assert b.validate_role({}) == ["group_dn: required (the DN of the group the person joins)"]
    bad = {
        "cn=web-admins,dc=example,dc=org)(x": "'(', ')' or '*'",
        "not a dn": "not a valid DN",
        "cn=web-admins,ou=other,dc=example,dc=org": "does not lie under group_base",
        GROUPS_DN: "does not lie under group_base",  # the base itself is no group
        "cn=web-admins\n,ou=groups,dc=example,dc=org": "control characters",
        "<GUID=0bd3c8f4-5cf4-4bd1-9a0b-2bfbd6d83a95>": "extended DNs",
        "": "must not be empty",
        42: "must be a string",
    }
    for value, reason in bad.items():
        problems = b.validate_role({"group_dn": value})
        assert len(problems) == 1 and problems[0].startswith("group_dn: ") and reason in problems[0], (value, problems)
    # Without a group_base only the syntax is checked.
    free = LdapBackend("ldap://127.0.0.1:1", "cn=admin,dc=example,dc=org", "pw", user_base=PEOPLE_DN)
    assert free.validate_role({"group_dn": "cn=web-admins,ou=other,dc=example,dc=org"}) == []
    assert free.validate_role({"group_dn": "not a dn"}) != []


def test_shared_key() -> None:
    b = LdapBackend("ldap://127.0.0.1:1", "cn=admin,dc=example,dc=org", "pw", user_base=PEOPLE_DN,
                    group_base=GROUPS_DN, connection_factory=never_connect)
    assert b.shared_key(make_grant()) == f"ldap:{WEB}|alice"
    other = make_grant(grant_id=43, role="other-role", params={"group_dn": WEB.upper()})
    assert b.shared_key(other) == b.shared_key(make_grant())
    assert b.shared_key(make_grant(person="bob")) != b.shared_key(make_grant())


# -- apply / revoke / inspect ---------------------------------------------------------------


def test_apply_adds_membership(backend: LdapBackend, slapd_server: Slapd) -> None:
    assert members(slapd_server, WEB) == [PLACEHOLDER_DN]
    ref = backend.apply(make_grant())
    assert ref == f"{WEB}|{ALICE}"
    assert members(slapd_server, WEB) == sorted([PLACEHOLDER_DN, ALICE])
    assert members(slapd_server, DB) == [PLACEHOLDER_DN]


def test_apply_twice_is_idempotent(backend: LdapBackend, slapd_server: Slapd) -> None:
    assert backend.apply(make_grant()) == backend.apply(make_grant(grant_id=43)) == f"{WEB}|{ALICE}"
    assert members(slapd_server, WEB) == sorted([PLACEHOLDER_DN, ALICE])


def test_revoke_removes_and_twice_is_fine(backend: LdapBackend, slapd_server: Slapd) -> None:
    backend.apply(make_grant())
    backend.apply(make_grant(person="bob"))
    backend.revoke(make_grant())
    assert members(slapd_server, WEB) == sorted([PLACEHOLDER_DN, user_dn("bob")])
    backend.revoke(make_grant())
    assert members(slapd_server, WEB) == sorted([PLACEHOLDER_DN, user_dn("bob")])
    backend.revoke(make_grant(person="erin"))  # never a member
    backend.revoke(make_grant(person="nobody-here"))  # no such user: nothing to revoke


def test_inspect_before_and_after(backend: LdapBackend) -> None:
    grant = make_grant()
    assert backend.inspect(grant) is None
    backend.apply(grant)
    assert backend.inspect(grant) == Artifact(
        ref=f"{WEB}|{ALICE}", grant_id=42, person="alice", target="corp-ldap", role="web-admin",
        details={"group_dn": WEB, "user_dn": ALICE},
    )
    assert backend.inspect(make_grant(params={"group_dn": DB})) is None
    backend.revoke(grant)
    assert backend.inspect(grant) is None
    assert backend.inspect(make_grant(params={"group_dn": group_dn("no-such-group")})) is None


def test_list_managed_reports_grants_and_hand_added_members(backend: LdapBackend, slapd_server: Slapd) -> None:
    assert backend.list_managed() == []  # placeholders are no people
    backend.apply(make_grant())
    backend.apply(make_grant(person="carol", params={"group_dn": DB}))
    # Standing privilege drift: somebody adds bob to db-admins by hand.
    modify(slapd_server, DB, {"member": [(MODIFY_ADD, [user_dn("bob")])]})
    found = backend.list_managed()
    assert [(a.details["group_dn"], a.person, a.details["user_dn"]) for a in found] == [
        (DB, "bob", user_dn("bob")),
        (DB, "carol", user_dn("carol")),
        (WEB, "alice", ALICE),
    ]
    assert all(a.grant_id is None and a.target is None and a.role is None for a in found)
    assert found[0].ref == f"{DB}|{user_dn('bob')}"


def test_list_managed_names_a_missing_group(slapd_server: Slapd) -> None:
    b = make_backend(slapd_server, managed_groups=[WEB, group_dn("gone")])
    with pytest.raises(BackendError, match="cn=gone,ou=groups") as info:
        b.list_managed()
    assert not info.value.transient


def test_unknown_user_is_refused_and_nothing_written(backend: LdapBackend, slapd_server: Slapd) -> None:
    with pytest.raises(InvalidGrant, match="resolves to 0 entries") as info:
        backend.apply(make_grant(person="mallory"))
    assert info.value.field == "person" and not info.value.transient
    assert members(slapd_server, WEB) == [PLACEHOLDER_DN]


def test_duplicate_uid_is_refused(backend: LdapBackend, slapd_server: Slapd) -> None:
    with pytest.raises(InvalidGrant, match="resolves to 2 entries; exactly one required") as info:
        backend.apply(make_grant(person="twin"))
    assert info.value.field == "person"
    assert members(slapd_server, WEB) == [PLACEHOLDER_DN]


@pytest.mark.parametrize("person", INJECTIONS)
def test_injection_in_person_is_refused_before_any_ldap_call(person: str) -> None:
    b = LdapBackend("ldap://127.0.0.1:1", "cn=admin,dc=example,dc=org", "pw", user_base=PEOPLE_DN,
                    group_base=GROUPS_DN, connection_factory=never_connect)
    grant = make_grant(person=person)
    for call in (b.apply, b.revoke, b.inspect):
        with pytest.raises(InvalidGrant) as info:
            call(grant)
        assert info.value.field == "person"


def test_injection_leaves_the_directory_alone(backend: LdapBackend, slapd_server: Slapd) -> None:
    for person in INJECTIONS:
        with pytest.raises(InvalidGrant):
            backend.apply(make_grant(person=person))
    assert members(slapd_server, WEB) == [PLACEHOLDER_DN]


@pytest.mark.parametrize("group", ["cn=web-admins,dc=example,dc=org)(x", "not a dn", "cn=web-admins,dc=example,dc=org"])
def test_bad_group_dn_in_a_grant_is_refused_before_any_ldap_call(group: str) -> None:
    b = LdapBackend("ldap://127.0.0.1:1", "cn=admin,dc=example,dc=org", "pw", user_base=PEOPLE_DN,
                    group_base=GROUPS_DN, connection_factory=never_connect)
    for call in (b.apply, b.revoke, b.inspect, b.shared_key):
        with pytest.raises(InvalidGrant) as info:
            call(make_grant(params={"group_dn": group}))
        assert info.value.field == "group_dn"


def test_missing_group_is_a_permanent_error_naming_it(backend: LdapBackend) -> None:
    missing = group_dn("no-such-group")
    with pytest.raises(BackendError, match=re.escape(missing)) as info:
        backend.apply(make_grant(params={"group_dn": missing}))
    assert not info.value.transient and not isinstance(info.value, InvalidGrant)
    backend.revoke(make_grant(params={"group_dn": missing}))  # nothing there to remove


@pytest.mark.parametrize("configured", [None, PLACEHOLDER_DN])
def test_revoke_of_the_last_real_member(slapd_server: Slapd, configured: str | None) -> None:
    solo = group_dn("solo-admins")
    conn = slapd_server.connection()
    conn.add(solo, ["groupOfNames"], {"cn": "solo-admins", "member": [ALICE]})  # no placeholder
    conn.unbind()
    b = make_backend(slapd_server, placeholder_member=configured, managed_groups=[solo])
    grant = make_grant(params={"group_dn": solo})
    assert b.inspect(grant) is not None
    b.revoke(grant)
    assert members(slapd_server, solo) == [configured or solo]
    assert b.inspect(grant) is None and b.list_managed() == []
    b.revoke(grant)
    b.apply(grant)
    assert members(slapd_server, solo) == sorted([configured or solo, ALICE])


# -- failures -----------------------------------------------------------------------------


def test_stopped_server_is_transient(backend: LdapBackend, slapd_server: Slapd) -> None:
    backend.apply(make_grant())  # a cached connection exists
    slapd_server.stop()
    for call in (backend.apply, backend.revoke, backend.inspect):
        with pytest.raises(BackendError, match="unreachable") as info:
            call(make_grant())
        assert info.value.transient
    with pytest.raises(BackendError) as info:
        backend.list_managed()
    assert info.value.transient


def test_reconnects_after_a_server_restart(backend: LdapBackend, slapd_server: Slapd) -> None:
    backend.apply(make_grant())
    slapd_server.restart()  # the cached connection is now broken
    assert backend.inspect(make_grant()) is not None
    backend.revoke(make_grant())
    assert members(slapd_server, WEB) == [PLACEHOLDER_DN]


def test_hung_server_is_transient_within_the_timeout(slapd_server: Slapd) -> None:
    b = make_backend(slapd_server, timeout=1)
    b.apply(make_grant())
    slapd_server.pause()
    try:
        for fresh in (False, True):  # on the cached connection, then on a new one
            if fresh:
                b.close()
            started = time.monotonic()
            with pytest.raises(BackendError, match="no answer within 1s") as info:
                b.inspect(make_grant())
            elapsed = time.monotonic() - started
            assert info.value.transient
            assert elapsed < 2.5, elapsed
    finally:
        slapd_server.resume()
    assert b.inspect(make_grant()) is not None  # and it recovers


def test_starttls_against_a_server_without_tls(slapd_server: Slapd) -> None:
    b = make_backend(slapd_server, tls="starttls", validate_cert=True)
    with pytest.raises(BackendError, match="StartTLS") as info:
        b.inspect(make_grant())
    assert not info.value.transient
    assert members(slapd_server, WEB) == [PLACEHOLDER_DN]


@pytest.mark.parametrize("mode", ["starttls", "ldaps"])
def test_tls_with_the_right_ca(slapd_tls_server: Slapd, mode: str) -> None:
    uri = slapd_tls_server.ldaps_uri if mode == "ldaps" else slapd_tls_server.uri
    b = make_backend(slapd_tls_server, uri=uri, tls=mode, ca_file=str(slapd_tls_server.ca_file))
    assert b.apply(make_grant()) == f"{WEB}|{ALICE}"
    assert b.inspect(make_grant()) is not None


@pytest.mark.parametrize("mode", ["starttls", "ldaps"])
def test_tls_with_an_untrusted_certificate(slapd_tls_server: Slapd, mode: str) -> None:
    uri = slapd_tls_server.ldaps_uri if mode == "ldaps" else slapd_tls_server.uri
    b = make_backend(slapd_tls_server, uri=uri, tls=mode)  # system CAs only: the test CA is unknown
    with pytest.raises(BackendError, match="certificate verify failed") as info:
        b.apply(make_grant())
    assert not info.value.transient
    assert members(slapd_tls_server, WEB) == [PLACEHOLDER_DN]
    unchecked = make_backend(slapd_tls_server, uri=uri, tls=mode, validate_cert=False)
    assert unchecked.apply(make_grant()) == f"{WEB}|{ALICE}"


def test_tls_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    if not have_slapd():
        pytest.skip(SKIP_REASON)
    pytest.importorskip("cryptography")
    server = start_slapd(tmp_path, tls=True, tls_names=["ldap.other.example"])
    try:
        for uri, mode in ((server.ldaps_uri, "ldaps"), (server.uri, "starttls")):
            b = make_backend(server, uri=uri, tls=mode, ca_file=str(server.ca_file))
            with pytest.raises(BackendError, match="doesn't match any name") as info:
                b.apply(make_grant())
            assert not info.value.transient
        assert members(server, WEB) == [PLACEHOLDER_DN]
    finally:
        server.stop()


def test_unreadable_ca_file_is_a_backend_error(slapd_server: Slapd, tmp_path: Path) -> None:
    b = make_backend(slapd_server, tls="starttls", ca_file=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(BackendError):
        b.apply(make_grant())


def test_wrong_password_never_appears_in_errors(slapd_server: Slapd) -> None:
    wrong = "Wr0ng-P@ssw0rd-7f3a"
    b = make_backend(slapd_server, bind_password=wrong)
    for call in (b.apply, b.revoke, b.inspect):
        with pytest.raises(BackendError, match="invalidCredentials") as info:
            call(make_grant())
        exc = info.value
        assert not exc.transient
        text = "".join(traceback.format_exception(exc)) + str(exc) + repr(exc)
        assert wrong not in text and ADMIN_PASSWORD not in text
    assert wrong not in repr(b)
    with pytest.raises(BackendError) as info:
        b.list_managed()
    assert wrong not in str(info.value)


# -- Active Directory mode: the modify operations sent --------------------------------------


class RecordingConnection(ldap3.Connection):
    """Records every modify, then forwards it with ``<TTL=n,dn>`` turned into ``dn`` (slapd
    cannot store TTL values; AD would)."""

    log: list[tuple[str, dict]]

    def modify(self, dn, changes, controls=None):  # type: ignore[override]
        self.log.append((dn, copy.deepcopy(changes)))

        def plain(value: str) -> str:
            match = re.fullmatch(r"<TTL=\d+,(.*)>", value)
            return match.group(1) if match else value

        forwarded = {attr: [(op, [plain(v) for v in values]) for op, values in ops] for attr, ops in changes.items()}
        return super().modify(dn, forwarded, controls)


@pytest.fixture
def ad_mode(slapd_server: Slapd):
    log: list[tuple[str, dict]] = []
    now = {"t": T0}

    def factory(*args: object, **kwargs: object) -> ldap3.Connection:
        conn = RecordingConnection(*args, **kwargs)
        conn.log = log
        return conn

    b = make_backend(slapd_server, active_directory=True, connection_factory=factory, clock=lambda: now["t"])
    return b, log, now


def test_ad_apply_sends_a_ttl_member_value(ad_mode, slapd_server: Slapd) -> None:
    b, log, now = ad_mode
    assert b.apply(make_grant()) == f"{WEB}|{ALICE}"
    assert log == [(WEB, {"member": [(MODIFY_ADD, [f"<TTL=7200,{ALICE}>"])]})]
    assert members(slapd_server, WEB) == sorted([PLACEHOLDER_DN, ALICE])
    # Re-applying later refreshes the TTL to what is left; part seconds round up.
    now["t"] = T0 + timedelta(minutes=10, microseconds=500_000)
    b.apply(make_grant())
    assert log[-1] == (WEB, {"member": [(MODIFY_ADD, [f"<TTL=6600,{ALICE}>"])]})
    assert b.inspect(make_grant()) is not None


def test_ad_revoke_deletes_the_plain_dn(ad_mode, slapd_server: Slapd) -> None:
    b, log, _ = ad_mode
    b.apply(make_grant())
    log.clear()
    b.revoke(make_grant())
    assert log == [(WEB, {"member": [(MODIFY_DELETE, [ALICE])]})]
    assert members(slapd_server, WEB) == [PLACEHOLDER_DN]


def test_ad_refuses_an_expired_grant_without_writing(ad_mode) -> None:
    b, log, now = ad_mode
    now["t"] = T0 + timedelta(hours=2)
    with pytest.raises(InvalidGrant) as info:
        b.apply(make_grant())
    assert info.value.field == "expires_at"
    assert log == []


# -- LdapDirectory ------------------------------------------------------------------------


class Ticker:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_directory_groups_members_people(backend: LdapBackend) -> None:
    d = LdapDirectory(backend)
    assert d.groups_of("alice") == frozenset({"engineers"})
    assert d.groups_of("dave") == frozenset({"engineers", "oncall"})
    assert d.groups_of("bob") == frozenset({"managers"})
    assert d.groups_of("mallory") == frozenset()
    assert d.groups_of("twin") == frozenset()  # ambiguous: no groups
    assert d.groups_of("alice)(uid=*") == frozenset()
    assert d.members_of("engineers") == ["alice", "dave"]
    assert d.members_of("security") == ["erin"]
    assert d.members_of("web-admins") == []  # only the placeholder
    assert d.members_of("no-such-group") == []
    assert d.members_of("*") == []  # escaped, not a wildcard
    assert d.people() == ["alice", "bob", "carol", "dave", "erin"]  # twin is ambiguous
    backend.apply(make_grant())
    d.invalidate()
    assert d.groups_of("alice") == frozenset({"engineers", "web-admins"})
    assert d.members_of("web-admins") == ["alice"]


def test_directory_cache_expires(backend: LdapBackend, slapd_server: Slapd) -> None:
    clock = Ticker()
    d = LdapDirectory(backend, cache_ttl=60, clock=clock)
    assert d.groups_of("alice") == frozenset({"engineers"})
    assert d.members_of("managers") == ["bob"]
    modify(slapd_server, group_dn("managers"), {"member": [(MODIFY_ADD, [ALICE])]})
    clock.now += 59
    assert d.groups_of("alice") == frozenset({"engineers"})  # still cached
    assert d.members_of("managers") == ["bob"]
    clock.now += 2
    assert d.groups_of("alice") == frozenset({"engineers", "managers"})
    assert d.members_of("managers") == ["alice", "bob"]


def test_directory_outage_is_transient(backend: LdapBackend, slapd_server: Slapd) -> None:
    clock = Ticker()
    d = LdapDirectory(backend, cache_ttl=60, clock=clock)
    assert d.people()
    slapd_server.stop()
    assert d.people()  # served from the cache
    clock.now += 61
    for call, arg in ((d.groups_of, "alice"), (d.members_of, "engineers")):
        with pytest.raises(BackendError) as info:
            call(arg)
        assert info.value.transient
    with pytest.raises(BackendError) as info:
        d.people()
    assert info.value.transient


def test_directory_refuses_bad_settings(backend: LdapBackend) -> None:
    with pytest.raises(ValueError):
        LdapDirectory(backend, group_base="not a dn")
    with pytest.raises(ValueError):
        LdapDirectory(backend, group_name_attr="cn)(x")
    no_base = LdapBackend("ldap://127.0.0.1:1", "cn=admin,dc=example,dc=org", "pw", user_base=PEOPLE_DN)
    with pytest.raises(ValueError, match="group_base"):
        LdapDirectory(no_base)
