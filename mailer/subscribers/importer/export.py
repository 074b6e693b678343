"""The list as CSV: what `mailer subscribers export` writes and `import` reads back unchanged.

UTF-8, comma, CRLF line endings (RFC 4180 §2.1: with a bare "\n" terminator Python 3.11's csv
writer leaves a cell holding a lone CR unquoted, and that cell would not read back whole), a header:
`email, name, language, status, source, created_at, confirmed_at, unsubscribed_at, lists`, then one column per attribute in use (sorted). Erased people's tombstones
are nobody and are not written.

The cells come ready-made from `Store.export_pages` (formatted by the database) and go to
`csv.writer.writerows` a page at a time: no per-row Python here.
"""

from __future__ import annotations

import csv
from typing import IO

from ...store import Store

EXPORT_COLUMNS = ("email", "name", "language", "status", "source", "created_at", "confirmed_at", "unsubscribed_at")


def export_csv(store: Store, out: IO[str], status: str | None = None) -> int:
    """Write the list (of `status`) to `out`; returns the number of people written."""
    attribute_names = store.attribute_names(status)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*EXPORT_COLUMNS, "lists", *attribute_names])
    count = 0
    for page in store.export_pages(attribute_names, status):
        writer.writerows(page)
        count += len(page)
    return count
