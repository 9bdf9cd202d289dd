"""The activity log: one structured line per grant applied, failed or ended, written once its
transaction has committed (``Store.transaction``'s after-commit callables), for a journal or a SIEM
to read. ``key=value`` pairs (logfmt): a value with a space, quote or ``=`` is JSON-quoted, so a
reason a person typed can neither split a line nor forge a key."""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from sqlmodel import Session

from app.store.database import AFTER_COMMIT

log = logging.getLogger("jit.activity")

GRANT_ACTIONS = frozenset({"grant.active", "grant.failed", "grant.revoke_failed"})
ENDS = frozenset({"request.expired", "request.released", "request.revoked"})  # logged when a grant ended
_KEYS = ("grant_id", "ref", "error", "attempts", "lag_ms", "reason")


def wanted(action: str, details: Mapping[str, Any]) -> bool:
    return action in GRANT_ACTIONS or (action in ENDS and details.get("grant_id") is not None)


def line(action: str, **fields: Any) -> str:
    """``action key=value ...``, values None left out."""
    return " ".join([action, *(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)])


def _value(value: Any) -> str:
    text = str(value)
    if text and all(c.isprintable() and c not in ' "=' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def after_commit(s: Session, action: str, actor: str, request_id: int | None, row: Any,
                 details: Mapping[str, Any]) -> None:
    """Queue the line for ``action`` in ``s``, written when ``s`` commits (never for a rollback)."""
    fields: dict[str, Any] = {"request": request_id, "actor": actor}
    if row is not None:
        for name in ("requester", "target", "role", "backend"):
            fields[name] = getattr(row, name, None) if not isinstance(row, Mapping) else row.get(name)
    fields.update({("grant" if k == "grant_id" else k): details.get(k) for k in _KEYS})
    text = line(action, **fields)
    level = logging.ERROR if action in ("grant.failed", "grant.revoke_failed") else logging.INFO
    s.info.setdefault(AFTER_COMMIT, []).append(lambda: log.log(level, "%s", text))
