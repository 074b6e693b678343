"""The store: one SQLAlchemy engine over SQLite (default) or PostgreSQL, same code and migrations.

Owns connections, migrations (applied automatically on first use) and the queries that keep the
subscriber list and the delivery ledger consistent. Higher layers (`subscribers`, `importer`,
`dispatch`, the web app) call these functions and never write SQL of their own — which is why this
module is longer than most: it holds every query, including the import's bulk writers (raw driver
statements on SQLite and PostgreSQL, written to match SQLAlchemy Core's output exactly).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ..errors import ConfigError, MailerError, NotFound
from .schema import (SUPPRESSED_STATUSES, TOMBSTONE_PREFIX, deliveries, editions, issues, list_members, metadata, provider_events,
                     subscriber_events, subscribers)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
HEAD_REVISION = "0004"
MAILBOX_PROVIDER = "mailbox"  # provider_events.provider of what bounce mailboxes report
_migrated: set[str] = set()
_migrate_lock = threading.Lock()


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


def _status_kind(status: str) -> str:
    return "suppressed" if status in SUPPRESSED_STATUSES else status


_STATUS_OF = sa.select(subscribers.c.status).where(subscribers.c.id == sa.bindparam("p_id"))
_GUARD = (subscribers.c.id == sa.bindparam("p_id"), subscribers.c.status == sa.bindparam("p_old"))
_STATUS_UPDATES = {
    "active": subscribers.update().where(*_GUARD).values(
        status=sa.bindparam("p_new"), updated_at=sa.bindparam("p_now"), confirmed_at=sa.bindparam("p_at"),
        unsubscribed_at=None),
    "pending": subscribers.update().where(*_GUARD).values(status=sa.bindparam("p_new"), updated_at=sa.bindparam("p_now")),
    "suppressed": subscribers.update().where(*_GUARD).values(
        status=sa.bindparam("p_new"), updated_at=sa.bindparam("p_now"), unsubscribed_at=sa.bindparam("p_at")),
}
_STATUS_EVENT = subscriber_events.insert().values(
    subscriber_id=sa.bindparam("p_id"), at=sa.bindparam("p_now"), kind="status", old_status=sa.bindparam("p_old"),
    new_status=sa.bindparam("p_new"), source=sa.bindparam("p_source"), reason=sa.bindparam("p_reason"))


_PERSON_COLUMNS = (subscribers.c.id, subscribers.c.email, subscribers.c.email_given, subscribers.c.name,
                   subscribers.c.status, subscribers.c.unsubscribed_at)
_PERSON = sa.select(*_PERSON_COLUMNS).where(subscribers.c.id == sa.bindparam("p_id"))
_PERSON_FOR_UPDATE = _PERSON.with_for_update()
# An issue has a public page once sent (or partly sent) and given a web edition.
_SENT_WITH_WEB_EDITION = sa.and_(issues.c.web_html.is_not(None), sa.or_(
    issues.c.status == "sent",
    sa.exists().where(deliveries.c.issue_id == issues.c.id, deliveries.c.status == "sent")))


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]

_NOT_TOMBSTONE = ~subscribers.c.email.startswith(TOMBSTONE_PREFIX)

# once per claim (Store.current_edition_id): built once
_ISSUE_SHARE_LOCK = sa.select(issues.c.id).where(issues.c.id == sa.bindparam("p_issue")).with_for_update(read=True)
_CURRENT_EDITION_ID = sa.select(sa.func.max(editions.c.id)).where(editions.c.issue_id == sa.bindparam("p_issue"))

_FINISH_ONE = deliveries.update().where(
    deliveries.c.id == sa.bindparam("p_id"), deliveries.c.claimed_by == sa.bindparam("p_worker"),
    deliveries.c.status == "sending").values(
    status=sa.bindparam("p_status"), provider_message_id=sa.bindparam("p_provider_id"),
    last_error=sa.bindparam("p_error"), sent_at=sa.bindparam("p_sent_at"), updated_at=sa.bindparam("p_now"),
    attempts=deliveries.c.attempts + sa.bindparam("p_inc"))
# a recipient's answer (sent, refused) is an attempt; a skip is not
_ANSWERED = frozenset({"sent", "failed"})
_SUPPRESSED_AMONG = (
    sa.select(deliveries.c.id, subscribers.c.status)
    .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
    .where(deliveries.c.id.in_(sa.bindparam("p_ids", expanding=True)),
           deliveries.c.claimed_by == sa.bindparam("p_worker"), deliveries.c.status == "sending",
           subscribers.c.status != "active"))


class Store:
    """A handle on the database. Cheap to pass around; one per process is enough."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite: one writer, no upgrade deadlocks)."""
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # ----- subscribers ----------------------------------------------------------------------
    def subscriber_by_email(self, conn: Connection, email_key: str) -> sa.Row | None:
        return conn.execute(sa.select(subscribers).where(subscribers.c.email == email_key)).first()

    def subscriber_by_id(self, conn: Connection, subscriber_id: int) -> sa.Row | None:
        return conn.execute(sa.select(subscribers).where(subscribers.c.id == subscriber_id)).first()

    def insert_subscriber(self, conn: Connection, *, email: str, email_given: str, status: str, name: str = "",
                          language: str = "", source: str = "", attributes: dict | None = None,
                          reason: str = "", lists: Sequence[str] = ()) -> int:
        now = utcnow()
        subscriber_id = conn.execute(subscribers.insert().values(
            email=email, email_given=email_given, name=name, language=language, status=status, source=source,
            attributes=attributes or {}, created_at=now, updated_at=now,
            confirmed_at=now if status == "active" else None,
        ).returning(subscribers.c.id)).scalar_one()
        conn.execute(subscriber_events.insert().values(
            subscriber_id=subscriber_id, at=now, kind="created", old_status=None, new_status=status,
            source=source, reason=reason))
        for list_name in lists:
            conn.execute(list_members.insert().values(list_name=list_name, subscriber_id=subscriber_id))
        return subscriber_id

    def set_status(self, conn: Connection, subscriber_id: int, new_status: str, *, source: str, reason: str = "") -> bool:
        """Change a subscriber's status and record why; False when it already had that status."""
        row = conn.execute(_STATUS_OF, {"p_id": subscriber_id}).first()
        if row is None:
            raise NotFound(f"no subscriber with id {subscriber_id}")
        if row.status == new_status:
            return False
        return bool(self.apply_status_changes(conn, [StatusChange(subscriber_id, row.status, new_status, source, reason)]))

    def apply_status_changes(self, conn: Connection, changes: Sequence["StatusChange"]) -> list["StatusChange"]:
        """Apply each change only if the subscriber still has its `old` status (so two concurrent
        requests cannot both apply it), set the timestamps the new status implies, and record one
        event per applied change (`confirmed_at` / `unsubscribed_at` are the change's `at` when it has
        one, as an export's UNSUB_TIME). Statements are built once: this is the one-click and webhook
        hot path."""
        now = utcnow()
        applied = [change for change in changes
                   if conn.execute(_STATUS_UPDATES[_status_kind(change.new)],
                                   {"p_id": change.subscriber_id, "p_old": change.old, "p_new": change.new,
                                    "p_now": now, **({} if change.new == "pending" else {"p_at": change.at or now})}
                                   ).rowcount == 1]
        if applied:
            conn.execute(_STATUS_EVENT, [{"p_id": c.subscriber_id, "p_now": now, "p_old": c.old, "p_new": c.new,
                                          "p_source": c.source, "p_reason": c.reason[:2000]} for c in applied])
        return applied

    # ----- people: links, the web app and the operator's person operations ------------------
    def person_for_link(self, conn: Connection, subscriber_id: int, *, lock: bool = False) -> sa.Row | None:
        """(id, email, email_given, name, status, unsubscribed_at) of the person a link names;
        `lock`: FOR UPDATE on PostgreSQL, so two concurrent clicks cannot both apply a change."""
        return conn.execute(_PERSON_FOR_UPDATE if lock else _PERSON, {"p_id": subscriber_id}).first()

    def people_by_ids(self, conn: Connection, ids: Sequence[int]) -> dict[int, sa.Row]:
        """id -> (id, email, status, confirmed_at), for the ids that exist."""
        found: dict[int, sa.Row] = {}
        for chunk in _chunks(sorted(set(ids)), 500):
            found.update((row.id, row) for row in conn.execute(
                sa.select(subscribers.c.id, subscribers.c.email, subscribers.c.status, subscribers.c.confirmed_at)
                .where(subscribers.c.id.in_(chunk))))
        return found

    def ids_by_emails(self, conn: Connection, keys: Sequence[str]) -> dict[str, int]:
        """Normalised address (or tombstone) -> subscriber id, for those in the table."""
        found: dict[str, int] = {}
        for chunk in _chunks(sorted(set(keys)), 500):
            found.update((email, sid) for email, sid in conn.execute(
                sa.select(subscribers.c.email, subscribers.c.id).where(subscribers.c.email.in_(chunk))))
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

    # ----- bounce mailboxes (providers/bounces) and deliverability per issue ----------------
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
        bounce (a `soft_bounced` provider event for that issue and person)."""
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
        (`bounced`), a soft one (`soft_bounced`, SendGrid's `blocked`) or a complaint (`complained`)
        reported for that issue by any provider (webhook or bounce mailbox)."""
        sent = (sa.select(deliveries.c.issue_id, sa.func.count().label("sent"))
                .where(deliveries.c.status == "sent").group_by(deliveries.c.issue_id).subquery())

        def people(*kinds: str) -> sa.ScalarSelect:
            return (sa.select(sa.func.count(sa.distinct(provider_events.c.subscriber_id)))
                    .where(provider_events.c.issue_id == issues.c.id, provider_events.c.kind.in_(kinds),
                           provider_events.c.subscriber_id.is_not(None)).scalar_subquery())

        query = (sa.select(issues.c.id.label("issue_id"), issues.c.slug, sa.func.coalesce(sent.c.sent, 0).label("sent"),
                           people("bounced").label("hard_bounces"),
                           people("soft_bounced", "blocked").label("soft_bounces"),
                           people("complained").label("complaints"))
                 .select_from(issues.outerjoin(sent, sent.c.issue_id == issues.c.id))
                 .where(sa.exists().where(deliveries.c.issue_id == issues.c.id))
                 .order_by(issues.c.id))
        if issue_id is not None:
            query = query.where(issues.c.id == issue_id)
        return list(conn.execute(query))

    def erase_person(self, conn: Connection, subscriber_id: int, *, email_keys: Sequence[str], tombstone: str,
                     redact: Callable[[str], str], anonymise: Callable[[dict], dict], source: str,
                     reason: str) -> dict[str, Any]:
        """Erase a person's data in every table, keeping an anonymous tombstone row (the same id,
        `tombstone` in place of the address) and the shape of their history.

        `email_keys`: the normalised forms of the address (webhook events are found by these too);
        `redact(text)`: the text with any address replaced; `anonymise(payload)`: a provider event's
        raw payload without its personal fields. Returns counts and `paths`: the deliveries'
        provider ids as they were before redaction (for the outbox backend, the files written).
        """
        people = [subscriber_id]
        conn.execute(list_members.delete().where(list_members.c.subscriber_id == subscriber_id))
        conn.execute(subscribers.update().where(subscribers.c.id == subscriber_id).values(
            email=tombstone, email_given=tombstone, name="", language="", attributes={}, import_digest=None,
            source="", updated_at=utcnow()))
        events = conn.execute(sa.select(subscriber_events.c.id, subscriber_events.c.reason)
                              .where(subscriber_events.c.subscriber_id.in_(people))).all()
        changed = [{"b_id": row.id, "b_reason": redact(row.reason or "")} for row in events
                   if redact(row.reason or "") != (row.reason or "")]
        if changed:
            conn.execute(subscriber_events.update().where(subscriber_events.c.id == sa.bindparam("b_id"))
                         .values(reason=sa.bindparam("b_reason")), changed)
        sent = conn.execute(sa.select(deliveries.c.id, deliveries.c.provider_message_id, deliveries.c.last_error)
                            .where(deliveries.c.subscriber_id == subscriber_id)).all()
        paths = [row.provider_message_id for row in sent if row.provider_message_id]
        if sent:
            conn.execute(deliveries.update().where(deliveries.c.id == sa.bindparam("b_id")).values(
                provider_message_id=sa.bindparam("b_provider"), last_error=sa.bindparam("b_error")), [
                {"b_id": row.id,
                 "b_provider": redact(row.provider_message_id) if row.provider_message_id else None,
                 "b_error": redact(row.last_error) if row.last_error else None} for row in sent])
        hooks = conn.execute(
            sa.select(provider_events.c.id, provider_events.c.reason, provider_events.c.payload)
            .where(sa.or_(provider_events.c.subscriber_id == subscriber_id,
                          provider_events.c.email.in_([*email_keys, tombstone]),
                          # an `email` field that was not a bare address ("Name <address>") is stored as given
                          *(provider_events.c.email.contains(key.lower(), autoescape=True) for key in email_keys)))).all()
        if hooks:
            conn.execute(provider_events.update().where(provider_events.c.id == sa.bindparam("b_id")).values(
                email="", subscriber_id=subscriber_id, reason=sa.bindparam("b_reason"),
                payload=sa.bindparam("b_payload")), [
                {"b_id": row.id, "b_reason": redact(row.reason or ""),
                 "b_payload": anonymise(row.payload if isinstance(row.payload, dict) else {})} for row in hooks])
        self.record_event(conn, subscriber_id, "erased", source=source, reason=reason)
        return {"events": len(events), "deliveries": len(sent), "provider_events": len(hooks), "paths": paths}

    def compact(self) -> bool:
        """After an erasure, leave no copy of deleted data in the database files: on SQLite, VACUUM
        (rewrites the file from live rows only; freed pages and old record images go) and truncate the
        write-ahead log; False when another connection kept the log busy. PostgreSQL: nothing here
        (dead row versions stay in the table files until (auto)vacuum reuses them)."""
        if not self.is_sqlite:
            return True
        with self.engine.connect() as conn:
            dbapi = conn.connection.driver_connection
            dbapi.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            dbapi.execute("VACUUM")
            busy = dbapi.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return busy == 0

    # ----- issues' public pages ------------------------------------------------------------------
    def published_issues(self, conn: Connection) -> list[sa.Row]:
        """(id, slug, subject, issue_date, started_at, finished_at) of the issues the archive (and its
        Atom feed) lists, newest first."""
        return list(conn.execute(
            sa.select(issues.c.id, issues.c.slug, issues.c.subject, issues.c.issue_date, issues.c.started_at,
                      issues.c.finished_at)
            .where(_SENT_WITH_WEB_EDITION, issues.c.public.is_(True))
            .order_by(sa.func.coalesce(issues.c.issue_date, "").desc(), issues.c.id.desc())))

    def web_html_by_id(self, conn: Connection, issue_ids: Sequence[int]) -> dict[int, str]:
        """issue id -> its stored web edition (HTML), for the ids that have one."""
        found: dict[int, str] = {}
        for chunk in _chunks(list(issue_ids), 500):
            rows = conn.execute(sa.select(issues.c.id, issues.c.web_html)
                                .where(issues.c.id.in_(chunk), issues.c.web_html.is_not(None)))
            found.update({row.id: row.web_html for row in rows})
        return found

    def web_edition(self, conn: Connection, slug: str) -> sa.Row | None:
        """(web_html, public) of a sent issue, None for unknown or unsent ones."""
        return conn.execute(sa.select(issues.c.web_html, issues.c.public)
                            .where(issues.c.slug == slug, _SENT_WITH_WEB_EDITION)).first()

    def count_subscribers(self, conn: Connection, status: str | None = None) -> int:
        """People on the list (of `status`); erased people's tombstones are nobody and never counted,
        so this agrees with `subscriber_pages` (what `list` and `export` show)."""
        query = sa.select(sa.func.count()).select_from(subscribers).where(_NOT_TOMBSTONE)
        if status:
            query = query.where(subscribers.c.status == status)
        return conn.execute(query).scalar_one()

    # ----- issues -----------------------------------------------------------------------------
    def issue_row(self, conn: Connection, slug: str) -> sa.Row | None:
        return conn.execute(sa.select(issues).where(issues.c.slug == slug)).first()

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
    def freeze_recipients(self, conn: Connection, issue_id: int, list_name: str | None) -> int:
        """Write one queued delivery per active subscriber (of `list_name`) not yet in the ledger.

        Called once when a send starts (the freeze) and again only with `--include-new`.
        """
        now = utcnow()
        candidates = sa.select(
            sa.literal(issue_id), subscribers.c.id, sa.literal("queued"), sa.literal(0), sa.literal(now), sa.literal(now),
        ).where(subscribers.c.status == "active").where(~sa.exists().where(
            (deliveries.c.issue_id == issue_id) & (deliveries.c.subscriber_id == subscribers.c.id)))
        if list_name:
            candidates = candidates.where(sa.exists().where(
                (list_members.c.subscriber_id == subscribers.c.id) & (list_members.c.list_name == list_name)))
        result = conn.execute(self._insert(deliveries).from_select(
            ["issue_id", "subscriber_id", "status", "attempts", "created_at", "updated_at"], candidates)
            .on_conflict_do_nothing(index_elements=[deliveries.c.issue_id, deliveries.c.subscriber_id])
            .execution_options(preserve_rowcount=True))  # else -1 on PostgreSQL (SQLAlchemy 2: INSERT rowcount)
        return max(result.rowcount, 0)

    def audience(self, conn: Connection, list_name: str | None) -> dict[str, int]:
        """Subscribers by status: of the named list, or everyone (what a freeze would draw from)."""
        query = sa.select(subscribers.c.status, sa.func.count()).group_by(subscribers.c.status)
        if list_name:
            query = query.join(list_members, list_members.c.subscriber_id == subscribers.c.id).where(
                list_members.c.list_name == list_name)
        return {status: count for status, count in conn.execute(query)}

    def list_names(self, conn: Connection) -> list[str]:
        """Every named list with at least one member, sorted."""
        return list(conn.execute(sa.select(list_members.c.list_name).distinct().order_by(list_members.c.list_name))
                    .scalars())

    def count_unfrozen(self, conn: Connection, issue_id: int | None, list_name: str | None) -> int:
        """Active subscribers (of `list_name`) a freeze of `issue_id` would add now."""
        query = sa.select(sa.func.count()).select_from(subscribers).where(subscribers.c.status == "active")
        if issue_id is not None:
            query = query.where(~sa.exists().where(
                (deliveries.c.issue_id == issue_id) & (deliveries.c.subscriber_id == subscribers.c.id)))
        if list_name:
            query = query.where(sa.exists().where(
                (list_members.c.subscriber_id == subscribers.c.id) & (list_members.c.list_name == list_name)))
        return conn.execute(query).scalar_one()

    def claim_deliveries(self, conn: Connection, issue_id: int, worker: str, limit: int) -> list[sa.Row]:
        """Move up to `limit` queued rows to `sending` for `worker` and return them with their subscriber.

        One statement: `FOR UPDATE SKIP LOCKED` on PostgreSQL lets many workers claim disjoint
        batches; SQLite's single writer serialises it.
        """
        now = utcnow()
        picked = (sa.select(deliveries.c.id)
                  .where(deliveries.c.issue_id == issue_id, deliveries.c.status == "queued")
                  .order_by(deliveries.c.id).limit(limit)
                  .with_for_update(skip_locked=True))
        claimed = conn.execute(
            deliveries.update().where(deliveries.c.id.in_(picked.scalar_subquery()))
            .values(status="sending", claimed_by=worker, claimed_at=now, updated_at=now)
            .returning(deliveries.c.id)
        ).scalars().all()
        if not claimed:
            return []
        return list(conn.execute(
            sa.select(deliveries.c.id.label("delivery_id"), deliveries.c.attempts, subscribers.c.id.label("subscriber_id"),
                      subscribers.c.email_given, subscribers.c.name, subscribers.c.status.label("subscriber_status"),
                      subscribers.c.attributes["first_name"].as_string().label("first_name"))
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.id.in_(claimed)).order_by(deliveries.c.id)
        ).all())

    def finish_deliveries(self, conn: Connection, worker: str, rows: Sequence[dict]) -> None:
        """Record outcomes in bulk: each dict has id, status and optional provider_message_id / last_error.
        `sent` and `failed` count one attempt (the recipient's provider answered); `skipped` does not.

        Rows sharing an outcome (a SendGrid request: all sent, one provider id) go in one
        `UPDATE … WHERE id IN (…)`; the others (SMTP: a queue id each) through one prebuilt
        statement, executed many. Only rows still claimed by `worker` change, so a batch that another
        process took over after a stale claim can never be recorded twice.
        """
        if not rows:
            return
        now = utcnow()
        groups: dict[tuple, list[int]] = {}
        for row in rows:
            key = (row["status"], row.get("provider_message_id"), row.get("last_error"))
            groups.setdefault(key, []).append(row["id"])
        singles = []
        for (status, provider_id, error), ids in groups.items():
            increment = 1 if status in _ANSWERED else 0
            if len(ids) == 1:
                singles.append({"p_id": ids[0], "p_status": status, "p_provider_id": provider_id, "p_error": error,
                                "p_sent_at": now if status == "sent" else None, "p_now": now, "p_worker": worker,
                                "p_inc": increment})
                continue
            for start in range(0, len(ids), 1000):
                conn.execute(
                    deliveries.update()
                    .where(deliveries.c.id.in_(ids[start:start + 1000]), deliveries.c.claimed_by == worker,
                           deliveries.c.status == "sending")
                    .values(status=status, provider_message_id=provider_id, last_error=error,
                            sent_at=now if status == "sent" else None, updated_at=now,
                            attempts=deliveries.c.attempts + increment))
        if singles:
            conn.execute(_FINISH_ONE, singles)

    def requeue(self, conn: Connection, issue_id: int, *, statuses: Sequence[str], claimed_by: Sequence[str] | None = None,
                claimed_before: datetime | None = None) -> int:
        """Put rows back in the queue (a stopped or crashed worker's `sending` rows, or `failed` ones on
        --retry-failed). Attempts are untouched: they count the recipients' answers only."""
        query = deliveries.update().where(deliveries.c.issue_id == issue_id, deliveries.c.status.in_(statuses))
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
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == sa.bindparam("b_id"), deliveries.c.claimed_by == worker,
                   deliveries.c.status == "sending")
            .values(status="queued", claimed_by=None, claimed_at=None, last_error=sa.bindparam("b_error"),
                    updated_at=utcnow(), attempts=deliveries.c.attempts + (1 if count_attempt else 0)),
            [{"b_id": delivery_id, "b_error": (error or "")[:2000]} for delivery_id, error in rows])

    def suppressed_among(self, conn: Connection, worker: str, delivery_ids: Sequence[int]) -> dict[int, str]:
        """{delivery id: subscriber status} for those of `worker`'s claimed rows whose subscriber is no
        longer active (unsubscribed, bounced or complained a moment ago). One indexed read, prebuilt:
        dispatch runs it right before messages leave; `finish_deliveries` then records them `skipped`."""
        if not delivery_ids:
            return {}
        return dict(conn.execute(_SUPPRESSED_AMONG, {"p_ids": list(delivery_ids), "p_worker": worker}).all())

    def renew_claims(self, conn: Connection, worker: str) -> int:
        """The worker's heartbeat: its `sending` rows get a fresh `claimed_at`, so no lease expires under it."""
        return conn.execute(deliveries.update().where(deliveries.c.claimed_by == worker,
                                                      deliveries.c.status == "sending")
                            .values(claimed_at=utcnow())).rowcount or 0

    def reset_attempts(self, conn: Connection, issue_id: int) -> None:
        conn.execute(deliveries.update().where(deliveries.c.issue_id == issue_id, deliveries.c.status == "queued")
                     .values(attempts=0))

    def max_subscriber_id(self, conn: Connection) -> int:
        return conn.execute(sa.select(sa.func.coalesce(sa.func.max(subscribers.c.id), 0))).scalar_one()

    def issues_with_queue(self, conn: Connection) -> list[tuple[str, int]]:
        """(slug, id) of issues being sent that still have queued deliveries, oldest first."""
        has_queue = sa.exists().where(deliveries.c.issue_id == issues.c.id, deliveries.c.status == "queued")
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
            .where(deliveries.c.issue_id == issue_id, deliveries.c.status == "sending")
            .group_by(deliveries.c.claimed_by))]

    # ----- editions: the content a send delivers (see dispatch.prepare_send) -----------------------
    def insert_edition(self, conn: Connection, issue_id: int, *, reason: str, values: dict[str, Any]) -> sa.Row:
        """Store the issue's next edition (number = last + 1) and return its row. `values`: the
        `editions` columns subject, html, text, greeting, headers, template, mailer_version,
        content_hash. Call it holding the issue's row lock (`ensure_issue`): numbers never collide."""
        number = conn.execute(sa.select(sa.func.coalesce(sa.func.max(editions.c.number), 0))
                              .where(editions.c.issue_id == issue_id)).scalar_one() + 1
        sent = conn.execute(sa.select(sa.func.count()).select_from(deliveries)
                            .where(deliveries.c.issue_id == issue_id, deliveries.c.status == "sent")).scalar_one()
        edition_id = conn.execute(editions.insert().values(
            issue_id=issue_id, number=number, created_at=utcnow(), reason=reason, sent_before=sent, **values)
            .returning(editions.c.id)).scalar_one()
        return conn.execute(sa.select(editions).where(editions.c.id == edition_id)).one()

    def current_edition(self, conn: Connection, issue_id: int) -> sa.Row | None:
        """The issue's newest edition (the one every claim sends), None before the first freeze."""
        return conn.execute(sa.select(editions).where(editions.c.issue_id == issue_id)
                            .order_by(editions.c.number.desc()).limit(1)).first()

    def current_edition_id(self, conn: Connection, issue_id: int) -> int | None:
        """The newest edition's id, read under a shared lock on the issue's row (PostgreSQL `FOR SHARE`;
        SQLite's single writer serialises the same way): a claim made in the same transaction can
        never interleave with a `--rebuild`, which holds that row `FOR UPDATE`."""
        if not self.is_sqlite:
            conn.execute(_ISSUE_SHARE_LOCK, {"p_issue": issue_id})
        return conn.execute(_CURRENT_EDITION_ID, {"p_issue": issue_id}).scalar()

    def current_editions(self, conn: Connection, issue_ids: Sequence[int]) -> dict[int, sa.Row]:
        """issue id -> (number, created_at, reason, content_hash, template, count) of its newest edition."""
        newest = (sa.select(editions.c.issue_id, sa.func.max(editions.c.number).label("number"),
                            sa.func.count().label("count"))
                  .where(editions.c.issue_id.in_(sa.bindparam("p_ids", expanding=True)))
                  .group_by(editions.c.issue_id).subquery())
        query = (sa.select(editions.c.issue_id, editions.c.number, editions.c.created_at, editions.c.reason,
                           editions.c.content_hash, editions.c.template, editions.c.subject, newest.c.count)
                 .join(newest, (newest.c.issue_id == editions.c.issue_id) & (newest.c.number == editions.c.number)))
        found: dict[int, sa.Row] = {}
        for chunk in _chunks(sorted(set(issue_ids)), 500):
            found.update((row.issue_id, row) for row in conn.execute(query, {"p_ids": list(chunk)}))
        return found

    # ----- the CSV import and export: bulk reads and writes ---------------------------------------
    # The import hands rows over as plain tuples (the cheapest thing to build, pickle from its parser
    # process and hold by the thousand), laid out as IMPORT_ROW_FIELDS; the bulk writers below write
    # exactly what `_insert_imported_core` would, which stays the reference (the tests run both engines).

    @contextmanager
    def import_connection(self) -> Iterator[Connection]:
        """One connection for a whole import; each batch is its own transaction on it. On SQLite a
        bigger page cache (the email index is written at random) and fewer, larger checkpoints while
        it lasts, restored afterwards (the connection goes back to the pool)."""
        with self.engine.connect() as conn:
            saved: list[tuple[str, object]] = []
            if conn.dialect.name == "sqlite":
                dbapi = conn.connection.driver_connection  # raw: reading a PRAGMA must not open a transaction
                for name, value in _SQLITE_IMPORT_PRAGMAS:
                    saved.append((name, dbapi.execute(f"PRAGMA {name}").fetchone()[0]))
                    dbapi.execute(f"PRAGMA {name} = {int(value)}")
            try:
                yield conn
            finally:
                if saved and not conn.invalidated:
                    dbapi = conn.connection.driver_connection
                    for name, value in saved:
                        dbapi.execute(f"PRAGMA {name} = {int(value)}")

    @staticmethod
    def import_fast_path(conn: Connection, source: str) -> str | None:
        """"sqlite" or "postgresql" where raw driver statements replace SQLAlchemy Core for the bulk
        of an import (its per-row, per-value processing was most of the cost), else None.

        They write exactly what Core would: timestamps through the same bind processors (SQLite) or
        the same datetime objects (PostgreSQL), JSON as json.dumps writes it — which is what Core does
        with the default serializer, so only with that one.
        """
        dialect = conn.dialect
        if getattr(dialect, "_json_serializer", None) is not None:
            return None
        if dialect.name == "sqlite" and "\0" not in source:
            return "sqlite"
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            return "postgresql"
        return None

    def existing_for_import(self, conn: Connection, keys: list[str], fast: str | None) -> dict[str, "ImportExisting"]:
        """The subscribers among these address keys: key → (id, status, import_digest)."""
        if fast == "sqlite":
            found = _sqlite_in(conn, "email, id, status, import_digest", keys)
        elif fast == "postgresql":  # one array parameter, not thousands of placeholders for the driver to parse
            found = conn.connection.driver_connection.execute(
                f"SELECT email, id, status, import_digest FROM {subscribers.name} WHERE email = ANY(%s)", (keys,))
        else:
            found = conn.execute(sa.select(subscribers.c.email, subscribers.c.id, subscribers.c.status,
                                           subscribers.c.import_digest).where(subscribers.c.email.in_(keys)))
        return {email: ImportExisting(sid, status, digest) for email, sid, status, digest in found}

    def any_erased(self, conn: Connection) -> bool:
        """Whether anyone was ever erased (one index probe: most lists never had a tombstone)."""
        if conn.dialect.name == "sqlite":  # a range is an index probe; LIKE is not (case-insensitive by default)
            after = TOMBSTONE_PREFIX[:-1] + chr(ord(TOMBSTONE_PREFIX[-1]) + 1)
            erased = sa.and_(subscribers.c.email >= TOMBSTONE_PREFIX, subscribers.c.email < after)
        else:
            erased = subscribers.c.email.startswith(TOMBSTONE_PREFIX)
        return conn.execute(sa.select(sa.literal(1)).where(erased).limit(1)).first() is not None

    def tombstones_among(self, conn: Connection, tombstones: list[str], fast: str | None) -> set[str]:
        """Which of these tombstone keys are in the table."""
        if fast == "sqlite":
            found = _sqlite_in(conn, "email", tombstones)
        elif fast == "postgresql":
            found = conn.connection.driver_connection.execute(
                f"SELECT email FROM {subscribers.name} WHERE email = ANY(%s)", (tombstones,))
        else:
            found = conn.execute(sa.select(subscribers.c.email).where(subscribers.c.email.in_(tombstones)))
        return {email for email, in found}

    def insert_imported(self, conn: Connection, rows: list[tuple], *, source: str, reason: str, now: datetime,
                        fast: str | None) -> None:
        """Insert new subscribers (IMPORT_ROW_FIELDS tuples), one `created` event each (reason
        "<reason> line N") and their list memberships. `status_at`, when given, dates the status
        (confirmed_at of an active person, unsubscribed_at of a suppressed one); else `now`."""
        writer = {"sqlite": _insert_imported_sqlite, "postgresql": _insert_imported_postgresql}.get(
            fast, _insert_imported_core)
        writer(conn, rows, source, reason, now)

    def profiles_of(self, conn: Connection, ids: Sequence[int]) -> dict[int, tuple[str, str, dict]]:
        """id → (name, language, attributes) of these subscribers."""
        return {sid: (name, language, attributes or {}) for sid, name, language, attributes in conn.execute(
            sa.select(subscribers.c.id, subscribers.c.name, subscribers.c.language, subscribers.c.attributes)
            .where(subscribers.c.id.in_(list(ids))))}

    def update_imported(self, conn: Connection, updates: Sequence[dict], *, source: str, now: datetime) -> None:
        """Rewrite changed people (rare next to inserts and unchanged rows: SQLAlchemy Core on every
        engine). Each dict: id, given, name, language, attributes (the whole new dict), digest, lists."""
        conn.execute(subscribers.update().where(subscribers.c.id == sa.bindparam("b_id")).values(
            email_given=sa.bindparam("b_given"), name=sa.bindparam("b_name"), language=sa.bindparam("b_language"),
            attributes=sa.bindparam("b_attributes"), import_digest=sa.bindparam("b_digest"), updated_at=now), [{
                "b_id": u["id"], "b_given": u["given"], "b_name": u["name"], "b_language": u["language"],
                "b_attributes": u["attributes"], "b_digest": u["digest"]} for u in updates])
        for update in updates:
            self.add_list_memberships(conn, update["id"], update["lists"])
        conn.execute(subscriber_events.insert(), [{
            "subscriber_id": u["id"], "at": now, "kind": "updated", "source": source, "reason": "import",
        } for u in updates])

    @staticmethod
    def add_list_memberships(conn: Connection, subscriber_id: int, lists: Sequence[str]) -> None:
        """Add a person to these named lists (those they are not in yet)."""
        if not lists:
            return
        have = set(conn.execute(sa.select(list_members.c.list_name)
                                .where(list_members.c.subscriber_id == subscriber_id)).scalars())
        new = [{"list_name": name, "subscriber_id": subscriber_id} for name in lists if name not in have]
        if new:
            conn.execute(list_members.insert(), new)

    def subscriber_pages(self, status: str | None = None, batch: int = 5000) -> Iterator[list[tuple[sa.Row, list[str]]]]:
        """Every subscriber (tombstones excluded) in id order with their sorted list names, in keyset
        pages of `batch` fetched each on a short connection: flat memory, no long read transaction."""
        last_id = 0
        while True:
            query = (sa.select(subscribers).where(subscribers.c.id > last_id, _NOT_TOMBSTONE)
                     .order_by(subscribers.c.id).limit(batch))
            if status:
                query = query.where(subscribers.c.status == status)
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
                members: dict[int, list[str]] = {}
                if rows:
                    for sid, list_name in conn.execute(
                            sa.select(list_members.c.subscriber_id, list_members.c.list_name)
                            .where(list_members.c.subscriber_id.between(rows[0].id, rows[-1].id))):
                        members.setdefault(sid, []).append(list_name)
            if not rows:
                return
            yield [(row, sorted(members.get(row.id, ()))) for row in rows]
            last_id = rows[-1].id

    def export_pages(self, attribute_names: Sequence[str], status: str | None = None,
                     batch: int = 5000) -> Iterator[list[tuple]]:
        """The cells `export` writes, in id order (tombstones excluded), as keyset pages of up to
        `batch` tuples `(email_given, name, language, status, source, created_at, confirmed_at,
        unsubscribed_at, lists, *attributes)`: timestamps as ISO 8601 UTC text to the second
        (`2026-11-26T07:00:00+00:00`, "" when unset), `lists` the list names sorted by code point and
        joined by spaces, then the value of each of `attribute_names` ("" when unset; a string as it
        is, anything else as JSON with `json.dumps(value, ensure_ascii=False)`).

        Each page is one query on a short connection (flat memory, no long read transaction). On
        SQLite and PostgreSQL the driver's own cursor runs it and the database formats the cells
        (timestamps, string attributes): no row objects, no datetime or JSON object per row; rows
        holding a non-string attribute are completed in Python. Other engines (and attribute names
        SQLite's JSON paths cannot quote) go through `subscriber_pages`, the reference.
        """
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            yield from _export_pages_core(self, attribute_names, status, batch)
            return
        # Each attribute cell is the value when it is a string, "" when absent or null, else NULL:
        # such rows are completed from the JSON in Python (below).
        if dialect == "sqlite":
            stamp = "coalesce(strftime('%Y-%m-%dT%H:%M:%S+00:00', {0}), '')"
            mark, prefix_sql = "?", f"substr(email, 1, {len(TOMBSTONE_PREFIX)})"
            attribute_sql = ("CASE coalesce(json_type(attributes, ?), 'null') WHEN 'text' THEN "
                             "json_extract(attributes, ?) WHEN 'null' THEN '' END")
            # SQLite 3.40 matches a path's key against the key's JSON text as stored, escapes and all
            # (json.dumps writes "é" as "\u00e9"): only plain names are looked up in SQL.
            plain = [_PLAIN_JSON_KEY.fullmatch(name) is not None for name in attribute_names]
            attribute_params = [part for name, ok in zip(attribute_names, plain) if ok for part in (f'$."{name}"',) * 2]
            attribute_cells = [attribute_sql if ok else "NULL" for ok in plain]
        else:
            stamp = "coalesce(to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"'), '')"
            mark, prefix_sql = "%s", f"left(email, {len(TOMBSTONE_PREFIX)})"
            attribute_cells = [("CASE coalesce(json_typeof(attributes -> %s), 'null') WHEN 'string' THEN "
                                "attributes ->> %s WHEN 'null' THEN '' END")] * len(attribute_names)
            attribute_params = [part for name in attribute_names for part in (name,) * 2]
        query = (f"SELECT id, email_given, name, language, status, source, "
                 f"{', '.join(stamp.format(column) for column in ('created_at', 'confirmed_at', 'unsubscribed_at'))}, "
                 f"''{''.join(', ' + cell for cell in attribute_cells)} "
                 f"FROM {subscribers.name} WHERE id > {mark} AND {prefix_sql} <> {mark}"
                 + (f" AND status = {mark}" if status else "") + f" ORDER BY id LIMIT {int(batch)}")
        members_query = (f"SELECT subscriber_id, list_name FROM {list_members.name} "
                         f"WHERE subscriber_id BETWEEN {mark} AND {mark}")
        attributes_query = (f"SELECT id, {'attributes' if dialect == 'sqlite' else 'attributes::text'} "
                            f"FROM {subscribers.name} WHERE id BETWEEN {mark} AND {mark}")
        last_id = 0
        while True:
            with self.engine.connect() as conn:
                cursor = conn.connection.driver_connection.cursor()
                try:
                    cursor.execute(query, (*attribute_params, last_id, TOMBSTONE_PREFIX, *((status,) if status else ())))
                    rows = cursor.fetchall()
                    lists: dict[int, list[str]] = {}
                    completed: dict[int, dict] = {}
                    if rows:
                        first, last = rows[0][0], rows[-1][0]
                        cursor.execute(members_query, (first, last))
                        for sid, list_name in cursor.fetchall():
                            lists.setdefault(sid, []).append(list_name)
                        if attribute_names and any(None in row for row in rows):
                            cursor.execute(attributes_query, (first, last))
                            completed = {sid: json.loads(text) for sid, text in cursor.fetchall()}
                finally:
                    cursor.close()
                if dialect == "postgresql":
                    conn.rollback()  # the page's read transaction ends here
            if not rows:
                return
            last_id = rows[-1][0]
            if lists or completed:
                for index, row in enumerate(rows):
                    sid = row[0]
                    if sid in lists or None in row:
                        row = list(row)
                        row[9] = " ".join(sorted(lists.get(sid, ())))
                        for position, name in enumerate(attribute_names, 10):
                            if row[position] is None:
                                row[position] = _attribute_cell(completed[sid].get(name))
                        rows[index] = tuple(row)
            yield [row[1:] for row in rows]
            del rows

    def attribute_names(self, status: str | None = None) -> list[str]:
        """Every attribute name in use (tombstones excluded), sorted: one query where the database can
        list JSON keys (SQLite's json_each, PostgreSQL's json_object_keys), else a scan."""
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            names: set[str] = set()
            for page in self.subscriber_pages(status):
                for row, _ in page:
                    names.update((row.attributes or {}).keys())
            return sorted(names)
        if dialect == "sqlite":
            keys = sa.func.json_each(subscribers.c.attributes).table_valued("key")
            query = (sa.select(keys.c.key).select_from(subscribers).join(keys, sa.true())
                     .where(sa.func.json_type(subscribers.c.attributes) == "object"))
        else:
            query = (sa.select(sa.func.json_object_keys(subscribers.c.attributes))
                     .where(sa.func.json_typeof(subscribers.c.attributes) == "object"))
        query = query.where(_NOT_TOMBSTONE).distinct()
        if status:
            query = query.where(subscribers.c.status == status)
        with self.engine.connect() as conn:
            return sorted(conn.execute(query).scalars())


