"""Alembic environment: always driven from `mailer.store` with a live connection (no alembic.ini)."""

from alembic import context

from mailer.store.schema import metadata

connection = context.config.attributes["connection"]

def _ours(obj, name, type_, *_args) -> bool:  # noqa: ANN001
    """APScheduler owns its job table: autogenerate must never drop it."""
    return not (type_ == "table" and name == "scheduler_jobs")


context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  compare_type=True, include_object=_ours)
with context.begin_transaction():
    context.run_migrations()
