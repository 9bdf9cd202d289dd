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

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from integrations.base import Artifact, BackendError, GrantSpec, InvalidGrant

log = logging.getLogger(__name__)

# -- allow-lists ---------------------------------------------------------------

_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_PERSON_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9.-]{1,64}")
_GROUP_RE = re.compile(r"[A-Za-z0-9 ._-]{1,64}")
_JEA_ROLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_CMDLET_RE = re.compile(r"[A-Za-z]+-[A-Za-z0-9]+")
_ENDPOINT_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
_PARAM_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
_PROTECTED_RE = re.compile(r"(?:[A-Za-z0-9.-]{1,64}\\)?[A-Za-z0-9 ._-]{1,64}")

_MAX_JEA_COMMANDS = 100
_MAX_VALUE_DEPTH = 4
_MAX_STRING = 1024

# Cmdlets a JEA role may never expose, even when they look like plain Verb-Noun names:
# each runs arbitrary code, starts processes or edits the elevation machinery itself.
# The policy's own allow-list remains the main control; this is a floor.
_DENIED_VERBS = frozenset({"invoke"})
_DENIED_CMDLETS = frozenset(
    name.casefold()
    for name in (
        "Add-Type", "New-Object", "Import-Module", "Start-Process", "Start-Job", "Start-ThreadJob",
        "ForEach-Object", "Where-Object", "Set-Alias", "New-Alias", "Set-PSBreakpoint",
        "Enter-PSSession", "New-PSSession", "Register-PSSessionConfiguration",
        "Set-PSSessionConfiguration", "New-PSSessionConfigurationFile", "New-PSRoleCapabilityFile",
        "Register-ScheduledTask", "Set-ScheduledTask", "Register-ScheduledJob", "New-Service",
        "Add-LocalGroupMember", "Set-ExecutionPolicy",
    )
)

# -- where JEA files live on the host (constants, never user input) ------------

JEA_MODULE = "JIT"
JEA_MODULE_DIR = "C:\\Program Files\\WindowsPowerShell\\Modules\\" + JEA_MODULE
JEA_ROLE_DIR = JEA_MODULE_DIR + "\\RoleCapabilities"
JEA_MANIFEST = JEA_MODULE_DIR + "\\" + JEA_MODULE + ".psd1"
JEA_TRANSCRIPT_DIR = "C:\\ProgramData\\JIT\\Transcripts"

# FullyQualifiedErrorId prefixes of Microsoft.PowerShell.LocalAccounts that mean "already
# done". Taken from the module's exception names; not yet observed on a real host.
_MEMBER_EXISTS = frozenset({"MemberExists"})
_MEMBER_ABSENT = frozenset({"MemberNotFound", "PrincipalNotFound"})

# WSMan fault codes worth retrying: ERROR_WSMAN_OPERATION_TIMEDOUT (0x80338029).
_TRANSIENT_WSMAN_FAULTS = frozenset({2150858793})


# -- commands --------------------------------------------------------------------


def _value_error(value: Any, depth: int = 0) -> str | None:
    """Return why ``value`` may not be a parameter value, or None.

    Allowed: str (no control characters), bool, int, None, tuples of those, and
    dicts with string keys whose values are allowed. Nothing else reaches pypsrp."""
    if depth > _MAX_VALUE_DEPTH:
        return "is nested too deeply"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if abs(value) < 2**31 else "is out of range"
    if isinstance(value, str):
        if len(value) > _MAX_STRING:
            return "is too long"
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            return "contains control characters"
        return None
    if isinstance(value, tuple):
        for item in value:
            if (err := _value_error(item, depth + 1)) is not None:
                return err
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or (err := _value_error(key, depth + 1)) is not None:
                return "has a key that is not a plain string"
            if (err := _value_error(item, depth + 1)) is not None:
                return err
        return None
    return f"has unsupported type {type(value).__name__}"


