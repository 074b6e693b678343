"""The export's CSV text built by SQLite itself: each page arrives as two strings a person, joined
into one string a page, so Python makes no object per cell and runs no step per row.

The text is what `csv.writer(out, lineterminator="\\n")` writes for the cells `Store.export_pages`
gives (`tests/test_bulk_import_export.py` compares the two on generated lists): a cell is quoted,
its quotes doubled, when it holds a character the running Python's csv module quotes for (probed
below, so a Python that also quotes CR agrees). Rows the SQL cannot finish — a person in a list, an
attribute that is not a string, an attribute name SQLite's JSON paths cannot quote — are finished in
Python through `csv.writer` itself.
"""

from __future__ import annotations

import csv
import json
from itertools import chain
from operator import itemgetter
from typing import Iterator, Sequence

import sqlalchemy as sa

from .schema import TOMBSTONE_PREFIX, list_members, subscribers


class _Last:
    """A file that keeps only the last text written (csv.writer's output of one row)."""

    text = ""

    def write(self, text: str) -> int:
        self.text = text
        return len(text)


def _quoted_characters() -> str:
    last = _Last()
    writer = csv.writer(last, lineterminator="\n")
    found = ""
    for char in ",\"\n\r\t\\' ;":
        writer.writerow(["a", f"b{char}c"])
        if last.text != f"a,b{char}c\n":
            found += char
    return found


_QUOTED = _quoted_characters()
_GLOB = "'*[" + "".join(f"' || char({ord(c)}) || '" if c in "\n\r'" else c for c in _QUOTED) + "]*'"


def _quote(cell: str) -> str:
    """The SQL of `cell` as a CSV cell: quoted, quotes doubled, when it holds a quoted character."""
    return f"""CASE WHEN {cell} GLOB {_GLOB} THEN '"' || replace({cell}, '"', '""') || '"' ELSE {cell} END"""


def _cells(cells: Sequence[str]) -> str:
    """The SQL of these non-NULL text cells joined by commas: one test for the common case where none
    needs quotes (NULL when one of them is NULL)."""
    plain = " || ',' || ".join(cells)
    quoted = " || ',' || ".join(_quote(cell) for cell in cells)
    return f"CASE WHEN ({' || '.join(cells)}) GLOB {_GLOB} THEN {quoted} ELSE {plain} END"


_HEAD_TAIL = itemgetter(1, 2)


def sqlite_export_lines(engine: sa.Engine, attribute_names: Sequence[str], plain: Sequence[bool],
                        status: str | None, batch: int) -> Iterator[tuple[str, int]]:
    """`(text, rows)` a page: the CSV lines of up to `batch` people in id order (tombstones excluded)
    with the columns of `Store.export_pages`. `plain[i]`: attribute i can be read by a JSON path."""
    stamp = "coalesce(strftime('%Y-%m-%dT%H:%M:%S+00:00', {0}), '')"
    attribute_sql = ("(CASE coalesce(json_type(attributes, ?{0}), 'null') WHEN 'text' THEN "
                     "json_extract(attributes, ?{0}) WHEN 'null' THEN '' END)")
    # numbered parameters: each attribute's path is used several times
    params = [f'$."{name}"' for name in attribute_names]
    attributes = [attribute_sql.format(number) if ok else "NULL" for number, ok in enumerate(plain, 1)]
    n = len(params)
    # head: the cells before `lists`, each followed by a comma; tail: a comma before each attribute
    # cell, then the line's end (NULL when an attribute is to be finished in Python)
    head = (_cells(["email_given", "name", "language", "status", "source"]) + " || ',' || "
            + " || ',' || ".join(stamp.format(c) for c in ("created_at", "confirmed_at", "unsubscribed_at")) + " || ','")
    tail = ("',' || " + _cells(attributes) + " || char(10)") if attributes else "char(10)"
    query = (f"SELECT id, {head}, {tail} FROM {subscribers.name} WHERE id > ?{n + 1} AND "
             f"substr(email, 1, {len(TOMBSTONE_PREFIX)}) <> ?{n + 2}" + (f" AND status = ?{n + 3}" if status else "")
             + f" ORDER BY id LIMIT {int(batch)}")
    members_query = f"SELECT subscriber_id, list_name FROM {list_members.name} WHERE subscriber_id BETWEEN ? AND ?"
    attributes_query = f"SELECT id, attributes FROM {subscribers.name} WHERE id BETWEEN ? AND ?"
    last_id = 0
    last = _Last()
    writer = csv.writer(last, lineterminator="\n")
    while True:
        with engine.connect() as conn:
            cursor = conn.connection.driver_connection.cursor()
            try:
                cursor.execute(query, (*params, last_id, TOMBSTONE_PREFIX, *((status,) if status else ())))
                rows = cursor.fetchall()
                if not rows:
                    return
                first, last_id = rows[0][0], rows[-1][0]
                cursor.execute(members_query, (first, last_id))
                lists: dict[int, list[str]] = {}
                for sid, list_name in cursor.fetchall():
                    lists.setdefault(sid, []).append(list_name)
                text = None
                if not lists:
                    try:
                        text = "".join(chain.from_iterable(map(_HEAD_TAIL, rows)))
                    except TypeError:  # a NULL tail: finished below
                        pass
                completed: dict[int, dict] = {}
                if text is None and attribute_names and any(row[2] is None for row in rows):
                    cursor.execute(attributes_query, (first, last_id))
                    completed = {sid: json.loads(data) for sid, data in cursor.fetchall()}
            finally:
                cursor.close()
        if text is None:
            parts = []
            for sid, row_head, row_tail in rows:
                if row_tail is None or sid in lists:
                    values = completed[sid] if row_tail is None else None
                    writer.writerow(["", " ".join(sorted(lists.get(sid, ()))),
                                     *(_attribute_cell(values.get(name)) for name in attribute_names)]
                                    if values is not None else ["", " ".join(sorted(lists[sid]))])
                    if values is None:  # the attribute cells SQLite wrote stand
                        parts += (row_head[:-1], last.text[:-1], row_tail)
                    else:
                        parts += (row_head[:-1], last.text)
                else:
                    parts += (row_head, row_tail)
            text = "".join(parts)
        yield text, len(rows)
        del rows, text


def _attribute_cell(value: object) -> str:
    """An attribute's export cell: "" when unset, a string as it is, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
