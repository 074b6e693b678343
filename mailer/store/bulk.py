"""Bulk readers and writers: the CSV import's batched upsert (raw driver statements on SQLite and
PostgreSQL, written to match SQLAlchemy Core's output exactly) and the export's pages.

Longer than ~400 lines because the import's writers and the export's pages use the same per-dialect
raw-driver idiom (SQLite `executemany`, PostgreSQL COPY and cursor pages) with one reference path on
SQLAlchemy Core each; splitting them would separate each fast path from the helpers it shares."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import contextmanager
from datetime import datetime
from itertools import chain
from operator import itemgetter
from typing import Iterator, NamedTuple, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..statuses import SUPPRESSED_STATUSES, TOMBSTONE_PREFIX
from .schema import list_members, subscriber_events, subscribers
from .common import _NOT_TOMBSTONE, as_utc


_PLAIN_JSON_KEY = re.compile(r"[A-Za-z0-9_. -]+")
_WITHOUT_ID = itemgetter(slice(1, None))  # an export row's cells: a C-level slice, not a Python step per row


def _export_iso(value: datetime | None) -> str:
    value = as_utc(value)
    return value.isoformat(timespec="seconds") if value else ""


def _attribute_cell(value: object) -> str:
    """An attribute's export cell: "" when unset, a string as it is, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _export_pages_core(store: "BulkQueries", attribute_names: Sequence[str], status: str | None,
                       batch: int) -> Iterator[list[tuple]]:
    """`Store.export_pages` on any engine, through SQLAlchemy Core rows: the reference."""
    for page in store.subscriber_pages(status, batch):
        yield [(row.email_given, row.name, row.language, row.status, row.source, _export_iso(row.created_at),
                _export_iso(row.confirmed_at), _export_iso(row.unsubscribed_at), " ".join(lists),
                *(_attribute_cell((row.attributes or {}).get(name)) for name in attribute_names))
               for row, lists in page]


def _holds_null(rows: list[tuple], first: int, cells: int) -> bool:
    """Whether a cell from `first` on (`cells` of them) is NULL in any of `rows`: a C-level scan."""
    if cells == 1:
        return None in map(itemgetter(first), rows)
    return None in chain.from_iterable(map(itemgetter(slice(first, first + cells)), rows))


# ----- bulk writers of the import (see Store.insert_imported) ----------------------------------------
IMPORT_ROW_FIELDS = ("line", "key", "given", "name", "language", "attributes_json", "lists", "digest", "status",
                     "created_at", "status_at")


(IMPORT_LINE, IMPORT_KEY, IMPORT_GIVEN, IMPORT_NAME, IMPORT_LANGUAGE, IMPORT_ATTRIBUTES, IMPORT_LISTS, IMPORT_DIGEST,
 IMPORT_STATUS, IMPORT_CREATED_AT, IMPORT_STATUS_AT) = range(len(IMPORT_ROW_FIELDS))


class ImportExisting(NamedTuple):
    id: int
    status: str
    import_digest: str | None
    confirmed_at: datetime | None = None  # UTC


# For the import's connection on SQLite (Store.import_connection). Foreign keys are not checked
# while it lasts: the import only inserts people and then their events and memberships, under the
# ids it just inserted in the same transaction (a check per row cost ~5 % of the import). A page
# cache of 16 MB (8 before; 64 MB costs too much memory) and checkpoints every 20,000 pages (80 MB
# of WAL; 10,000 before): the email index is written at random, and a million-row import read and
# wrote 2.9 GB of pages through the OS with 8 MB, 1.9 GB with 16 (≈ 1 s less system time).
_SQLITE_IMPORT_PRAGMAS = (("cache_size", -16384), ("wal_autocheckpoint", 20000), ("foreign_keys", 0))
_SQLITE_IMPORT_PARAMS = itemgetter(IMPORT_KEY, IMPORT_GIVEN, IMPORT_NAME, IMPORT_LANGUAGE, IMPORT_STATUS,
                                   IMPORT_ATTRIBUTES, IMPORT_DIGEST, IMPORT_CREATED_AT, IMPORT_STATUS_AT)
