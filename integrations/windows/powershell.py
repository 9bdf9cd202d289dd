"""PowerShell commands as data, the runners that send them, and their errors.

Every PowerShell command is built from a cmdlet name and named parameters
(:class:`Command`), sent with pypsrp's ``add_cmdlet``/``add_parameter``: values travel
as serialized data (CLIXML strings, arrays, hashtables) and are never parsed as
script. ``Runner`` is what the backend needs; ``PsrpRunner`` runs commands over
WinRM with pypsrp, ``RecordingRunner`` is the test double. ``map_winrm_error`` and
``powershell_error`` turn what pypsrp, requests, pyspnego and the socket layer raise
or report into ``BackendError``: nothing from them leaves this package.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from integrations.base import BackendError, InvalidGrant
from integrations.windows.validation import _CMDLET_RE, _ENDPOINT_RE, _HOST_RE, _PARAM_NAME_RE

log = logging.getLogger("integrations.windows")

_MAX_VALUE_DEPTH = 4
_MAX_STRING = 1024

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
