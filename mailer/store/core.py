"""`Store`: a handle on one SQLAlchemy engine over SQLite (default) or PostgreSQL, same code and
migrations. Its queries are grouped by what callers need: `people`, `events`, `ledger`, `bulk`, `waves`
(each a mixin); higher layers call them and never write SQL of their own.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy.engine import Connection, Engine

from .bulk import BulkQueries
from .events import EventQueries
from .ledger import LedgerQueries
from .people import PeopleQueries
from .reports import ReportsStore
from .waves import WaveQueries


class Store(PeopleQueries, EventQueries, LedgerQueries, BulkQueries, ReportsStore, WaveQueries):
    """A handle on the database. Cheap to pass around; one per process is enough."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite: one writer, no upgrade deadlocks)."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reading (no transaction is opened until a statement runs)."""
        with self.engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    def compact(self) -> bool:
        """After an erasure, leave no copy of deleted data in the database files: on SQLite, VACUUM
        (rewrites the file from live rows only; freed pages and old record images go) and truncate the
        write-ahead log; False when another connection kept the log busy. PostgreSQL: nothing here
        (dead row versions stay in the table files until (auto)vacuum reuses them)."""
        if not self.is_sqlite:
            return True
        with self.engine.connect() as conn:
            dbapi = conn.connection.driver_connection
            dbapi.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            dbapi.execute("VACUUM")
            busy = dbapi.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return busy == 0