_IMPORT_DATES = (itemgetter(IMPORT_CREATED_AT), itemgetter(IMPORT_STATUS_AT))
_IMPORT_STATUS_OF, _IMPORT_LINE_OF = itemgetter(IMPORT_STATUS), itemgetter(IMPORT_LINE)


# SQLite before 3.32 allows 999 parameters a statement, later versions 32,766.
_SQLITE_MAX_PARAMS = 30_000 if sqlite3.sqlite_version_info >= (3, 32) else 999


def _sqlite_in(conn: Connection, columns: str, emails: list[str]) -> list[tuple]:
    """`SELECT columns FROM subscribers WHERE email IN (emails)` on the raw connection."""
    dbapi = conn.connection.driver_connection
    found: list[tuple] = []
    for start in range(0, len(emails), _SQLITE_MAX_PARAMS):
        part = emails[start:start + _SQLITE_MAX_PARAMS]
        marks = ",".join("?" * len(part))
        found.extend(dbapi.execute(f"SELECT {columns} FROM {subscribers.name} WHERE email IN ({marks})", part))
    return found


def _sqlite_time(text: str | None) -> datetime | None:
    return None if text is None else as_utc(datetime.fromisoformat(text))


def _imported_status(row: tuple) -> str:
    return row[IMPORT_STATUS] or "active"


# The columns every subscriber insert writes (all but `id`), in this order: the Core insert, the
# SQLite statement and the PostgreSQL COPY are built from it once, at import. A column added here
# needs its value in `_subscriber_values` (Core, COPY) and its expression in `_SQLITE_VALUES`; the
# statement below is built at import and fails (KeyError) when one is missing, and
# tests/test_bulk_import_export.py compares every column the three paths write.
IMPORT_INSERT_COLUMNS = ("email", "email_given", "name", "language", "status", "source", "attributes",
                         "import_digest", "created_at", "updated_at", "confirmed_at", "unsubscribed_at")


def _subscriber_values(row: tuple, status: str, source: str, now: datetime | str) -> tuple:
    """One import row's values in IMPORT_INSERT_COLUMNS order (attributes as its JSON text); `now`
    as a datetime, or as its ISO 8601 text for a COPY."""
    status_at = row[IMPORT_STATUS_AT] or now
    return (row[IMPORT_KEY], row[IMPORT_GIVEN], row[IMPORT_NAME], row[IMPORT_LANGUAGE], status, source,
            row[IMPORT_ATTRIBUTES], row[IMPORT_DIGEST], row[IMPORT_CREATED_AT] or now, now,
            status_at if status == "active" else None, status_at if status in SUPPRESSED_STATUSES else None)


_ATTRIBUTES_AT = IMPORT_INSERT_COLUMNS.index("attributes")


def _insert_imported_core(conn: Connection, rows: list[tuple], source: str, reason: str, now: datetime) -> list[int]:
    """The reference writer (any engine) and the one statement that inserts subscribers: SQLAlchemy
    Core, values through the column types. `Store.insert_subscriber` (one person: the CLI, the
    subscribe form) is this with one row; the import's fast paths below write what it writes.
    Returns the new ids in the order of `rows`. A row without a line (IMPORT_LINE None) has
    `reason` as its event's reason, else "<reason> line N"."""
    values = []
    for row in rows:
        cells = list(_subscriber_values(row, _imported_status(row), source, now))
        cells[_ATTRIBUTES_AT] = json.loads(cells[_ATTRIBUTES_AT])  # Core serialises it through the column type
        values.append(dict(zip(IMPORT_INSERT_COLUMNS, cells, strict=True)))
    ids = conn.execute(subscribers.insert().returning(subscribers.c.id, sort_by_parameter_order=True),
                       values).scalars().all()
    conn.execute(subscriber_events.insert(), [{
        "subscriber_id": sid, "at": now, "kind": "created", "old_status": None, "new_status": _imported_status(row),
        "source": source, "reason": reason if row[IMPORT_LINE] is None else f"{reason} line {row[IMPORT_LINE]}",
    } for sid, row in zip(ids, rows)])
    memberships = [{"list_name": name, "subscriber_id": sid} for sid, row in zip(ids, rows) for name in row[IMPORT_LISTS]]
    if memberships:
        conn.execute(list_members.insert(), memberships)
    return ids


