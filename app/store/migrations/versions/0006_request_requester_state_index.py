"""access_request (requester, state) index: a page of the sync reads its requesters' holdings
through it; on state alone SQLite and PostgreSQL scanned every approved request per page

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_access_request_requester_state', 'access_request', ['requester', 'state'], unique=False)
    op.drop_index('ix_access_request_requester', table_name='access_request')


def downgrade() -> None:
    op.create_index('ix_access_request_requester', 'access_request', ['requester'], unique=False)
    op.drop_index('ix_access_request_requester_state', table_name='access_request')
