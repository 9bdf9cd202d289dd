"""Windows backend (local group membership or a JEA role over WinRM/PSRP); see ``backend``."""
from __future__ import annotations

from integrations.windows.backend import (  # noqa: F401
    Command,
    jea_command_error,
    JEA_MANIFEST,
    JEA_MODULE,
    JEA_MODULE_DIR,
    JEA_ROLE_DIR,
    JEA_TRANSCRIPT_DIR,
    log,
    map_winrm_error,
    powershell_error,
    PowerShellError,
    PsrpRunner,
    RecordingRunner,
    role_errors,
    Runner,
    WindowsBackend,
)
from integrations.windows.backend import __all__  # noqa: F401
