"""The identifier patterns, once: account names, role and tier names, target (host) names.

Pure strings, anchored, so pydantic's ``Field(pattern=...)``, ``re.fullmatch`` and the
backends' own validation all use the same rule. ``integrations`` and ``app`` import them from
here; nothing here imports anything.
"""
from __future__ import annotations

PERSON = r"^[a-z_][a-z0-9_-]{0,31}$"  # a POSIX account name, as useradd's default NAME_REGEX allows
NAME = r"^[a-z][a-z0-9-]{0,62}$"  # a role, environment or tier of the policy
TARGET = r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$"  # a target: a host name (RFC 1123 letters) or a group of hosts
