"""Linux sudo backend: one sudoers drop-in file per grant, time-boxed by sudo itself.

Each grant becomes ``{sudoers_dir}/jit_g{grant_id}`` holding a comment header and a
single user spec line with NOTBEFORE/NOTAFTER (UTC), LOG_INPUT/LOG_OUTPUT and NOEXEC tags.
Every value is checked against a strict allow-list before anything is written, each
file is checked with ``visudo -cf`` before it is moved into place, and files are read
back (never through a symlink) by ``cvtsudoers -f json``.

Commands must be what they say (issue 15): a sudo rule for a shell, an interpreter, an editor, a
pager, a program that runs other programs or writes any file it is given is root for whoever holds
it (GTFOBins). ``command_error`` refuses those by the executable's basename, refuses a command
without arguments (sudoers(5): no arguments means *any* arguments; ``""`` means none) unless the
role sets ``allow_any_arguments``, and refuses programs a non-root user could replace. The same
check runs in ``jit policy lint`` and before every apply.
"""
from __future__ import annotations

import errno
import fnmatch
import functools
import json
import os
import re
import stat
import subprocess
import tempfile
import time
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
NO_ARGUMENTS = '""'  # sudoers(5): a command followed by "" may only be run without arguments

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


def _names(*names: str) -> tuple[str, ...]:
    """Basename patterns for each program and its versioned or variant names: ``python`` also
    matches ``python3``, ``python3.11``, ``python-3``; ``vim`` also ``vim.basic``, ``vim.tiny``."""
    return tuple(p for n in names for p in (n, f"{n}.*", f"{n}[0-9]*", f"{n}-[0-9]*"))


# The GTFOBins classes (https://gtfobins.github.io/): programs refused whatever their arguments,
# matched on the executable's basename, each with the sentence lint prints.
REFUSED_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("is a shell: it runs any command as root (GTFOBins: shell)",
     _names("sh", "bash", "rbash", "dash", "ash", "zsh", "ksh", "mksh", "pdksh", "csh", "tcsh", "fish", "yash",
            "busybox", "toybox", "elvish", "nu", "xonsh", "pwsh")),
    ("is an interpreter: the code it is given runs any command as root (GTFOBins: shell, file write)",
     _names("python", "pythonw", "pypy", "perl", "ruby", "irb", "node", "nodejs", "deno", "bun", "php", "lua",
            "luajit", "tclsh", "wish", "expect", "guile", "julia", "R", "Rscript", "java", "jjs", "jrunscript",
            "scala", "groovy", "gdb", "awk", "gawk", "mawk", "nawk", "busybox-awk", "bc")
     + ("gawk*",)),
    ("is an editor: it opens a shell (:!sh) and writes any file; grant the file with edit = [...] "
     "(sudoedit) instead (GTFOBins: shell, file write)",
     _names("vi", "vim", "nvim", "gvim", "view", "rvim", "rview", "vimdiff", "ex", "ed", "red", "nano", "rnano",
            "pico", "emacs", "joe", "jed", "mg", "micro", "mcedit", "kak", "editor", "sensible-editor", "vipw",
            "vigr", "crontab")),
    ("is a pager: typing !sh in it opens a shell as root (GTFOBins: shell)",
     _names("less", "more", "most", "pg", "man", "pager", "sensible-pager", "w3m", "lynx", "links")),
    ("runs another command as root, which is then no longer what the rule says (GTFOBins: shell)",
     _names("env", "xargs", "nice", "ionice", "chrt", "taskset", "timeout", "nohup", "stdbuf", "setsid", "time",
            "strace", "ltrace", "chroot", "unshare", "nsenter", "flock", "watch", "script", "screen", "tmux",
            "runuser", "setpriv", "capsh", "start-stop-daemon", "systemd-run", "run-parts", "parallel", "make",
            "ssh", "rlwrap", "socat", "nc", "ncat", "netcat", "openvt", "git")),
    ("runs commands through -exec and writes files through -fprintf (GTFOBins: shell, file write)",
     _names("find", "gfind", "bfs")),
    ("edits files in place (w) and runs commands (e) (GTFOBins: shell, file write)", _names("sed", "gsed")),
    ("writes any file it is given, /etc/sudoers.d and /etc/shadow included (GTFOBins: file write)",
     _names("tee", "cp", "mv", "dd", "install", "rsync", "ln", "link", "truncate", "cpio", "unzip", "curl",
            "wget", "scp", "sftp", "shred", "split", "csplit", "sponge", "openssl")),
    ("is a container runtime: `run -v /:/host` gives root on the host (GTFOBins: shell, file write)",
     _names("docker", "podman", "nerdctl", "ctr", "crictl", "runc", "crun", "lxc", "lxd", "machinectl",
            "systemd-nspawn", "kubectl")),
    ("is sudo itself or changes who is root: it gives a root shell or rewrites sudo's own rules; "
     "grant sudoedit with edit = [...] (GTFOBins: sudo)",
     _names("sudo", "sudoedit", "su", "visudo", "cvtsudoers", "sudoreplay", "pkexec", "doas", "passwd", "chpasswd",
            "gpasswd", "useradd", "usermod", "adduser", "newgrp", "sg", "login")),
    ("installs packages whose maintainer scripts run as root (GTFOBins: shell)",
     _names("apt", "apt-get", "aptitude", "dpkg", "rpm", "yum", "dnf", "zypper", "pacman", "apk", "snap", "pip",
            "pip3", "npm", "gem", "cargo")),
)