def _freeze(value: Any) -> Any:
    """Lists become tuples (recursively), so a Command holds no mutable sequence."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Command:
    """One cmdlet call: a cmdlet name and named parameters, never script text.

    ``pipe=True`` sends this command's output into the next command of the same
    ``Runner.run`` call; otherwise the next command starts a new statement. A value
    of ``True`` on a parameter passes a switch (``-Force``). Construction refuses
    anything that is not a cmdlet name, a parameter name, or a plain data value."""

    cmdlet: str
    parameters: tuple[tuple[str, Any], ...] = ()
    pipe: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.cmdlet, str) or not _CMDLET_RE.fullmatch(self.cmdlet):
            raise ValueError(f"cmdlet {self.cmdlet!r} is not a Verb-Noun cmdlet name")
        params = tuple((name, _freeze(value)) for name, value in self.parameters)
        for name, value in params:
            if not isinstance(name, str) or not _PARAM_NAME_RE.fullmatch(name):
                raise ValueError(f"{self.cmdlet}: parameter name {name!r} is not allowed")
            if (err := _value_error(value)) is not None:
                raise ValueError(f"{self.cmdlet} -{name}: value {err}")
        object.__setattr__(self, "parameters", params)

    def param(self, name: str) -> Any:
        """The value of parameter ``name`` (KeyError when absent)."""
        for key, value in self.parameters:
            if key == name:
                return value
        raise KeyError(name)


def _cmd(cmdlet: str, *params: tuple[str, Any], pipe: bool = False) -> Command:
    return Command(cmdlet, tuple(params), pipe)


_STOP = ("ErrorAction", "Stop")


class PowerShellError(BackendError):
    """PowerShell ran but reported errors; ``error_ids`` holds their FullyQualifiedErrorIds."""

    def __init__(self, message: str, *, error_ids: Sequence[str] = (), transient: bool = False) -> None:
        super().__init__(message, transient=transient)
        self.error_ids = tuple(error_ids)

    def has_error(self, short_ids: frozenset[str]) -> bool:
        """True when any error's id (the part before the first comma) is in ``short_ids``."""
        return any(fq.split(",", 1)[0].strip() in short_ids for fq in self.error_ids)


@runtime_checkable
class Runner(Protocol):
    """Runs commands on a Windows host."""

    def run(self, host: str, commands: Sequence[Command]) -> list[Any]:
        """Run ``commands`` on ``host`` in one invocation (statements in order; ``pipe``
        chains a command into the next) and return the output objects.

        Raises ``BackendError`` (``PowerShellError`` when PowerShell reported errors)."""
        ...


# -- runners -----------------------------------------------------------------------


class RecordingRunner:
    """A test double: records every ``(host, commands)`` and returns canned output.

    ``results`` is either a callable ``(host, commands) -> list`` (a simulated host),
    or a mapping ``cmdlet -> list of output objects | exception``: the outputs of every
    command of a call are concatenated, and an exception value is raised instead.
    Set ``fail_transient`` to make the next N calls raise a transient ``BackendError``
    (they are recorded, nothing else happens)."""

    def __init__(
        self,
        results: Mapping[str, Any] | Callable[[str, tuple[Command, ...]], Sequence[Any]] | None = None,
        *,
        fail_transient: int = 0,
    ) -> None:
        self.results = results if results is not None else {}
        self.fail_transient = fail_transient
        self.calls: list[tuple[str, tuple[Command, ...]]] = []

    def run(self, host: str, commands: Sequence[Command]) -> list[Any]:
        cmds = tuple(commands)
        if not cmds or not all(isinstance(c, Command) for c in cmds):
            raise TypeError("RecordingRunner.run needs a non-empty sequence of Command")
        self.calls.append((host, cmds))
        if self.fail_transient > 0:
            self.fail_transient -= 1
            raise BackendError(f"{host}: simulated connection failure", transient=True)
        if callable(self.results):
            return list(self.results(host, cmds))
        out: list[Any] = []
        for c in cmds:
            result = self.results.get(c.cmdlet, ())
            if isinstance(result, BaseException):
                raise result
            out.extend(result)
        return out

    @property
    def commands(self) -> list[Command]:
        """Every command recorded, in order, all calls flattened."""
        return [c for _, cmds in self.calls for c in cmds]

    @property
    def cmdlets(self) -> list[list[str]]:
        """The cmdlet names of each recorded call."""
        return [[c.cmdlet for c in cmds] for _, cmds in self.calls]


