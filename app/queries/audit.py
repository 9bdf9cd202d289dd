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


def lines_after(store: Store, after: int, limit: int) -> list[tuple[int, str]]:
    """Events after sequence number ``after``, oldest first, as ``(seq, export line)``: a page of
    ``jit audit export``, and what ``/v1/events`` streams."""
    with store.transaction() as s:
        return [(row.seq, audit.exported(row)) for row in audit.page(s, after, limit)]


def newest_seq(store: Store) -> int:
    with store.transaction() as s:
        return audit.newest_seq(s)
