"""reports: click tracking (links, link_clicks: per edition) and the issue a subscriber event came from

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Events recorded before this revision have no issue: `mailer report` attributes unsubscribes from
then on (the unsubscribe links of earlier emails carry no issue either).
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    with op.batch_alter_table('subscriber_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('issue_id', sa.BigInteger(), nullable=True))
        batch_op.create_index('ix_subscriber_events_issue', ['issue_id'], unique=False)
    op.create_table(
        'links',
        sa.Column('edition_id', big_id, nullable=False),
        sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['edition_id'], ['editions.id'], name=op.f('fk_links_edition_id_editions'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('edition_id', 'position', name=op.f('pk_links')),
    )
    op.create_table(
        'link_clicks',
        sa.Column('edition_id', big_id, nullable=False),
        sa.Column('subscriber_id', big_id, nullable=False),
        sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('clicks', sa.Integer(), nullable=False),
        sa.Column('first_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['edition_id'], ['editions.id'], name=op.f('fk_link_clicks_edition_id_editions'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['subscriber_id'], ['subscribers.id'],
                                name=op.f('fk_link_clicks_subscriber_id_subscribers'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('edition_id', 'subscriber_id', 'position', name=op.f('pk_link_clicks')),
    )


def downgrade() -> None:
    op.drop_table('link_clicks')
    op.drop_table('links')
    with op.batch_alter_table('subscriber_events', schema=None) as batch_op:
        batch_op.drop_index('ix_subscriber_events_issue')
        batch_op.drop_column('issue_id')
