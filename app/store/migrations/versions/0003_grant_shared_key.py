"""grant shared_key: grants that share one artifact (an LDAP membership) are counted

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('grant_record', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shared_key', sa.String(), nullable=True))
        batch_op.create_index('ix_grant_record_shared_key', ['shared_key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('grant_record', schema=None) as batch_op:
        batch_op.drop_index('ix_grant_record_shared_key')
        batch_op.drop_column('shared_key')
