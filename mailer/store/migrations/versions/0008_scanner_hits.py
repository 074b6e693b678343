"""link scanners: a tracked link's fetches by a known scanner or bot, kept apart from readers' clicks

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

`link_clicks.scanner_hits`: fetches whose User-Agent is a known scanner, bot or HTTP library
(`sending/scanners.py`); `clicks` counts the others. A row may hold scanner hits only (clicks 0).
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('link_clicks') as batch:
        batch.add_column(sa.Column('scanner_hits', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('link_clicks') as batch:
        batch.drop_column('scanner_hits')
