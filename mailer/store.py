"""The store: one SQLAlchemy engine over SQLite (default) or PostgreSQL, same code and migrations.

Owns connections, migrations (applied automatically on first use) and the queries that keep the
subscriber list and the delivery ledger consistent. Higher layers (`subscribers`, `dispatch`, the
web app) call these functions and never write SQL of their own.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from .errors import ConfigError, MailerError, NotFound
from .schema import (SUPPRESSED_STATUSES, deliveries, issues, list_members, metadata, subscriber_events,
                     subscribers)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
HEAD_REVISION = "0002"
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


def _status_kind(status: str) -> str:
    return "suppressed" if status in SUPPRESSED_STATUSES else status


_STATUS_OF = sa.select(subscribers.c.status).where(subscribers.c.id == sa.bindparam("p_id"))
_GUARD = (subscribers.c.id == sa.bindparam("p_id"), subscribers.c.status == sa.bindparam("p_old"))
_STATUS_UPDATES = {
    "active": subscribers.update().where(*_GUARD).values(
        status=sa.bindparam("p_new"), updated_at=sa.bindparam("p_now"), confirmed_at=sa.bindparam("p_now"),
        unsubscribed_at=None),
    "pending": subscribers.update().where(*_GUARD).values(status=sa.bindparam("p_new"), updated_at=sa.bindparam("p_now")),
    "suppressed": subscribers.update().where(*_GUARD).values(
        status=sa.bindparam("p_new"), updated_at=sa.bindparam("p_now"), unsubscribed_at=sa.bindparam("p_now")),
}
_STATUS_EVENT = subscriber_events.insert().values(
    subscriber_id=sa.bindparam("p_id"), at=sa.bindparam("p_now"), kind="status", old_status=sa.bindparam("p_old"),
    new_status=sa.bindparam("p_new"), source=sa.bindparam("p_source"), reason=sa.bindparam("p_reason"))


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
        event per applied change. Statements are built once: this is the one-click and webhook hot path."""
        now = utcnow()
        applied = [change for change in changes
                   if conn.execute(_STATUS_UPDATES[_status_kind(change.new)],
                                   {"p_id": change.subscriber_id, "p_old": change.old, "p_new": change.new,
                                    "p_now": now}).rowcount == 1]
        if applied:
            conn.execute(_STATUS_EVENT, [{"p_id": c.subscriber_id, "p_now": now, "p_old": c.old, "p_new": c.new,
                                          "p_source": c.source, "p_reason": c.reason[:2000]} for c in applied])
        return applied

    def count_subscribers(self, conn: Connection, status: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(subscribers)
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
                     web_html: str | None, issue_date: str | None) -> sa.Row:
        """The issue's row, created as a draft if missing, and LOCKED for the rest of the transaction.

        Two first sends racing: the INSERT of the second waits for the first's (ON CONFLICT DO NOTHING,
        no duplicate-key error) and its `FOR UPDATE` waits for the first's commit, so the second sees
        the first's freeze and joins it (SQLite's single writer serialises the same way)."""
        conn.execute(self._insert(issues).values(slug=slug, subject=subject, list_name=list_name, status="draft",
                                                 web_html=web_html, issue_date=issue_date)
                     .on_conflict_do_nothing(index_elements=[issues.c.slug]))
        row = conn.execute(sa.select(issues).where(issues.c.slug == slug).with_for_update()).one()
        if row.status == "draft":
            conn.execute(issues.update().where(issues.c.id == row.id).values(
                subject=subject, list_name=list_name, web_html=web_html, issue_date=issue_date))
            row = self.issue_row(conn, slug)
        return row  # type: ignore[return-value]

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
                      subscribers.c.email_given, subscribers.c.name, subscribers.c.status.label("subscriber_status"))
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

    def forgive(self, conn: Connection, issue_id: int, spent: dict[int, int]) -> int:
        """Take back the attempts `spent` ({delivery id: attempts}) and queue the failed rows again: their
        refusals turned out to be the path's fault (nothing accepted around them), not the recipients'.
        Rows already sent, skipped or being sent by someone are left alone. Returns the rows changed."""
        by_count: dict[int, list[int]] = {}
        for delivery_id, count in spent.items():
            by_count.setdefault(count, []).append(delivery_id)
        total = 0
        for count, ids in by_count.items():
            for start in range(0, len(ids), 1000):
                total += conn.execute(
                    deliveries.update()
                    .where(deliveries.c.issue_id == issue_id, deliveries.c.id.in_(ids[start:start + 1000]),
                           deliveries.c.status.in_(("queued", "failed")))
                    .values(status="queued", claimed_by=None, claimed_at=None, updated_at=utcnow(),
                            attempts=sa.case((deliveries.c.attempts > count, deliveries.c.attempts - count), else_=0))
                ).rowcount or 0
        return total

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

    def claimants(self, conn: Connection, issue_id: int) -> list[tuple[str, datetime]]:
        """Workers holding `sending` rows of an issue, with their oldest claim."""
        return [(worker, as_utc(claimed_at)) for worker, claimed_at in conn.execute(
            sa.select(deliveries.c.claimed_by, sa.func.min(deliveries.c.claimed_at))
            .where(deliveries.c.issue_id == issue_id, deliveries.c.status == "sending")
            .group_by(deliveries.c.claimed_by))]


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


__all__ = ["Store", "StatusChange", "open_store", "upgrade", "metadata", "utcnow", "HEAD_REVISION"]
