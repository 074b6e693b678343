"""What every part of the store shares: UTC time as stored, a status change, chunking."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Sequence

import sqlalchemy as sa

from ..statuses import TOMBSTONE_PREFIX
from .schema import DELIVERY_STATUSES, deliveries, subscribers


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class StatusChange:
    subscriber_id: int
    old: str
    new: str
    source: str
    reason: str = ""
    at: datetime | None = None  # when the change happened, if known (an export's UNSUB_TIME); default: now
    issue_id: int | None = None  # the issue it came from (an unsubscribe link's, a bounce's): `mailer report`


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


_NOT_TOMBSTONE = ~subscribers.c.email.startswith(TOMBSTONE_PREFIX)


def delivery_status_is(*statuses: str) -> sa.ColumnElement[bool]:
    """`deliveries.status` equal to one of `statuses`, written as SQL literals (never bound parameters):
    only then may SQLite's planner, and PostgreSQL's for a prepared statement's generic plan, use the
    partial indexes over queued and claimed rows (schema.py, revision 0009)."""
    unknown = set(statuses) - set(DELIVERY_STATUSES)
    if unknown or not statuses:
        raise ValueError(f"delivery statuses {sorted(unknown) or '(none)'}: not among {DELIVERY_STATUSES}")
    literals = [sa.literal_column(f"'{status}'", sa.String) for status in statuses]
    return deliveries.c.status == literals[0] if len(literals) == 1 else deliveries.c.status.in_(literals)


QUEUED_ROW = delivery_status_is("queued")  # rows a claim may take (ix_deliveries_queued, ix_deliveries_queued_due)
CLAIMED_ROW = delivery_status_is("sending")  # rows a worker holds (ix_deliveries_sending)
SENT_ROW = delivery_status_is("sent")  # is an issue partly sent (ix_deliveries_sent)
