"""What every part of the store shares: UTC time as stored, a status change, chunking."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Sequence


from ..statuses import TOMBSTONE_PREFIX
from .schema import subscribers


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
