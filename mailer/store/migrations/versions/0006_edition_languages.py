"""editions per language and audience: the fixed strings' language of the stored HTML/text, the other
languages' variants, issue.toml's forced `language`, its `segment` as written and the zone of its dates

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

An edition stored before this revision holds MAILER_LANGUAGE's strings alone (language '' is read as
MAILER_LANGUAGE, no variants) and no segment: it is sent as it was.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('editions') as batch:
        batch.add_column(sa.Column('language', sa.String(length=16), nullable=False, server_default=''))
        batch.add_column(sa.Column('forced_language', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('segment', sa.Text(), nullable=True))
        batch.add_column(sa.Column('segment_zone', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('variants', sa.JSON(), nullable=False, server_default='{}'))


def downgrade() -> None:
    with op.batch_alter_table('editions') as batch:
        batch.drop_column('variants')
        batch.drop_column('segment_zone')
        batch.drop_column('segment')
        batch.drop_column('forced_language')
        batch.drop_column('language')
