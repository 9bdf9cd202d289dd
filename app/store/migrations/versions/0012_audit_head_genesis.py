"""audit_head: written at genesis (seq 0) when the database is made, not with the first event, so
a missing head row is always a sign of tampering: `jit audit verify` reports it instead of
reading an emptied chain as "0 events, chain intact".

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT count(*) FROM audit_head")).scalar_one() == 0 \
            and conn.execute(sa.text("SELECT count(*) FROM audit_event")).scalar_one() == 0:
        conn.execute(sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :genesis)"), {"genesis": GENESIS})


def downgrade() -> None:
    pass  # the head row is the chain's own from here on
