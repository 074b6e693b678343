"""Alembic environment: always driven from `mailer.store` with a live connection (no alembic.ini)."""

from alembic import context

from mailer.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
