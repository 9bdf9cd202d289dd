"""The store: tables (``tables.py``), the database and its migrations (``database.py``), writes
of many rows (``bulk.py``), the audit chain (``audit.py``), the claims on grants (``leases.py``),
and the one version-checked ``transition()`` per entity (``requests.py``, ``grants.py``, over
``versions.py``'s one optimistic check)."""
from app.domain.errors import StoreError
from app.store.bulk import among, insert_rows, next_ids
from app.store.database import Store
from app.store.tables import (HEARTBEAT_PREFIX, ApprovalRow, AuditEvent, AuditHead, GrantRow, HostReportRow, JSONText, OutboxRow, RequestRow, ReviewRow,
                              SyncState, TicketDecisionRow, UTCDateTime)

__all__ = ["HEARTBEAT_PREFIX", "ApprovalRow", "AuditEvent", "AuditHead", "GrantRow", "HostReportRow", "JSONText", "OutboxRow", "RequestRow", "ReviewRow",
           "Store", "StoreError", "SyncState", "TicketDecisionRow", "UTCDateTime", "among", "insert_rows", "next_ids"]