# Refused only with any arguments (allow_any_arguments): with fixed arguments they touch the files
# the rule names, with any arguments every file on the host.
ANY_ARGUMENTS_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reads any file it is given (/etc/shadow, private keys) when its arguments are free (GTFOBins: file read)",
     _names("cat", "tac", "head", "tail", "sort", "uniq", "cut", "paste", "nl", "od", "hexdump", "strings",
            "diff", "cmp", "base64", "base32", "xxd", "grep", "egrep", "fgrep", "rg", "file", "tar", "zip",
            "gzip", "zcat", "bzip2", "xz", "ls", "stat")),
    ("changes the mode or owner of any file it is given (/etc/shadow, /etc/sudoers) when its arguments are "
     "free (GTFOBins: file write)",
     _names("chmod", "chown", "chgrp", "chattr", "setfacl", "chcon")),
)

_PERMISSIONS = _names("chmod", "chown", "chgrp", "chattr", "setfacl", "chcon")
# Directories any user can write (or owns a part of) on every host: refused by rule, whatever this
# host's modes say, because the backend may render a rule for another host's files.
_USER_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/home", "/run/user", "/var/mail", "/var/spool", "/var/crash")
# Files sudoedit must never be granted on: editing them decides who is root.
_PROTECTED_FILES = ("/etc/sudoers", "/etc/sudoers.d", "/etc/shadow", "/etc/gshadow", "/etc/passwd", "/etc/group",
                    "/etc/pam.d", "/etc/security", "/etc/ld.so.preload", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
                    "/etc/crontab", "/etc/cron.d", "/etc/systemd", "/etc/profile", "/etc/environment",
                    "/root")
# systemctl: a fixed verb and unit. `edit` opens an editor, `link`/`enable PATH` take unit files
# from anywhere, `set-environment`/`import-environment` change what every service runs with.
SYSTEMCTL_VERBS = frozenset({"start", "stop", "restart", "reload", "try-restart", "reload-or-restart",
                             "try-reload-or-restart", "status", "is-active", "is-failed", "is-enabled", "show",
                             "cat", "enable", "disable"})
_SYSTEMCTL_OPTIONS = frozenset({"--no-pager", "--quiet", "-q", "--no-block", "--full", "-l", "--now"})
_UNIT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._:-]*")
# journalctl: a fixed unit; these read other journals, change the journal or take a file.
_JOURNALCTL_REFUSED = ("-D", "--directory", "--file", "-i", "--root", "--image", "-M", "--machine", "--vacuum",
                       "--rotate", "--flush", "--relinquish-var", "--smart-relinquish-var", "--setup-keys",
                       "--update-catalog", "--sync", "--merge", "-m", "--namespace", "--cursor-file")