_PLAIN_JSON_KEY = re.compile(r"[A-Za-z0-9_. -]+")


def _export_iso(value: datetime | None) -> str:
    value = as_utc(value)
    return value.isoformat(timespec="seconds") if value else ""


def _attribute_cell(value: object) -> str:
    """An attribute's export cell: "" when unset, a string as it is, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _export_pages_core(store: "Store", attribute_names: Sequence[str], status: str | None,
                       batch: int) -> Iterator[list[tuple]]:
    """`Store.export_pages` on any engine, through SQLAlchemy Core rows: the reference."""
    for page in store.subscriber_pages(status, batch):
        yield [(row.email_given, row.name, row.language, row.status, row.source, _export_iso(row.created_at),
                _export_iso(row.confirmed_at), _export_iso(row.unsubscribed_at), " ".join(lists),
                *(_attribute_cell((row.attributes or {}).get(name)) for name in attribute_names))
               for row, lists in page]


# ----- bulk writers of the import (see Store.insert_imported) ----------------------------------------
IMPORT_ROW_FIELDS = ("line", "key", "given", "name", "language", "attributes_json", "lists", "digest", "status",
                     "created_at", "status_at")
(IMPORT_LINE, IMPORT_KEY, IMPORT_GIVEN, IMPORT_NAME, IMPORT_LANGUAGE, IMPORT_ATTRIBUTES, IMPORT_LISTS, IMPORT_DIGEST,
 IMPORT_STATUS, IMPORT_CREATED_AT, IMPORT_STATUS_AT) = range(len(IMPORT_ROW_FIELDS))


class ImportExisting(NamedTuple):
    id: int
    status: str
    import_digest: str | None


# For the import's connection on SQLite (Store.import_connection).
_SQLITE_IMPORT_PRAGMAS = (("cache_size", -8192), ("wal_autocheckpoint", 10000))
# SQLite before 3.32 allows 999 parameters a statement, later versions 32,766.
_SQLITE_MAX_PARAMS = 30_000 if sqlite3.sqlite_version_info >= (3, 32) else 999


def _sqlite_in(conn: Connection, columns: str, emails: list[str]) -> list[tuple]:
    """`SELECT columns FROM subscribers WHERE email IN (emails)` on the raw connection."""
    dbapi = conn.connection.driver_connection
    found: list[tuple] = []
    for start in range(0, len(emails), _SQLITE_MAX_PARAMS):
        part = emails[start:start + _SQLITE_MAX_PARAMS]
        marks = ",".join("?" * len(part))
        found.extend(dbapi.execute(f"SELECT {columns} FROM {subscribers.name} WHERE email IN ({marks})", part))
    return found


def _imported_status(row: tuple) -> str:
    return row[IMPORT_STATUS] or "active"


def _insert_imported_core(conn: Connection, rows: list[tuple], source: str, reason: str, now: datetime) -> None:
    """The reference writer (any engine): SQLAlchemy Core, values through the column types."""
    values = []
    for row in rows:
        status, status_at = _imported_status(row), row[IMPORT_STATUS_AT] or now
        values.append({
            "email": row[IMPORT_KEY], "email_given": row[IMPORT_GIVEN], "name": row[IMPORT_NAME],
            "language": row[IMPORT_LANGUAGE], "status": status, "source": source,
            "attributes": json.loads(row[IMPORT_ATTRIBUTES]), "import_digest": row[IMPORT_DIGEST],
            "created_at": row[IMPORT_CREATED_AT] or now, "updated_at": now,
            "confirmed_at": status_at if status == "active" else None,
            "unsubscribed_at": status_at if status in SUPPRESSED_STATUSES else None,
        })
    ids = conn.execute(subscribers.insert().returning(subscribers.c.id, sort_by_parameter_order=True),
                       values).scalars().all()
    conn.execute(subscriber_events.insert(), [{
        "subscriber_id": sid, "at": now, "kind": "created", "old_status": None, "new_status": _imported_status(row),
        "source": source, "reason": f"{reason} line {row[IMPORT_LINE]}",
    } for sid, row in zip(ids, rows)])
    memberships = [{"list_name": name, "subscriber_id": sid} for sid, row in zip(ids, rows) for name in row[IMPORT_LISTS]]
    if memberships:
        conn.execute(list_members.insert(), memberships)


def _insert_imported_sqlite(conn: Connection, rows: list[tuple], source: str, reason: str, now: datetime) -> None:
    """`_insert_imported_core` in two or three `executemany` calls sharing one small tuple a row.

    Ids are assigned here (max + 1 …): the batch runs in a BEGIN IMMEDIATE transaction, so no other
    writer can take them meanwhile. What is the same for every row (source, timestamps) is a literal
    in the statement, written exactly as SQLAlchemy's bind processors would have.
    """
    dialect = conn.dialect
    stamp = _bind_processor(subscribers.c.created_at, dialect)
    now_sql = _sql_literal(stamp(now))
    at_sql = _sql_literal(_bind_processor(subscriber_events.c.at, dialect)(now))
    source_sql, reason_sql = _sql_literal(source), _sql_literal(reason + " line ")
    suppressed_sql = ", ".join(_sql_literal(s) for s in SUPPRESSED_STATUSES)
    dbapi = conn.connection.driver_connection
    first = dbapi.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {subscribers.name}").fetchone()[0]
    # ?1 id, ?2 key, ?3 given, ?4 name, ?5 language, ?6 status, ?7 attributes, ?8 digest, ?9 created_at,
    # ?10 line, ?11 status_at
    # generators, not lists: the driver binds one row at a time (no second copy of the batch in memory)
    params = ((sid, row[IMPORT_KEY], row[IMPORT_GIVEN], row[IMPORT_NAME], row[IMPORT_LANGUAGE], _imported_status(row),
               row[IMPORT_ATTRIBUTES], row[IMPORT_DIGEST],
               None if row[IMPORT_CREATED_AT] is None else stamp(row[IMPORT_CREATED_AT]), row[IMPORT_LINE],
               None if row[IMPORT_STATUS_AT] is None else stamp(row[IMPORT_STATUS_AT]))
              for sid, row in enumerate(rows, first))
    dbapi.executemany(
        f"INSERT INTO {subscribers.name} (id, email, email_given, name, language, status, source, attributes, "
        f"import_digest, created_at, updated_at, confirmed_at, unsubscribed_at) "
        f"VALUES (?1, ?2, ?3, ?4, ?5, ?6, {source_sql}, ?7, ?8, coalesce(?9, {now_sql}), {now_sql}, "
        f"CASE WHEN ?6 = 'active' THEN coalesce(?11, {now_sql}) END, "
        f"CASE WHEN ?6 IN ({suppressed_sql}) THEN coalesce(?11, {now_sql}) END)", params)
    dbapi.executemany(
        f"INSERT INTO {subscriber_events.name} (subscriber_id, at, kind, old_status, new_status, source, reason) "
        f"VALUES (?, {at_sql}, 'created', NULL, ?, {source_sql}, {reason_sql} || ?)",
        ((sid, _imported_status(row), row[IMPORT_LINE]) for sid, row in enumerate(rows, first)))
    memberships = [(name, sid) for sid, row in enumerate(rows, first) if row[IMPORT_LISTS] for name in row[IMPORT_LISTS]]
    if memberships:
        dbapi.executemany(f"INSERT INTO {list_members.name} (list_name, subscriber_id) VALUES (?, ?)", memberships)


def _insert_imported_postgresql(conn: Connection, rows: list[tuple], source: str, reason: str, now: datetime) -> None:
    """`_insert_imported_core` with COPY: ids drawn from the table's own sequence, rows streamed."""
    cursor = conn.connection.driver_connection.cursor()
    cursor.execute(f"SELECT nextval(pg_get_serial_sequence('{subscribers.name}', 'id')) "
                   f"FROM generate_series(1, %s)", (len(rows),))
    ids = sorted(sid for sid, in cursor.fetchall())
    statuses = [_imported_status(row) for row in rows]
    suppressed = SUPPRESSED_STATUSES
    with cursor.copy(f"COPY {subscribers.name} (id, email, email_given, name, language, status, source, attributes, "
                     f"import_digest, created_at, updated_at, confirmed_at, unsubscribed_at) FROM STDIN") as copy:
        for sid, row, status in zip(ids, rows, statuses):
            status_at = row[IMPORT_STATUS_AT] or now
            copy.write_row((sid, row[IMPORT_KEY], row[IMPORT_GIVEN], row[IMPORT_NAME], row[IMPORT_LANGUAGE], status,
                            source, row[IMPORT_ATTRIBUTES], row[IMPORT_DIGEST], row[IMPORT_CREATED_AT] or now, now,
                            status_at if status == "active" else None, status_at if status in suppressed else None))
    with cursor.copy(f"COPY {subscriber_events.name} (subscriber_id, at, kind, old_status, new_status, source, reason) "
                     f"FROM STDIN") as copy:
        for sid, row, status in zip(ids, rows, statuses):
            copy.write_row((sid, now, "created", None, status, source, f"{reason} line {row[IMPORT_LINE]}"))
    memberships = [(name, sid) for sid, row in zip(ids, rows) if row[IMPORT_LISTS] for name in row[IMPORT_LISTS]]
    if memberships:
        with cursor.copy(f"COPY {list_members.name} (list_name, subscriber_id) FROM STDIN") as copy:
            for membership in memberships:
                copy.write_row(membership)
    cursor.close()


