"""The list as CSV: what `mailer subscribers export` writes and `import` reads back unchanged.

UTF-8, comma, a header: `email, name, language, status, source, created_at, confirmed_at,
unsubscribed_at, lists`, then one column per attribute in use (sorted). Erased people's tombstones
are nobody and are not written.
"""

from __future__ import annotations

import csv
import json
from typing import IO

from ...store import Store, as_utc

EXPORT_COLUMNS = ("email", "name", "language", "status", "source", "created_at", "confirmed_at", "unsubscribed_at")


def export_csv(store: Store, out: IO[str], status: str | None = None) -> int:
    """Write the list (of `status`) to `out`; returns the number of people written."""
    attribute_names = store.attribute_names(status)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*EXPORT_COLUMNS, "lists", *attribute_names])
    count = 0
    for page in store.subscriber_pages(status):
        for row, lists in page:
            attributes = row.attributes or {}
            writer.writerow([
                row.email_given, row.name, row.language, row.status, row.source,
                *(_iso(getattr(row, column)) for column in ("created_at", "confirmed_at", "unsubscribed_at")),
                " ".join(lists),
                *(_attribute_text(attributes.get(name)) for name in attribute_names),
            ])
            count += 1
    return count


def _iso(value: object) -> str:
    value = as_utc(value)  # type: ignore[arg-type]
    return value.isoformat(timespec="seconds") if value else ""


def _attribute_text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
