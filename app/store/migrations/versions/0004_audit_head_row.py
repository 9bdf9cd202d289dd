"""audit head row from the start: the first event's writers lock an existing row

Without it, two processes writing the first event of a new PostgreSQL database both found no
head to lock, both wrote event 1 and one failed on the primary key (found by the 10,000-grant
benchmark, whose setup runs in parallel processes).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    # Only on an empty log: a log with events but no head was tampered with, and must stay so.
    op.execute(f"INSERT INTO audit_head (id, seq, hash) SELECT 1, 0, '{GENESIS}' "
               "WHERE NOT EXISTS (SELECT 1 FROM audit_head) AND NOT EXISTS (SELECT 1 FROM audit_event)")


def downgrade() -> None:
    op.execute(f"DELETE FROM audit_head WHERE id = 1 AND seq = 0 AND hash = '{GENESIS}'")
