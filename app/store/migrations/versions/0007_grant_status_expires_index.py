"""grant_record (status, expires_at) index, in place of status alone: the expiry pass, the planner
and the expiry warnings read the active grants due by an instant, in expiry order. On status alone
both databases read and sorted every active grant on each pass, so the revocation lag grew with
how many grants were held, not with how many expired.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_grant_record_status_expires_at', 'grant_record', ['status', 'expires_at'], unique=False)
    op.drop_index('ix_grant_record_status', table_name='grant_record')


def downgrade() -> None:
    op.create_index('ix_grant_record_status', 'grant_record', ['status'], unique=False)
    op.drop_index('ix_grant_record_status_expires_at', table_name='grant_record')
