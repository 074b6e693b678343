"""The store: ALL SQL of the project (no other module imports SQLAlchemy).

* `schema` — the tables; `migrations/` — Alembic scripts, applied automatically on first use;
* `core` — the engine (`make_engine`, `open_store`, `upgrade`) and the `Store` with every query the
  other layers need.
"""

from .core import (HEAD_REVISION, IMPORT_ATTRIBUTES, IMPORT_CREATED_AT, IMPORT_DIGEST, IMPORT_GIVEN, IMPORT_KEY,
                   IMPORT_LANGUAGE, IMPORT_LINE, IMPORT_LISTS, IMPORT_NAME, IMPORT_ROW_FIELDS, IMPORT_STATUS,
                   IMPORT_STATUS_AT, MAILBOX_PROVIDER, MIGRATIONS_DIR, ImportExisting, StatusChange, Store, as_utc, current_revision,
                   make_engine, open_store, upgrade, utcnow)

__all__ = ["HEAD_REVISION", "IMPORT_ATTRIBUTES", "IMPORT_CREATED_AT", "IMPORT_DIGEST", "IMPORT_GIVEN", "IMPORT_KEY",
           "IMPORT_LANGUAGE", "IMPORT_LINE", "IMPORT_LISTS", "IMPORT_NAME", "IMPORT_ROW_FIELDS", "IMPORT_STATUS",
           "IMPORT_STATUS_AT", "MAILBOX_PROVIDER", "MIGRATIONS_DIR", "ImportExisting", "StatusChange", "Store", "as_utc",
           "current_revision", "make_engine", "open_store", "upgrade", "utcnow"]
