"""JEA on the host: where the role capability and session configuration files live,
and reading back the role definitions ``Get-PSSessionConfiguration`` reports.

The paths are constants, never user input. ``_parse_definitions`` refuses any shape
the backend does not write itself, so it never rewrites an endpoint someone else
configured.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from integrations.base import BackendError

# -- where JEA files live on the host (constants, never user input) ------------

JEA_MODULE = "JIT"
JEA_MODULE_DIR = "C:\\Program Files\\WindowsPowerShell\\Modules\\" + JEA_MODULE
JEA_ROLE_DIR = JEA_MODULE_DIR + "\\RoleCapabilities"
JEA_MANIFEST = JEA_MODULE_DIR + "\\" + JEA_MODULE + ".psd1"
JEA_TRANSCRIPT_DIR = "C:\\ProgramData\\JIT\\Transcripts"


def _normal(definitions: Mapping[str, Sequence[str]]) -> dict[str, frozenset[str]]:
    return {m.casefold(): frozenset(r.casefold() for r in roles) for m, roles in definitions.items() if roles}


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
