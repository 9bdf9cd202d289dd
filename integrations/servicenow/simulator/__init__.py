"""A ServiceNow REST Table API simulator: real HTTP, standard library only.

The package's modules:

``simulator``
    ``Simulator``: routing, authentication (Basic, OAuth), rate limiting, fault
    injection, the Table API itself, the data and its persistence (its docstring says
    what it is faithful to).
``schema``
    ``TABLES`` and ``TableSchema``: the tables, their columns, references and choices.
``options``
    ``SimulatorOptions`` and ``Faults``.
``http``
    The threaded HTTP server and handler, requests, responses and error answers.
``render``
    Query parameters, display values and the stored form of values.

Every name below stays importable from ``integrations.servicenow.simulator``.
"""
from __future__ import annotations

from integrations.servicenow.simulator.http import _Request
from integrations.servicenow.simulator.options import Faults, SimulatorOptions
from integrations.servicenow.simulator.schema import JOURNAL_FIELDS, SYS_FIELDS, TABLES, TableSchema
from integrations.servicenow.simulator.simulator import ACCESS_TOKEN_TTL, REFRESH_TOKEN_TTL, Simulator
