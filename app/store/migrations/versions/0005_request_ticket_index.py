"""access_request.ticket index: the sync ends a page's closed tickets' requests with one lookup

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_access_request_ticket', 'access_request', ['ticket'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_access_request_ticket', table_name='access_request')
