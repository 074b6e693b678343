"""The scheduler's job store: APScheduler's `SQLAlchemyJobStore` on the store's own engine (same
WAL / busy-timeout settings, same database), and a read of its rows without a running scheduler.

Source: APScheduler 3.11, `apscheduler.jobstores.sqlalchemy` (table of id, next_run_time, job_state:
a pickled dict of func reference, trigger, args…).
"""

from __future__ import annotations

import pickle

import sqlalchemy as sa
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

from .core import Store


def job_store(store: Store, table: str) -> SQLAlchemyJobStore:
    """The persistent job store for `mailer schedule run`, in `table` of the store's database."""
    return SQLAlchemyJobStore(engine=store.engine, tablename=table)


def stored_jobs(store: Store, table: str) -> dict[str, dict]:
    """The job store's rows, read without starting a scheduler: id → job state (trigger, args…);
    {} for a row this version cannot unpickle, nothing when the table does not exist yet."""
    with store.connect() as conn:
        if not sa.inspect(conn).has_table(table):
            return {}
        jobs_table = sa.table(table, sa.column("id"), sa.column("next_run_time"), sa.column("job_state"))
        rows = conn.execute(sa.select(jobs_table.c.id, jobs_table.c.job_state)).all()
    jobs = {}
    for job_id, blob in rows:
        try:
            jobs[job_id] = pickle.loads(blob)
        except Exception:  # noqa: BLE001 - a job this version cannot read
            jobs[job_id] = {}
    return jobs


def database_label(store: Store) -> str:
    """The database URL without its password, for log lines."""
    return store.engine.url.render_as_string(hide_password=True)