def _sql_literal(value: str) -> str:
    if "\0" in value:
        raise ValueError("NUL in an SQL literal")
    return "'" + value.replace("'", "''") + "'"


def _bind_processor(column: sa.Column, dialect: sa.Dialect):
    processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


# ----- opening and migrating -------------------------------------------------------------------
def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    try:
        return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    except (ImportError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise ConfigError(f"MAILER_DATABASE_URL {url.split('@')[-1]!r}: {exc} (for PostgreSQL: pip install 'mailer[postgres]')") from None


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> str | None:
    """Apply pending migrations; returns the revision the database was at before."""
    before = current_revision(engine)
    if before == HEAD_REVISION:
        return before
    from alembic import command  # only when there is something to migrate: ~100 ms of imports
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return before


def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open the database, creating and migrating it on first use."""
    engine = make_engine(url)
    if migrate and url not in _migrated:
        with _migrate_lock:
            try:
                upgrade(engine)
            except sa.exc.OperationalError as exc:
                raise MailerError(f"cannot open the database {_safe_url(url)}: {exc.orig}") from None
            _migrated.add(url)
    return Store(engine)


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


__all__ = ["Store", "StatusChange", "ImportExisting", "IMPORT_ROW_FIELDS", "open_store", "upgrade", "metadata", "utcnow",
           "HEAD_REVISION"]
