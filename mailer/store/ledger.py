"""The delivery ledger: issues, their frozen editions (content) and recipient set, claims, results, the shared send
rate, public pages.

Longer than ~400 lines because the claim and its guard (`current_edition_id`: no claim interleaves
with a `--rebuild`) and the freeze that stores recipients and edition together share one lock
discipline on the issue's row, which reads best in one place; and because the claim and the record,
the send's hot path, have a form per engine: PostgreSQL's (one statement each, ids as arrays, prebuilt
so psycopg prepares them) sits next to SQLite's so the two stay the same semantics (`tests/test_ledger.py`
checks both against one row-by-row model)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Sequence

from types import SimpleNamespace

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..errors import NotFound
from ..statuses import SOFT_BOUNCE_KINDS
from .schema import deliveries, editions, issues, list_members, provider_events, subscribers
from .schema import links as links_table
from .common import _NOT_TOMBSTONE, CLAIMED_ROW, QUEUED_ROW, SENT_ROW, _chunks, as_utc, delivery_status_is, utcnow
from .segments import condition
from . import sqlite_ledger

if TYPE_CHECKING:
    from ..segments import Segment
from .waves import all_waves_due, publication_moment, released


# An issue has a public page once sent (or partly sent) and given a web edition.
_SENT_WITH_WEB_EDITION = sa.and_(issues.c.web_html.is_not(None), sa.or_(
    issues.c.status == "sent",
    sa.exists().where(deliveries.c.issue_id == issues.c.id, SENT_ROW)))


def _public_at(now: datetime) -> sa.ColumnElement:
    """The one owner of "is this issue public yet" (archive, `/issues/SLUG`, feed): sent with a web
    edition, `public`, and no recipient still waiting for a wave."""
    return sa.and_(_SENT_WITH_WEB_EDITION, issues.c.public.is_(True), all_waves_due(now))


# once per claim (Store.current_edition_id): built once
# an edition row as stored: the JSON columns as text (a corrupt one must not fail inside the driver,
# before the edition can be named), with its tracked URLs in order (they are part of its content hash)
_EDITION_ROW = sa.select(*[sa.cast(column, sa.Text).label(column.name) if column.name in ("headers", "variants")
                           else column for column in editions.c])
_CURRENT_EDITION_ID = sa.select(sa.func.max(editions.c.id)).where(editions.c.issue_id == sa.bindparam("p_issue"))

# a recipient's answer (sent, refused) is an attempt; a skip is not
_ANSWERED = frozenset({"sent", "failed"})


_SUPPRESSED_AMONG = (
    sa.select(deliveries.c.id, subscribers.c.status)
    .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
    .where(deliveries.c.id.in_(sa.bindparam("p_ids", expanding=True)),
           deliveries.c.claimed_by == sa.bindparam("p_worker"), CLAIMED_ROW,
           subscribers.c.status != "active"))

# ----- the ledger's hot path on PostgreSQL ----------------------------------------------------------
# Every statement below is built once and binds a fixed number of parameters whatever the batch size:
# ids travel as one array (`= ANY(%s::BIGINT[])`, `unnest(…)`), never as one bound parameter each. So
# each has one SQL text, which psycopg prepares server-side after its 5th execution on a connection
# (`prepare_threshold`), and each step is one round trip. (Measured before, issue 12: `IN (…1000
# binds…)` cost a compile and a parse per batch; the claim took three round trips.)
_ID_ARRAY = postgresql.ARRAY(sa.BigInteger)
_ANALYZE_AFTER = 10_000  # rows a freeze adds before it refreshes the ledger's statistics (PostgreSQL)
_TEXT_ARRAY = postgresql.ARRAY(sa.Text)
_PG_ISSUE_EDITION = (  # the newest edition's id, with a shared lock on the issue's row, in one round trip
    sa.select(sa.select(sa.func.max(editions.c.id)).where(editions.c.issue_id == issues.c.id).scalar_subquery())
    .where(issues.c.id == sa.bindparam("p_issue")).with_for_update(read=True, of=issues))
# the ids to claim, locked (SKIP LOCKED) and collected into an array BEFORE any row is updated: the
# locking scan takes about a millisecond for 1000 rows, so concurrent claimers rarely meet in it (rows
# locked row by row as a join fed the UPDATE interleaved two claimers' picks for the whole tens of
# milliseconds of the UPDATE: batches came out split, 310 + 425 + 765 for 1500)
# "queued rows of the issue, in id order" written as a slice of the partial index ix_deliveries_queued
# (issue_id, id) WHERE status = 'queued': a row comparison instead of `issue_id = … ORDER BY id`. With an
# equality the planner may serve ORDER BY id from the primary key and filter; it does so once the
# ledger's statistics say most rows are queued (after an ANALYZE early in a send), and then every claim
# re-reads all rows already claimed or sent before the first queued one (measured: 60 -> 260 ms per
# claim over 100 claims at 200,000 rows). The row comparison can only be served by that index, in its
# order.
_QUEUED_KEY = sa.tuple_(deliveries.c.issue_id, deliveries.c.id)
_PG_QUEUED = (QUEUED_ROW,
              _QUEUED_KEY > sa.tuple_(sa.bindparam("p_issue", type_=sa.BigInteger), sa.literal(0, sa.BigInteger)),
              _QUEUED_KEY <= sa.tuple_(sa.bindparam("p_issue", type_=sa.BigInteger),
                                        sa.literal(2 ** 63 - 1, sa.BigInteger)))
_PG_PICKED = sa.func.array(
    sa.select(deliveries.c.id)
    .where(*_PG_QUEUED)
    .order_by(deliveries.c.issue_id, deliveries.c.id)
    .limit(sa.bindparam("p_limit", type_=sa.Integer))
    .with_for_update(skip_locked=True).scalar_subquery(), type_=_ID_ARRAY)
_PG_CLAIMED = (deliveries.update().where(deliveries.c.id == sa.any_(_PG_PICKED))
               .values(status="sending", claimed_by=sa.bindparam("p_worker"), claimed_at=sa.bindparam("p_now"),
                       updated_at=sa.bindparam("p_now"))
               .returning(deliveries.c.id, deliveries.c.attempts, deliveries.c.subscriber_id).cte("claimed"))
_PG_CLAIM = (  # pick (SKIP LOCKED), mark `sending` and read the recipients back: one statement
    sa.select(_PG_CLAIMED.c.id.label("delivery_id"), _PG_CLAIMED.c.attempts, subscribers.c.id.label("subscriber_id"),
              subscribers.c.email_given, subscribers.c.name, subscribers.c.status.label("subscriber_status"),
              subscribers.c.language, subscribers.c.attributes["first_name"].as_string().label("first_name"))
    .join(subscribers, subscribers.c.id == _PG_CLAIMED.c.subscriber_id)
    .order_by(_PG_CLAIMED.c.id))
# a local-time send's claim (waves.released, with bound parameters): queued rows of the issue due
# between p_since (now - grace) and p_now, or at or before the operator's `released_before`; earliest
# wave first (the partial index ix_deliveries_queued_due, whose `due_at IS NOT NULL` the WHERE says)
_PG_WAVE_PICKED = sa.func.array(
    sa.select(deliveries.c.id)
    .where(deliveries.c.issue_id == sa.bindparam("p_issue", type_=sa.BigInteger), QUEUED_ROW,
           deliveries.c.due_at.is_not(None),
           sa.or_(deliveries.c.due_at.between(sa.bindparam("p_since", type_=sa.DateTime(timezone=True)),
                                              sa.bindparam("p_now", type_=sa.DateTime(timezone=True))),
                  deliveries.c.due_at <= sa.select(issues.c.released_before)
                  .where(issues.c.id == sa.bindparam("p_issue", type_=sa.BigInteger)).scalar_subquery()))
    .order_by(deliveries.c.due_at, deliveries.c.id)
    .limit(sa.bindparam("p_limit", type_=sa.Integer))
    .with_for_update(skip_locked=True).scalar_subquery(), type_=_ID_ARRAY)
_PG_WAVE_CLAIMED = (deliveries.update().where(deliveries.c.id == sa.any_(_PG_WAVE_PICKED))
                    .values(status="sending", claimed_by=sa.bindparam("p_worker"), claimed_at=sa.bindparam("p_now"),
                            updated_at=sa.bindparam("p_now"))
                    .returning(deliveries.c.id, deliveries.c.attempts, deliveries.c.subscriber_id).cte("claimed"))
_PG_CLAIM_WAVE = (
    sa.select(_PG_WAVE_CLAIMED.c.id.label("delivery_id"), _PG_WAVE_CLAIMED.c.attempts,
              subscribers.c.id.label("subscriber_id"), subscribers.c.email_given, subscribers.c.name,
              subscribers.c.status.label("subscriber_status"), subscribers.c.language,
              subscribers.c.attributes["first_name"].as_string().label("first_name"))
    .join(subscribers, subscribers.c.id == _PG_WAVE_CLAIMED.c.subscriber_id)
    .order_by(_PG_WAVE_CLAIMED.c.id))
_PG_STILL_CLAIMED = (deliveries.c.claimed_by == sa.bindparam("p_worker"), CLAIMED_ROW)
_PG_FINISH_VALUES = dict(
    status=sa.bindparam("p_status"), provider_message_id=sa.bindparam("p_provider_id"),
    last_error=sa.bindparam("p_error"), sent_at=sa.bindparam("p_sent_at"), updated_at=sa.bindparam("p_now"),
    attempts=deliveries.c.attempts + sa.bindparam("p_inc", type_=sa.Integer))
# rows sharing one outcome (a SendGrid request: all sent, one provider id): a contiguous run of ids (a
# claim of a fresh freeze) as a primary-key range, any other set as an array. The range is planned as a
# primary-key scan even where the ledger has no statistics yet (a database whose freeze was written
# before `freeze_recipients` analysed it), where `id = ANY(1000 ids)` becomes a sequential scan.
_PG_FINISH_RANGE = (
    deliveries.update()
    .where(deliveries.c.id.between(sa.bindparam("p_low", type_=sa.BigInteger), sa.bindparam("p_high", type_=sa.BigInteger)),
           *_PG_STILL_CLAIMED)
    .values(**_PG_FINISH_VALUES))
_PG_FINISH_SHARED = (
    deliveries.update()
    .where(deliveries.c.id == sa.any_(sa.bindparam("p_ids", type_=_ID_ARRAY)), *_PG_STILL_CLAIMED)
    .values(status=sa.bindparam("p_status"), provider_message_id=sa.bindparam("p_provider_id"),
            last_error=sa.bindparam("p_error"), sent_at=sa.bindparam("p_sent_at"), updated_at=sa.bindparam("p_now"),
            attempts=deliveries.c.attempts + sa.bindparam("p_inc", type_=sa.Integer)))
# rows with an outcome each (SMTP: a queue id per message): parallel arrays, unnested into a relation
_PG_OUTCOMES = sa.select(
    sa.func.unnest(sa.bindparam("p_ids", type_=_ID_ARRAY)).label("id"),
    sa.func.unnest(sa.bindparam("p_statuses", type_=_TEXT_ARRAY)).label("status"),
    sa.func.unnest(sa.bindparam("p_provider_ids", type_=_TEXT_ARRAY)).label("provider_message_id"),
    sa.func.unnest(sa.bindparam("p_errors", type_=_TEXT_ARRAY)).label("last_error"),
).subquery("outcome")
_PG_FINISH_EACH = (
    deliveries.update()
    .where(deliveries.c.id == _PG_OUTCOMES.c.id, *_PG_STILL_CLAIMED)
    .values(status=_PG_OUTCOMES.c.status, provider_message_id=_PG_OUTCOMES.c.provider_message_id,
            last_error=_PG_OUTCOMES.c.last_error, updated_at=sa.bindparam("p_now"),
            sent_at=sa.case((_PG_OUTCOMES.c.status == "sent", sa.bindparam("p_now", type_=sa.DateTime(timezone=True))),
                            else_=None),
            attempts=deliveries.c.attempts + sa.case(
                (_PG_OUTCOMES.c.status.in_(sorted(_ANSWERED)), 1), else_=0)))
_PG_BACK = sa.select(sa.func.unnest(sa.bindparam("p_ids", type_=_ID_ARRAY)).label("id"),
                     sa.func.unnest(sa.bindparam("p_errors", type_=_TEXT_ARRAY)).label("last_error")).subquery("back")
_PG_REQUEUE_IDS = (
    deliveries.update()
    .where(deliveries.c.id == _PG_BACK.c.id, *_PG_STILL_CLAIMED)
    .values(status="queued", claimed_by=None, claimed_at=None, last_error=_PG_BACK.c.last_error,
            updated_at=sa.bindparam("p_now"), attempts=deliveries.c.attempts + sa.bindparam("p_inc", type_=sa.Integer)))
_PG_SUPPRESSED_AMONG = (
    sa.select(deliveries.c.id, subscribers.c.status)
    .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
    .where(deliveries.c.id == sa.any_(sa.bindparam("p_ids", type_=_ID_ARRAY)), *_PG_STILL_CLAIMED,
           subscribers.c.status != "active"))



class ClaimedBatch:
    """A claim (`LedgerQueries.claim_batch`): its rows, given (PostgreSQL) or read on demand (SQLite:
    `claimed` is what `sqlite_ledger.read_claimed` needs, None when nothing was claimed)."""

    __slots__ = ("_rows", "_claimed")

    def __init__(self, rows: Sequence | None = None, claimed: dict | None = None) -> None:
        self._rows, self._claimed = rows, claimed

    def rows(self, conn: Connection) -> Sequence:
        """The claimed rows, in id order (see `claim_deliveries`). On SQLite they are read now, on
        `conn`: inside a transaction as named rows; after the claim's transaction committed, without a
        write lock, as plain tuples (read them by position, as the send loop does)."""
        if self._rows is None:
            claimed = self._claimed
            if claimed is None:
                self._rows = []
            elif conn.in_transaction():
                self._rows = sqlite_ledger.read_claimed_in_transaction(conn, claimed)
            else:
                self._rows = sqlite_ledger.read_claimed(conn, claimed)
        return self._rows


class LedgerQueries:
    """Queries of the send pipeline and the archive (mixed into `Store`)."""

    is_sqlite: bool

    # ----- issues' public pages ------------------------------------------------------------------
    def published_issues(self, conn: Connection, now: datetime | None = None) -> list[sa.Row]:
        """(id, slug, subject, issue_date, started_at, finished_at, published_at) of the issues the
        archive (and its Atom feed) lists at `now` (default: the clock), newest first: sent, with a web
        edition, public, and every wave due (`waves.all_waves_due`); `published_at` per
        `waves.publication_moment`."""
        return list(conn.execute(
            sa.select(issues.c.id, issues.c.slug, issues.c.subject, issues.c.issue_date, issues.c.started_at,
                      issues.c.finished_at, publication_moment())
            .where(_public_at(now or utcnow()))
            .order_by(sa.func.coalesce(issues.c.issue_date, "").desc(), issues.c.id.desc())))

    def web_html_by_id(self, conn: Connection, issue_ids: Sequence[int]) -> dict[int, str]:
        """issue id -> its stored web edition (HTML), for the ids that have one."""
        found: dict[int, str] = {}
        for chunk in _chunks(list(issue_ids), 500):
            rows = conn.execute(sa.select(issues.c.id, issues.c.web_html)
                                .where(issues.c.id.in_(chunk), issues.c.web_html.is_not(None)))
            found.update({row.id: row.web_html for row in rows})
        return found

    def web_edition(self, conn: Connection, slug: str, now: datetime | None = None) -> sa.Row | None:
        """(web_html, public) of a sent issue, None for unknown or unsent ones. `public` is whether
        anyone may read it at `now` (the archive's rule, `_public_at`): a public local-time issue whose
        last wave is not due yet is readable only with its key, like a private one."""
        return conn.execute(sa.select(issues.c.web_html, _public_at(now or utcnow()).label("public"))
                            .where(issues.c.slug == slug, _SENT_WITH_WEB_EDITION)).first()

    # ----- issues -----------------------------------------------------------------------------
    def issue_row(self, conn: Connection, slug: str) -> sa.Row | None:
        return conn.execute(sa.select(issues).where(issues.c.slug == slug)).first()

    def issue_slugs(self, conn: Connection) -> list[str]:
        """Every issue's slug in the ledger (started, sent or draft rows), sorted."""
        return list(conn.execute(sa.select(issues.c.slug).order_by(issues.c.slug)).scalars())

    def _insert(self, table: sa.Table):
        """INSERT with the dialect's ON CONFLICT support (both dialects have it)."""
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(table)

    def ensure_issue(self, conn: Connection, *, slug: str, subject: str, list_name: str | None,
                     web_html: str | None, issue_date: str | None, public: bool = True) -> sa.Row:
        """The issue's row, created as a draft if missing, and LOCKED for the rest of the transaction.

        Two first sends racing: the INSERT of the second waits for the first's (ON CONFLICT DO NOTHING,
        no duplicate-key error) and its `FOR UPDATE` waits for the first's commit, so the second sees
        the first's freeze and joins it (SQLite's single writer serialises the same way). While a draft
        the row is refreshed; `public` (whether the archive shows it) is a publication setting, not
        content: it follows issue.toml at every send, even a resumed one."""
        conn.execute(self._insert(issues).values(slug=slug, subject=subject, list_name=list_name, status="draft",
                                                 web_html=web_html, issue_date=issue_date, public=public)
                     .on_conflict_do_nothing(index_elements=[issues.c.slug]))
        row = conn.execute(sa.select(issues).where(issues.c.slug == slug).with_for_update()).one()
        if row.status == "draft":
            conn.execute(issues.update().where(issues.c.id == row.id).values(
                subject=subject, list_name=list_name, web_html=web_html, issue_date=issue_date, public=public))
            row = self.issue_row(conn, slug)
        elif row.public != public:
            conn.execute(issues.update().where(issues.c.id == row.id).values(public=public))
            row = self.issue_row(conn, slug)
        return row  # type: ignore[return-value]

    def lock_issue(self, conn: Connection, slug: str) -> sa.Row:
        """The issue's existing row, LOCKED (FOR UPDATE) for the rest of the transaction; NotFound when
        there is none."""
        row = conn.execute(sa.select(issues).where(issues.c.slug == slug).with_for_update()).first()
        if row is None:
            raise NotFound(f"issue {slug!r}: no issue folder and no send of that name")
        return row

    def book_rate_slot(self, conn: Connection, issue_id: int, now: float, cost: float) -> float:
        """Move the issue's rate schedule forward by `cost` seconds from max(schedule, now); returns
        the end of the booked slot (epoch seconds). One atomic statement, whoever calls."""
        current = sa.func.coalesce(issues.c.rate_next_at, now)
        return conn.execute(
            issues.update().where(issues.c.id == issue_id)
            .values(rate_next_at=sa.case((current > now, current), else_=now) + cost)
            .returning(issues.c.rate_next_at)).scalar_one()

    def update_issue(self, conn: Connection, issue_id: int, **values: Any) -> None:
        conn.execute(issues.update().where(issues.c.id == issue_id).values(**values))

    # ----- the delivery ledger ----------------------------------------------------------------
    def _audience_filter(self, query, list_name: str | None, segment: "Segment | None"):  # noqa: ANN001, ANN202
        """`query` (on subscribers) narrowed to the members of `list_name` and of `segment` (AND)."""
        if list_name:
            query = query.where(sa.exists().where(
                (list_members.c.subscriber_id == subscribers.c.id) & (list_members.c.list_name == list_name)))
        if segment is not None:
            query = query.where(condition(segment, self.engine.dialect.name))
        return query

    def segment_members(self, conn: Connection, segment: "Segment", *, list_name: str | None = None,
                        status: str | None = "active") -> list[int]:
        """Ids of the subscribers (of `status`, None: any; tombstones never) in `segment` and
        `list_name`, ascending."""
        query = sa.select(subscribers.c.id).where(_NOT_TOMBSTONE).order_by(subscribers.c.id)
        if status:
            query = query.where(subscribers.c.status == status)
        return list(conn.execute(self._audience_filter(query, list_name, segment)).scalars())

    def freeze_recipients(self, conn: Connection, issue_id: int, list_name: str | None,
                          segment: "Segment | None" = None) -> int:
        """Write one queued delivery per active subscriber (of `list_name`, in `segment`) not yet in the
        ledger. Called once when a send starts (the freeze) and again only with `--include-new`, holding
        the issue's row lock (`ensure_issue`, `lock_issue`): freezes of one issue never overlap, so the
        rows already there are all the statement has to leave out (no ON CONFLICT: its per-row arbiter
        probe was a tenth of a PostgreSQL freeze). One INSERT … SELECT; on PostgreSQL its references
        are checked as one set (revision 0009).
        """
        now = utcnow()
        candidates = sa.select(
            sa.literal(issue_id), subscribers.c.id, sa.literal("queued"), sa.literal(0), sa.literal(now), sa.literal(now),
        ).where(subscribers.c.status == "active")
        if conn.execute(sa.select(deliveries.c.id).where(deliveries.c.issue_id == issue_id).limit(1)).first():
            # a later freeze (--include-new): leave out who is already there. The first one skips the
            # probe, one unique-index lookup per subscriber (0.35 of 1.85 s at a million on SQLite)
            candidates = candidates.where(~sa.exists().where(
                (deliveries.c.issue_id == issue_id) & (deliveries.c.subscriber_id == subscribers.c.id)))
        candidates = self._audience_filter(candidates, list_name, segment)
        result = conn.execute(deliveries.insert().from_select(
            ["issue_id", "subscriber_id", "status", "attempts", "created_at", "updated_at"], candidates)
            .execution_options(preserve_rowcount=True))  # else -1 on PostgreSQL (SQLAlchemy 2: INSERT rowcount)
        if not self.is_sqlite and result.rowcount >= _ANALYZE_AFTER:
            # a bulk load: statistics before the claims and records start (PostgreSQL docs, "Populating a
            # Database"), not a minute later when autovacuum comes by. Without them a set of ids
            # (`id = ANY(…)`, as the `IN (…)` list before it) is planned as a sequential scan: 45-70 ms
            # per request at 200,000 rows instead of under 1 ms. (ANALYZE counts this transaction's rows.)
            conn.exec_driver_sql(f"ANALYZE {deliveries.name}")
        return max(result.rowcount, 0)

    def audience(self, conn: Connection, list_name: str | None, segment: "Segment | None" = None) -> dict[str, int]:
        """Subscribers by status: of the named list and the segment, or everyone (what a freeze would draw from)."""
        query = sa.select(subscribers.c.status, sa.func.count()).group_by(subscribers.c.status)
        query = self._audience_filter(query, list_name, segment)
        return {status: count for status, count in conn.execute(query)}

    def list_names(self, conn: Connection) -> list[str]:
        """Every named list with at least one member, sorted."""
        return list(conn.execute(sa.select(list_members.c.list_name).distinct().order_by(list_members.c.list_name))
                    .scalars())

    def count_unfrozen(self, conn: Connection, issue_id: int | None, list_name: str | None,
                       segment: "Segment | None" = None) -> int:
        """Active subscribers (of `list_name`, in `segment`) a freeze of `issue_id` would add now."""
        query = sa.select(sa.func.count()).select_from(subscribers).where(subscribers.c.status == "active")
        if issue_id is not None:
            query = query.where(~sa.exists().where(
                (deliveries.c.issue_id == issue_id) & (deliveries.c.subscriber_id == subscribers.c.id)))
        return conn.execute(self._audience_filter(query, list_name, segment)).scalar_one()

    def claim_deliveries(self, conn: Connection, issue_id: int, worker: str, limit: int,
                         grace: float | None = None) -> list[sa.Row]:
        """Move up to `limit` queued rows to `sending` for `worker` and return them with their subscriber
        (`claim_batch` and its rows at once).

        `FOR UPDATE SKIP LOCKED` on PostgreSQL lets many workers claim disjoint batches; SQLite's single
        writer serialises it. Rows: (delivery_id, attempts, subscriber_id, email_given, name,
        subscriber_status, language, first_name), in id order. PostgreSQL: one statement and one round trip (pick,
        update, read the recipients back through the UPDATE's RETURNING); SQLite: an UPDATE, then a read
        of the claimed range. `grace` (seconds) marks a local-time send: only rows whose release instant
        has passed by at most `grace` are taken (or that the operator released), earliest wave first
        (`waves.released`).
        """
        return self.claim_batch(conn, issue_id, worker, limit, grace).rows(conn)

    def claim_batch(self, conn: Connection, issue_id: int, worker: str, limit: int,
                    grace: float | None = None) -> "ClaimedBatch":
        """`claim_deliveries` in two halves, for a caller that commits in between: the claim now, inside
        the caller's write transaction; its rows from `.rows(conn)`. On SQLite the rows are read then,
        after the commit, by a read that takes no write lock: the threads and processes of a send take
        turns for SQLite's one writer, and the read was half of a claim's time under it (a million
        recipients with no answer delay, two processes: the send loop 20.6 → 17.4 s). Rows claimed by
        `worker` at this instant are its own until it records them, so the later read sees them whole
        (a subscriber who unsubscribed meanwhile shows as such: skipped). On PostgreSQL they came back
        with the claim."""
        now = utcnow()
        if not self.is_sqlite:
            if grace is None:
                return ClaimedBatch(conn.execute(_PG_CLAIM, {"p_issue": issue_id, "p_limit": limit,
                                                             "p_worker": worker, "p_now": now}).all())
            return ClaimedBatch(conn.execute(_PG_CLAIM_WAVE, {
                "p_issue": issue_id, "p_limit": limit, "p_worker": worker, "p_now": now,
                "p_since": now - timedelta(seconds=grace)}).all())
        if grace is None:
            return ClaimedBatch(claimed=sqlite_ledger.claim_range(conn, issue_id, worker, limit, now))
        picked = (sa.select(deliveries.c.id).where(deliveries.c.issue_id == issue_id, QUEUED_ROW)
                  .where(released(issue_id, now, grace)).order_by(deliveries.c.due_at, deliveries.c.id))
        picked = picked.limit(limit).with_for_update(skip_locked=True)
        claimed = conn.execute(
            deliveries.update().where(deliveries.c.id.in_(picked.scalar_subquery()))
            .values(status="sending", claimed_by=worker, claimed_at=now, updated_at=now)
            .returning(deliveries.c.id)
        ).scalars().all()
        return ClaimedBatch(claimed=sqlite_ledger.claimed_range(claimed, worker, now))

    def finish_deliveries(self, conn: Connection, worker: str, rows: Sequence[dict]) -> None:
        """Record outcomes in bulk: each dict has id, status and optional provider_message_id / last_error.
        `sent` and `failed` count one attempt (the recipient's provider answered); `skipped` does not.

        Rows sharing an outcome (a SendGrid request: all sent, one provider id) go in one statement per
        outcome: a primary-key range when their ids are one contiguous run, else `WHERE id = ANY(array)`
        on PostgreSQL, `IN` on SQLite. The others (SMTP: a queue id each): on PostgreSQL one
        `UPDATE … FROM unnest(arrays)`, on SQLite one prebuilt statement, executed many. Only rows still
        claimed by `worker` change, so a batch that another process took over after a stale claim can
        never be recorded twice.
        """
        groups: dict[tuple, list[int]] = {}
        for row in rows:
            key = (row["status"], row.get("provider_message_id"), row.get("last_error"))
            groups.setdefault(key, []).append(row["id"])
        self._finish_groups(conn, worker, groups)

    def record_sent(self, conn: Connection, worker: str, sent: dict[str | None, list[int]]) -> None:
        """`finish_deliveries` of rows accepted by the provider, given as {provider message id: delivery
        ids}: a SendGrid request's one id for its whole batch, or SMTP's queue id per message. The send
        loop's form: no dict per row (issue 12: building and grouping them cost ~0.5 µs a recipient)."""
        self._finish_groups(conn, worker, {("sent", provider_id, None): ids for provider_id, ids in sent.items()})

    def _finish_groups(self, conn: Connection, worker: str, groups: dict[tuple, list[int]]) -> None:
        """{(status, provider_message_id, last_error): delivery ids} recorded (see `finish_deliveries`)."""
        if not groups:
            return
        now = utcnow()
        each: list[tuple] = []  # (id, status, provider id, error) of outcomes no other row shares
        for (status, provider_id, error), ids in groups.items():
            if len(ids) == 1:
                each.append((ids[0], status, provider_id, error))
                continue
            values = {"p_status": status, "p_provider_id": provider_id, "p_error": error,
                      "p_sent_at": now if status == "sent" else None, "p_now": now,
                      "p_inc": 1 if status in _ANSWERED else 0}
            if self.is_sqlite:
                sqlite_ledger.finish_shared(conn, worker, ids, values)
                continue
            low, high = min(ids), max(ids)
            if high - low + 1 == len(ids) == len(set(ids)):
                conn.execute(_PG_FINISH_RANGE, {"p_low": low, "p_high": high, "p_worker": worker, **values})
            else:
                conn.execute(_PG_FINISH_SHARED, {"p_ids": ids, "p_worker": worker, **values})
        if not each:
            return
        if self.is_sqlite:  # SMTP: a queue id each
            sqlite_ledger.finish_each(conn, worker, [(delivery_id, status, provider_id, error,
                                                      1 if status in _ANSWERED else 0)
                                                     for delivery_id, status, provider_id, error in each], now)
        elif len(each) == 1:
            delivery_id, status, provider_id, error = each[0]
            conn.execute(_PG_FINISH_SHARED, {
                "p_ids": [delivery_id], "p_worker": worker, "p_status": status, "p_provider_id": provider_id,
                "p_error": error, "p_sent_at": now if status == "sent" else None, "p_now": now,
                "p_inc": 1 if status in _ANSWERED else 0})
        else:
            ids, statuses, provider_ids, errors = (list(column) for column in zip(*each))
            conn.execute(_PG_FINISH_EACH, {"p_ids": ids, "p_statuses": statuses, "p_provider_ids": provider_ids,
                                           "p_errors": errors, "p_worker": worker, "p_now": now})

    def requeue(self, conn: Connection, issue_id: int, *, statuses: Sequence[str], claimed_by: Sequence[str] | None = None,
                claimed_before: datetime | None = None) -> int:
        """Put rows back in the queue (a stopped or crashed worker's `sending` rows, or `failed` ones on
        --retry-failed). Attempts are untouched: they count the recipients' answers only."""
        query = deliveries.update().where(deliveries.c.issue_id == issue_id, delivery_status_is(*statuses))
        if claimed_by is not None:
            query = query.where(deliveries.c.claimed_by.in_(claimed_by))
        if claimed_before is not None:
            query = query.where(deliveries.c.claimed_at < claimed_before)
        result = conn.execute(query.values(status="queued", claimed_by=None, claimed_at=None, updated_at=utcnow()))
        return result.rowcount or 0

    def requeue_ids(self, conn: Connection, worker: str, rows: Sequence[tuple[int, str | None]], *,
                    count_attempt: bool = True) -> None:
        """Give specific claimed rows back to the queue, keeping the reason: after a transient refusal of
        the recipient (`count_attempt`), or when the path failed before they were tried (not counted)."""
        if not rows:
            return
        if not self.is_sqlite:  # one statement over arrays
            conn.execute(_PG_REQUEUE_IDS, {"p_ids": [delivery_id for delivery_id, _ in rows],
                                           "p_errors": [(error or "")[:2000] for _, error in rows],
                                           "p_worker": worker, "p_now": utcnow(), "p_inc": 1 if count_attempt else 0})
            return
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == sa.bindparam("b_id"), deliveries.c.claimed_by == worker,
                   CLAIMED_ROW)
            .values(status="queued", claimed_by=None, claimed_at=None, last_error=sa.bindparam("b_error"),
                    updated_at=utcnow(), attempts=deliveries.c.attempts + (1 if count_attempt else 0)),
            [{"b_id": delivery_id, "b_error": (error or "")[:2000]} for delivery_id, error in rows])

    def suppressed_among(self, conn: Connection, worker: str, delivery_ids: Sequence[int]) -> dict[int, str]:
        """{delivery id: subscriber status} for those of `worker`'s claimed rows whose subscriber is no
        longer active (unsubscribed, bounced or complained a moment ago). One indexed read, prebuilt:
        dispatch runs it right before messages leave; `finish_deliveries` then records them `skipped`."""
        if not delivery_ids:
            return {}
        if not self.is_sqlite:
            return dict(conn.execute(_PG_SUPPRESSED_AMONG, {"p_ids": list(delivery_ids), "p_worker": worker}).all())
        return dict(conn.execute(_SUPPRESSED_AMONG, {"p_ids": list(delivery_ids), "p_worker": worker}).all())

    def renew_claims(self, conn: Connection, worker: str) -> int:
        """The worker's heartbeat: its `sending` rows get a fresh `claimed_at`, so no lease expires under it."""
        return conn.execute(deliveries.update().where(deliveries.c.claimed_by == worker,
                                                      CLAIMED_ROW)
                            .values(claimed_at=utcnow())).rowcount or 0

    def reset_attempts(self, conn: Connection, issue_id: int) -> None:
        conn.execute(deliveries.update().where(deliveries.c.issue_id == issue_id, QUEUED_ROW)
                     .values(attempts=0))

    def max_subscriber_id(self, conn: Connection) -> int:
        return conn.execute(sa.select(sa.func.coalesce(sa.func.max(subscribers.c.id), 0))).scalar_one()

    def issues_with_queue(self, conn: Connection) -> list[tuple[str, int]]:
        """(slug, id) of issues being sent that still have queued deliveries, oldest first."""
        has_queue = sa.exists().where(deliveries.c.issue_id == issues.c.id, QUEUED_ROW)
        return [(slug, issue_id) for slug, issue_id in conn.execute(
            sa.select(issues.c.slug, issues.c.id).where(issues.c.status == "sending", has_queue).order_by(issues.c.id))]

    def delivery_counts(self, conn: Connection, issue_id: int) -> dict[str, int]:
        counts = {status: 0 for status in ("queued", "sending", "sent", "failed", "skipped")}
        for status, count in conn.execute(
                sa.select(deliveries.c.status, sa.func.count()).where(deliveries.c.issue_id == issue_id)
                .group_by(deliveries.c.status)):
            counts[status] = count
        return counts

    def ledger_overview(self, conn: Connection) -> list[tuple[sa.Row, dict[str, int]]]:
        """Every issue with a ledger, newest first (by its last activity: finished, else started, else
        frozen; then the latest created), as (issues row, delivery counts by status like
        `delivery_counts`). One grouped query, whatever the number of issues."""
        statuses = ("queued", "sending", "sent", "failed", "skipped")
        counted = (sa.select(deliveries.c.issue_id,
                             *(sa.func.sum(sa.case((deliveries.c.status == status, 1), else_=0)).label(status)
                               for status in statuses))
                   .group_by(deliveries.c.issue_id).subquery())
        last = sa.func.coalesce(issues.c.finished_at, issues.c.started_at, issues.c.frozen_at)
        rows = conn.execute(
            sa.select(issues, *(counted.c[status] for status in statuses))
            .select_from(issues.outerjoin(counted, counted.c.issue_id == issues.c.id))
            .order_by(last.is_(None), last.desc(), issues.c.id.desc())).all()
        return [(row, {status: int(getattr(row, status) or 0) for status in statuses}) for row in rows]

    def claimants(self, conn: Connection, issue_id: int) -> list[tuple[str, datetime]]:
        """Workers holding `sending` rows of an issue, with their oldest claim."""
        return [(worker, as_utc(claimed_at)) for worker, claimed_at in conn.execute(
            sa.select(deliveries.c.claimed_by, sa.func.min(deliveries.c.claimed_at))
            .where(deliveries.c.issue_id == issue_id, CLAIMED_ROW)
            .group_by(deliveries.c.claimed_by))]

    # ----- editions: the content a send delivers (see prepare.prepare_send) -----------------------
    def insert_edition(self, conn: Connection, issue_id: int, *, reason: str, values: dict[str, Any],
                       links: Sequence[str] = ()) -> sa.Row:
        """Store the issue's next edition (number = last + 1) and return its row. `values`: the
        `editions` columns subject, html, text, greeting, headers, template, mailer_version,
        content_hash, language, forced_language, segment, segment_zone, variants (`Edition.values`);
        `links`: its tracked URLs, position 1… in order (click tracking: the `links`
        table; empty when tracking is off). Call it holding the issue's row lock (`ensure_issue`):
        numbers never collide."""
        number = conn.execute(sa.select(sa.func.coalesce(sa.func.max(editions.c.number), 0))
                              .where(editions.c.issue_id == issue_id)).scalar_one() + 1
        sent = conn.execute(sa.select(sa.func.count()).select_from(deliveries)
                            .where(deliveries.c.issue_id == issue_id, deliveries.c.status == "sent")).scalar_one()
        edition_id = conn.execute(editions.insert().values(
            issue_id=issue_id, number=number, created_at=utcnow(), reason=reason, sent_before=sent, **values)
            .returning(editions.c.id)).scalar_one()
        if links:
            conn.execute(links_table.insert(), [{"edition_id": edition_id, "position": position, "url": url}
                                                for position, url in enumerate(links, start=1)])
        return SimpleNamespace(**conn.execute(_EDITION_ROW.where(editions.c.id == edition_id)).one()._mapping,
                               links=tuple(links))

    def current_edition(self, conn: Connection, issue_id: int) -> sa.Row | None:
        """The issue's newest edition (the one every claim sends), None before the first freeze: the
        `editions` columns, `headers` and `variants` as their stored JSON text (the caller parses them
        and checks `content_hash`: `edition.from_row`), and `links`, its tracked URLs in position order
        (a tuple)."""
        row = conn.execute(_EDITION_ROW.where(editions.c.issue_id == issue_id)
                           .order_by(editions.c.number.desc()).limit(1)).first()
        if row is None:
            return None
        urls = conn.execute(sa.select(links_table.c.url).where(links_table.c.edition_id == row.id)
                            .order_by(links_table.c.position)).scalars()
        return SimpleNamespace(**row._mapping, links=tuple(urls))

    def current_edition_id(self, conn: Connection, issue_id: int) -> int | None:
        """The newest edition's id, read under a shared lock on the issue's row (PostgreSQL `FOR SHARE`;
        SQLite's single writer serialises the same way): a claim made in the same transaction can
        never interleave with a `--rebuild`, which holds that row `FOR UPDATE`."""
        if not self.is_sqlite:  # one round trip: the lock and the read in one statement
            return conn.execute(_PG_ISSUE_EDITION, {"p_issue": issue_id}).scalar()
        return conn.execute(_CURRENT_EDITION_ID, {"p_issue": issue_id}).scalar()

    def current_editions(self, conn: Connection, issue_ids: Sequence[int]) -> dict[int, sa.Row]:
        """issue id -> (number, created_at, reason, content_hash, template, subject, segment,
        forced_language, count) of its newest edition."""
        newest = (sa.select(editions.c.issue_id, sa.func.max(editions.c.number).label("number"),
                            sa.func.count().label("count"))
                  .where(editions.c.issue_id.in_(sa.bindparam("p_ids", expanding=True)))
                  .group_by(editions.c.issue_id).subquery())
        query = (sa.select(editions.c.issue_id, editions.c.number, editions.c.created_at, editions.c.reason,
                           editions.c.content_hash, editions.c.template, editions.c.subject, editions.c.segment,
                           editions.c.forced_language, newest.c.count)
                 .join(newest, (newest.c.issue_id == editions.c.issue_id) & (newest.c.number == editions.c.number)))
        found: dict[int, sa.Row] = {}
        for chunk in _chunks(sorted(set(issue_ids)), 500):
            found.update((row.issue_id, row) for row in conn.execute(query, {"p_ids": list(chunk)}))
        return found

    # ----- deliverability per issue (providers/bounces, `mailer report`) -------------------------
    def delivery_facts(self, conn: Connection, issue_id: int, subscriber_id: int) -> sa.Row | None:
        """(delivery_id, delivery_status, sent_at, slug, email, status, confirmed_at) of one delivery
        and its person, or None when that issue never had that subscriber in its ledger."""
        return conn.execute(
            sa.select(deliveries.c.id.label("delivery_id"), deliveries.c.status.label("delivery_status"),
                      deliveries.c.sent_at, issues.c.slug, subscribers.c.email, subscribers.c.status,
                      subscribers.c.confirmed_at)
            .join(issues, issues.c.id == deliveries.c.issue_id)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.issue_id == issue_id, deliveries.c.subscriber_id == subscriber_id)).first()

    def delivered_issues(self, conn: Connection, subscriber_id: int) -> list[sa.Row]:
        """(issue_id, slug) of every issue handed over for a person (sent or failed), newest first."""
        return list(conn.execute(
            sa.select(deliveries.c.issue_id, issues.c.slug).join(issues, issues.c.id == deliveries.c.issue_id)
            .where(deliveries.c.subscriber_id == subscriber_id, deliveries.c.status.in_(("sent", "failed")))
            .order_by(deliveries.c.id.desc())))

    def soft_bounced_sends(self, conn: Connection, subscriber_id: int, last: int) -> int:
        """Of a person's `last` sends (deliveries sent, newest first), how many came back as a soft
        bounce reported by a bounce mailbox (a `soft_bounced` provider event for that issue and person;
        a webhook's `blocked` is left out: SendGrid's blocks are mostly about the sender, an IP on a
        blocklist or a content filter, and SendGrid suppresses no one for them either)."""
        recent = (sa.select(deliveries.c.issue_id)
                  .where(deliveries.c.subscriber_id == subscriber_id, deliveries.c.status == "sent")
                  .order_by(deliveries.c.sent_at.desc(), deliveries.c.id.desc()).limit(last).subquery())
        return conn.execute(
            sa.select(sa.func.count(sa.distinct(provider_events.c.issue_id)))
            .where(provider_events.c.subscriber_id == subscriber_id, provider_events.c.kind == "soft_bounced",
                   provider_events.c.issue_id.in_(sa.select(recent.c.issue_id)))).scalar_one()

    def deliverability(self, conn: Connection, issue_id: int | None = None) -> list[sa.Row]:
        """Per issue that has a ledger (oldest first; one issue with `issue_id`): (issue_id, slug, sent,
        hard_bounces, soft_bounces, complaints): deliveries sent, and distinct people with a hard bounce
        (`bounced`), a soft one (`statuses.SOFT_BOUNCE_KINDS`) or a complaint (`complained`)
        reported for that issue by any provider (webhook or bounce mailbox)."""
        sent = (sa.select(deliveries.c.issue_id, sa.func.count().label("sent"))
                .where(deliveries.c.status == "sent").group_by(deliveries.c.issue_id).subquery())

        def people(*kinds: str) -> sa.ScalarSelect:
            return (sa.select(sa.func.count(sa.distinct(provider_events.c.subscriber_id)))
                    .where(provider_events.c.issue_id == issues.c.id, provider_events.c.kind.in_(kinds),
                           provider_events.c.subscriber_id.is_not(None)).scalar_subquery())

        query = (sa.select(issues.c.id.label("issue_id"), issues.c.slug, sa.func.coalesce(sent.c.sent, 0).label("sent"),
                           people("bounced").label("hard_bounces"),
                           people(*SOFT_BOUNCE_KINDS).label("soft_bounces"),
                           people("complained").label("complaints"))
                 .select_from(issues.outerjoin(sent, sent.c.issue_id == issues.c.id))
                 .where(sa.exists().where(deliveries.c.issue_id == issues.c.id))
                 .order_by(issues.c.id))
        if issue_id is not None:
            query = query.where(issues.c.id == issue_id)
        return list(conn.execute(query))
