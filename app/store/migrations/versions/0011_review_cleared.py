"""bypass_review: who cleared a violation, when and why. A bypass reviewed as a violation keeps
its bypasser from bypassing again until a security operator clears it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

import app.store

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('bypass_review') as batch:
        batch.add_column(sa.Column('cleared_by', sa.String(), nullable=True))
        batch.add_column(sa.Column('cleared_at', app.store.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('clear_comment', sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('bypass_review') as batch:
        batch.drop_column('clear_comment')
        batch.drop_column('cleared_at')
        batch.drop_column('cleared_by')