# The SQLite import statement's value of each column: ?1 key, ?2 given, ?3 name, ?4 language,
# ?5 status (NULL: active), ?6 attributes, ?7 digest, ?8 created_at, ?9 status_at (both NULL: now);
# {source}, {now} and {suppressed} are literals filled per batch (the same for every row).
_SQLITE_VALUES = {
    "email": "?1", "email_given": "?2", "name": "?3", "language": "?4", "status": "coalesce(?5, 'active')",
    "source": "{source}", "attributes": "?6", "import_digest": "?7", "created_at": "coalesce(?8, {now})",
    "updated_at": "{now}", "confirmed_at": "CASE WHEN coalesce(?5, 'active') = 'active' THEN coalesce(?9, {now}) END",
    "unsubscribed_at": "CASE WHEN ?5 IN ({suppressed}) THEN coalesce(?9, {now}) END",
}
_SQLITE_INSERT = (f"INSERT INTO {subscribers.name} ({', '.join(IMPORT_INSERT_COLUMNS)}) "
                  f"VALUES ({', '.join(_SQLITE_VALUES[column] for column in IMPORT_INSERT_COLUMNS)})")
if set(_SQLITE_VALUES) != set(IMPORT_INSERT_COLUMNS):
    raise RuntimeError(f"_SQLITE_VALUES names {sorted(set(_SQLITE_VALUES) ^ set(IMPORT_INSERT_COLUMNS))} wrongly")
_COPY_SUBSCRIBERS = f"COPY {subscribers.name} (id, {', '.join(IMPORT_INSERT_COLUMNS)}) FROM STDIN"


def _insert_imported_sqlite(conn: Connection, rows: list[tuple], source: str, reason: str, now: datetime,
                            skip_existing: bool = False) -> list[tuple]:
    """`_insert_imported_core` in two or three `executemany` calls fed by C-level iterators (no Python
    step per row unless a row dates its creation or status). The `created` events are read from the
    rows just written, their line numbers given as one JSON array a thousand rows (`json_each`):
    ≈ 1.3 s less CPU a million rows than an `executemany` of one tuple per event (a statement of
    10,000 rows held ≈ 7 MB more).

    SQLite numbers the rows max(id) + 1 … as it inserts them, exactly as `first` below predicts: the
    batch runs in a BEGIN IMMEDIATE transaction, so no other writer can take ids meanwhile. What is
    the same for every row (source, timestamps) is a literal in the statement, written exactly as
    SQLAlchemy's bind processors would have.

    `skip_existing`: a row whose address is already in the table is left out (ON CONFLICT DO
    NOTHING: the probe of the email index the insert makes anyway, instead of a lookup before it) and
    returned, untouched, for the caller to decide; the others get their ids in the same order.
    """
    if not rows:
        return []
    dialect = conn.dialect
    stamp = _bind_processor(subscribers.c.created_at, dialect)
    now_sql = _sql_literal(stamp(now))
    at_sql = _sql_literal(_bind_processor(subscriber_events.c.at, dialect)(now))
    source_sql, reason_sql = _sql_literal(source), _sql_literal(reason + " line ")
    suppressed_sql = ", ".join(_sql_literal(s) for s in SUPPRESSED_STATUSES)
    dbapi = conn.connection.driver_connection
    first = dbapi.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {subscribers.name}").fetchone()[0]
    params = map(_SQLITE_IMPORT_PARAMS, rows)
    if any(map(_IMPORT_DATES[0], rows)) or any(map(_IMPORT_DATES[1], rows)):
        params = ((*head, None if created is None else stamp(created), None if at is None else stamp(at))
                  for *head, created, at in params)
    changes = dbapi.total_changes
    dbapi.executemany(_SQLITE_INSERT.format(source=source_sql, now=now_sql, suppressed=suppressed_sql)
                      + (" ON CONFLICT (email) DO NOTHING" if skip_existing else ""), params)
    existing: list[tuple] = []
    if dbapi.total_changes - changes != len(rows):  # some were there already (skip_existing)
        added = {email for email, in dbapi.execute(f"SELECT email FROM {subscribers.name} WHERE id >= ?", (first,))}
        existing = [row for row in rows if row[IMPORT_KEY] not in added]
        rows = [row for row in rows if row[IMPORT_KEY] in added]
        if not rows:
            return existing
    last = dbapi.execute("SELECT last_insert_rowid()").fetchone()[0]
    if last != first + len(rows) - 1:
        raise RuntimeError(f"import: SQLite numbered the rows {last - len(rows) + 1}…{last}, not from {first}")
    lines = list(map(_IMPORT_LINE_OF, rows))
    dbapi.executemany(
        f"INSERT INTO {subscriber_events.name} (subscriber_id, at, kind, old_status, new_status, source, reason) "
        f"SELECT s.id, {at_sql}, 'created', NULL, s.status, {source_sql}, {reason_sql} || line.value "
        f"FROM json_each(?2) AS line JOIN {subscribers.name} AS s ON s.id = ?1 + line.key",
        [(first + start, json.dumps(lines[start:start + 1000])) for start in range(0, len(lines), 1000)])
    memberships = [(name, sid) for sid, row in enumerate(rows, first) if row[IMPORT_LISTS] for name in row[IMPORT_LISTS]]
    if memberships:
        dbapi.executemany(f"INSERT INTO {list_members.name} (list_name, subscriber_id) VALUES (?, ?)", memberships)
    return existing


