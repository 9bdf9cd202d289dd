"""The audit trail read back: the chain verified end to end, and exported as JSON lines."""
from __future__ import annotations

from typing import Iterator

from app.store import Store, audit


def verify(store: Store) -> audit.Verification:
    with store.transaction() as s:
        return audit.verify(s)


def export(store: Store) -> Iterator[str]:
    """Every event, oldest first, one JSON object a line (streamed in batches, one transaction)."""
    with store.transaction() as s:
        yield from audit.export_jsonl(s)
