"""Alembic environment: always driven from `mailer.store` with a live connection (no alembic.ini)."""

from alembic import context

from mailer.store.schema import POSTGRESQL_TRIGGER_REFERENCES, metadata

connection = context.config.attributes["connection"]

def _ours(obj, name, type_, *_args) -> bool:  # noqa: ANN001
    """APScheduler owns its job table: autogenerate must never drop it; nor add the two foreign keys
    that PostgreSQL keeps as triggers."""
    if type_ == "foreign_key_constraint" and name in POSTGRESQL_TRIGGER_REFERENCES:
        return connection.dialect.name != "postgresql"  # kept by triggers there (revision 0009)
    return not (type_ == "table" and name == "scheduler_jobs")


context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  compare_type=True, include_object=_ours)
with context.begin_transaction():
    context.run_migrations()
