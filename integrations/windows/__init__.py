"""Windows backend: temporary local group membership, or a JEA role, over WinRM/PSRP.

The package's modules:

``backend``
    ``WindowsBackend``: apply, revoke, inspect and list local group memberships and
    JEA role mappings (its docstring describes the commands sent per operation).
``powershell``
    ``Command`` (a cmdlet call as data, never script text), the ``Runner`` protocol,
    ``PsrpRunner`` (pypsrp) and ``RecordingRunner`` (the test double), and the mapping
    of pypsrp / requests / socket errors to ``BackendError``.
``jea``
    Where the JEA files live on the host, and parsing the role definitions read back.
``validation``
    The allow-lists every value is checked against, ``role_errors`` and
    ``jea_command_error``.

Every name below stays importable from ``integrations.windows``.
"""
from __future__ import annotations

from integrations.windows.backend import WindowsBackend
from integrations.windows.jea import (
    JEA_MANIFEST,
    JEA_MODULE,
    JEA_MODULE_DIR,
    JEA_ROLE_DIR,
    JEA_TRANSCRIPT_DIR,
)
from integrations.windows.powershell import (
    Command,
    PowerShellError,
    PsrpRunner,
    RecordingRunner,
    Runner,
    log,
    map_winrm_error,
    powershell_error,
)
from integrations.windows.validation import jea_command_error, role_errors

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
