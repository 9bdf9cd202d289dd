"""``SudoLdapBackend``: a sudo grant as a ``sudoRole`` entry in the directory, for fleets whose
hosts read their sudo rules from LDAP (SSSD with ``sudo_provider = ldap``, or sudo's own LDAP
client).

One entry per grant, ``cn=jit_g<grant_id>,<sudoers_base>``, carrying ``sudoUser`` (the person),
``sudoHost`` (the target's host, or the policy's hosts for a group of hosts: never ``ALL``),
``sudoCommand`` (the role's commands and ``sudoedit FILE`` entries, checked exactly as for a
drop-in, ``integrations.sudo.rule_of``), ``sudoRunAsUser``, ``sudoNotBefore``/``sudoNotAfter``
(generalized time, UTC), ``sudoOption`` ``log_input``, ``log_output`` and ``noexec`` (unless the
role allows exec), and a ``description`` naming the grant. The time bounds end the rule on time
on every host, whenever the host's cache last refreshed; deleting the entry at release, revoke
or expiry is the tidy-up. ``inspect``/``list_managed`` read the entries back.

It shares an ``LdapBackend``'s settings and connection, as ``LdapDirectory`` does (TLS, the
bind secret, timeouts, the mapping of every ldap3 error to ``BackendError``). Values written
are checked against strict patterns first; the DN is built with ldap3's ``escape_rdn``, the
search filter with ``escape_filter_chars``.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Mapping

from ldap3 import BASE, DEREF_NEVER, LEVEL, MODIFY_REPLACE, Connection
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from integrations.base import Artifact, BackendError, GrantSpec, InvalidGrant
from integrations.ldap.backend import LdapBackend, _values
from integrations.ldap.dn import _required_dn
from integrations.ldap.results import ENTRY_ALREADY_EXISTS, NO_SUCH_OBJECT, SUCCESS
from integrations.sudo import SudoRules, rule_of
from policies.names import PERSON

_USER_RE = re.compile(PERSON)
_CN_RE = re.compile(r"jit_g(\d+)")
_TIME = "%Y%m%d%H%M%SZ"
_ATTRIBUTES = ["cn", "description", "sudoUser", "sudoHost", "sudoCommand", "sudoRunAsUser", "sudoOption",
               "sudoNotBefore", "sudoNotAfter"]
_DESCRIPTION = re.compile(r"jit-access grant_id=(\d+) request_id=(\d+) person=(\S+) target=(\S+) role=(\S+)")


class SudoLdapBackend(SudoRules):
    """Grants sudo rights as time-bounded ``sudoRole`` entries (see the module docstring)."""

    name = "sudo_ldap"

    def __init__(self, ldap: LdapBackend, *, sudoers_base: str, runas: str = "root") -> None:
        """Check the settings (raises ``ValueError``); no I/O."""
        if not isinstance(ldap, LdapBackend):
            raise ValueError("ldap must be an LdapBackend (its connection settings are shared)")
        self.ldap = ldap
        self.sudoers_base = _required_dn("sudoers_base", sudoers_base)
        if not isinstance(runas, str) or not _USER_RE.fullmatch(runas):
            raise ValueError(f"runas {runas!r} is not a valid user name")
        self.runas = runas

    # -- Backend protocol (validate_role, role_warnings, describe, shared_key: SudoRules) ------

    def apply(self, grant: GrantSpec) -> str:
        """Write (or rewrite) the grant's sudoRole entry; return its DN."""
        attributes = self._entry(grant)
        dn = self._dn(grant.grant_id)

        def op(conn: Connection) -> str:
            # objectClass first: cvtsudoers -i ldif (what an admin pipes ldapsearch into) reads an
            # entry's attributes only after its objectClass, and slapd keeps the order written
            conn.add(dn, None, {"objectClass": ["top", "sudoRole"], **attributes})
            code = conn.result.get("result")
            if code == ENTRY_ALREADY_EXISTS:  # applied before: make it say exactly this again
                conn.modify(dn, {k: [(MODIFY_REPLACE, v)] for k, v in attributes.items() if k != "cn"})
                code = conn.result.get("result")
            if code == NO_SUCH_OBJECT:
                raise BackendError(f"sudoers_base {self.sudoers_base} does not exist "
                                   f"(or is not visible to {self.ldap.bind_dn})")
            if code != SUCCESS:
                raise self.ldap._result_error(f"cannot write {dn}", conn.result)
            return dn

        return self.ldap._run(f"apply grant {grant.grant_id}", op)

    def revoke(self, grant: GrantSpec) -> None:
        """Delete the grant's entry; already gone is fine."""
        dn = self._dn(grant.grant_id)

        def op(conn: Connection) -> None:
            conn.delete(dn)
            code = conn.result.get("result")
            if code not in (SUCCESS, NO_SUCH_OBJECT):
                raise self.ldap._result_error(f"cannot delete {dn}", conn.result)

        self.ldap._run(f"revoke grant {grant.grant_id}", op)

    def inspect(self, grant: GrantSpec) -> Artifact | None:
        """The grant's entry as the directory holds it, or None."""
        dn = self._dn(grant.grant_id)

        def op(conn: Connection) -> Artifact | None:
            conn.search(dn, "(objectClass=sudoRole)", BASE, dereference_aliases=DEREF_NEVER, attributes=_ATTRIBUTES)
            code = conn.result.get("result")
            if code == NO_SUCH_OBJECT:
                return None
            if code != SUCCESS:
                raise self.ldap._result_error(f"cannot read {dn}", conn.result)
            found = [self._artifact(e["dn"], e.get("attributes", {})) for e in conn.response or []
                     if e.get("type") == "searchResEntry"]
            return found[0] if found else None

        return self.ldap._run(f"inspect grant {grant.grant_id}", op)

    def list_managed(self) -> list[Artifact]:
        """Every ``jit_g<id>`` sudoRole entry directly under ``sudoers_base``."""
        flt = f"(&(objectClass=sudoRole)(cn={escape_filter_chars('jit_g')}*))"

        def op(conn: Connection) -> list[Artifact]:
            conn.search(self.sudoers_base, flt, LEVEL, dereference_aliases=DEREF_NEVER, attributes=_ATTRIBUTES)
            code = conn.result.get("result")
            if code == NO_SUCH_OBJECT:
                raise BackendError(f"sudoers_base {self.sudoers_base} does not exist "
                                   f"(or is not visible to {self.ldap.bind_dn})")
            if code != SUCCESS:
                raise self.ldap._result_error(f"cannot list {self.sudoers_base}", conn.result)
            found = [self._artifact(e["dn"], e.get("attributes", {})) for e in conn.response or []
                     if e.get("type") == "searchResEntry"]
            return sorted(found, key=lambda a: a.grant_id or 0)

        return self.ldap._run("list sudoRole entries", op)

    def close(self) -> None:
        self.ldap.close()

    # -- helpers -----------------------------------------------------------

    def _dn(self, grant_id: Any) -> str:
        if isinstance(grant_id, bool) or not isinstance(grant_id, int) or grant_id < 0:
            raise InvalidGrant("grant_id", "must be a non-negative integer")
        return f"cn={escape_rdn(f'jit_g{grant_id}')},{self.sudoers_base}"

    def _entry(self, grant: GrantSpec) -> dict[str, list[str]]:
        """The entry's attributes; raises ``InvalidGrant`` before anything is sent."""
        commands, edits, noexec, hosts = rule_of(grant)
        options = ["log_input", "log_output"] + (["noexec"] if noexec else [])
        return {
            "cn": [f"jit_g{grant.grant_id}"],
            "description": [f"jit-access grant_id={grant.grant_id} request_id={grant.request_id} "
                            f"person={grant.person} target={grant.target} role={grant.role}"],
            "sudoUser": [grant.person],
            "sudoHost": hosts,
            "sudoCommand": [*commands, *(f"sudoedit {f}" for f in edits)],
            "sudoRunAsUser": [self.runas],
            "sudoOption": options,
            "sudoNotBefore": [grant.starts_at.astimezone(timezone.utc).strftime(_TIME)],
            "sudoNotAfter": [grant.expires_at.astimezone(timezone.utc).strftime(_TIME)],
        }

    def _artifact(self, dn: str, attributes: Mapping[str, Any]) -> Artifact:
        cn = (_values(attributes, "cn") or [""])[0]
        match = _CN_RE.fullmatch(cn)
        described = _DESCRIPTION.fullmatch((_values(attributes, "description") or [""])[0])
        users = _values(attributes, "sudoUser")
        options = _values(attributes, "sudoOption")
        return Artifact(
            ref=dn,
            grant_id=int(match.group(1)) if match else None,
            person=users[0] if len(users) == 1 else ",".join(users),
            target=described.group(4) if described else None,
            role=described.group(5) if described else None,
            not_before=_time(_values(attributes, "sudoNotBefore")),
            not_after=_time(_values(attributes, "sudoNotAfter")),
            details={"hosts": _values(attributes, "sudoHost"), "commands": _values(attributes, "sudoCommand"),
                     "runas": (_values(attributes, "sudoRunAsUser") or [None])[0],
                     "log_input": "log_input" in options, "log_output": "log_output" in options,
                     "noexec": "noexec" in options},
        )


def _time(values: list[str]) -> datetime | None:
    """A generalized time as slapd returns it (``YYYYmmddHHMMSSZ``, or ldap3's str of a datetime)."""
    if not values:
        return None
    text = values[0]
    for fmt in (_TIME, "%Y-%m-%d %H:%M:%S%z"):
        try:
            return datetime.strptime(text, fmt).astimezone(timezone.utc)
        except ValueError:
            continue
    raise BackendError(f"unexpected sudoNotBefore/After value {text!r}")
