"""The send's hot path on SQLite: claim and record, each one prebuilt statement (plus the read of what
a claim took).

Built once at import with bound parameters, so SQLAlchemy compiles each once and every claim and
record only binds values: building the statements per call (a `select`, an `update`, their cache
keys) cost about as much CPU as SQLite's own work on 1000 rows (measured, issue 12: a claim of 1000
rows 11 µs per recipient, 5 µs of it SQLite's). Outcomes that each have their own values (SMTP: a
queue id each) go one step further (`finish_each`): one statement compiled once and executed many on
the driver's cursor, a tuple per row (`_Raw`). `ledger.LedgerQueries` calls these on SQLite; its
PostgreSQL forms sit in `ledger.py`. Same semantics (tests/test_ledger.py checks both engines
against one row-by-row model).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from .common import CLAIMED_ROW, QUEUED_ROW
from .schema import deliveries, subscribers

# queued rows of the issue, in id order (partial index ix_deliveries_queued), marked `sending`
_PICKED = (sa.select(deliveries.c.id)
           .where(deliveries.c.issue_id == sa.bindparam("p_issue"), QUEUED_ROW)
           .order_by(deliveries.c.id).limit(sa.bindparam("p_limit")))
CLAIM_IDS = (deliveries.update().where(deliveries.c.id.in_(_PICKED.scalar_subquery()))
             .values(status="sending", claimed_by=sa.bindparam("p_worker"), claimed_at=sa.bindparam("p_now"),
                     updated_at=sa.bindparam("p_now"))
             .returning(deliveries.c.id))
# exactly the rows a claim just took, without binding their ids one by one: the claim's own range
# (primary key), claimant and timestamp (rows this worker holds from earlier claims differ in claimed_at)
CLAIMED_ROWS = (
    sa.select(deliveries.c.id.label("delivery_id"), deliveries.c.attempts, subscribers.c.id.label("subscriber_id"),
              subscribers.c.email_given, subscribers.c.name, subscribers.c.status.label("subscriber_status"),
              subscribers.c.language, subscribers.c.attributes["first_name"].as_string().label("first_name"))
    .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
    .where(deliveries.c.id.between(sa.bindparam("p_low"), sa.bindparam("p_high")),
           deliveries.c.claimed_by == sa.bindparam("p_worker"), deliveries.c.claimed_at == sa.bindparam("p_now"),
           CLAIMED_ROW)
    .order_by(deliveries.c.id))
# rows sharing one outcome whose ids are one contiguous run (a fresh freeze claimed in order: the usual
# case): one primary-key range instead of up to 1000 bound parameters
FINISH_RANGE = (
    deliveries.update()
    .where(deliveries.c.id.between(sa.bindparam("p_low"), sa.bindparam("p_high")),
           deliveries.c.claimed_by == sa.bindparam("p_worker"), CLAIMED_ROW)
    .values(status=sa.bindparam("p_status"), provider_message_id=sa.bindparam("p_provider_id"),
            last_error=sa.bindparam("p_error"), sent_at=sa.bindparam("p_sent_at"), updated_at=sa.bindparam("p_now"),
            attempts=deliveries.c.attempts + sa.bindparam("p_inc")))
FINISH_SOME = (
    deliveries.update()
    .where(deliveries.c.id.in_(sa.bindparam("p_ids", expanding=True)),
           deliveries.c.claimed_by == sa.bindparam("p_worker"), CLAIMED_ROW)
    .values(status=sa.bindparam("p_status"), provider_message_id=sa.bindparam("p_provider_id"),
            last_error=sa.bindparam("p_error"), sent_at=sa.bindparam("p_sent_at"), updated_at=sa.bindparam("p_now"),
            attempts=deliveries.c.attempts + sa.bindparam("p_inc")))


def claim_range(conn: Connection, issue_id: int, worker: str, limit: int, now: datetime) -> dict | None:
    """`LedgerQueries.claim_batch` on SQLite without a release window, its write half: the UPDATE alone
    (driver SQL, `_Raw`: SQLAlchemy's handling of the statement and of its 1000 returned ids cost
    ~0.4 µs a recipient, issue 12), inside the caller's write transaction. Returns what `read_claimed`
    needs (None when nothing was queued)."""
    stamp = _DATETIME(now)
    claimed = [row[0] for row in _CLAIM_IDS_RAW.execute(
        conn, {"p_issue": issue_id, "p_limit": limit, "p_worker": worker, "p_now": stamp})]
    return claimed_range(claimed, worker, now, stamp)


def claimed_range(claimed: Sequence[int], worker: str, now: datetime, stamp: str | None = None) -> dict | None:
    """What `read_claimed` needs to read back the rows `worker` claimed at `now` (ids `claimed`)."""
    if not claimed:
        return None
    return {"p_low": min(claimed), "p_high": max(claimed), "p_worker": worker,
            "p_now": stamp if stamp is not None else _DATETIME(now)}


def read_claimed_in_transaction(conn: Connection, claimed: dict) -> list[sa.Row]:
    """The claimed rows (`CLAIMED_ROWS`) inside the caller's transaction, with their column names."""
    return _CLAIMED_ROWS_RAW.execute(conn, claimed).all()


