"""Allow-lists for every value the Windows backend sends to a host, and role checks.

Host names, person, domain, group, JEA role, cmdlet, endpoint and parameter names are
matched against strict patterns before any command is built, so a refused grant sends
nothing. ``role_errors`` checks a role's ``params``; ``jea_command_error`` refuses
cmdlets a JEA role may never expose.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from policies.names import TARGET

# -- allow-lists ---------------------------------------------------------------

_HOST_RE = re.compile(TARGET)
_PERSON_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9.-]{1,64}")
_GROUP_RE = re.compile(r"[A-Za-z0-9 ._-]{1,64}")
_JEA_ROLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_CMDLET_RE = re.compile(r"[A-Za-z]+-[A-Za-z0-9]+")
_ENDPOINT_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
_PARAM_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
_PROTECTED_RE = re.compile(r"(?:[A-Za-z0-9.-]{1,64}\\)?[A-Za-z0-9 ._-]{1,64}")

_MAX_JEA_COMMANDS = 100

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
