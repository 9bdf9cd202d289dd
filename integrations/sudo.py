"""Linux sudo backend: one sudoers drop-in file per grant, time-boxed by sudo itself.

Each grant becomes ``{sudoers_dir}/jit_g{grant_id}`` holding a comment header and a
single user spec line with NOTBEFORE/NOTAFTER (UTC) and LOG_INPUT/LOG_OUTPUT tags.
Every value is checked against a strict allow-list before anything is written, each
file is checked with ``visudo -cf`` before it is moved into place, and files are read
back through ``cvtsudoers -f json``.
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from integrations.base import Artifact, BackendError, GrantSpec, InvalidGrant
from policies.names import NAME, PERSON, TARGET  # the product's identifier patterns, once

_USER_RE = re.compile(PERSON)
_ROLE_RE = re.compile(NAME)
_TARGET_RE = re.compile(TARGET)
_PATH_RE = re.compile(r"/[A-Za-z0-9._/+-]+")
_ARG_RE = re.compile(r"[A-Za-z0-9._/=@:+-]+")
_FILE_RE = re.compile(r"jit_g(\d+)")
_HEADER_PREFIX = "# jit-access grant:"
_TIME_FMT = "%Y%m%d%H%M%SZ"
_TIMEOUT = 30
_WRITERS = 8  # threads writing a batch's temporary files

# Characters refused in a command, with the reason given for each.
_FORBIDDEN = (
    (",", "must not contain ',' (one command per entry)"),
    ("\\", "must not contain a backslash"),
    ("!", "must not contain '!' (negation)"),
    ("#", "must not contain '#'"),
    ("%", "must not contain '%'"),
    ('"', "must not contain quotes"),
    ("'", "must not contain quotes"),
    ("`", "must not contain quotes"),
    ("*", "must not contain wildcards (*?[])"),
    ("?", "must not contain wildcards (*?[])"),
    ("[", "must not contain wildcards (*?[])"),
    ("]", "must not contain wildcards (*?[])"),
)


def command_error(command: Any) -> str | None:
    """Return why ``command`` may not go into a sudoers file, or None when it is safe."""
    if not isinstance(command, str):
        return "must be a string"
    if not command:
        return "must not be empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in command):
        return "must not contain newlines or control characters"
    tokens = command.split(" ")
    if any(t.upper() == "ALL" for t in tokens):
        return "ALL is not allowed"
    for char, reason in _FORBIDDEN:
        if char in command:
            return reason
    if command != command.strip(" ") or "" in tokens:
        return "tokens must be separated by single spaces, without leading or trailing spaces"
    path, args = tokens[0], tokens[1:]
    if not path.startswith("/"):
        return "must be an absolute path followed by optional arguments"
    if ".." in path.split("/"):
        return "must not contain '..' path segments"
    if path.endswith("/"):
        return "must name a file, not a directory"
    if not _PATH_RE.fullmatch(path):
        return "path may only contain letters, digits and ._/+-"
    for arg in args:
        if ".." in arg.split("/"):
            return "must not contain '..' path segments"
        if not _ARG_RE.fullmatch(arg):
            return f"argument {arg!r} may only contain letters, digits and ._/=@:+-"
    return None


def commands_errors(commands: Any) -> list[str]:
    """Return one message per problem in a role's ``commands`` setting."""
    if not isinstance(commands, (list, tuple)) or not all(isinstance(c, str) for c in commands):
        return ["commands: must be a list of strings"]
    if not commands:
        return ["commands: must not be empty"]
    return [
        f"commands[{i}]: {err}"
        for i, c in enumerate(commands)
        if (err := command_error(c)) is not None
    ]


@functools.lru_cache(maxsize=256)
def _command_list(commands: tuple[str, ...]) -> str:
    """A role's commands, checked (``InvalidGrant`` for the first problem), as the command list of
    a sudoers line. Cached: a burst of grants of one role checks its commands once."""
    errors = commands_errors(commands)
    if errors:
        field_name, _, reason = errors[0].partition(": ")
        raise InvalidGrant(field_name, reason)
    return ", ".join(" ".join([c.split(" ")[0], *(_escape_arg(a) for a in c.split(" ")[1:])]) for c in commands)


def _escape_arg(token: str) -> str:
    """Escape the characters sudoers treats specially inside command arguments."""
    return token.replace(":", "\\:").replace("=", "\\=")


def _sudo_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime(_TIME_FMT)