def _insert_imported_postgresql(conn: Connection, rows: list[tuple], source: str, reason: str, now: datetime) -> None:
    """`_insert_imported_core` with COPY: ids drawn from the table's own sequence, rows streamed.
    The import's instant goes as its ISO 8601 text (with its offset), made once: the server reads
    the same instant, and psycopg no longer formats a datetime per cell (write_row took 6.5 s of a
    million-row import's CPU, 2.2 s now)."""
    stamp = as_utc(now).isoformat()
    cursor = conn.connection.driver_connection.cursor()
    cursor.execute(f"SELECT nextval(pg_get_serial_sequence('{subscribers.name}', 'id')) "
                   f"FROM generate_series(1, %s)", (len(rows),))
    ids = sorted(sid for sid, in cursor.fetchall())
    statuses = [_imported_status(row) for row in rows]
    with cursor.copy(_COPY_SUBSCRIBERS) as copy:
        for sid, row, status in zip(ids, rows, statuses):
            copy.write_row((sid, *_subscriber_values(row, status, source, stamp)))
    with cursor.copy(f"COPY {subscriber_events.name} (subscriber_id, at, kind, old_status, new_status, source, reason) "
                     f"FROM STDIN") as copy:
        for sid, row, status in zip(ids, rows, statuses):
            copy.write_row((sid, stamp, "created", None, status, source, f"{reason} line {row[IMPORT_LINE]}"))
    memberships = [(name, sid) for sid, row in zip(ids, rows) if row[IMPORT_LISTS] for name in row[IMPORT_LISTS]]
    if memberships:
        with cursor.copy(f"COPY {list_members.name} (list_name, subscriber_id) FROM STDIN") as copy:
            for membership in memberships:
                copy.write_row(membership)
    cursor.close()


def _sql_literal(value: str) -> str:
    if "\0" in value:
        raise ValueError("NUL in an SQL literal")
    return "'" + value.replace("'", "''") + "'"


def _bind_processor(column: sa.Column, dialect: sa.Dialect):
    processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


