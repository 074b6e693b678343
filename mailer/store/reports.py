"""Queries behind `mailer report` and the preview's Reports page, and the click-tracking tables.

A mixin of `Store` (it uses `self.is_sqlite`); every method takes an open connection. Shapes are
plain rows and dicts; nothing here decides what a figure means to a reader (see `sending/report.py`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..statuses import TOMBSTONE_PREFIX
from .schema import (deliveries, editions, issues, link_clicks, links, provider_events,
                     subscriber_events, subscribers)


class ReportsStore:
    is_sqlite: bool

    # ----- the link table (stored with each edition: `Store.insert_edition`) --------------------------
    def link_url(self, conn: Connection, edition_id: int, position: int) -> str | None:
        """The URL at `position` of the edition's link table, None when there is none."""
        return conn.execute(sa.select(links.c.url).where(links.c.edition_id == edition_id,
                                                         links.c.position == position)).scalar()

    def record_click(self, conn: Connection, edition_id: int, subscriber_id: int, position: int, now: datetime,
                     *, scanner: bool = False) -> bool:
        """Count one follow of a link (or, at position 0, one open) by one delivery's recipient:
        INSERT … ON CONFLICT DO UPDATE clicks + 1 (`scanner`: scanner_hits + 1 instead, a known link
        scanner's fetch, never a click). True when it was that delivery's first click for this
        position (a unique click). Only for a delivery the ledger has (the edition's issue, the person), and
        never for an erased person (`remove --purge` deleted their clicks; their old links record nothing)."""
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        known = conn.execute(sa.select(deliveries.c.id).join(editions, editions.c.issue_id == deliveries.c.issue_id)
                             .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
                             .where(editions.c.id == edition_id, deliveries.c.subscriber_id == subscriber_id,
                                    ~subscribers.c.email.startswith(TOMBSTONE_PREFIX, autoescape=True))).first()
        if known is None:
            return False
        counter = link_clicks.c.scanner_hits if scanner else link_clicks.c.clicks
        statement = insert(link_clicks).values(edition_id=edition_id, subscriber_id=subscriber_id, position=position,
                                               clicks=0 if scanner else 1, scanner_hits=1 if scanner else 0,
                                               first_at=now, last_at=now)
        # first_at: the first reader's follow (a row a scanner made gets it at the reader's first click)
        first = now if scanner else sa.case((link_clicks.c.clicks == 0, now), else_=link_clicks.c.first_at)
        statement = statement.on_conflict_do_update(
            index_elements=[link_clicks.c.edition_id, link_clicks.c.subscriber_id, link_clicks.c.position],
            set_={counter.name: counter + 1, "last_at": now,
                  **({} if scanner else {"first_at": first})})
        conn.execute(statement)
        clicks = conn.execute(sa.select(link_clicks.c.clicks).where(
            link_clicks.c.edition_id == edition_id, link_clicks.c.subscriber_id == subscriber_id,
            link_clicks.c.position == position)).scalar_one()
        return not scanner and clicks == 1

    # ----- reports -----------------------------------------------------------------------------------
    def sent_issues(self, conn: Connection) -> list[sa.Row]:
        """(id, slug, subject, status, started_at, finished_at) of every issue with a ledger, newest
        first (by the start of its send, then id)."""
        return list(conn.execute(
            sa.select(issues.c.id, issues.c.slug, issues.c.subject, issues.c.status, issues.c.started_at,
                      issues.c.finished_at)
            .where(sa.exists().where(deliveries.c.issue_id == issues.c.id))
            .order_by(sa.func.coalesce(issues.c.started_at, issues.c.frozen_at).desc(), issues.c.id.desc())))

    def issue_figures(self, conn: Connection, issue_id: int) -> dict[str, Any]:
        """One issue's counts: recipients (ledger rows), each delivery status, and distinct people
        `bounced` (a provider or mailbox event `bounced` for the issue, or a hard bounce at send time),
        `unsubscribed` (through this issue's unsubscribe link, or a provider's unsubscribe event for
        it) and `complained` (provider or mailbox `complained` events for the issue)."""
        counts = dict(conn.execute(sa.select(deliveries.c.status, sa.func.count()).where(
            deliveries.c.issue_id == issue_id).group_by(deliveries.c.status)).all())

        def people(status: str, *kinds: str) -> int:
            from_events = sa.select(subscriber_events.c.subscriber_id.label("sid")).where(
                subscriber_events.c.issue_id == issue_id, subscriber_events.c.new_status == status)
            from_providers = sa.select(provider_events.c.subscriber_id.label("sid")).where(
                provider_events.c.issue_id == issue_id, provider_events.c.kind.in_(kinds),
                provider_events.c.subscriber_id.is_not(None))
            union = sa.union(from_events, from_providers).subquery()
            return conn.execute(sa.select(sa.func.count()).select_from(union)).scalar_one()

        return {"recipients": sum(counts.values()), "statuses": counts,
                "bounced": people("bounced", "bounced"),
                "complained": people("complained", "complained"),
                "unsubscribed": people("unsubscribed", "unsubscribed", "group_unsubscribed")}

    def click_figures(self, conn: Connection, issue_id: int) -> list[sa.Row]:
        """(url, total, unique) per tracked URL of the issue's editions (a URL in several editions is
        one row), in order of first appearance (edition, then position); links never clicked included,
        with 0. `unique`: distinct recipients who followed it. Scanner hits (`scanner_hits`) are not
        clicks; a scan burst is taken out by `sending/report.py` (`click_rows`)."""
        position_key = editions.c.number * 65536 + links.c.position  # positions are 2 bytes in tokens
        clicked = sa.case((link_clicks.c.clicks > 0, link_clicks.c.subscriber_id))  # not scanner hits alone
        return list(conn.execute(
            sa.select(links.c.url, sa.func.coalesce(sa.func.sum(link_clicks.c.clicks), 0).label("total"),
                      sa.func.count(sa.distinct(clicked)).label("unique"))
            .select_from(links.join(editions, editions.c.id == links.c.edition_id)
                         .outerjoin(link_clicks, (link_clicks.c.edition_id == links.c.edition_id)
                                    & (link_clicks.c.position == links.c.position)))
            .where(editions.c.issue_id == issue_id)
            .group_by(links.c.url).order_by(sa.func.min(position_key))))

    def open_figures(self, conn: Connection, issue_id: int) -> sa.Row | None:
        """(total, unique) of the open pixel (position 0) over the issue's editions; None when no open
        was ever recorded."""
        row = conn.execute(
            sa.select(sa.func.sum(link_clicks.c.clicks).label("total"),
                      sa.func.count(sa.distinct(link_clicks.c.subscriber_id)).label("unique"))
            .select_from(link_clicks.join(editions, editions.c.id == link_clicks.c.edition_id))
            .where(editions.c.issue_id == issue_id, link_clicks.c.position == 0)).first()
        return row if row is not None and row.total else None

    def click_rows(self, conn: Connection, issue_id: int) -> list[sa.Row]:
        """(url, edition_id, subscriber_id, clicks, first_at, links_in_edition) of every link of the
        issue's editions a recipient followed (position ≥ 1, clicks ≥ 1): what a scan burst is read from."""
        counted = links.alias("counted")
        in_edition = (sa.select(sa.func.count()).select_from(counted)
                      .where(counted.c.edition_id == link_clicks.c.edition_id).scalar_subquery())
        return list(conn.execute(
            sa.select(links.c.url, link_clicks.c.edition_id, link_clicks.c.subscriber_id, link_clicks.c.clicks,
                      link_clicks.c.first_at, in_edition.label("links_in_edition"))
            .select_from(link_clicks.join(links, (links.c.edition_id == link_clicks.c.edition_id)
                                          & (links.c.position == link_clicks.c.position))
                         .join(editions, editions.c.id == link_clicks.c.edition_id))
            .where(editions.c.issue_id == issue_id, link_clicks.c.position > 0, link_clicks.c.clicks > 0)))

    def scanner_hits(self, conn: Connection, issue_id: int) -> int:
        """Fetches of the issue's tracked links by known scanners and bots (by User-Agent)."""
        return conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(link_clicks.c.scanner_hits), 0))
            .select_from(link_clicks.join(editions, editions.c.id == link_clicks.c.edition_id))
            .where(editions.c.issue_id == issue_id, link_clicks.c.position > 0)).scalar_one()

    def unique_clickers(self, conn: Connection, issue_id: int) -> int:
        """Distinct recipients who followed at least one link (position ≥ 1) of the issue."""
        return conn.execute(
            sa.select(sa.func.count(sa.distinct(link_clicks.c.subscriber_id)))
            .select_from(link_clicks.join(editions, editions.c.id == link_clicks.c.edition_id))
            .where(editions.c.issue_id == issue_id, link_clicks.c.position > 0, link_clicks.c.clicks > 0)).scalar_one()

    def sent_times(self, conn: Connection, issue_id: int) -> list[datetime]:
        """`sent_at` of every delivery of the issue that was sent, oldest first (the send's timeline)."""
        return list(conn.execute(sa.select(deliveries.c.sent_at).where(
            deliveries.c.issue_id == issue_id, deliveries.c.status == "sent", deliveries.c.sent_at.is_not(None))
            .order_by(deliveries.c.sent_at)).scalars())

    def active_changes(self, conn: Connection) -> list[sa.Row]:
        """(at, delta) of every recorded change into (+1) or out of (−1) the `active` status (a
        creation as active included), oldest first: list growth is their running sum."""
        into = sa.and_(subscriber_events.c.new_status == "active",
                       sa.or_(subscriber_events.c.old_status.is_(None), subscriber_events.c.old_status != "active"))
        out = sa.and_(subscriber_events.c.old_status == "active", subscriber_events.c.new_status.is_not(None),
                      subscriber_events.c.new_status != "active")
        delta = sa.case((into, 1), else_=-1).label("delta")
        return list(conn.execute(sa.select(subscriber_events.c.at, delta).where(sa.or_(into, out))
                                 .order_by(subscriber_events.c.at, subscriber_events.c.id)))
