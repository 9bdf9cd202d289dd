"""Reading request values and rendering stored ones: query parameters (``_params``,
``_truthy``), the ``_View`` of sysparm_fields / sysparm_display_value /
sysparm_exclude_reference_link, values as ServiceNow stores them (``_to_str``) and
its time format.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import parse_qsl

@dataclass(frozen=True)
class _View:
    """How to render records: sysparm_fields, sysparm_display_value, sysparm_exclude_reference_link."""

    fields: tuple[str, ...] = ()
    display: str = "false"               # "false" | "true" | "all"
    exclude_links: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "_View":
        display = params.get("sysparm_display_value", "false").strip().lower()
        return cls(tuple(f.strip() for f in params.get("sysparm_fields", "").split(",") if f.strip()),
                   display if display in ("true", "all") else "false",
                   _truthy(params.get("sysparm_exclude_reference_link")))


_MISSING = object()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _format_time(moment: datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def _to_str(value: Any) -> str:
    """ServiceNow stores strings: null -> "", booleans -> "true"/"false", {"value": x} -> x."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) and "value" in value:
        return _to_str(value["value"])
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _params(query: str) -> dict[str, str]:
    """Query parameters, first occurrence wins (as on an instance)."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)
    return params
