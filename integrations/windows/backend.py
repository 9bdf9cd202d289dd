"""Windows backend: temporary local group membership, or a JEA role, over WinRM/PSRP.

Two kinds of role, chosen by the role's ``params`` (exactly one of them):

``local_group``
    The person is made a member of a local group (``Administrators``...) on
    ``grant.target``. Windows local groups have NO expiry of their own: nothing on
    the host takes the member out again. The only defences are this product's
    engine (its expiry timer calls ``revoke``) and its reconcile (``inspect`` /
    ``list_managed``). A scheduled task on the host that removes the member at
    ``expires_at`` would be a useful second line, but it needs script text
    (``New-ScheduledTaskAction -Argument "..."``), and this module never builds
    script text, so it is deliberately NOT implemented.

``jea_role`` + ``jea_commands``
    A Just Enough Administration role: a role capability file listing the visible
    cmdlets, and one session configuration (``jea_endpoint``, default ``JIT``)
    whose ``RoleDefinitions`` map each person holding a grant on that host to
    their roles. JEA sessions end when the person disconnects, but the *mapping*
    has no expiry either: the same engine timer and reconcile apply.

Every PowerShell command is built from a cmdlet name and named parameters
(:class:`Command`), sent with pypsrp's ``add_cmdlet``/``add_parameter``: values
travel as serialized data (CLIXML strings, arrays, hashtables) and are never
parsed as script. User input is also validated against strict allow-lists before
any command is built, so a refused grant sends nothing.

Commands sent per operation (``-ErrorAction Stop`` is added to every cmdlet that
acts on the host; ``|`` marks a pipeline, ``;`` separate statements of one call)::

  local_group, apply:   Get-LocalGroupMember -Group G | Select-Object -ExpandProperty Name
                        then, only when the member is not listed:
                        Add-LocalGroupMember -Group G -Member M
  local_group, revoke:  Remove-LocalGroupMember -Group G -Member M
  local_group, inspect: Get-LocalGroupMember -Group G | Select-Object -ExpandProperty Name
  JEA, read (apply, revoke, inspect; and again, over a new connection, after every
  change of the role definitions, to verify it):
                        Get-PSSessionConfiguration
                          | Where-Object -Property Name -EQ -Value E
                          | Select-Object -Property Name, RoleDefinitions
                          | ConvertTo-Json -Depth 6 -Compress
  JEA, apply:           New-Item -ItemType Directory -Path <module>\\RoleCapabilities -Force;
                        New-Item -ItemType Directory -Path <transcripts> -Force;
                        New-ModuleManifest -Path <module>\\JIT.psd1;
                        New-PSRoleCapabilityFile -Path <module>\\RoleCapabilities\\R.psrc
                          -VisibleCmdlets C1, C2...
                        and, only when the role definitions change:
                        New-PSSessionConfigurationFile -Path <module>\\E.pssc
                          -SessionType RestrictedRemoteServer -RunAsVirtualAccount
                          -TranscriptDirectory <transcripts> -RoleDefinitions @{M = @{RoleCapabilities = R}}
                        Register-PSSessionConfiguration -Name E -Path <module>\\E.pssc -Force
  JEA, revoke:          the same two session configuration commands without the person's
                        role, or Unregister-PSSessionConfiguration -Name E -Force when no
                        role definition is left.

Idempotence: ``apply`` lists the group first and sends no ``Add`` when the member is
already there (an ``Add`` that still fails with ``MemberExists``, e.g. after a race,
counts as success). ``-ErrorAction SilentlyContinue`` was rejected: it would also hide
"no such user", "access denied" and "no such group". ``revoke`` always sends the
``Remove`` (it never skips on the strength of our own name matching, so a matching
mistake cannot leave someone an administrator) and treats ``MemberNotFound`` /
``PrincipalNotFound`` as success.

References (lowercase, as Windows names are case-insensitive): ``win:HOST/GROUP/MEMBER``
and ``jea:HOST/ENDPOINT/ROLE/MEMBER``, MEMBER being ``DOMAIN\\person`` or ``person``.

Known limits: the JEA role definitions are the whole set for a host, so apply and
revoke read, modify and rewrite them; a per-host lock serialises that inside one
process, not across processes. ``Register-PSSessionConfiguration -Force`` restarts
WinRM, which may cut the very connection that sent it: the backend then re-reads the
definitions over a new connection and, when they are as intended, reports success;
otherwise the error is transient and a retry converges.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from integrations.base import Artifact, BackendError, GrantSpec, InvalidGrant
from integrations.windows.jea import (
    JEA_MANIFEST,
    JEA_MODULE_DIR,
    JEA_ROLE_DIR,
    JEA_TRANSCRIPT_DIR,
    _normal,
    _parse_definitions,
)
from integrations.windows.powershell import _STOP, Command, PowerShellError, Runner, _cmd, map_winrm_error
from integrations.windows.validation import (
    _DOMAIN_RE,
    _ENDPOINT_RE,
    _HOST_RE,
    _PERSON_RE,
    _PROTECTED_RE,
    _check_group,
    role_errors,
)

log = logging.getLogger("integrations.windows")

# FullyQualifiedErrorId prefixes of Microsoft.PowerShell.LocalAccounts that mean "already
# done". Taken from the module's exception names; not yet observed on a real host.
_MEMBER_EXISTS = frozenset({"MemberExists"})
_MEMBER_ABSENT = frozenset({"MemberNotFound", "PrincipalNotFound"})


@dataclass(frozen=True)
class _Spec:
    """A grant, validated and resolved to what goes on the host."""

    host: str
    person: str
    member: str
    group: str | None
    jea_role: str | None
    jea_commands: tuple[str, ...]


def _account(name: str) -> str:
    """The account part of ``DOMAIN\\account`` (or the whole name)."""
    return name.rsplit("\\", 1)[-1]


class WindowsBackend:
    """Grants a local group membership or a JEA role on Windows hosts through a ``Runner``.

    ``domain`` qualifies members (``CONTOSO\\alice``); it must be spelled as Windows
    reports members (normally the NetBIOS name), since inspect compares names. Without
    it members are local accounts, reported by Windows as ``COMPUTERNAME\\alice``: they
    are matched when the first label of ``grant.target`` is the computer name.
    ``managed`` lists the ``(host, local group)`` pairs and ``jea_hosts`` the hosts
    whose JIT endpoint ``list_managed`` reads; spell hosts as in grant targets, since
    the reconciler matches artifacts to grants by ref. ``protected_members`` (bare
    account names, matched in any domain, or ``DOMAIN\\NAME``) are never granted,
    removed or listed: by default the built-in ``Administrator``. Refs are lowercase,
    because Windows names are case-insensitive and reports them in its own spelling.
    Construction validates and does no I/O."""

    def __init__(
        self,
        runner: Runner,
        *,
        name: str = "windows",
        domain: str | None = None,
        jea_endpoint: str = "JIT",
        managed: Sequence[tuple[str, str]] = (),
        jea_hosts: Sequence[str] = (),
        protected_members: Sequence[str] = ("Administrator",),
    ) -> None:
        if not callable(getattr(runner, "run", None)):
            raise ValueError("runner must have a run(host, commands) method")
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        if domain is not None and (not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain)):
            raise ValueError(f"domain {domain!r} must match [A-Za-z0-9.-]{{1,64}}")
        if not isinstance(jea_endpoint, str) or not _ENDPOINT_RE.fullmatch(jea_endpoint):
            raise ValueError(f"jea_endpoint {jea_endpoint!r} must match [A-Za-z][A-Za-z0-9._-]{{0,63}}")
        if jea_endpoint.casefold().startswith("microsoft."):
            raise ValueError("jea_endpoint must not be one of the built-in Microsoft.* endpoints")
        pairs = []
        for entry in managed:
            if not isinstance(entry, tuple | list) or len(entry) != 2:
                raise ValueError("managed entries must be (host, group) pairs")
            host, group = entry
            if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
                raise ValueError(f"managed host {host!r} is not a host name")
            if (err := _check_group(group)) is not None:
                raise ValueError(f"managed group {group!r} {err}")
            pairs.append((host, group))
        for host in jea_hosts:
            if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
                raise ValueError(f"jea host {host!r} is not a host name")
        for entry in protected_members:
            if not isinstance(entry, str) or not _PROTECTED_RE.fullmatch(entry):
                raise ValueError(f"protected member {entry!r} must be NAME or DOMAIN\\NAME")
        self.runner = runner
        self.name = name
        self.domain = domain
        self.jea_endpoint = jea_endpoint
        self.managed = tuple(pairs)
        self.jea_hosts = tuple(jea_hosts)
        self.protected_members = tuple(protected_members)
        self._protected_full = frozenset(e.casefold() for e in protected_members if "\\" in e)
        self._protected_bare = frozenset(e.casefold() for e in protected_members if "\\" not in e)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- Backend protocol ---------------------------------------------------------

    def validate_role(self, params: Mapping[str, Any]) -> list[str]:
        """Return one ``field: reason`` message per problem in a role's params."""
        return role_errors(params)

    def shared_key(self, grant: GrantSpec) -> str | None:
        """One membership (or JEA role mapping) per host, group/role and person, shared by
        every grant covering it. Lowercased: Windows names are case-insensitive. Raises
        ``InvalidGrant`` for a grant that apply would refuse. Does no I/O."""
        spec = self._spec(grant)
        what = spec.group if spec.group is not None else spec.jea_role
        return f"windows:{spec.host}|{what}|{spec.person}".lower()

    def apply(self, grant: GrantSpec) -> str:
        """Add the membership / JEA role mapping when missing; return its reference."""
        spec = self._spec(grant, for_apply=True)
        if spec.group is not None:
            return self._apply_group(spec)
        return self._apply_jea(spec)

    def revoke(self, grant: GrantSpec) -> None:
        """Remove the membership / JEA role mapping; succeed when it is already gone."""
        spec = self._spec(grant)
        if spec.group is not None:
            self._revoke_group(spec)
        else:
            self._revoke_jea(spec)

    def inspect(self, grant: GrantSpec) -> Artifact | None:
        """Return the membership / role mapping the host holds for ``grant``, or None.

        The artifact names no grant (``grant_id`` None: Windows keeps no such marker)
        and no expiry (Windows has none)."""
        spec = self._spec(grant)
        if spec.group is not None:
            names = self._group_members(spec.host, spec.group)
            found = next((n for n in names if self._is_member(n, spec)), None)
            if found is None:
                return None
            return Artifact(
                ref=self._ref(spec), grant_id=None, person=spec.person, target=spec.host, role=grant.role,
                details={"local_group": spec.group, "member": found},
            )
        definitions = self._read_definitions(spec.host) or {}
        key = self._find_key(definitions, spec.member)
        if key is None or not self._has_role(definitions[key], spec.jea_role):
            return None
        return Artifact(
            ref=self._ref(spec), grant_id=None, person=spec.person, target=spec.host, role=grant.role,
            details={"jea_role": spec.jea_role, "endpoint": self.jea_endpoint, "member": key,
                     "roles": list(definitions[key])},
        )

    def list_managed(self) -> list[Artifact]:
        """Every member of each ``managed`` (host, group) and every role mapping of the JIT
        endpoint on each of ``jea_hosts``.

        Windows does not record who added a group member, so for local groups this lists
        every member except ``protected_members`` (grant_id None): one that no grant backs
        is standing privilege, and the reconciler's fix revokes it with ``details`` as the
        params (a member outside our domain then fails validation instead of being
        removed). Protect every account that must stay (break-glass, service accounts).
        The JIT endpoint, by contrast, holds only this product's mappings."""
        found: list[Artifact] = []
        for host, group in self.managed:
            for name in self._group_members(host, group):
                if self._is_protected(name):
                    continue
                member = self._canonical_member(name, host)
                found.append(Artifact(
                    ref=self._group_ref(host, group, member), grant_id=None, person=self._person_of(name, host),
                    target=host, details={"local_group": group, "member": name},
                ))
        for host in self.jea_hosts:
            for name, roles in sorted((self._read_definitions(host) or {}).items()):
                if self._is_protected(name):
                    continue
                member = self._canonical_member(name, host)
                for role in roles:
                    found.append(Artifact(
                        ref=self._jea_ref(host, role, member), grant_id=None, person=self._person_of(name, host),
                        target=host, details={"jea_role": role, "endpoint": self.jea_endpoint, "member": name},
                    ))
        return found

    # -- validation ------------------------------------------------------------------

    def _spec(self, grant: GrantSpec, *, for_apply: bool = False) -> _Spec:
        """Validate every value of ``grant`` that reaches the host (raises ``InvalidGrant``)."""
        host, person = grant.target, grant.person
        if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
            raise InvalidGrant("target", "must be a host name (letters, digits, '.', '-'; at most 253)")
        if not isinstance(person, str) or not _PERSON_RE.fullmatch(person):
            raise InvalidGrant("person", "must be an account name (letters, digits and ._-, at most 64)")
        if person.strip(".") == "":
            raise InvalidGrant("person", "must not be only dots")
        errors = role_errors(grant.params, strict=False, commands_required=for_apply)
        if errors:
            field_name, _, reason = errors[0].partition(": ")
            raise InvalidGrant(field_name, reason)
        member = f"{self.domain}\\{person}" if self.domain else person
        if self._is_protected(member):
            raise InvalidGrant("person", f"{member} is a protected account: jit-access never grants or removes it")
        params = grant.params
        if "local_group" in params:
            return _Spec(host, person, member, params["local_group"], None, ())
        unique = {c.casefold(): c for c in params.get("jea_commands") or ()}  # cmdlet names ignore case
        commands = tuple(sorted(unique.values(), key=str.casefold))
        return _Spec(host, person, member, None, params["jea_role"], commands)

    def _ref(self, spec: _Spec) -> str:
        if spec.group is not None:
            return self._group_ref(spec.host, spec.group, spec.member)
        return self._jea_ref(spec.host, spec.jea_role or "", spec.member)

    @staticmethod
    def _group_ref(host: str, group: str, member: str) -> str:
        return f"win:{host}/{group}/{member}".lower()

    def _jea_ref(self, host: str, role: str, member: str) -> str:
        return f"jea:{host}/{self.jea_endpoint}/{role}/{member}".lower()

    def _is_protected(self, name: str) -> bool:
        folded = name.casefold()
        return folded in self._protected_full or _account(folded) in self._protected_bare

    def _is_member(self, name: str, spec: _Spec) -> bool:
        """Whether a member name Windows reported is ``spec``'s member (case-insensitive)."""
        wanted = spec.member.casefold()
        name = name.casefold()
        if name == wanted:
            return True
        if self.domain is None:
            computer = spec.host.split(".", 1)[0].casefold()
            return name == f"{computer}\\{wanted}"
        return False

    def _person_of(self, name: str, host: str) -> str:
        """The person of a reported member: the bare account when it is in our domain
        (or, without a domain, local to ``host``), else the full ``DOMAIN\\account``."""
        prefix, sep, account = name.rpartition("\\")
        if not sep:
            return name
        expected = self.domain if self.domain else host.split(".", 1)[0]
        return account if prefix.casefold() == expected.casefold() else name

    def _canonical_member(self, name: str, host: str) -> str:
        """A reported member in the spelling ``apply`` uses, when it is one of ours."""
        if "\\" not in name:
            return name
        person = self._person_of(name, host)
        if person != name:
            return f"{self.domain}\\{person}" if self.domain else person
        return name

    # -- running -------------------------------------------------------------------

    def _run(self, host: str, commands: Sequence[Command]) -> list[Any]:
        """``runner.run`` with the guarantee that only ``BackendError`` comes out."""
        try:
            return self.runner.run(host, commands)
        except BackendError:
            raise
        except Exception as exc:
            raise map_winrm_error(exc, host) from exc

    def _lock(self, host: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(host.casefold(), threading.Lock())

    # -- local groups ----------------------------------------------------------------

    @staticmethod
    def list_group_commands(group: str) -> list[Command]:
        return [
            _cmd("Get-LocalGroupMember", ("Group", group), _STOP, pipe=True),
            _cmd("Select-Object", ("ExpandProperty", "Name")),
        ]

    def _group_members(self, host: str, group: str) -> list[str]:
        names = []
        for obj in self._run(host, self.list_group_commands(group)):
            name = _principal_name(obj)
            if name is None:
                raise BackendError(f"{host}: unexpected Get-LocalGroupMember output {obj!r}")
            names.append(name)
        return names

    def _apply_group(self, spec: _Spec) -> str:
        assert spec.group is not None
        try:
            present = any(self._is_member(n, spec) for n in self._group_members(spec.host, spec.group))
        except PowerShellError as exc:
            # Get-LocalGroupMember fails on groups holding orphaned SIDs; the Add below
            # still works (and fails properly when the group itself is missing).
            log.warning("%s: cannot list %s (%s); adding without the check", spec.host, spec.group, exc)
            present = False
        if not present:
            try:
                self._run(spec.host, [
                    _cmd("Add-LocalGroupMember", ("Group", spec.group), ("Member", spec.member), _STOP),
                ])
            except PowerShellError as exc:
                if not exc.has_error(_MEMBER_EXISTS):
                    raise
        return self._ref(spec)

    def _revoke_group(self, spec: _Spec) -> None:
        assert spec.group is not None
        try:
            self._run(spec.host, [
                _cmd("Remove-LocalGroupMember", ("Group", spec.group), ("Member", spec.member), _STOP),
            ])
        except PowerShellError as exc:
            if not exc.has_error(_MEMBER_ABSENT):
                raise

    # -- JEA -----------------------------------------------------------------------------

    def read_definitions_commands(self) -> list[Command]:
        return [
            _cmd("Get-PSSessionConfiguration", _STOP, pipe=True),
            _cmd("Where-Object", ("Property", "Name"), ("EQ", True), ("Value", self.jea_endpoint), pipe=True),
            _cmd("Select-Object", ("Property", ("Name", "RoleDefinitions")), pipe=True),
            _cmd("ConvertTo-Json", ("Depth", 6), ("Compress", True)),
        ]

    def _read_definitions(self, host: str) -> dict[str, tuple[str, ...]] | None:
        """The endpoint's role definitions (member -> roles), or None when it is absent."""
        output = self._run(host, self.read_definitions_commands())
        return _parse_definitions(output, host, self.jea_endpoint)

    def pssc_path(self) -> str:
        return f"{JEA_MODULE_DIR}\\{self.jea_endpoint}.pssc"

    @staticmethod
    def psrc_path(role: str) -> str:
        return f"{JEA_ROLE_DIR}\\{role}.psrc"

    def _write_role_commands(self, spec: _Spec) -> list[Command]:
        assert spec.jea_role is not None
        return [
            _cmd("New-Item", ("ItemType", "Directory"), ("Path", JEA_ROLE_DIR), ("Force", True), _STOP),
            _cmd("New-Item", ("ItemType", "Directory"), ("Path", JEA_TRANSCRIPT_DIR), ("Force", True), _STOP),
            _cmd("New-ModuleManifest", ("Path", JEA_MANIFEST), _STOP),
            _cmd("New-PSRoleCapabilityFile", ("Path", self.psrc_path(spec.jea_role)),
                 ("VisibleCmdlets", spec.jea_commands), _STOP),
        ]

    def _write_definitions_commands(self, definitions: Mapping[str, tuple[str, ...]]) -> list[Command]:
        if not definitions:
            return [_cmd("Unregister-PSSessionConfiguration", ("Name", self.jea_endpoint), ("Force", True), _STOP)]
        # One role travels as a plain string: New-PSSessionConfigurationFile writes any
        # value that is not a .NET object[] with ToString(), and whether PowerShell
        # rehydrates a serialized array as object[] is unverified. The read-back below
        # catches it if it does not.
        role_definitions = {
            member: {"RoleCapabilities": roles[0] if len(roles) == 1 else tuple(roles)}
            for member, roles in sorted(definitions.items())
        }
        return [
            _cmd("New-PSSessionConfigurationFile", ("Path", self.pssc_path()),
                 ("SessionType", "RestrictedRemoteServer"), ("RunAsVirtualAccount", True),
                 ("TranscriptDirectory", JEA_TRANSCRIPT_DIR), ("RoleDefinitions", role_definitions), _STOP),
            _cmd("Register-PSSessionConfiguration", ("Name", self.jea_endpoint), ("Path", self.pssc_path()),
                 ("Force", True), _STOP),
        ]

    @staticmethod
    def _find_key(definitions: Mapping[str, Any], member: str) -> str | None:
        return next((k for k in definitions if k.casefold() == member.casefold()), None)

    @staticmethod
    def _has_role(roles: Sequence[str], role: str | None) -> bool:
        return role is not None and any(r.casefold() == role.casefold() for r in roles)

    def _apply_jea(self, spec: _Spec) -> str:
        assert spec.jea_role is not None
        with self._lock(spec.host):
            current = self._read_definitions(spec.host) or {}
            desired = dict(current)
            key = self._find_key(current, spec.member)
            if key is None:
                desired[spec.member] = (spec.jea_role,)
            elif not self._has_role(current[key], spec.jea_role):
                desired[key] = tuple(sorted((*current[key], spec.jea_role), key=str.casefold))
            commands = self._write_role_commands(spec)
            if _normal(desired) != _normal(current):
                commands += self._write_definitions_commands(desired)
                self._write_and_verify(spec.host, commands, desired)
            else:
                self._run(spec.host, commands)  # refresh the role capability file only
        return self._ref(spec)

    def _revoke_jea(self, spec: _Spec) -> None:
        with self._lock(spec.host):
            current = self._read_definitions(spec.host)
            if not current:
                return
            key = self._find_key(current, spec.member)
            if key is None or not self._has_role(current[key], spec.jea_role):
                return
            desired = dict(current)
            roles = tuple(r for r in current[key] if r.casefold() != (spec.jea_role or "").casefold())
            if roles:
                desired[key] = roles
            else:
                del desired[key]
            self._write_and_verify(spec.host, self._write_definitions_commands(desired), desired)

    def _write_and_verify(self, host: str, commands: list[Command], desired: Mapping[str, tuple[str, ...]]) -> None:
        """Run the write, then read the definitions back over a new connection.

        Register/Unregister restart WinRM and may cut the connection that sent them: a
        transient failure of the write is forgiven when the read-back shows the desired
        state."""
        try:
            self._run(host, commands)
        except BackendError as exc:
            if not exc.transient:
                raise
            try:
                after = self._read_definitions(host) or {}
            except BackendError:
                raise exc from None
            if _normal(after) != _normal(desired):
                raise exc
            return
        after = self._read_definitions(host) or {}
        if _normal(after) != _normal(desired):
            raise BackendError(
                f"{host}: JEA endpoint {self.jea_endpoint} reads back {dict(after)} after writing {dict(desired)}"
            )


def _principal_name(obj: Any) -> str | None:
    """The ``Name`` of a Get-LocalGroupMember output (a string after Select-Object, or an
    object with a Name property)."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, Mapping):
        value = obj.get("Name")
        return value if isinstance(value, str) else None
    for attr in ("adapted_properties", "extended_properties"):
        props = getattr(obj, attr, None)
        if isinstance(props, Mapping) and isinstance(props.get("Name"), str):
            return props["Name"]
    return None