def _scrub(text: str, secret: str | None, limit: int = 600) -> str:
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def map_winrm_error(exc: BaseException, host: str, *, secret: str | None = None) -> BackendError:
    """Turn an exception from pypsrp, requests, pyspnego or the socket layer into a
    ``BackendError``: transient for connection failures, timeouts, HTTP 5xx and WSMan
    operation timeouts; permanent for TLS, authentication and everything else.
    ``secret`` (the password) is removed from the message."""
    if isinstance(exc, BackendError):
        return exc
    import requests
    from pypsrp.exceptions import AuthenticationError, WinRMError, WinRMTransportError, WSManFaultError

    try:
        from spnego.exceptions import SpnegoError
    except ImportError:  # pragma: no cover - pyspnego ships with pypsrp
        SpnegoError = ()  # type: ignore[assignment,misc]

    detail = _scrub(f"{type(exc).__name__}: {exc}", secret)
    if isinstance(exc, requests.exceptions.SSLError):
        return BackendError(f"{host}: TLS error (certificate validation?): {detail}")
    if isinstance(exc, requests.exceptions.Timeout):
        return BackendError(f"{host}: WinRM timed out: {detail}", transient=True)
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return BackendError(f"{host}: cannot reach WinRM: {detail}", transient=True)
    if isinstance(exc, requests.exceptions.RequestException):
        return BackendError(f"{host}: WinRM request failed: {detail}")
    if isinstance(exc, AuthenticationError) or isinstance(exc, SpnegoError):
        return BackendError(f"{host}: WinRM authentication failed: {detail}")
    if isinstance(exc, WinRMTransportError):
        code = exc.code if isinstance(exc.code, int) else 0
        return BackendError(f"{host}: WinRM HTTP error: {detail}", transient=code >= 500)
    if isinstance(exc, WSManFaultError):
        return BackendError(f"{host}: WSMan fault: {detail}", transient=exc.code in _TRANSIENT_WSMAN_FAULTS)
    if isinstance(exc, WinRMError):
        return BackendError(f"{host}: WinRM/PSRP error: {detail}")
    if isinstance(exc, TimeoutError | ConnectionError):
        return BackendError(f"{host}: network error: {detail}", transient=True)
    if isinstance(exc, OSError):
        return BackendError(f"{host}: network error: {detail}", transient=True)
    return BackendError(f"{host}: unexpected error from the WinRM client: {detail}")


def _error_record_text(record: Any) -> tuple[str, str]:
    """Return (FullyQualifiedErrorId, message) of a pypsrp ErrorRecord (or look-alike)."""
    fq = getattr(record, "fq_error", None) or ""
    text = ""
    try:
        text = str(record)
    except Exception:  # a half-deserialized record must not hide the error itself
        text = ""
    if not text:
        exc = getattr(record, "exception", None)
        props = getattr(exc, "adapted_properties", None) or {}
        text = str(props.get("Message") or getattr(record, "message", None) or "")
    return str(fq), text or "unknown error"


def powershell_error(host: str, records: Sequence[Any], *, secret: str | None = None) -> PowerShellError:
    """Build the ``PowerShellError`` for a run whose error stream holds ``records``."""
    parts, ids = [], []
    for record in records:
        fq, text = _error_record_text(record)
        ids.append(fq)
        parts.append(f"{fq}: {text}" if fq else text)
    message = "; ".join(parts) or "the pipeline failed without an error record"
    return PowerShellError(f"{host}: PowerShell error: {_scrub(message, secret, 1000)}", error_ids=ids)


