"""A ServiceNow REST Table API simulator; see ``simulator``."""
from __future__ import annotations

from integrations.servicenow.simulator.simulator import (  # noqa: F401
    ACCESS_TOKEN_TTL,
    Faults,
    JOURNAL_FIELDS,
    REFRESH_TOKEN_TTL,
    _Request,
    Simulator,
    SimulatorOptions,
    SYS_FIELDS,
    TABLES,
    TableSchema,
)
