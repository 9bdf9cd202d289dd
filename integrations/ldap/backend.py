"""LDAP / Active Directory backend: a grant is the person's membership of one group.

A role names the group with ``group_dn``; ``apply`` resolves the person to exactly one user entry
(``(&(objectClass=<user_object_class>)(<user_attr>=<person>))`` under ``user_base``) and adds that
entry's DN to the group's ``member`` attribute; ``revoke`` deletes the value again. Several grants
on one group for one person share the membership (``shared_key``); the lifecycle keeps it until the
last of them ends.

Active Directory mode adds the value ``<TTL=<seconds>,<user DN>>`` (needs the Privileged Access
Management optional feature, Windows Server 2016 forest level) so the domain controller drops the
membership by itself at expiry even if this product is down; re-applying refreshes the TTL. Revoke
deletes the plain DN, which AD accepts for TTL memberships.

Last member of a ``groupOfNames``: its schema requires at least one ``member``, so deleting the last
value fails with ``objectClassViolation``. Managed groups should carry a placeholder member (a DN that
is no user, e.g. ``cn=nobody,dc=example,dc=org``). When a revoke still hits that error, the backend
replaces the person by ``placeholder_member`` (default: the group's own DN, which names no user and
grants nobody anything) in a single atomic modify, so a revoke never fails for that reason.
``list_managed`` only reports members that resolve to a user entry, so placeholders never show up.

Security: the person is checked against ``^[A-Za-z0-9._-]{1,64}$`` before anything is sent; every
value put into a filter goes through ``escape_filter_chars``; member values written or deleted are
DNs read from the directory; referrals are not chased; the bind password is never logged nor put
into an exception. No ldap3 exception escapes this module: communication failures, timeouts and
busy/unavailable answers become transient ``BackendError``; everything else a permanent one.
"""
from __future__ import annotations

import math
import re
import ssl
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

from ldap3 import (
    AUTO_BIND_NONE,
    BASE,
    DEREF_NEVER,
    MODIFY_ADD,
    MODIFY_DELETE,
    NO_ATTRIBUTES,
    NONE,
    SUBTREE,
    SYNC,
    Connection,
    Server,
    Tls,
)
from ldap3.core.exceptions import (
    LDAPCertificateError,
    LDAPCommunicationError,
    LDAPInvalidDnError,
    LDAPResponseTimeoutError,
    LDAPStartTLSError,
)
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn, safe_dn

from integrations.base import Artifact, BackendError, GrantSpec, InvalidGrant
from integrations.ldap.dn import _has_control_chars, _required_dn, dn_error, dn_under
from integrations.ldap.results import (
    ATTRIBUTE_OR_VALUE_EXISTS,
    COMPARE_FALSE,
    COMPARE_TRUE,
    ENTRY_ALREADY_EXISTS,
    INVALID_DN_SYNTAX,
    NO_SUCH_ATTRIBUTE,
    NO_SUCH_OBJECT,
    OBJECT_CLASS_VIOLATION,
    SUCCESS,
    TRANSIENT_CODES,
    UNWILLING_TO_PERFORM,
)

T = TypeVar("T")

PERSON_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ATTR_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}")
_UPN_RE = re.compile(r"[^\s@\\]+@[A-Za-z0-9.-]+")
_DOWNLEVEL_RE = re.compile(r"[A-Za-z0-9.-]+\\[^\s@\\]+")
_TLS_MODES = ("none", "starttls", "ldaps")
_PAGED_OID = "1.2.840.113556.1.4.319"
_PAGE_SIZE = 500


def _system_clock() -> datetime:
    return datetime.now(timezone.utc)


