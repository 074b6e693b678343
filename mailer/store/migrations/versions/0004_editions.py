"""editions: the content a send delivers, frozen with its recipients (subject, HTML and text with
their slots, the settings behind the fixed headers, template, version, content hash)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

A send started before this revision has recipients but no edition: its first resume (a `mailer send`,
a `mailer worker`, the scheduler) freezes the issue folder as it is then, as edition 1 with reason
`migrated`, and says so; from then on that edition is what is sent.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        'editions',
        sa.Column('id', big_id, autoincrement=True, nullable=False),
        sa.Column('issue_id', big_id, nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reason', sa.String(length=16), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('html', sa.Text(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('greeting', sa.Text(), nullable=False),
        sa.Column('headers', sa.JSON(), nullable=False),
        sa.Column('template', sa.String(length=200), nullable=False),
        sa.Column('mailer_version', sa.String(length=32), nullable=False),
        sa.Column('content_hash', sa.String(length=64), nullable=False),
        sa.Column('sent_before', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['issue_id'], ['issues.id'], name=op.f('fk_editions_issue_id_issues'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_editions')),
        sa.UniqueConstraint('issue_id', 'number', name='uq_editions_issue_number'),
    )


def downgrade() -> None:
    op.drop_table('editions')
