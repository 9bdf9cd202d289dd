"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24

Generated with alembic autogenerate from app/store.py, then reviewed.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.store

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('access_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('requester', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('target', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('environment', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('tier', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('backend', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('ticket', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('approval_model', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('approver_groups', sa.JSON(), nullable=False),
    sa.Column('checks', sa.JSON(), nullable=False),
    sa.Column('scheduled', sa.Boolean(), nullable=False),
    sa.Column('duration_s', sa.Integer(), nullable=False),
    sa.Column('starts_at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('escalated_at', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.Column('closed_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('closed_reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('access_request', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_request_requester'), ['requester'], unique=False)
        batch_op.create_index(batch_op.f('ix_access_request_state'), ['state'], unique=False)

    op.create_table('audit_event',
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=True),
    sa.Column('details', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('prev_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_event_request_id'), ['request_id'], unique=False)

    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('approval',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('approver', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('groups', sa.JSON(), nullable=False),
    sa.Column('comment', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['access_request.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_id', 'approver')
    )
    with op.batch_alter_table('approval', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approval_request_id'), ['request_id'], unique=False)

    op.create_table('bypass_review',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('bypasser', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('reviewer', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('comment', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('opened_at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reviewed_at', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['access_request.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_id')
    )
    with op.batch_alter_table('bypass_review', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bypass_review_bypasser'), ['bypasser'], unique=False)

    op.create_table('grant_record',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('backend', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('person', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('target', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('starts_at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('ref', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('end_state', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('end_actor', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('end_reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('owner', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('lease_until', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('next_attempt_at', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.Column('applied_at', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', app.store.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', app.store.UTCDateTime(timezone=True), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['access_request.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_id')
    )
    with op.batch_alter_table('grant_record', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_grant_record_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_grant_record_status'), ['status'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('grant_record', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_grant_record_status'))
        batch_op.drop_index(batch_op.f('ix_grant_record_expires_at'))

    op.drop_table('grant_record')
    with op.batch_alter_table('bypass_review', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bypass_review_bypasser'))

    op.drop_table('bypass_review')
    with op.batch_alter_table('approval', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approval_request_id'))

    op.drop_table('approval')
    op.drop_table('audit_head')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_event_request_id'))

    op.drop_table('audit_event')
    with op.batch_alter_table('access_request', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_request_state'))
        batch_op.drop_index(batch_op.f('ix_access_request_requester'))

    op.drop_table('access_request')

