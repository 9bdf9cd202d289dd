"""host_report: what each host's ``jit agent`` last reported it holds (its drop-ins), one row per
host. The ``agent`` backend counts a grant applied once its host reports it, and revoked once
its host no longer does.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

import app.store

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('host_report',
                    sa.Column('host', sa.String(), primary_key=True),
                    sa.Column('held', sa.JSON(), nullable=False),
                    sa.Column('refused', sa.JSON(), nullable=False),
                    sa.Column('reported_at', app.store.UTCDateTime(timezone=True), nullable=False))


def downgrade() -> None:
    op.drop_table('host_report')
