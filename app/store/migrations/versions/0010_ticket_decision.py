"""ticket_decision: the version of each ServiceNow change the sync refused, so that the refusal's own
work note (which updates the change) never makes the sync refuse it, and note it, again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

import app.store

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ticket_decision',
                    sa.Column('source_ref', sa.String(), primary_key=True),
                    sa.Column('digest', sa.String(), nullable=False),
                    sa.Column('decided_at', app.store.UTCDateTime(timezone=True), nullable=False))


def downgrade() -> None:
    op.drop_table('ticket_decision')
