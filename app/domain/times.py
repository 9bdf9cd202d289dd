"""Instants on the wire: ISO 8601 in UTC with a ``Z``, written and read back in one place (the
API's answers, the console's read models, the CLI's printing)."""
from __future__ import annotations

from datetime import datetime


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def instant(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
