"""The list as CSV: what `mailer subscribers export` writes and `import` reads back unchanged.

UTF-8, comma, CRLF line endings (RFC 4180 §2.1: with a bare "\n" terminator Python 3.11's csv
writer leaves a cell holding a lone CR unquoted, and that cell would not read back whole), a header:
`email, name, language, status, source, created_at, confirmed_at, unsubscribed_at, lists`, then one column per attribute in use (sorted). Erased people's tombstones
are nobody and are not written.

The cells come ready-made from `Store.export_pages` (formatted by the database), a page at a time.
The text is exactly what `csv.writer(out, lineterminator="\\r\\n").writerows(page)` writes, made
with less work: most lines need no quotes, and those are the cells joined by commas (`str.join`
mapped over the page: no Python step per row; `csv.writer` spends ≈ 2 µs a row scanning every
character for quoting). A line that holds more commas than it has cell separators, or any other
character the running Python's csv module quotes for (probed at import: `"`, CR, LF), goes through
`csv.writer` itself, as does a page holding a cell that is not a string.
"""

from __future__ import annotations

import csv
from itertools import compress, count, repeat
from operator import contains, methodcaller, ne
from typing import IO, Sequence

from ...store import Store

EXPORT_COLUMNS = ("email", "name", "language", "status", "source", "created_at", "confirmed_at", "unsubscribed_at")
_LINE_END = "\r\n"


class _LastRow:
    """A file for `csv.writer` that keeps the last row written."""

    text = ""

    def write(self, text: str) -> int:
        self.text = text
        return len(text)


def _quoted_characters() -> str:
    """The characters that make the running Python's csv writer quote a cell (with our dialect),
    other than the comma; a character it refuses outright counts too (its line goes through it)."""
    last = _LastRow()
    writer = csv.writer(last, lineterminator=_LINE_END)
    found = ""
    for code in range(128):  # no character beyond ASCII is special to the csv module
        char = chr(code)
        try:
            writer.writerow(["a", f"b{char}c"])
            plain = last.text == f"a,b{char}c{_LINE_END}"
        except csv.Error:
            plain = False
        if not plain and char != ",":
            found += char
    return found


_QUOTED = _quoted_characters()
_COMMAS = methodcaller("count", ",")


def csv_text(rows: Sequence[Sequence[str]]) -> str:
    """The CSV text of `rows` (each line ended by CRLF): byte for byte what
    `csv.writer(out, lineterminator="\\r\\n").writerows(rows)` writes."""
    if not rows:
        return ""
    last = _LastRow()
    writer = csv.writer(last, lineterminator=_LINE_END)
    width = len(rows[0])
    try:
        if width < 2 or any(map(ne, map(len, rows), repeat(width))):  # a lone empty cell is written ""
            raise TypeError("one cell a row, or rows of several widths")
        lines = list(map(",".join, rows))
    except TypeError:  # a cell that is not a string: the writer formats it
        parts = []
        for row in rows:
            writer.writerow(row)
            parts.append(last.text)
        return "".join(parts)
    # The lines whose cells need quotes: a comma inside a cell shows as one comma too many.
    redo = set(compress(count(), map(ne, map(_COMMAS, lines), repeat(width - 1))))
    whole = "".join(lines)
    for char in _QUOTED:
        if char in whole:  # one scan of the page, then of its lines only when it is there
            redo.update(compress(count(), map(contains, lines, repeat(char))))
    for index in redo:
        writer.writerow(rows[index])
        lines[index] = last.text[:-len(_LINE_END)]
    lines.append("")
    return _LINE_END.join(lines)


def export_csv(store: Store, out: IO[str], status: str | None = None) -> int:
    """Write the list (of `status`) to `out`; returns the number of people written."""
    attribute_names = store.attribute_names(status)
    out.write(csv_text([[*EXPORT_COLUMNS, "lists", *attribute_names]]))
    written = 0
    for page in store.export_pages(attribute_names, status):
        out.write(csv_text(page))
        written += len(page)
    return written
