"""issues.public: whether /archive lists an issue and /issues/SLUG serves it

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

Issues sent before this revision keep the rule that now applies when issue.toml has no `archive`
key: public unless sent to a named list.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('issues', schema=None) as batch_op:
        batch_op.add_column(sa.Column('public', sa.Boolean(), server_default=sa.true(), nullable=False))
    issues = sa.table('issues', sa.column('list_name', sa.String), sa.column('public', sa.Boolean))
    op.execute(issues.update().where(issues.c.list_name.is_not(None)).values(public=False))


def downgrade() -> None:
    with op.batch_alter_table('issues', schema=None) as batch_op:
        batch_op.drop_column('public')
