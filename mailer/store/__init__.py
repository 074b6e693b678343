"""The store: ALL SQL of the project (no other module imports SQLAlchemy; `tests/test_layout.py` checks).

* `engine` — opening the database (`make_engine`, `open_store`) and Alembic migrations (`migrations/`);
* `schema` — the tables; `core` — `Store`, whose queries are grouped by what callers need:
  `people` (rows, status changes, erasure), `events` (a person's history, provider events),
  `ledger` (issues, frozen recipients, claims, results, send rate, public pages), `bulk` (import, export);
* `jobs` — the scheduler's APScheduler job store on the same engine.
"""

from sqlalchemy import Row
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import SQLAlchemyError as DatabaseError

from .bulk import (IMPORT_ATTRIBUTES, IMPORT_CREATED_AT, IMPORT_DIGEST, IMPORT_GIVEN, IMPORT_KEY, IMPORT_LANGUAGE,
                   IMPORT_LINE, IMPORT_LISTS, IMPORT_NAME, IMPORT_ROW_FIELDS, IMPORT_STATUS, IMPORT_STATUS_AT,
                   ImportExisting)
from .common import StatusChange, as_utc, utcnow
from .core import Store
from .engine import HEAD_REVISION, MIGRATIONS_DIR, current_revision, make_engine, open_store, upgrade

# `Connection` and `Row` are what the store's methods take and return; `DatabaseError` is any failure
# of the database, `IntegrityError` a unique constraint hit by a concurrent writer. Callers name them
# from here, never from SQLAlchemy.
__all__ = ["Connection", "DatabaseError", "IntegrityError", "Row", "HEAD_REVISION", "IMPORT_ATTRIBUTES", "IMPORT_CREATED_AT", "IMPORT_DIGEST", "IMPORT_GIVEN", "IMPORT_KEY",
           "IMPORT_LANGUAGE", "IMPORT_LINE", "IMPORT_LISTS", "IMPORT_NAME", "IMPORT_ROW_FIELDS", "IMPORT_STATUS",
           "IMPORT_STATUS_AT", "MIGRATIONS_DIR", "ImportExisting", "StatusChange", "Store", "as_utc",
           "current_revision", "make_engine", "open_store", "upgrade", "utcnow"]
