"""Local-time sends: the release instants of frozen recipient rows (`deliveries.due_at`, `due_zone`) and
the operator's late release (`issues.released_before`). Which instant each zone gets is decided in
`sending/waves.py`; these queries read and write the rows."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .common import QUEUED_ROW, as_utc, utcnow
from .schema import deliveries, issues, subscribers

if TYPE_CHECKING:
    from ..segments import Segment

_ZONE_ATTRIBUTE = subscribers.c.attributes["timezone"].as_string()
_STATUSES = ("queued", "sending", "sent", "failed", "skipped")


def released(issue_id: int, now: datetime, grace: float) -> sa.ColumnElement:
    """A local-time send's claimable rows: released by their time (due at most `grace` seconds ago),
    or by the operator (due at or before `issues.released_before`: --release-missed, --now). It says
    `due_at IS NOT NULL` (implied by either) as written: the partial index `ix_deliveries_queued_due`,
    limited to such rows (revision 0010), serves only a query whose WHERE says it."""
    operator = sa.select(issues.c.released_before).where(issues.c.id == issue_id).scalar_subquery()
    return sa.and_(deliveries.c.due_at.is_not(None), sa.or_(
        deliveries.c.due_at.between(now - timedelta(seconds=grace), now), deliveries.c.due_at <= operator))


def _last_due() -> sa.ScalarSelect:
    """The issue's (correlated to `issues`) latest release instant; NULL for an ordinary send."""
    return (sa.select(sa.func.max(deliveries.c.due_at)).where(deliveries.c.issue_id == issues.c.id)
            .scalar_subquery())


def all_waves_due(now: datetime) -> sa.ColumnElement:
    """The one owner of "may the web show this issue to anyone yet" as far as waves go (correlated to
    `issues`): no recipient row is still waiting for its wave — none is due after `now` unless the
    operator released it (`released_before`, `--now`). An ordinary send has no due rows: always true.
    So a local-time issue reaches the archive, its public page and the feed when its last wave is due,
    never before its last readers get the email."""
    waiting = sa.exists().where(
        deliveries.c.issue_id == issues.c.id, deliveries.c.due_at > now,
        sa.or_(issues.c.released_before.is_(None), deliveries.c.due_at > issues.c.released_before))
    return ~waiting


def publication_moment() -> sa.ColumnElement:
    """When the issue became public (correlated to `issues`; for issues `all_waves_due` lets through):
    the send's start for an ordinary send or one whose waves the operator released at once (`--now`:
    the moment of that release is not stored; the start is the nearest stable instant), else the last
    wave's release instant."""
    last = _last_due()
    return sa.case((sa.or_(last.is_(None), issues.c.released_before >= last), issues.c.started_at),
                   else_=last).label("published_at")


class WaveQueries:
    """Mixed into `Store`."""

    def audience_zones(self, conn: Connection, list_name: str | None,
                       segment: "Segment | None" = None) -> dict[str | None, int]:
        """{`timezone` attribute as stored (None: none): active subscribers (of `list_name`, in
        `segment`)}: who a freeze would draw, by zone, before it happens — narrowed by the freeze's
        own filter (`_audience_filter`), so a zone the segment leaves empty has no wave."""
        query = (sa.select(_ZONE_ATTRIBUTE, sa.func.count()).where(subscribers.c.status == "active")
                 .group_by(_ZONE_ATTRIBUTE))
        return {value: count for value, count in conn.execute(self._audience_filter(query, list_name, segment))}

    def stamp_zones(self, conn: Connection, issue_id: int) -> set[str | None]:
        """Copy each subscriber's `timezone` attribute, as stored, into `due_zone` of the issue's rows
        without a release instant yet (one UPDATE, by primary key); return the distinct values."""
        unassigned = (deliveries.c.issue_id == issue_id) & deliveries.c.due_at.is_(None)
        conn.execute(deliveries.update().where(unassigned).values(due_zone=(
            sa.select(_ZONE_ATTRIBUTE).where(subscribers.c.id == deliveries.c.subscriber_id).scalar_subquery())))
        return set(conn.execute(sa.select(deliveries.c.due_zone).where(unassigned).distinct()).scalars())

    def assign_due(self, conn: Connection, issue_id: int, instants: dict[str, datetime],
                   fallback: tuple[str, datetime]) -> None:
        """After `stamp_zones`: rows whose `due_zone` is a key of `instants` get that release instant;
        the others (no zone, an unknown one) get `fallback` (zone name, instant). One UPDATE."""
        unassigned = (deliveries.c.issue_id == issue_id) & deliveries.c.due_at.is_(None)
        kind = deliveries.c.due_at.type
        known = deliveries.c.due_zone.in_(list(instants)) if instants else sa.false()
        at = (sa.case({zone: sa.literal(moment, kind) for zone, moment in instants.items()},
                      value=deliveries.c.due_zone, else_=sa.literal(fallback[1], kind))
              if instants else sa.literal(fallback[1], kind))
        conn.execute(deliveries.update().where(unassigned).values(
            due_at=at, due_zone=sa.case((known, deliveries.c.due_zone), else_=sa.literal(fallback[0]))))

    def wave_rows(self, conn: Connection, issue_id: int) -> list[dict[str, Any]]:
        """The issue's rows grouped by (due_zone, due_at), as dicts: zone, due_at, and counts queued,
        sending, sent, failed, skipped (rows without a release instant form one group, zone None)."""
        return [{**row._asdict(), "due_at": as_utc(row.due_at)} for row in conn.execute(
            sa.select(deliveries.c.due_zone.label("zone"), deliveries.c.due_at,
                      *(sa.func.sum(sa.case((deliveries.c.status == status, 1), else_=0)).label(status)
                        for status in _STATUSES))
            .where(deliveries.c.issue_id == issue_id)
            .group_by(deliveries.c.due_zone, deliveries.c.due_at).order_by(deliveries.c.due_at, deliveries.c.due_zone))]

    def claimable(self, conn: Connection, issue_id: int, grace: float) -> int:
        """Queued rows of a local-time send that a claim may take now (see `claim_deliveries`)."""
        return conn.execute(sa.select(sa.func.count()).select_from(deliveries).where(
            deliveries.c.issue_id == issue_id, QUEUED_ROW,
            released(issue_id, utcnow(), grace))).scalar_one()

    def release_waves(self, conn: Connection, issue_id: int, until: datetime | None = None) -> None:
        """Let claims take the issue's rows due at or before `until` however late (default: every row)."""
        if until is None:
            until = conn.execute(sa.select(sa.func.max(deliveries.c.due_at))
                                 .where(deliveries.c.issue_id == issue_id)).scalar()
            if until is None:
                return
        current = as_utc(conn.execute(sa.select(issues.c.released_before).where(issues.c.id == issue_id)).scalar())
        if current is None or as_utc(until) > current:
            conn.execute(issues.update().where(issues.c.id == issue_id).values(released_before=until))