def _wire(value: Any) -> Any:
    """Tuples become lists for pypsrp, which only serializes ``list`` as an array."""
    if isinstance(value, tuple):
        return [_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    return value


class PsrpRunner:
    """Runs commands over WinRM with pypsrp: one connection (WSMan + RunspacePool) per call.

    Connecting per call keeps the runner stateless and thread-safe and costs a few
    round trips per operation, which is fine at grant rates. Construction does no I/O.
    ``timeout`` (seconds) bounds the TCP connect and is the WSMan OperationTimeout; each
    HTTP request waits at most ``timeout + 2`` s for an answer. ``command_timeout`` bounds
    the whole invocation (the pipeline is stopped and a transient error raised)."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        port: int = 5986,
        ssl: bool = True,
        cert_validation: bool | str = True,
        auth: str = "negotiate",
        timeout: int = 30,
        command_timeout: int = 300,
        configuration_name: str = "Microsoft.PowerShell",
        no_proxy: bool = False,
    ) -> None:
        if not isinstance(username, str) or not username:
            raise ValueError("username must be a non-empty string")
        if not isinstance(password, str):
            raise ValueError("password must be a string")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("port must be 1-65535")
        if auth not in ("basic", "certificate", "credssp", "kerberos", "negotiate", "ntlm"):
            raise ValueError(f"auth {auth!r} is not supported by pypsrp")
        for label, value in (("timeout", timeout), ("command_timeout", command_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{label} must be a positive number of seconds")
        if not isinstance(configuration_name, str) or not _ENDPOINT_RE.fullmatch(configuration_name):
            raise ValueError("configuration_name must be a session configuration name")
        self.username = username
        self._password = password
        self.port = port
        self.ssl = ssl
        self.cert_validation = cert_validation
        self.auth = auth
        self.timeout = max(1, int(timeout))
        self.command_timeout = float(command_timeout)
        self.configuration_name = configuration_name
        self.no_proxy = no_proxy

    def __repr__(self) -> str:
        return (f"PsrpRunner(username={self.username!r}, port={self.port}, ssl={self.ssl}, "
                f"auth={self.auth!r}, timeout={self.timeout})")

    def run(self, host: str, commands: Sequence[Command]) -> list[Any]:
        cmds = tuple(commands)
        if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
            raise InvalidGrant("target", "must be a host name (letters, digits, '.', '-')")
        if not cmds or not all(isinstance(c, Command) for c in cmds):
            raise BackendError("PsrpRunner.run needs a non-empty sequence of Command")
        wsman = pool = None
        try:
            from pypsrp.powershell import PowerShell, RunspacePool
            from pypsrp.wsman import WSMan

            wsman = WSMan(
                host,
                port=self.port,
                username=self.username,
                password=self._password,
                ssl=self.ssl,
                cert_validation=self.cert_validation,
                auth=self.auth,
                connection_timeout=self.timeout,
                read_timeout=self.timeout + 2,  # WSMan answers within OperationTimeout
                operation_timeout=self.timeout,
                no_proxy=self.no_proxy,
            )
            pool = RunspacePool(wsman, configuration_name=self.configuration_name)
            pool.open()
            ps = PowerShell(pool)
            for c in cmds:
                ps.add_cmdlet(c.cmdlet)
                for name, value in c.parameters:
                    ps.add_parameter(name, _wire(value))
                if not c.pipe:
                    ps.add_statement()
            output = self._invoke(ps, host)
            errors = list(ps.streams.error)
            failed = bool(ps.had_errors) or bool(errors)
        except BackendError:
            raise
        except Exception as exc:
            raise map_winrm_error(exc, host, secret=self._password) from exc
        finally:
            for closeable in (pool, wsman):
                if closeable is not None:
                    try:
                        closeable.close()
                    except Exception:  # closing a broken pool must not mask the result
                        log.debug("closing the WinRM connection to %s failed", host, exc_info=True)
        if failed:
            raise powershell_error(host, errors, secret=self._password)
        return list(output)

    def _invoke(self, ps: Any, host: str) -> list[Any]:
        """``ps.invoke()`` with an overall deadline."""
        from pypsrp.complex_objects import PSInvocationState

        ps.begin_invoke()
        deadline = time.monotonic() + self.command_timeout
        while ps.state == PSInvocationState.RUNNING:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                try:
                    ps.stop()
                except Exception:
                    log.debug("stopping the pipeline on %s failed", host, exc_info=True)
                raise BackendError(
                    f"{host}: PowerShell did not finish within {self.command_timeout:g}s", transient=True
                )
            ps.poll_invoke(timeout=max(1, min(self.timeout, int(remaining))))
        return list(ps.output)


# -- the backend --------------------------------------------------------------------


def jea_command_error(command: Any) -> str | None:
    """Return why ``command`` may not be exposed by a JEA role, or None when it may."""
    if not isinstance(command, str):
        return "must be a string"
    if not _CMDLET_RE.fullmatch(command):
        return ("must be a single Verb-Noun cmdlet name of letters and digits "
                "(no aliases, wildcards, script blocks, spaces or punctuation)")
    if command.split("-", 1)[0].casefold() in _DENIED_VERBS or command.casefold() in _DENIED_CMDLETS:
        return f"{command} is not allowed (it can run arbitrary code or change the elevation itself)"
    return None


def _check_group(value: Any) -> str | None:
    if not isinstance(value, str) or not _GROUP_RE.fullmatch(value):
        return "must be a local group name (letters, digits, spaces and ._-, at most 64)"
    if value != value.strip() or "  " in value or value.strip(".") == "":
        return "must not start or end with a space, repeat spaces, or be only dots"
    return None


def role_errors(params: Any, *, strict: bool = True, commands_required: bool = True) -> list[str]:
    """Return one ``field: reason`` message per problem in a role's Windows params.

    ``strict`` also flags unknown keys (policy checks); operations pass ``strict=False``
    because the reconciler revokes an unbacked artifact with its ``details`` as params.
    Revoke and inspect pass ``commands_required=False``: they never use ``jea_commands``
    (still checked when present)."""
    if not isinstance(params, Mapping):
        return ["params: must be a mapping"]
    has_group, has_role = "local_group" in params, "jea_role" in params
    if has_group and has_role:
        return ["local_group: set either local_group or jea_role, not both"]
    if not has_group and not has_role:
        return ["local_group: required (or jea_role with jea_commands)"]
    errors: list[str] = []
    if strict:
        unknown = sorted(str(k) for k in set(params) - {"local_group", "jea_role", "jea_commands"})
        errors.extend(f"{key}: unknown setting" for key in unknown)
    if has_group:
        if (err := _check_group(params["local_group"])) is not None:
            errors.append(f"local_group: {err}")
        if "jea_commands" in params:
            errors.append("jea_commands: only valid with jea_role")
        return errors
    role = params["jea_role"]
    if not isinstance(role, str) or not _JEA_ROLE_RE.fullmatch(role):
        errors.append("jea_role: must match [A-Za-z][A-Za-z0-9_-]{0,63}")
    commands = params.get("jea_commands")
    if commands is None and not commands_required:
        return errors
    if not isinstance(commands, list | tuple) or not all(isinstance(c, str) for c in commands):
        errors.append("jea_commands: required (a non-empty list of cmdlet names)")
    elif not commands:
        errors.append("jea_commands: must not be empty")
    elif len(commands) > _MAX_JEA_COMMANDS:
        errors.append(f"jea_commands: at most {_MAX_JEA_COMMANDS} cmdlets")
    else:
        errors.extend(
            f"jea_commands[{i}]: {err}" for i, c in enumerate(commands) if (err := jea_command_error(c)) is not None
        )
    return errors


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


# -- parsing what the host returns ---------------------------------------------------


def _normal(definitions: Mapping[str, Sequence[str]]) -> dict[str, frozenset[str]]:
    return {m.casefold(): frozenset(r.casefold() for r in roles) for m, roles in definitions.items() if roles}


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


def _roles_of(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, Mapping) and set(value) <= {"value", "Count"} and "value" in value:
        value = value["value"]  # Windows PowerShell 5.1 sometimes wraps arrays this way
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _parse_definitions(output: Sequence[Any], host: str, endpoint: str) -> dict[str, tuple[str, ...]] | None:
    """Parse the JSON of ``Select-Object Name, RoleDefinitions | ConvertTo-Json``.

    Refuses (``BackendError``) any shape this backend does not write, so that it never
    rewrites an endpoint someone else configured."""
    if not all(isinstance(o, str) for o in output):
        raise BackendError(f"{host}: unexpected output reading endpoint {endpoint}: {list(output)!r}"[:600])
    text = "".join(output).strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BackendError(f"{host}: endpoint {endpoint} role definitions are not JSON: {exc}") from None
    if isinstance(data, list):
        if not data:
            return None
        if len(data) > 1:
            raise BackendError(f"{host}: {len(data)} session configurations are named {endpoint}")
        data = data[0]
    if not isinstance(data, Mapping):
        raise BackendError(f"{host}: unexpected session configuration data for {endpoint}")
    raw = data.get("RoleDefinitions")
    if not isinstance(raw, Mapping):
        raise BackendError(
            f"{host}: session configuration {endpoint} exists without role definitions; "
            "it is not managed by jit-access, refusing to change it"
        )
    definitions: dict[str, tuple[str, ...]] = {}
    for member, value in raw.items():
        caps = None
        if isinstance(value, Mapping) and len(value) == 1:
            (field_name, inner), = value.items()
            if field_name.casefold() == "rolecapabilities":
                caps = _roles_of(inner)
        if caps is None:
            raise BackendError(
                f"{host}: role definition of {member!r} on {endpoint} is not one jit-access writes "
                f"({value!r}); refusing to change the endpoint"[:600]
            )
        definitions[member] = caps
    return definitions


__all__ = [
    "Command",
    "PowerShellError",
    "PsrpRunner",
    "RecordingRunner",
    "Runner",
    "WindowsBackend",
    "jea_command_error",
    "map_winrm_error",
    "powershell_error",
    "role_errors",
]