class BulkQueries:
    """The import's and export's queries (mixed into `Store`)."""

    is_sqlite: bool

    @contextmanager
    def import_connection(self) -> Iterator[Connection]:
        """One connection for a whole import; each batch is its own transaction on it. On SQLite a
        bigger page cache (the email index is written at random) and fewer, larger checkpoints while
        it lasts, restored afterwards (the connection goes back to the pool)."""
        with self.engine.connect() as conn:
            saved: list[tuple[str, object]] = []
            if conn.dialect.name == "sqlite":
                dbapi = conn.connection.driver_connection  # raw: reading a PRAGMA must not open a transaction
                for name, value in _SQLITE_IMPORT_PRAGMAS:
                    saved.append((name, dbapi.execute(f"PRAGMA {name}").fetchone()[0]))
                    dbapi.execute(f"PRAGMA {name} = {int(value)}")
            try:
                yield conn
            finally:
                if saved and not conn.invalidated:
                    dbapi = conn.connection.driver_connection
                    for name, value in saved:
                        dbapi.execute(f"PRAGMA {name} = {int(value)}")

    @staticmethod
    def import_fast_path(conn: Connection, source: str) -> str | None:
        """"sqlite" or "postgresql" where raw driver statements replace SQLAlchemy Core for the bulk
        of an import (its per-row, per-value processing was most of the cost), else None.

        They write exactly what Core would: timestamps through the same bind processors (SQLite) or
        the same datetime objects (PostgreSQL), JSON as json.dumps writes it — which is what Core does
        with the default serializer, so only with that one.
        """
        dialect = conn.dialect
        if getattr(dialect, "_json_serializer", None) is not None:
            return None
        if dialect.name == "sqlite" and "\0" not in source:
            return "sqlite"
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            return "postgresql"
        return None

    def existing_for_import(self, conn: Connection, keys: list[str], fast: str | None) -> dict[str, "ImportExisting"]:
        """The subscribers among these address keys: key → (id, status, import_digest, confirmed_at)."""
        if fast == "sqlite":  # the raw driver hands timestamps back as text
            return {email: ImportExisting(sid, status, digest, _sqlite_time(confirmed)) for email, sid, status, digest, confirmed
                    in _sqlite_in(conn, "email, id, status, import_digest, confirmed_at", keys)}
        if fast == "postgresql":  # one array parameter, not thousands of placeholders for the driver to parse
            found = conn.connection.driver_connection.execute(
                f"SELECT email, id, status, import_digest, confirmed_at FROM {subscribers.name} WHERE email = ANY(%s)",
                (keys,))
        else:
            found = conn.execute(sa.select(subscribers.c.email, subscribers.c.id, subscribers.c.status,
                                           subscribers.c.import_digest, subscribers.c.confirmed_at)
                                 .where(subscribers.c.email.in_(keys)))
        return {email: ImportExisting(sid, status, digest, as_utc(confirmed)) for email, sid, status, digest, confirmed in found}

    def any_erased(self, conn: Connection) -> bool:
        """Whether anyone was ever erased (one index probe: most lists never had a tombstone)."""
        if conn.dialect.name == "sqlite":  # a range is an index probe; LIKE is not (case-insensitive by default)
            after = TOMBSTONE_PREFIX[:-1] + chr(ord(TOMBSTONE_PREFIX[-1]) + 1)
            erased = sa.and_(subscribers.c.email >= TOMBSTONE_PREFIX, subscribers.c.email < after)
        else:
            erased = subscribers.c.email.startswith(TOMBSTONE_PREFIX)
        return conn.execute(sa.select(sa.literal(1)).where(erased).limit(1)).first() is not None

    def tombstones_among(self, conn: Connection, tombstones: list[str], fast: str | None) -> set[str]:
        """Which of these tombstone keys are in the table."""
        if fast == "sqlite":
            found = _sqlite_in(conn, "email", tombstones)
        elif fast == "postgresql":
            found = conn.connection.driver_connection.execute(
                f"SELECT email FROM {subscribers.name} WHERE email = ANY(%s)", (tombstones,))
        else:
            found = conn.execute(sa.select(subscribers.c.email).where(subscribers.c.email.in_(tombstones)))
        return {email for email, in found}

    def insert_imported(self, conn: Connection, rows: list[tuple], *, source: str, reason: str, now: datetime,
                        fast: str | None) -> None:
        """Insert new subscribers (IMPORT_ROW_FIELDS tuples), one `created` event each (reason
        "<reason> line N") and their list memberships. `status_at`, when given, dates the status
        (confirmed_at of an active person, unsubscribed_at of a suppressed one); else `now`."""
        writer = {"sqlite": _insert_imported_sqlite, "postgresql": _insert_imported_postgresql}.get(
            fast, _insert_imported_core)
        writer(conn, rows, source, reason, now)

    @staticmethod
    def insert_new_imported(conn: Connection, rows: list[tuple], *, source: str, reason: str,
                            now: datetime) -> list[tuple] | None:
        """`insert_imported` of the rows whose address is not in the table yet, without looking them
        up first (worth it when most rows are new people). Returns the rows left out (their address
        is in the table: nothing written for them), or None when nothing was written (look the rows
        up, then insert).

        SQLite: ON CONFLICT DO NOTHING (the email index is probed once, by the insert, instead of by
        a lookup and then the insert). PostgreSQL: the COPY of them all inside a savepoint; when one
        address is there already, back to the savepoint and None (the ids it drew stay unused, as
        after any rollback). Other engines: None.
        """
        fast = BulkQueries.import_fast_path(conn, source)
        if fast == "sqlite":
            return _insert_imported_sqlite(conn, rows, source, reason, now, skip_existing=True)
        if fast != "postgresql":
            return None
        from psycopg.errors import UniqueViolation  # the fast path is psycopg's (not loaded for SQLite)
        dbapi = conn.connection.driver_connection
        dbapi.execute("SAVEPOINT import_new_people")
        try:
            _insert_imported_postgresql(conn, rows, source, reason, now)
        except UniqueViolation:
            dbapi.execute("ROLLBACK TO SAVEPOINT import_new_people")
            return None
        dbapi.execute("RELEASE SAVEPOINT import_new_people")
        return []

    def profiles_of(self, conn: Connection, ids: Sequence[int]) -> dict[int, tuple[str, str, dict]]:
        """id → (name, language, attributes) of these subscribers."""
        return {sid: (name, language, attributes or {}) for sid, name, language, attributes in conn.execute(
            sa.select(subscribers.c.id, subscribers.c.name, subscribers.c.language, subscribers.c.attributes)
            .where(subscribers.c.id.in_(list(ids))))}

    def update_imported(self, conn: Connection, updates: Sequence[dict], *, source: str, now: datetime) -> None:
        """Rewrite changed people (rare next to inserts and unchanged rows: SQLAlchemy Core on every
        engine). Each dict: id, given, name, language, attributes (the whole new dict), digest, lists."""
        conn.execute(subscribers.update().where(subscribers.c.id == sa.bindparam("b_id")).values(
            email_given=sa.bindparam("b_given"), name=sa.bindparam("b_name"), language=sa.bindparam("b_language"),
            attributes=sa.bindparam("b_attributes"), import_digest=sa.bindparam("b_digest"), updated_at=now), [{
                "b_id": u["id"], "b_given": u["given"], "b_name": u["name"], "b_language": u["language"],
                "b_attributes": u["attributes"], "b_digest": u["digest"]} for u in updates])
        for update in updates:
            self.add_list_memberships(conn, update["id"], update["lists"])
        conn.execute(subscriber_events.insert(), [{
            "subscriber_id": u["id"], "at": now, "kind": "updated", "source": source, "reason": "import",
        } for u in updates])

    @staticmethod
    def add_list_memberships(conn: Connection, subscriber_id: int, lists: Sequence[str]) -> None:
        """Add a person to these named lists (those they are not in yet)."""
        if not lists:
            return
        have = set(conn.execute(sa.select(list_members.c.list_name)
                                .where(list_members.c.subscriber_id == subscriber_id)).scalars())
        new = [{"list_name": name, "subscriber_id": subscriber_id} for name in lists if name not in have]
        if new:
            conn.execute(list_members.insert(), new)

    def subscriber_pages(self, status: str | None = None, batch: int = 5000) -> Iterator[list[tuple[sa.Row, list[str]]]]:
        """Every subscriber (tombstones excluded) in id order with their sorted list names, in keyset
        pages of `batch` fetched each on a short connection: flat memory, no long read transaction."""
        last_id = 0
        while True:
            query = (sa.select(subscribers).where(subscribers.c.id > last_id, _NOT_TOMBSTONE)
                     .order_by(subscribers.c.id).limit(batch))
            if status:
                query = query.where(subscribers.c.status == status)
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
                members: dict[int, list[str]] = {}
                if rows:
                    for sid, list_name in conn.execute(
                            sa.select(list_members.c.subscriber_id, list_members.c.list_name)
                            .where(list_members.c.subscriber_id.between(rows[0].id, rows[-1].id))):
                        members.setdefault(sid, []).append(list_name)
            if not rows:
                return
            yield [(row, sorted(members.get(row.id, ()))) for row in rows]
            last_id = rows[-1].id

    def export_pages(self, attribute_names: Sequence[str], status: str | None = None,
                     batch: int = 5000) -> Iterator[list[tuple]]:
        """The cells `export` writes, in id order (tombstones excluded), as pages of up to `batch`
        tuples `(email_given, name, language, status, source, created_at, confirmed_at,
        unsubscribed_at, lists, *attributes)`, all strings: timestamps as ISO 8601 UTC text to the
        second (`2026-11-26T07:00:00+00:00`, "" when unset), `lists` the list names sorted by code
        point and joined by spaces, then the value of each of `attribute_names` ("" when unset; a
        string as it is, anything else as JSON with `json.dumps(value, ensure_ascii=False)`).

        Each page is the people of one range of `batch` ids, read on a short connection (flat memory,
        no long read transaction); an empty range jumps to the next id in use. On SQLite and
        PostgreSQL the driver's own cursor runs it and the database formats the cells (timestamps,
        string attributes): no row objects, no datetime or JSON object per row, and the rows come as
        the driver returns them. A range holding list members, or a non-string attribute (NULL from
        the SQL), is read again with ids and completed in Python. Other engines (and attribute names
        SQLite's JSON paths cannot quote) go through `subscriber_pages`, the reference.
        """
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            yield from _export_pages_core(self, attribute_names, status, batch)
            return
        # Each attribute cell is the value when it is a string, "" when absent or null, else NULL:
        # such rows are completed from the JSON in Python (below).
        if dialect == "sqlite":
            stamp = "coalesce(strftime('%Y-%m-%dT%H:%M:%S+00:00', {0}), '')"
            mark, prefix_sql = "?", f"substr(email, 1, {len(TOMBSTONE_PREFIX)})"
            attribute_sql = ("CASE coalesce(json_type(attributes, ?), 'null') WHEN 'text' THEN "
                             "json_extract(attributes, ?) WHEN 'null' THEN '' END")
            # SQLite 3.40 matches a path's key against the key's JSON text as stored, escapes and all
            # (json.dumps writes "é" as "\u00e9"): only plain names are looked up in SQL.
            plain = [_PLAIN_JSON_KEY.fullmatch(name) is not None for name in attribute_names]
            attribute_params = [part for name, ok in zip(attribute_names, plain) if ok for part in (f'$."{name}"',) * 2]
            attribute_cells = [attribute_sql if ok else "NULL" for ok in plain]
            with_ids = not all(plain)  # those cells are all completed in Python
        else:
            stamp = "coalesce(to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"'), '')"
            mark, prefix_sql = "%s", f"left(email, {len(TOMBSTONE_PREFIX)})"
            attribute_cells = [("CASE coalesce(json_typeof(attributes -> %s), 'null') WHEN 'string' THEN "
                                "attributes ->> %s WHEN 'null' THEN '' END")] * len(attribute_names)
            attribute_params = [part for name in attribute_names for part in (name,) * 2]
            with_ids = False
        cells = (f"email_given, name, language, status, source, "
                 f"{', '.join(stamp.format(column) for column in ('created_at', 'confirmed_at', 'unsubscribed_at'))}, "
                 f"''{''.join(', ' + cell for cell in attribute_cells)}")
        where = (f"FROM {subscribers.name} WHERE id >= {mark} AND id < {mark} AND {prefix_sql} <> {mark}"
                 + (f" AND status = {mark}" if status else "") + " ORDER BY id")
        query, query_with_ids = f"SELECT {cells} {where}", f"SELECT id, {cells} {where}"
        members_query = (f"SELECT subscriber_id, list_name FROM {list_members.name} "
                         f"WHERE subscriber_id >= {mark} AND subscriber_id < {mark}")
        attributes_query = (f"SELECT id, {'attributes' if dialect == 'sqlite' else 'attributes::text'} "
                            f"FROM {subscribers.name} WHERE id >= {mark} AND id < {mark}")
        next_query = f"SELECT min(id) FROM {subscribers.name} WHERE id >= {mark}"
        low = 0
        while True:
            high = low + batch
            params = (*attribute_params, low, high, TOMBSTONE_PREFIX, *((status,) if status else ()))
            with self.engine.connect() as conn:
                cursor = conn.connection.driver_connection.cursor()
                try:
                    cursor.execute(members_query, (low, high))
                    lists: dict[int, list[str]] = {}
                    for sid, list_name in cursor.fetchall():
                        lists.setdefault(sid, []).append(list_name)
                    ids = bool(lists) or with_ids
                    cursor.execute(query_with_ids if ids else query, params)
                    rows = cursor.fetchall()
                    incomplete = bool(attribute_names and rows) and _holds_null(rows, 9 + ids, len(attribute_names))
                    if incomplete and not ids:  # ids are needed to complete them
                        cursor.execute(query_with_ids, params)
                        rows, ids = cursor.fetchall(), True
                    completed: dict[int, dict] = {}
                    if incomplete:
                        cursor.execute(attributes_query, (low, high))
                        completed = {sid: json.loads(text) for sid, text in cursor.fetchall()}
                    following = None
                    if not rows:
                        cursor.execute(next_query, (high,))
                        following = cursor.fetchone()[0]
                finally:
                    cursor.close()
                if dialect == "postgresql":
                    conn.rollback()  # the page's read transaction ends here
            if not rows:
                if following is None:
                    return
                low = following
                continue
            low = high
            if ids:
                for index, row in enumerate(rows):
                    sid = row[0]
                    if sid in lists or None in row:
                        row = list(row[1:])
                        row[8] = " ".join(sorted(lists.get(sid, ())))
                        for position, name in enumerate(attribute_names, 9):
                            if row[position] is None:
                                row[position] = _attribute_cell(completed.get(sid, {}).get(name))
                        rows[index] = tuple(row)
                    else:
                        rows[index] = row[1:]
            yield rows
            del rows

    def attribute_names(self, status: str | None = None) -> list[str]:
        """Every attribute name in use (tombstones excluded), sorted: one query where the database can
        list JSON keys (SQLite's json_each, PostgreSQL's json_object_keys), else a scan."""
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            names: set[str] = set()
            for page in self.subscriber_pages(status):
                for row, _ in page:
                    names.update((row.attributes or {}).keys())
            return sorted(names)
        if dialect == "sqlite":
            # what the import and Core write starts with "{": the JSON parse of json_type only for
            # the others; the tombstone test by prefix is an index-free comparison, not a LIKE
            keys = sa.func.json_each(subscribers.c.attributes).table_valued("key")
            query = (sa.select(keys.c.key).select_from(subscribers).join(keys, sa.true())
                     .where(sa.or_(sa.func.substr(subscribers.c.attributes, 1, 1) == "{",
                                   sa.func.json_type(subscribers.c.attributes) == "object"),
                            sa.func.substr(subscribers.c.email, 1, len(TOMBSTONE_PREFIX)) != TOMBSTONE_PREFIX))
        else:
            query = (sa.select(sa.func.json_object_keys(subscribers.c.attributes))
                     .where(sa.func.json_typeof(subscribers.c.attributes) == "object", _NOT_TOMBSTONE))
        query = query.distinct()
        if status:
            query = query.where(subscribers.c.status == status)
        with self.engine.connect() as conn:
            return sorted(conn.execute(query).scalars())