def read_claimed(conn: Connection, claimed: dict) -> list[tuple]:
    """The claimed rows (`CLAIMED_ROWS`) outside any transaction of `conn`, through the driver connection
    in SQLite's own autocommit: a read transaction that takes no write lock (one begun through
    SQLAlchemy is BEGIN IMMEDIATE, `engine.py`, and would wait for the send's writer). Plain tuples."""
    _, sql, order, fixed = _CLAIMED_ROWS_RAW._form(conn)
    return conn.connection.driver_connection.execute(
        sql, tuple([claimed[name] if name in claimed else fixed[name] for name in order])).fetchall()


def finish_shared(conn: Connection, worker: str, ids: Sequence[int], values: dict) -> None:
    """Rows sharing one outcome (`values`: p_status, p_provider_id, p_error, p_sent_at, p_now, p_inc),
    at most 1000 ids a statement: a primary-key range when they are one contiguous run, else `IN`."""
    for start in range(0, len(ids), 1000):
        part = ids[start:start + 1000]
        low, high = min(part), max(part)
        if high - low + 1 == len(part) == len(set(part)):
            conn.execute(FINISH_RANGE, {"p_low": low, "p_high": high, "p_worker": worker, **values})
        else:
            conn.execute(FINISH_SOME, {"p_ids": list(part), "p_worker": worker, **values})


# one row's outcome of its own (SMTP: its queue id), only while `p_worker` still holds it
FINISH_ONE = deliveries.update().where(
    deliveries.c.id == sa.bindparam("p_id"), deliveries.c.claimed_by == sa.bindparam("p_worker"),
    CLAIMED_ROW).values(
    status=sa.bindparam("p_status"), provider_message_id=sa.bindparam("p_provider_id"),
    last_error=sa.bindparam("p_error"), sent_at=sa.bindparam("p_sent_at"), updated_at=sa.bindparam("p_now"),
    attempts=deliveries.c.attempts + sa.bindparam("p_inc"))


class _Raw:
    """A prebuilt statement compiled once for the connection's dialect and executed many as driver SQL
    (`exec_driver_sql`): per row only a tuple. Why: SQLAlchemy's per-row parameter handling (a dict per row,
    each DateTime processed) cost more CPU than SQLite's own UPDATE of that row — measured on the SMTP
    group commit (issue 12): 29 µs of CPU per message recorded in groups of 10, 16 µs this way, the rest
    SQLite's UPDATE and COMMIT. Values are bound in the compiled order and datetimes are passed already
    processed by the column type's own bind processor (`_DATETIME`), so what is stored is exactly what
    `conn.execute(statement, rows)` stores (tests/test_ledger.py reads both back)."""

    def __init__(self, statement: sa.sql.ClauseElement) -> None:
        self.statement = statement
        self._compiled: tuple[Any, str, tuple[str, ...], dict[str, Any]] | None = None

    def _form(self, conn: Connection) -> tuple[Any, str, tuple[str, ...], dict[str, Any]]:
        """(dialect, SQL, bound names in order, the statement's own values, processed as SQLAlchemy
        binds them: a literal's, a JSON path's)."""
        compiled = self._compiled
        if compiled is None or compiled[0] is not conn.dialect:
            form = self.statement.compile(dialect=conn.dialect)
            fixed = form.construct_params(_check=False)
            for name, value in fixed.items():
                process = form.binds[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
                if process is not None and value is not None:
                    fixed[name] = process(value)
            compiled = self._compiled = (conn.dialect, form.string, tuple(form.positiontup or ()), fixed)
        return compiled

    def executemany(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        _, sql, order, fixed = self._form(conn)
        # through the Connection (its events and logging see the statement), with tuples: no per-row
        # parameter processing
        conn.exec_driver_sql(sql, [tuple([row[name] if name in row else fixed[name] for name in order])
                                   for row in rows])

    def execute(self, conn: Connection, values: dict[str, Any]) -> sa.CursorResult:
        """One execution with `values` (datetimes already processed, as `executemany`'s)."""
        _, sql, order, fixed = self._form(conn)
        return conn.exec_driver_sql(sql, tuple([values[name] if name in values else fixed[name] for name in order]))


_FINISH_ONE_RAW = _Raw(FINISH_ONE)
_CLAIM_IDS_RAW = _Raw(CLAIM_IDS)
_CLAIMED_ROWS_RAW = _Raw(CLAIMED_ROWS)
_DATETIME = sa.DateTime(timezone=True).dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())


def finish_each(conn: Connection, worker: str, rows: Sequence[tuple[int, str, str | None, str | None, int]],
                now: datetime) -> None:
    """Rows each with an outcome of its own: (id, status, provider id, error, attempts increment), all
    recorded at `now`; only rows `worker` still holds change."""
    stamp = _DATETIME(now)  # as SQLAlchemy binds it, once for the rows of this call
    _FINISH_ONE_RAW.executemany(conn, [
        {"p_id": delivery_id, "p_status": status, "p_provider_id": provider_id, "p_error": error,
         "p_sent_at": stamp if status == "sent" else None, "p_now": stamp, "p_worker": worker, "p_inc": increment}
        for delivery_id, status, provider_id, error, increment in rows])
