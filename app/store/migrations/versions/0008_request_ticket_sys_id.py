"""access_request.ticket_sys_id: a request is linked to its ticket by the ticket's sys_id, not its
number. Numbers are only display values in ServiceNow and can repeat (a decoy change carrying
another change's number, closed, revoked that change's grants when linked by number). Filled in
for ticket-driven requests from their source_ref; requests made before this keep matching by
number until they end.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('access_request') as batch:
        batch.add_column(sa.Column('ticket_sys_id', sa.String(), nullable=True))
        batch.create_index('ix_access_request_ticket_sys_id', ['ticket_sys_id'], unique=False)
    prefix = 'change_request:'
    op.execute(sa.text("UPDATE access_request SET ticket_sys_id = substr(source_ref, :start) "
                       "WHERE source_ref LIKE :like").bindparams(start=len(prefix) + 1, like=prefix + '%'))


def downgrade() -> None:
    with op.batch_alter_table('access_request') as batch:
        batch.drop_index('ix_access_request_ticket_sys_id')
        batch.drop_column('ticket_sys_id')