def _parse_sudo_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise BackendError(f"unexpected sudoers time value {value!r}")
    try:
        return datetime.strptime(value, _TIME_FMT).replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise BackendError(f"unexpected sudoers time value {value!r}") from exc


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class SudoBackend:
    """Grants sudo rights through time-boxed drop-in files in ``sudoers_dir``."""

    name = "sudo"

    def __init__(
        self,
        sudoers_dir: str | Path,
        *,
        visudo: str = "visudo",
        cvtsudoers: str = "cvtsudoers",
        timestamp_dir: str | Path | None = None,
        runas: str = "root",
    ) -> None:
        """Check the settings (raises ``ValueError``); touches no file."""
        if not str(sudoers_dir):
            raise ValueError("sudoers_dir must not be empty")
        if not visudo or not cvtsudoers:
            raise ValueError("visudo and cvtsudoers must name executables")
        if not isinstance(runas, str) or not _USER_RE.fullmatch(runas):
            raise ValueError(f"runas {runas!r} is not a valid user name")
        if timestamp_dir is not None and not str(timestamp_dir):
            raise ValueError("timestamp_dir must not be empty")
        self.sudoers_dir = Path(os.path.abspath(sudoers_dir))
        self.visudo = visudo
        self.cvtsudoers = cvtsudoers
        self.timestamp_dir = Path(os.path.abspath(timestamp_dir)) if timestamp_dir else None
        self.runas = runas

    # -- Backend protocol --------------------------------------------------

    def validate_role(self, params: Mapping[str, Any]) -> list[str]:
        """Return one message per problem in a role's ``commands`` setting."""
        if not isinstance(params, Mapping) or "commands" not in params:
            return ["commands: required (a non-empty list of command strings)"]
        return commands_errors(params["commands"])

    def shared_key(self, grant: GrantSpec) -> str | None:
        """Every grant has an artifact of its own."""
        return None

    def apply(self, grant: GrantSpec) -> str:
        """Write (or rewrite) the grant's drop-in after ``visudo -cf``; return its path."""
        content = self._render(grant)
        final = self._path(grant.grant_id)
        tmp: str | None = None
        try:
            tmp = self._write_temporary(grant.grant_id, content)
            error = self._check(tmp)
            if error is not None:
                raise BackendError(f"visudo rejected the sudoers file for grant {grant.grant_id}: {error}")
            os.replace(tmp, final)
            tmp = None
            self._fsync_dir()
        except OSError as exc:
            raise BackendError(f"cannot write {final}: {exc}", transient=True) from exc
        finally:
            if tmp is not None:
                _unlink_quietly(tmp)
        return str(final)

    def apply_many(self, grants: Sequence[GrantSpec]) -> list[str | BackendError]:
        """``apply()`` for many grants: per grant, in order, its drop-in's path or the error
        ``apply()`` would have raised for it (``InvalidGrant`` included).

        Each drop-in is validated, written to its temporary name and synced as by ``apply()``; then
        one ``visudo -cf`` checks them all, through a temporary file that ``#include``s each (~30 ms
        for a thousand, against ~2.5 ms for a run per file); the valid ones are renamed into place
        and the directory is synced once. A rendered drop-in holds one user spec and no alias or
        Defaults, so it parses among the others exactly when it parses alone; when the check
        fails, each file is checked again alone, so only the bad ones fail, with ``apply()``'s
        message. Raises nothing itself: an error that stops the whole check (visudo missing or
        timed out) is every grant's answer."""
        results: list[str | BackendError | None] = [None] * len(grants)
        rendered = []
        for i, grant in enumerate(grants):
            try:
                rendered.append((i, grant, self._render(grant)))
            except InvalidGrant as exc:
                results[i] = exc
        left: dict[str, tuple[int, GrantSpec]] = {}  # temporary files not (yet) renamed into place
        try:
            files = self._write_all([(grant.grant_id, text) for _, grant, text in rendered])
            for (i, grant, _), tmp in zip(rendered, files):
                if isinstance(tmp, OSError):
                    results[i] = self._write_error(grant, tmp)
                else:
                    left[tmp] = (i, grant)
            try:
                rejected = self._check_many(list(left))
            except (BackendError, OSError) as exc:  # no check could run: every file's answer
                for i, grant in left.values():
                    results[i] = exc if isinstance(exc, BackendError) else self._write_error(grant, exc)
                return results  # type: ignore[return-value]  (every entry is set)
            placed = []
            for tmp, (i, grant) in list(left.items()):
                if tmp in rejected:
                    results[i] = BackendError(f"visudo rejected the sudoers file for grant {grant.grant_id}: "
                                              f"{rejected[tmp]}")
                    continue
                try:
                    os.replace(tmp, self._path(grant.grant_id))
                except OSError as exc:
                    results[i] = self._write_error(grant, exc)
                    continue
                del left[tmp]
                results[i] = str(self._path(grant.grant_id))
                placed.append(i)
            try:
                self._fsync_dir()
            except OSError as exc:  # the renames may not last: an error to retry for each, as in apply()
                for i in placed:
                    results[i] = self._write_error(grants[i], exc)
        finally:
            for tmp in left:
                _unlink_quietly(tmp)
        return results  # type: ignore[return-value]  (every entry is set)

    def revoke(self, grant: GrantSpec) -> None:
        """Remove the drop-in and the person's cached sudo credentials; missing is fine."""
        path = self._path(grant.grant_id)
        if not isinstance(grant.person, str) or not _USER_RE.fullmatch(grant.person):
            raise InvalidGrant("person", "must be a lowercase user name ([a-z_][a-z0-9_-]{0,31})")
        targets = [path]
        if self.timestamp_dir is not None:
            targets.append(self.timestamp_dir / grant.person)
        for target in targets:
            try:
                os.unlink(target)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise BackendError(f"cannot remove {target}: {exc}", transient=True) from exc
        try:
            self._fsync_dir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BackendError(f"cannot sync {self.sudoers_dir}: {exc}", transient=True) from exc

    def inspect(self, grant: GrantSpec) -> Artifact | None:
        """Return the grant's drop-in as read by ``cvtsudoers``, or None when absent."""
        path = self._path(grant.grant_id)
        try:
            if not path.is_file():
                return None
        except OSError as exc:
            raise BackendError(f"cannot stat {path}: {exc}", transient=True) from exc
        return self._read(path, grant.grant_id)

    def list_managed(self) -> list[Artifact]:
        """Return every ``jit_g<N>`` drop-in in ``sudoers_dir`` (none when it is missing)."""
        try:
            names = sorted(os.listdir(self.sudoers_dir))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendError(f"cannot list {self.sudoers_dir}: {exc}", transient=True) from exc
        found = []
        for name in names:
            match = _FILE_RE.fullmatch(name)
            if match and (self.sudoers_dir / name).is_file():
                found.append(self._read(self.sudoers_dir / name, int(match.group(1))))
        return sorted(found, key=lambda a: a.grant_id or 0)

    # -- helpers -----------------------------------------------------------

    def _path(self, grant_id: Any) -> Path:
        if isinstance(grant_id, bool) or not isinstance(grant_id, int) or grant_id < 0:
            raise InvalidGrant("grant_id", "must be a non-negative integer")
        return self.sudoers_dir / f"jit_g{grant_id}"

    def _render(self, grant: GrantSpec) -> str:
        """Validate every field of ``grant`` and return the drop-in's text."""
        self._path(grant.grant_id)
        rid = grant.request_id
        if isinstance(rid, bool) or not isinstance(rid, int) or rid < 0:
            raise InvalidGrant("request_id", "must be a non-negative integer")
        checks = (
            ("person", grant.person, _USER_RE, "must be a lowercase user name ([a-z_][a-z0-9_-]{0,31})"),
            ("role", grant.role, _ROLE_RE, "must match [a-z][a-z0-9-]{0,62}"),
            ("target", grant.target, _TARGET_RE, "must be a host name (letters, digits, '.', '-')"),
        )
        for field_name, value, pattern, reason in checks:
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise InvalidGrant(field_name, reason)
        grant.check_window()
        commands = grant.params.get("commands") if isinstance(grant.params, Mapping) else None
        if isinstance(commands, (list, tuple)) and all(isinstance(c, str) for c in commands):
            cmnds = _command_list(tuple(commands))
        else:
            _command_list.__wrapped__(commands)  # raises the InvalidGrant that says what is wrong
        header = (
            f"{_HEADER_PREFIX} grant_id={grant.grant_id} request_id={rid} "
            f"person={grant.person} target={grant.target} role={grant.role}\n"
            "# Managed by jit-access: do not edit; removed when the grant ends.\n"
        )
        spec = (
            f"{grant.person} ALL = ({self.runas}) "
            f"NOTBEFORE={_sudo_time(grant.starts_at)} NOTAFTER={_sudo_time(grant.expires_at)} "
            f"LOG_INPUT: LOG_OUTPUT: {cmnds}\n"
        )
        return header + spec

    def _write_temporary(self, grant_id: int, content: str) -> str:
        """The drop-in's text in a new temporary file beside it (a name sudo's ``#includedir``
        skips), synced, mode 0440; its path. Raises ``OSError``, leaving no file behind."""
        fd, tmp = tempfile.mkstemp(prefix=f".jit_g{grant_id}.tmp-", dir=self.sudoers_dir)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
                os.fchmod(fh.fileno(), 0o440)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _write_all(self, files: list[tuple[int, str]]) -> list[str | OSError]:
        """``_write_temporary`` for each ``(grant_id, content)``: per file its path or the OSError,
        in threads when there are several, so their fsyncs overlap (each mostly waits on the disk)."""
        def write(item: tuple[int, str]) -> str | OSError:
            try:
                return self._write_temporary(*item)
            except OSError as exc:
                return exc
        if len(files) < 2:
            return [write(item) for item in files]
        with ThreadPoolExecutor(min(_WRITERS, len(files))) as pool:
            return list(pool.map(write, files))

    def _write_error(self, grant: GrantSpec, exc: OSError) -> BackendError:
        return BackendError(f"cannot write {self._path(grant.grant_id)}: {exc}", transient=True)

    def _check(self, path: str) -> str | None:
        """``visudo -cf path``: None when the file parses, else visudo's message."""
        result = self._run([self.visudo, "-cf", path])
        return None if result.returncode == 0 else (result.stderr or result.stdout).strip()

    def _check_many(self, paths: list[str]) -> dict[str, str]:
        """The files of ``paths`` visudo rejects, each with its message: one run over a file
        including them all, and a run per file only when that one fails (or a path cannot be
        written in an include line). Raises ``OSError`` (the listing cannot be written), or
        ``BackendError`` when visudo cannot run."""
        if len(paths) > 1 and all(_PATH_RE.fullmatch(p) for p in paths):  # no space, quote or %h in a path
            fd, listing = tempfile.mkstemp(prefix=".jit_batch.tmp-", dir=self.sudoers_dir)
            try:
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    fh.write("".join(f"#include {p}\n" for p in paths))
                if self._check(listing) is None:
                    return {}
            finally:
                _unlink_quietly(listing)
        return {p: error for p in paths if (error := self._check(p)) is not None}

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT)
        except FileNotFoundError as exc:
            raise BackendError(f"{argv[0]} not found: is sudo installed and on PATH?") from exc
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"{argv[0]} timed out after {_TIMEOUT}s", transient=True) from exc
        except OSError as exc:
            raise BackendError(f"cannot run {argv[0]}: {exc}") from exc

    def _fsync_dir(self) -> None:
        fd = os.open(self.sudoers_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read(self, path: Path, grant_id: int) -> Artifact:
        """Parse one drop-in through ``cvtsudoers -f json`` plus its comment header."""
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError as exc:
            raise BackendError(f"{path} vanished while being read", transient=True) from exc
        except OSError as exc:
            raise BackendError(f"cannot read {path}: {exc}", transient=True) from exc
        header: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith(_HEADER_PREFIX):
                header = dict(
                    kv.split("=", 1) for kv in line[len(_HEADER_PREFIX):].split() if "=" in kv
                )
                break
        result = self._run([self.cvtsudoers, "-f", "json", str(path)])
        if result.returncode != 0:
            msg = (result.stderr or result.stdout).strip()
            raise BackendError(f"cvtsudoers cannot parse {path}: {msg}")
        try:
            specs = json.loads(result.stdout)["User_Specs"]
            users = [u["username"] for s in specs for u in s["User_List"]]
            cmnd_specs = [c for s in specs for c in s["Cmnd_Specs"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"unexpected cvtsudoers output for {path}: {exc}") from exc
        if len(users) != 1 or not cmnd_specs:
            raise BackendError(f"{path} does not hold exactly one user spec")
        options: dict[str, Any] = {}
        commands: list[str] = []
        runas: str | None = None
        for cs in cmnd_specs:
            for opt in cs.get("Options", []):
                options.update(opt)
            commands.extend(c["command"] for c in cs.get("Commands", []) if "command" in c)
            if runas is None and cs.get("runasusers"):
                runas = cs["runasusers"][0].get("username")
        return Artifact(
            ref=str(path),
            grant_id=grant_id,
            person=users[0],
            target=header.get("target"),
            role=header.get("role"),
            not_before=_parse_sudo_time(options["notbefore"]) if "notbefore" in options else None,
            not_after=_parse_sudo_time(options["notafter"]) if "notafter" in options else None,
            details={
                "commands": commands,
                "runas": runas,
                "log_input": bool(options.get("log_input", False)),
                "log_output": bool(options.get("log_output", False)),
            },
        )