def _class_of(name: str, classes: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    for sentence, patterns in classes:
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return sentence
    return None


def _unsafe_dir(path: str) -> str | None:
    """The first directory (or the file) from ``path`` up to / that is not root-owned or that others
    may write, on this host; None when all are safe or do not exist here."""
    for check in dict.fromkeys([path, os.path.realpath(path)]):
        current = check
        while True:
            try:
                st = os.stat(current)
            except FileNotFoundError:
                st = None
            except OSError:
                return current
            if st is not None and (st.st_uid != 0 or st.st_mode & stat.S_IWOTH
                                   or (st.st_mode & stat.S_IWGRP and st.st_gid != 0)):
                return current
            if current == "/":
                break
            current = os.path.dirname(current)
    return None


def path_error(path: str) -> str | None:
    """Why the program or file at ``path`` is one a non-root user could replace, or None."""
    if any(path == d or path.startswith(d + "/") for d in _USER_WRITABLE):
        return (f"{path} is under a directory users can write ({', '.join(_USER_WRITABLE)}): whoever writes "
                "there chooses what runs as root")
    unsafe = _unsafe_dir(path)
    if unsafe is not None:
        return (f"{unsafe} is not root-owned or others can write it: whoever can write there chooses what runs "
                "as root")
    return None


def _syntax_error(command: str) -> str | None:
    if any(ord(c) < 32 or ord(c) == 127 for c in command):
        return "must not contain newlines or control characters"
    tokens = command.split(" ")
    if any(t.upper() == "ALL" for t in tokens):
        return "ALL is not allowed"
    if tokens[1:] == [NO_ARGUMENTS]:
        command = tokens[0]
    for char, reason in _FORBIDDEN:
        if char in command:
            return reason
    if command != command.strip(" ") or "" in tokens:
        return "tokens must be separated by single spaces, without leading or trailing spaces"
    return None


def _path_syntax_error(path: str) -> str | None:
    if not path.startswith("/"):
        return "must be an absolute path followed by optional arguments"
    if ".." in path.split("/"):
        return "must not contain '..' path segments"
    if path.endswith("/"):
        return "must name a file, not a directory"
    if not _PATH_RE.fullmatch(path):
        return "path may only contain letters, digits and ._/+-"
    return None


def _systemd_error(name: str, args: list[str]) -> str | None:
    words = [a for a in args if not a.startswith("-")]
    if name == "systemctl":
        why = ("systemctl needs a fixed sub-command and unit (e.g. `restart nginx`): without them, or with edit, "
               "link or set-environment, it gives root (GTFOBins: systemctl)")
        options = [a for a in args if a.startswith("-")]
        if any(o not in _SYSTEMCTL_OPTIONS for o in options) or len(words) < 2 or words[0] not in SYSTEMCTL_VERBS:
            return why
        if not all(_UNIT_RE.fullmatch(u) for u in words[1:]):
            return why
        return None
    why = ("journalctl needs a fixed unit (-u nginx or --unit=nginx) and no option that reads other journals or "
           "changes the journal (GTFOBins: journalctl)")
    for a in args:
        if any(a == r or a.startswith(r + "=") or (r.startswith("--") and a.startswith(r)) for r in _JOURNALCTL_REFUSED):
            return why
        if len(a) > 2 and a[0] == "-" and a[1] != "-" and a[1] in "DiMm":
            return why  # -Dpath, -ifile: short options with their value attached
    units = [a for i, a in enumerate(args) if a.startswith("--unit=")] + \
            [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-u", "--unit")]
    if not units:
        return why
    return None


def command_error(command: Any, *, any_arguments: bool = False) -> str | None:
    """Return why ``command`` may not go into a sudoers rule, or None when it is safe.

    ``any_arguments`` is the role's ``allow_any_arguments``: a command without arguments then
    means any arguments, as in sudoers; otherwise it must be written with ``""`` for none."""
    if not isinstance(command, str):
        return "must be a string"
    if not command:
        return "must not be empty"
    error = _syntax_error(command)
    if error is not None:
        return error
    tokens = command.split(" ")
    path, args = tokens[0], tokens[1:]
    error = _path_syntax_error(path)
    if error is not None:
        return error
    no_args = args == [NO_ARGUMENTS]
    if no_args:
        args = []
    for arg in args:
        if ".." in arg.split("/"):
            return "must not contain '..' path segments"
        if not _ARG_RE.fullmatch(arg):
            return f"argument {arg!r} may only contain letters, digits and ._/=@:+-"
    name = path.rsplit("/", 1)[-1]
    sentence = _class_of(name, REFUSED_CLASSES)
    if sentence is not None:
        return f"{name} {sentence}"
    if name in ("systemctl", "journalctl"):
        error = _systemd_error(name, args)
        if error is not None:
            return error
    error = path_error(path)
    if error is not None:
        return error
    if not args and not no_args:
        if not any_arguments:
            return (f"has no arguments, which sudo reads as any arguments (sudoers(5)): write its arguments, "
                    f"{path} {NO_ARGUMENTS} for none, or set allow_any_arguments = true in the role")
        sentence = _class_of(name, ANY_ARGUMENTS_CLASSES)
        if sentence is not None:
            return f"{name} {sentence}"
    if any(fnmatch.fnmatchcase(name, p) for p in _PERMISSIONS):
        files = [a for a in args if a.startswith("/")]
        if not files or len(files) != len([a for a in args if not a.startswith("-")]) - 1:
            return (f"{name} changes the mode or owner of the files it is given: name the mode or owner and "
                    "absolute files only, never files relative to the caller's directory (GTFOBins: file write)")
        for f in files:
            if (error := path_error(f)) is not None:
                return error
    return None


def commands_errors(commands: Any, *, any_arguments: bool = False) -> list[str]:
    """Return one message per problem in a role's ``commands`` setting."""
    if not isinstance(commands, (list, tuple)) or not all(isinstance(c, str) for c in commands):
        return ["commands: must be a list of strings"]
    if not commands:
        return ["commands: must not be empty"]
    return [
        f"commands[{i}]: {err}"
        for i, c in enumerate(commands)
        if (err := command_error(c, any_arguments=any_arguments)) is not None
    ]


def edit_error(path: Any) -> str | None:
    """Why ``path`` may not be granted through sudoedit, or None. sudoedit copies the file, runs the
    person's own editor as the person, and copies the result back as root."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty string"
    error = _syntax_error(path)
    if error is not None:
        return error
    if " " in path:
        return "must be one absolute file path, without spaces"
    error = _path_syntax_error(path)
    if error is not None:
        return error.replace(" followed by optional arguments", "")
    if any(path == p or path.startswith(p + "/") for p in _PROTECTED_FILES):
        return f"{path} decides who is root (accounts, sudo, PAM, cron, systemd, the loader): never editable"
    return path_error(path)


def _flag(params: Mapping[str, Any], key: str) -> tuple[bool, str | None]:
    value = params.get(key, False)
    if not isinstance(value, bool):
        return False, f"{key}: must be true or false"
    return value, None


def role_errors(params: Any) -> list[str]:
    """Every problem in a sudo role's settings: ``commands``, ``edit``, ``allow_any_arguments``,
    ``allow_exec`` and ``allow_exec_reason``. Used by lint and before every apply alike."""
    if not isinstance(params, Mapping) or ("commands" not in params and "edit" not in params):
        return ["commands: required (a non-empty list of command strings), or edit (files for sudoedit)"]
    errors = []
    any_arguments, err = _flag(params, "allow_any_arguments")
    errors += [err] if err else []
    allow_exec, err = _flag(params, "allow_exec")
    errors += [err] if err else []
    reason = params.get("allow_exec_reason")
    if allow_exec and (not isinstance(reason, str) or len(reason.strip()) < 10):
        errors.append("allow_exec_reason: required with allow_exec = true (why this role's commands must run "
                      "other programs, at least 10 characters)")
    elif reason is not None and not allow_exec:
        errors.append("allow_exec_reason: only valid with allow_exec = true")
    if "commands" in params:
        errors += commands_errors(params["commands"], any_arguments=any_arguments)
    elif any_arguments:
        errors.append("allow_any_arguments: only valid with commands")
    if "hosts" in params:
        hosts = params["hosts"]
        if (not isinstance(hosts, (list, tuple)) or not hosts
                or not all(isinstance(h, str) and _TARGET_RE.fullmatch(h) for h in hosts)):
            errors.append("hosts: must be a non-empty list of host names (letters, digits, '.', '-')")
    if "edit" in params:
        files = params["edit"]
        if not isinstance(files, (list, tuple)) or not files or not all(isinstance(f, str) for f in files):
            errors.append("edit: must be a non-empty list of absolute file paths")
        else:
            errors += [f"edit[{i}]: {e}" for i, f in enumerate(files) if (e := edit_error(f)) is not None]
    return errors


def role_warnings(params: Any) -> list[str]:
    """What a valid sudo role opts out of, for lint to report (these do not fail it)."""
    if not isinstance(params, Mapping):
        return []
    out = []
    if params.get("allow_any_arguments") is True:
        out.append("allow_any_arguments: commands without arguments take any arguments")
    if params.get("allow_exec") is True:
        out.append(f"allow_exec: no NOEXEC, its commands may run other programs as root "
                   f"({params.get('allow_exec_reason')})")
    return out


_RECHECK_S = 30  # a role's commands are checked again at least this often (the files they name can change)


def _hashable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("__list__", tuple(_hashable(v) for v in value))
    hash(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple) and value[:1] == ("__list__",):
        return [_plain(v) for v in value[1]]
    if isinstance(value, tuple):
        return {k: _plain(v) for k, v in value}
    return value


@functools.lru_cache(maxsize=256)
def _entries_cached(key: Any, _bucket: int) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """``SudoBackend._entries`` of the role ``key`` stands for, kept for ``_RECHECK_S``: a burst of
    grants of one role checks its commands (and the files they name) once."""
    commands, edits, noexec = _entries(_plain(key))
    return tuple(commands), tuple(edits), noexec


def _entries(params: Any) -> tuple[list[str], list[str], bool]:
    """The role's commands as sudoers writes them, its sudoedit files, and NOEXEC; raises
    ``InvalidGrant`` with the first of ``role_errors``."""
    errors = role_errors(params)
    if errors:
        field_name, _, reason = errors[0].partition(": ")
        raise InvalidGrant(field_name, reason)
    commands = [" ".join([c.split(" ")[0], *(a if a == NO_ARGUMENTS else _escape_arg(a)
                                             for a in c.split(" ")[1:])])
                for c in params.get("commands", ())]
    return commands, list(params.get("edit", ())), not params.get("allow_exec", False)


def _escape_arg(token: str) -> str:
    """Escape the characters sudoers treats specially inside command arguments."""
    return token.replace(":", "\\:").replace("=", "\\=")


def _kind(mode: int) -> str:
    return "a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else \
        "not a regular file"


def _not_a_drop_in(path: Path, mode: int) -> Artifact:
    """A name like a drop-in that is no regular file: reported as drift (no grant backs it, and its
    empty person makes ``revoke`` refuse it, so reconcile --fix never touches what it points at)."""
    return Artifact(ref=f"{path} ({_kind(mode)}: not followed)", grant_id=None, person="",
                    details={"problem": f"{_kind(mode)} named like a drop-in: not followed, remove it by hand"})


def _sudo_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime(_TIME_FMT)


def _parse_sudo_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise BackendError(f"unexpected sudoers time value {value!r}")
    try:
        return datetime.strptime(value, _TIME_FMT).replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise BackendError(f"unexpected sudoers time value {value!r}") from exc


def rule_of(grant: GrantSpec) -> tuple[list[str], list[str], bool, list[str]]:
    """Every field of ``grant`` checked (``InvalidGrant`` naming the first bad one), and the
    rule it becomes: commands as sudoers writes them, sudoedit files, NOEXEC, hosts. The drop-in
    and the sudoRole entry (``integrations.ldap.sudoers``) are both written from this."""
    if isinstance(grant.grant_id, bool) or not isinstance(grant.grant_id, int) or grant.grant_id < 0:
        raise InvalidGrant("grant_id", "must be a non-negative integer")
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
    commands, edits, noexec = SudoBackend._entries(grant.params)
    return commands, edits, noexec, hosts_of(grant)


def hosts_of(grant: GrantSpec) -> list[str]:
    """The hosts a grant's rule is for: its target's hosts where the policy lists them, else the
    target itself; never ALL. Written in lower case: sudo matches host names without regard to
    case, and a lower-case name can never be read as the keyword ALL or as an alias name. A
    name with a dot is matched against the host's fully qualified name, one without against its
    short name (sudoers(5), with or without ``fqdn``)."""
    hosts = grant.params.get("hosts") if isinstance(grant.params, Mapping) else None
    hosts = list(hosts) if hosts else [grant.target]
    for host in hosts:
        if not isinstance(host, str) or not _TARGET_RE.fullmatch(host):
            raise InvalidGrant("hosts", f"{str(host)[:80]!r} is not a host name (letters, digits, '.', '-')")
    return list(dict.fromkeys(h.lower() for h in hosts))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class SudoRules:
    """What every backend that writes sudo rules shares (drop-ins here, sudoRole entries, a host's
    agent): one check of a role's settings, one description of a grant's rule, an artifact per grant."""

    def validate_role(self, params: Mapping[str, Any]) -> list[str]:
        """Return one message per problem in a role's settings (``role_errors``): the same commands
        are safe or not wherever the rule lives."""
        return role_errors(params)

    def role_warnings(self, params: Mapping[str, Any]) -> list[str]:
        """What a valid role opts out of (``allow_any_arguments``, ``allow_exec``), for lint to report."""
        return role_warnings(params)

    def describe(self, grant: GrantSpec) -> dict[str, Any]:
        """What ``apply`` writes for ``grant``, for its audit event; ``{"invalid": reason}`` when refused."""
        try:
            commands, edits, noexec, hosts = rule_of(grant)
        except InvalidGrant as exc:
            return {"invalid": str(exc)}
        return {"commands": commands, "edit": edits, "noexec": noexec, "hosts": hosts}

    def shared_key(self, grant: GrantSpec) -> str | None:
        """Every grant has an artifact of its own."""
        return None


class SudoBackend(SudoRules):
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

    def describe(self, grant: GrantSpec) -> dict[str, Any]:
        """What ``apply`` writes for ``grant``, for its audit event: the commands as rendered, the
        files granted through sudoedit, and whether NOEXEC is set; ``{"invalid": reason}`` when the
        role would be refused. Never raises; no I/O beyond the checks of the programs' directories."""
        try:
            commands, edits, noexec = self._entries(grant.params)
        except InvalidGrant as exc:
            return {"invalid": str(exc)}
        return {"commands": commands, "edit": edits, "noexec": noexec}

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
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"cannot stat {path}: {exc}", transient=True) from exc
        if not stat.S_ISREG(st.st_mode):
            raise BackendError(f"{path} is {_kind(st.st_mode)}, not a drop-in: not followed")
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
            if not match:
                continue
            path = self.sudoers_dir / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise BackendError(f"cannot stat {path}: {exc}", transient=True) from exc
            if stat.S_ISREG(st.st_mode):
                found.append(self._read(path, int(match.group(1))))
            else:
                found.append(_not_a_drop_in(path, st.st_mode))
        return sorted(found, key=lambda a: a.grant_id or 0)

    # -- helpers -----------------------------------------------------------

    def _path(self, grant_id: Any) -> Path:
        if isinstance(grant_id, bool) or not isinstance(grant_id, int) or grant_id < 0:
            raise InvalidGrant("grant_id", "must be a non-negative integer")
        return self.sudoers_dir / f"jit_g{grant_id}"

    def _render(self, grant: GrantSpec) -> str:
        """Validate every field of ``grant`` and return the drop-in's text."""
        self._path(grant.grant_id)
        commands, edits, noexec, hosts = rule_of(grant)
        cmnds = ", ".join([*commands, *(f"sudoedit {f}" for f in edits)])
        header = (
            f"{_HEADER_PREFIX} grant_id={grant.grant_id} request_id={grant.request_id} "
            f"person={grant.person} target={grant.target} role={grant.role}\n"
            "# Managed by jit-access: do not edit; removed when the grant ends.\n"
        )
        where = hosts[0]
        if len(hosts) > 1:
            where = f"JIT_G{grant.grant_id}_HOSTS"
            header += f"Host_Alias {where} = {', '.join(hosts)}\n"
        spec = (
            f"{grant.person} {where} = ({self.runas}) "
            f"NOTBEFORE={_sudo_time(grant.starts_at)} NOTAFTER={_sudo_time(grant.expires_at)} "
            f"LOG_INPUT: LOG_OUTPUT: {'NOEXEC' if noexec else 'EXEC'}: {cmnds}\n"
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

    @staticmethod
    def _entries(params: Any) -> tuple[list[str], list[str], bool]:
        """The role's commands as sudoers writes them, its sudoedit files, and NOEXEC (checked,
        cached for ``_RECHECK_S``); raises ``InvalidGrant`` with the first of ``role_errors``."""
        try:
            key = _hashable(params)
        except TypeError:
            return _entries(params)
        commands, edits, noexec = _entries_cached(key, int(time.monotonic() // _RECHECK_S))
        return list(commands), list(edits), noexec

    def _run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT)
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
        # O_NOFOLLOW and a regular-file check on the open descriptor, and cvtsudoers reads what was
        # read here from its stdin: a symlink named like a drop-in (to /etc/shadow) is never followed.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise BackendError(f"{path} vanished while being read", transient=True) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BackendError(f"{path} is a symbolic link, not a drop-in: not followed") from exc
            raise BackendError(f"cannot read {path}: {exc}", transient=True) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BackendError(f"{path} is {_kind(st.st_mode)}, not a drop-in: not followed")
            with os.fdopen(fd, "rb") as fh:
                fd = -1
                text = fh.read(1 << 20).decode("ascii", errors="replace")
        except OSError as exc:
            raise BackendError(f"cannot read {path}: {exc}", transient=True) from exc
        finally:
            if fd >= 0:
                os.close(fd)
        header: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith(_HEADER_PREFIX):
                header = dict(
                    kv.split("=", 1) for kv in line[len(_HEADER_PREFIX):].split() if "=" in kv
                )
                break
        result = self._run([self.cvtsudoers, "-f", "json"], stdin=text)
        if result.returncode != 0:
            msg = (result.stderr or result.stdout).strip()
            raise BackendError(f"cvtsudoers cannot parse {path}: {msg}")
        try:
            parsed = json.loads(result.stdout)
            specs = parsed["User_Specs"]
            users = [u["username"] for s in specs for u in s["User_List"]]
            cmnd_specs = [c for s in specs for c in s["Cmnd_Specs"]]
            aliases = parsed.get("Host_Aliases", {})
            hosts = [h.get("hostname") or "ALL" for s in specs for entry in s.get("Host_List", [])
                     for h in (aliases.get(entry["hostalias"], [{}]) if "hostalias" in entry else [entry])]
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
                "hosts": hosts,
                "commands": commands,
                "runas": runas,
                "log_input": bool(options.get("log_input", False)),
                "log_output": bool(options.get("log_output", False)),
                "noexec": bool(options.get("noexec", False)),
            },
        )
