"""The migrations build exactly the declared schema (`mailer/store/schema.py`'s MetaData): every
migration run on an empty SQLite file and on a fresh PostgreSQL schema, then compared with Alembic's
autogenerate comparison (`alembic.autogenerate.compare_metadata`: tables, columns, types,
nullability, indexes, unique constraints, foreign keys). APScheduler's own job table is left out
(the scheduler creates it, no migration does)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mailer.store import HEAD_REVISION, current_revision, open_store
from mailer.store.schema import POSTGRESQL_TRIGGER_REFERENCES, metadata

JOBS_TABLE = "scheduler_jobs"


def _ours(obj, name, type_, *_args) -> bool:  # noqa: ANN001
    return not (type_ == "table" and name == JOBS_TABLE)


def schema_drift(conn: sa.Connection, declared: sa.MetaData) -> list:
    """What autogenerate would write to turn the database into `declared` ([] when they agree)."""
    def ours(obj, name, type_, *args) -> bool:  # noqa: ANN001
        # PostgreSQL keeps two references of `deliveries` with triggers (revision 0009), shown by
        # tests/test_ledger.py's reference tests on both engines
        return _ours(obj, name, type_, *args) and not (
            conn.dialect.name == "postgresql" and type_ == "foreign_key_constraint"
            and name in POSTGRESQL_TRIGGER_REFERENCES)

    context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": ours})
    return compare_metadata(context, declared)


def _with_extra_column(declared: sa.MetaData) -> sa.MetaData:
    copy = sa.MetaData(naming_convention=declared.naming_convention)
    for table in declared.tables.values():
        table.to_metadata(copy)
    copy.tables["subscribers"].append_column(sa.Column("nickname", sa.Text, nullable=True))
    return copy


def test_the_migrations_build_the_declared_schema(empty_db_url):
    store = open_store(empty_db_url)  # an empty database: every migration runs
    try:
        assert current_revision(store.engine) == HEAD_REVISION
        with store.engine.connect() as conn:
            drift = schema_drift(conn, metadata)
    finally:
        store.close()
    assert drift == [], "\n".join(map(repr, drift))


def test_the_drift_check_sees_a_column_on_one_side_only(db_url):
    """A column only in the model, then one only in the database: both are reported."""
    store = open_store(db_url)
    try:
        with store.engine.connect() as conn:
            only_in_model = schema_drift(conn, _with_extra_column(metadata))
        with store.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE issues ADD COLUMN note TEXT"))
        with store.engine.connect() as conn:
            only_in_database = schema_drift(conn, metadata)
    finally:
        store.close()
    assert [(d[0], d[3].name) for d in only_in_model] == [("add_column", "nickname")]
    assert [(d[0], d[2], d[3].name) for d in only_in_database] == [("remove_column", "issues", "note")]


@pytest.mark.parametrize("change", ["nullable", "type", "index", "foreign key"])
def test_the_drift_check_sees_nullability_types_indexes_and_foreign_keys(sqlite_store, change):
    """Each kind of difference the comparison covers is reported (on the model's side)."""
    copy = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(copy)
    deliveries = copy.tables["deliveries"]
    if change == "nullable":
        deliveries.c.last_error.nullable = not deliveries.c.last_error.nullable
    elif change == "type":
        deliveries.c.attempts.type = sa.Text()
    elif change == "index":
        sa.Index("ix_deliveries_extra", deliveries.c.attempts)
    else:
        deliveries.append_constraint(sa.ForeignKeyConstraint(["claimed_by"], ["subscribers.email"]))
    with sqlite_store.engine.connect() as conn:
        drift = schema_drift(conn, copy)
    assert drift, change
