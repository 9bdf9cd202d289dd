"""servicenow outbox and sync

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Generated with alembic autogenerate from app/store.py, then reviewed.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.store

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=True),
    sa.Column('ticket', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('next_attempt_at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('claimed_until', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_request_id'), ['request_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_state'), ['state'], unique=False)

    op.create_table('sync_state',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('watermark', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_run_at', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_ok_at', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('errors', sa.JSON(), nullable=False),
    sa.Column('processed', sa.Integer(), nullable=False),
    sa.Column('behind_s', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('access_request', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_ref', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_unique_constraint('uq_access_request_source_ref', ['source_ref'])

    with op.batch_alter_table('grant_record', schema=None) as batch_op:
        batch_op.add_column(sa.Column('warned_at', app.store.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('grant_record', schema=None) as batch_op:
        batch_op.drop_column('warned_at')

    with op.batch_alter_table('access_request', schema=None) as batch_op:
        batch_op.drop_constraint('uq_access_request_source_ref', type_='unique')
        batch_op.drop_column('source_ref')

    op.drop_table('sync_state')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_state'))
        batch_op.drop_index(batch_op.f('ix_outbox_request_id'))

    op.drop_table('outbox')