class LdapBackend:
    """Grants by adding the person's user entry to an LDAP / AD group (see the module docstring)."""

    name = "ldap"

    def __init__(
        self,
        uri: str,
        bind_dn: str,
        bind_password: str,
        *,
        user_base: str,
        user_attr: str = "uid",
        user_object_class: str = "person",
        group_base: str | None = None,
        managed_groups: Sequence[str] = (),
        active_directory: bool = False,
        tls: str = "none",
        ca_file: str | None = None,
        validate_cert: bool = True,
        timeout: float = 10.0,
        placeholder_member: str | None = None,
        clock: Callable[[], datetime] | None = None,
        connection_factory: Callable[..., Connection] | None = None,
    ) -> None:
        """Check the settings (raises ``ValueError``, never naming the password); no I/O.

        ``timeout`` bounds connecting and each answer (ldap3 rounds the read timeout up to whole
        seconds). ``clock`` returns the current aware UTC time (AD TTLs); ``connection_factory`` is
        called like ``ldap3.Connection`` (tests pass a recording subclass). ``placeholder_member``:
        see the module docstring."""
        if tls not in _TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(_TLS_MODES)}, not {tls!r}")
        self.uri = self._check_uri(uri, tls)
        self.tls = tls
        self.active_directory = bool(active_directory)
        if not isinstance(bind_dn, str) or not bind_dn:
            raise ValueError("bind_dn must be a non-empty string")
        if dn_error(bind_dn) is not None and not (
            self.active_directory and (_UPN_RE.fullmatch(bind_dn) or _DOWNLEVEL_RE.fullmatch(bind_dn))
        ):
            raise ValueError(f"bind_dn: {dn_error(bind_dn)}"
                             + (" (or a user@domain / DOMAIN\\user name in AD mode)" if not self.active_directory
                                else ""))
        if not isinstance(bind_password, str) or not bind_password:
            # An empty password turns a simple bind into an unauthenticated (anonymous) one.
            raise ValueError("bind_password must be a non-empty string")
        self.bind_dn = bind_dn
        self._password = bind_password
        self.user_base = _required_dn("user_base", user_base)
        for what, value in (("user_attr", user_attr), ("user_object_class", user_object_class)):
            if not isinstance(value, str) or not _ATTR_RE.fullmatch(value):
                raise ValueError(f"{what} must be an attribute or class name ([A-Za-z][A-Za-z0-9-]*)")
        self.user_attr = user_attr
        self.user_object_class = user_object_class
        self.group_base = None if group_base is None else _required_dn("group_base", group_base)
        if isinstance(managed_groups, str) or not isinstance(managed_groups, (list, tuple)):
            raise ValueError("managed_groups must be a list of group DNs")
        for group in managed_groups:
            _required_dn("managed_groups", group)
            if self.group_base is not None and not dn_under(group, self.group_base, strictly=True):
                raise ValueError(f"managed_groups: {group} does not lie under group_base {self.group_base}")
        self.managed_groups = tuple(managed_groups)
        self.placeholder_member = (
            None if placeholder_member is None else _required_dn("placeholder_member", placeholder_member)
        )
        if ca_file is not None and (not isinstance(ca_file, str) or not ca_file):
            raise ValueError("ca_file must be a path or None")
        self.ca_file = ca_file
        self.validate_cert = bool(validate_cert)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
            raise ValueError("timeout must be a number of seconds in (0, 600]")
        self.timeout = float(timeout)
        if clock is not None and not callable(clock):
            raise ValueError("clock must be callable")
        self._clock = clock or _system_clock
        if connection_factory is not None and not callable(connection_factory):
            raise ValueError("connection_factory must be callable")
        self._factory = connection_factory or Connection
        self._conn: Connection | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"LdapBackend(uri={self.uri!r}, bind_dn={self.bind_dn!r}, user_base={self.user_base!r})"

    @staticmethod
    def _check_uri(uri: Any, tls: str) -> str:
        if not isinstance(uri, str) or _has_control_chars(uri):
            raise ValueError("uri must be an ldap:// or ldaps:// URL")
        if "@" in uri:  # checked first: the messages below quote the uri
            raise ValueError("uri must not carry credentials; use bind_dn and bind_password")
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"uri {uri!r} is not a valid URL: {exc}") from None
        if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"uri {uri!r} must be ldap://host[:port] or ldaps://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"uri {uri!r} must not have a path, query or fragment")
        if (parts.scheme.lower() == "ldaps") != (tls == "ldaps"):
            raise ValueError("use tls='ldaps' exactly with an ldaps:// uri")
        return uri

    # -- Backend protocol --------------------------------------------------

    def validate_role(self, params: Mapping[str, Any]) -> list[str]:
        """Return one message per problem in a role's ``group_dn`` setting."""
        if not isinstance(params, Mapping) or params.get("group_dn") is None:
            return ["group_dn: required (the DN of the group the person joins)"]
        err = self._group_dn_error(params["group_dn"])
        return [] if err is None else [f"group_dn: {err}"]

    def shared_key(self, grant: GrantSpec) -> str | None:
        """One membership per (group, person), whichever grant asked for it. No I/O."""
        group = self._group_dn(grant)
        return f"ldap:{safe_dn(group).lower()}|{grant.person}"

    def apply(self, grant: GrantSpec) -> str:
        """Add the person's DN (AD: with a TTL up to ``expires_at``) to the group; return
        ``"{group_dn}|{user_dn}"``. Already a member is fine."""
        person = self._person(grant)
        group = self._group_dn(grant)
        ttl = self._ttl(grant) if self.active_directory else None

        def op(conn: Connection) -> str:
            user = self._resolve_one(conn, person)
            value = user if ttl is None else f"<TTL={ttl},{user}>"
            conn.modify(group, {"member": [(MODIFY_ADD, [value])]})
            code = conn.result.get("result")
            if code in (SUCCESS, ATTRIBUTE_OR_VALUE_EXISTS, ENTRY_ALREADY_EXISTS):
                return f"{group}|{user}"
            if code == NO_SUCH_OBJECT:
                raise BackendError(f"group {group} does not exist (or is not visible to {self.bind_dn})")
            raise self._result_error(f"cannot add {user} to group {group}", conn.result)

        return self._run(f"apply grant {grant.grant_id}", op)

    def revoke(self, grant: GrantSpec) -> None:
        """Delete the person's DN from the group's members; not a member (or no group) is fine.

        Every entry the person resolves to is removed (fail safe when a duplicate appeared after
        the grant was applied); a person who resolves to no entry holds nothing to revoke."""
        person = self._person(grant)
        group = self._group_dn(grant)

        def op(conn: Connection) -> None:
            for user in self._find_users(conn, person):
                self._remove_member(conn, group, user)

        self._run(f"revoke grant {grant.grant_id}", op)

    def inspect(self, grant: GrantSpec) -> Artifact | None:
        """Return the membership when the person's DN is a member of the group, else None."""
        person = self._person(grant)
        group = self._group_dn(grant)

        def op(conn: Connection) -> Artifact | None:
            for user in self._find_users(conn, person):
                if self._is_member(conn, group, user):
                    return Artifact(
                        ref=f"{group}|{user}",
                        grant_id=grant.grant_id,
                        person=person,
                        target=grant.target,
                        role=grant.role,
                        details={"group_dn": group, "user_dn": user},
                    )
            return None

        return self._run(f"inspect grant {grant.grant_id}", op)

    def list_managed(self) -> list[Artifact]:
        """One artifact per member of each ``managed_groups`` entry that resolves to a user entry
        under ``user_base`` (placeholders and other non-user members are skipped)."""

        def op(conn: Connection) -> list[Artifact]:
            found = []
            for group in self.managed_groups:
                for member in self._members(conn, group):
                    person = self._person_of(conn, member)
                    if person is not None:
                        found.append(Artifact(
                            ref=f"{group}|{member}",
                            grant_id=None,
                            person=person,
                            details={"group_dn": group, "user_dn": member},
                        ))
            return sorted(found, key=lambda a: (a.details["group_dn"].lower(), a.person, a.ref))

        return self._run("list managed groups", op)

    def close(self) -> None:
        """Unbind the cached connection (a later call opens a new one)."""
        with self._lock:
            self._drop()

    # -- grant checks (no I/O) -------------------------------------------------

    def _group_dn_error(self, value: Any) -> str | None:
        err = dn_error(value)
        if err is not None:
            return err
        if self.group_base is not None and not dn_under(value, self.group_base, strictly=True):
            return f"{value} does not lie under group_base {self.group_base}"
        return None

    def _group_dn(self, grant: GrantSpec) -> str:
        params = grant.params if isinstance(grant.params, Mapping) else {}
        value = params.get("group_dn")
        if value is None:
            raise InvalidGrant("group_dn", "required (the DN of the group the person joins)")
        err = self._group_dn_error(value)
        if err is not None:
            raise InvalidGrant("group_dn", err)
        return value

    @staticmethod
    def _person(grant: GrantSpec) -> str:
        person = grant.person
        if not isinstance(person, str) or not PERSON_RE.fullmatch(person):
            raise InvalidGrant("person", "must be 1-64 letters, digits, '.', '_' or '-'")
        return person

    def _ttl(self, grant: GrantSpec) -> int:
        expires = grant.expires_at
        if not isinstance(expires, datetime) or expires.utcoffset() is None:
            raise InvalidGrant("expires_at", "must be a timezone-aware datetime")
        seconds = math.ceil((expires - self._clock()).total_seconds())
        if seconds <= 0:
            raise InvalidGrant("expires_at", "has already passed; an AD membership TTL must be positive")
        return seconds

    # -- directory operations (inside _run) -------------------------------------

    def _find_users(self, conn: Connection, person: str) -> list[str]:
        """DNs of the user entries whose ``user_attr`` is ``person`` (which is pre-validated)."""
        flt = (f"(&(objectClass={escape_filter_chars(self.user_object_class)})"
               f"({self.user_attr}={escape_filter_chars(person)}))")
        return [dn for dn, _ in self._search(conn, self.user_base, flt, [NO_ATTRIBUTES], what="user_base")]

    def _resolve_one(self, conn: Connection, person: str) -> str:
        users = self._find_users(conn, person)
        if len(users) != 1:
            raise InvalidGrant(
                "person",
                f"{self.user_attr}={person} (objectClass={self.user_object_class}) under {self.user_base} "
                f"resolves to {len(users)} entries; exactly one required",
            )
        return users[0]

    def _person_of(self, conn: Connection, dn: str) -> str | None:
        """The ``user_attr`` value of the user entry ``dn`` (a DN read from the directory), or
        None when it is no user entry under ``user_base``."""
        try:
            parse_dn(dn)
        except LDAPInvalidDnError:
            return None
        if not dn_under(dn, self.user_base, strictly=True):
            return None
        conn.search(dn, f"(objectClass={escape_filter_chars(self.user_object_class)})", BASE,
                    dereference_aliases=DEREF_NEVER, attributes=[self.user_attr])
        code = conn.result.get("result")
        if code in (NO_SUCH_OBJECT, INVALID_DN_SYNTAX):
            return None
        if code != SUCCESS:
            raise self._result_error(f"cannot read member {dn}", conn.result)
        for entry in conn.response or []:
            if entry.get("type") == "searchResEntry":
                values = _values(entry.get("attributes", {}), self.user_attr)
                return values[0] if values else None
        return None

    def _members(self, conn: Connection, group: str) -> list[str]:
        conn.search(group, "(objectClass=*)", BASE, dereference_aliases=DEREF_NEVER, attributes=["member"])
        code = conn.result.get("result")
        if code == NO_SUCH_OBJECT:
            raise BackendError(f"managed group {group} does not exist (or is not visible to {self.bind_dn})")
        if code != SUCCESS:
            raise self._result_error(f"cannot read group {group}", conn.result)
        for entry in conn.response or []:
            if entry.get("type") == "searchResEntry":
                return _values(entry.get("attributes", {}), "member")
        return []

    def _is_member(self, conn: Connection, group: str, user: str) -> bool:
        conn.compare(group, "member", user)
        code = conn.result.get("result")
        if code == COMPARE_TRUE:
            return True
        if code in (COMPARE_FALSE, NO_SUCH_ATTRIBUTE, NO_SUCH_OBJECT):
            return False
        raise self._result_error(f"cannot check whether {user} is a member of {group}", conn.result)

    def _remove_member(self, conn: Connection, group: str, user: str) -> None:
        conn.modify(group, {"member": [(MODIFY_DELETE, [user])]})
        code = conn.result.get("result")
        if code in (SUCCESS, NO_SUCH_ATTRIBUTE, NO_SUCH_OBJECT):
            return
        if code == OBJECT_CLASS_VIOLATION:
            # The person is the group's last member: swap in the placeholder atomically.
            placeholder = self.placeholder_member or group
            conn.modify(group, {"member": [(MODIFY_ADD, [placeholder]), (MODIFY_DELETE, [user])]})
            code = conn.result.get("result")
            if code in (SUCCESS, NO_SUCH_ATTRIBUTE):
                return
        elif code == UNWILLING_TO_PERFORM and not self._is_member(conn, group, user):
            return  # AD answers "unwilling" when removing a non-member
        raise self._result_error(f"cannot remove {user} from group {group}", conn.result)

    def _search(self, conn: Connection, base: str, flt: str, attributes: list[str], *,
                what: str) -> list[tuple[str, Mapping[str, Any]]]:
        """A paged subtree search returning (dn, attributes) of entries (references skipped)."""
        out: list[tuple[str, Mapping[str, Any]]] = []
        cookie: Any = None
        while True:
            conn.search(base, flt, SUBTREE, dereference_aliases=DEREF_NEVER, attributes=attributes,
                        paged_size=_PAGE_SIZE, paged_cookie=cookie)
            code = conn.result.get("result")
            if code == NO_SUCH_OBJECT:
                raise BackendError(f"{what} {base} does not exist (or is not visible to {self.bind_dn})")
            if code != SUCCESS:
                raise self._result_error(f"search under {base} failed", conn.result)
            out.extend((e["dn"], e.get("attributes", {})) for e in conn.response or []
                       if e.get("type") == "searchResEntry")
            controls = conn.result.get("controls") or {}
            cookie = ((controls.get(_PAGED_OID) or {}).get("value") or {}).get("cookie")
            if not cookie:
                return out

    # -- connection handling ----------------------------------------------------

    def _run(self, what: str, op: Callable[[Connection], T]) -> T:
        """Run ``op`` on the cached connection (opening one when needed). A reused connection
        that turns out broken is replaced once (every operation here is idempotent); a timeout
        is not retried, so a hung server costs one ``timeout``."""
        with self._lock:
            for _attempt in range(2):
                reused = self._conn is not None and not self._conn.closed
                if not reused:
                    self._drop()
                    self._conn = self._open(what)
                try:
                    return op(self._conn)
                except BackendError:
                    raise
                except Exception as exc:  # noqa: BLE001 - nothing from ldap3 may escape this module
                    self._drop()
                    error = self._map_exception(what, exc)
                    if not (reused and error.transient and not _timed_out(exc)):
                        raise error from None
            raise AssertionError("unreachable")  # pragma: no cover

    def _open(self, what: str) -> Connection:
        """A connection that is open, TLS-protected as configured and bound."""
        conn = None
        try:
            tls = Tls(validate=ssl.CERT_REQUIRED if self.validate_cert else ssl.CERT_NONE,
                      ca_certs_file=self.ca_file)
            server = Server(self.uri, get_info=NONE, connect_timeout=self.timeout, tls=tls,
                            use_ssl=self.tls == "ldaps")
            # ldap3 packs receive_timeout into SO_RCVTIMEO as whole seconds.
            conn = self._factory(server, user=self.bind_dn, password=self._password, auto_bind=AUTO_BIND_NONE,
                                 client_strategy=SYNC, receive_timeout=math.ceil(self.timeout), raise_exceptions=False,
                                 auto_referrals=False, read_only=False)
            conn.open(read_server_info=False)
            if self.tls == "starttls" and not conn.start_tls(read_server_info=False):
                raise BackendError(f"{what}: StartTLS with {self.uri} did not start: {self._describe(conn.result)}")
            if not conn.bind(read_server_info=False):
                result = conn.result or {}
                raise BackendError(
                    f"{what}: cannot bind to {self.uri} as {self.bind_dn}: {self._describe(result)}",
                    transient=result.get("result") in TRANSIENT_CODES,
                )
            return conn
        except BackendError:
            _quiet_unbind(conn)
            raise
        except Exception as exc:  # noqa: BLE001 - nothing from ldap3 may escape this module
            _quiet_unbind(conn)
            raise self._map_exception(what, exc) from None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        _quiet_unbind(conn)

    def _map_exception(self, what: str, exc: BaseException) -> BackendError:
        """The ``BackendError`` for an exception raised by ldap3 (or the socket under it)."""
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        if _timed_out(exc):
            return BackendError(f"{what}: LDAP server {self.uri} unreachable (no answer within {self.timeout:g}s)",
                                transient=True)
        if _tls_problem(exc):
            return BackendError(f"{what}: TLS with {self.uri} failed ({detail}); check the server certificate, "
                                "ca_file and validate_cert")
        if isinstance(exc, LDAPStartTLSError):
            return BackendError(f"{what}: StartTLS with {self.uri} failed ({self._scrub(str(exc))}); "
                                "does the server offer TLS on this port?")
        if isinstance(exc, (LDAPCommunicationError, OSError)):
            return BackendError(f"{what}: LDAP server {self.uri} unreachable ({detail})", transient=True)
        return BackendError(f"{what}: {detail}")

    def _result_error(self, what: str, result: Mapping[str, Any] | None) -> BackendError:
        code = (result or {}).get("result")
        return BackendError(f"{what}: {self._describe(result)}", transient=code in TRANSIENT_CODES)

    def _describe(self, result: Mapping[str, Any] | None) -> str:
        result = result or {}
        text = f"{result.get('description') or 'error'} ({result.get('result')})"
        message = str(result.get("message") or "").strip()
        return self._scrub(f"{text}: {message}" if message else text)

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***")


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, LDAPResponseTimeoutError))


def _tls_problem(exc: BaseException) -> bool:
    """A certificate or handshake failure (configuration, not an outage). A peer closing the
    connection during the handshake counts as an outage."""
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return False
    return isinstance(exc, (ssl.SSLError, ssl.CertificateError, LDAPCertificateError))


def _values(attributes: Mapping[str, Any], name: str) -> list[str]:
    """The values of attribute ``name`` (case-insensitive), as a list of str."""
    value = attributes.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in attributes.items() if k.lower() == lowered), None)
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _quiet_unbind(conn: Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.unbind()
    except Exception:  # noqa: BLE001 - closing a broken connection must not fail
        pass
