"""Events: a person's history (subscriber_events) and the providers' events (provider_events)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .schema import deliveries, provider_events, subscriber_events
from ..statuses import MAILBOX_PROVIDER
from .common import _chunks, as_utc, utcnow



class EventQueries:
    """Queries about what happened to people (mixed into `Store`)."""

    is_sqlite: bool

    def delivered_pairs(self, conn: Connection, pairs: Sequence[tuple[int, int]]) -> set[tuple[int, int]]:
        """Of (issue_id, subscriber_id) pairs, those the ledger has a delivery row for: the only pairs an
        event (a provider's, an unsubscribe link's) may be attributed to (`mailer report`)."""
        found: set[tuple[int, int]] = set()
        wanted = sorted(set(pairs))
        for chunk in _chunks(wanted, 400):
            found.update((row.issue_id, row.subscriber_id) for row in conn.execute(
                sa.select(deliveries.c.issue_id, deliveries.c.subscriber_id)
                .where(sa.tuple_(deliveries.c.issue_id, deliveries.c.subscriber_id).in_(chunk))))
        return found

    def record_event(self, conn: Connection, subscriber_id: int, kind: str, *, source: str, reason: str = "",
                     at: datetime | None = None) -> None:
        """One line of a person's history that is not a status change (confirm_sent, erased…)."""
        conn.execute(subscriber_events.insert().values(subscriber_id=subscriber_id, at=at or utcnow(), kind=kind,
                                                       source=source, reason=reason[:2000]))

    def events_since(self, conn: Connection, subscriber_id: int, kind: str, since: datetime) -> tuple[datetime | None, int]:
        """(latest time, count) of a person's events of `kind` after `since`."""
        last, count = conn.execute(
            sa.select(sa.func.max(subscriber_events.c.at), sa.func.count())
            .where(subscriber_events.c.subscriber_id == subscriber_id, subscriber_events.c.kind == kind,
                   subscriber_events.c.at > since)).one()
        return as_utc(last), count

    def last_event_at(self, conn: Connection, subscriber_id: int, kind: str) -> datetime | None:
        return as_utc(conn.execute(sa.select(sa.func.max(subscriber_events.c.at)).where(
            subscriber_events.c.subscriber_id == subscriber_id, subscriber_events.c.kind == kind)).scalar())

    def status_history(self, conn: Connection, subscriber_id: int) -> list[sa.Row]:
        """A person's events that set a status (creation included), oldest first:
        (id, at, kind, old_status, new_status, source, reason)."""
        return list(conn.execute(
            sa.select(subscriber_events.c.id, subscriber_events.c.at, subscriber_events.c.kind,
                      subscriber_events.c.old_status, subscriber_events.c.new_status, subscriber_events.c.source,
                      subscriber_events.c.reason)
            .where(subscriber_events.c.subscriber_id == subscriber_id, subscriber_events.c.new_status.is_not(None))
            .order_by(subscriber_events.c.id)))

    def insert_provider_events(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> set[str]:
        """INSERT … ON CONFLICT (provider, provider_event_id) DO NOTHING; returns the event ids that were new."""
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        statement = (insert(provider_events).on_conflict_do_nothing(
            index_elements=[provider_events.c.provider, provider_events.c.provider_event_id])
            .returning(provider_events.c.provider_event_id))
        inserted: set[str] = set()
        for chunk in _chunks(list(rows), 500):
            inserted.update(conn.execute(statement, chunk).scalars())
        return inserted

    # ----- bounce mailboxes (providers/bounces) ------------------------------------------------
    def mailbox_seen(self, conn: Connection, digests: Sequence[str]) -> set[str]:
        """The message digests a bounce mailbox run already recorded (event ids `DIGEST:0`)."""
        ids = [f"{digest}:0" for digest in digests]
        found: set[str] = set()
        for chunk in _chunks(ids, 500):
            found.update(event_id[:-2] for event_id in conn.execute(
                sa.select(provider_events.c.provider_event_id)
                .where(provider_events.c.provider == MAILBOX_PROVIDER, provider_events.c.provider_event_id.in_(chunk))
            ).scalars())
        return found
