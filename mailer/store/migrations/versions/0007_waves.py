"""local-time waves: each frozen recipient row carries its release instant and zone; the issue
carries its wall time (`send_local`) and how far the operator released late waves

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

`deliveries.due_at` / `due_zone`: NULL for ordinary sends (claimable at once, as before).
`issues.send_local`: the wall time of a local-time send (ISO, no offset), NULL otherwise.
`issues.released_before`: rows due at or before it are claimable whatever their lateness
(`mailer send --release-missed` / `--now`).
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries') as batch:
        batch.add_column(sa.Column('due_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('due_zone', sa.String(length=64), nullable=True))
    op.create_index('ix_deliveries_issue_status_due', 'deliveries', ['issue_id', 'status', 'due_at', 'id'])
    with op.batch_alter_table('issues') as batch:
        batch.add_column(sa.Column('send_local', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('released_before', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_index('ix_deliveries_issue_status_due', table_name='deliveries')
    with op.batch_alter_table('issues') as batch:
        batch.drop_column('released_before')
        batch.drop_column('send_local')
    with op.batch_alter_table('deliveries') as batch:
        batch.drop_column('due_zone')
        batch.drop_column('due_at')
