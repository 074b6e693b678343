"""The managed subscriber list: add, remove, show, list (the CSV import and export are `mailer.importer`).

Rules every path here keeps:
* one person, one row: addresses are unique case-insensitively (`addresses.parse_address`);
* suppressed people (unsubscribed, bounced, complained) are never re-activated by an import or by
  the operator — only by their own choice (web resubscribe) or, for unsubscribed ones only, an
  explicit `--resubscribe`; complained is final;
* every change of status is an event (who, when, why);
* erasing a person (`remove --purge`) keeps an anonymous tombstone (a hash of the address) so no
  later import brings them back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import sqlalchemy as sa

from .addresses import parse_address
from .errors import MailerError, NotFound
from .schema import (SUBSCRIBER_STATUSES, SUPPRESSED_STATUSES, TOMBSTONE_PREFIX, deliveries, issues, list_members,
                     subscriber_events, subscribers)
from .store import Store, as_utc, utcnow


def tombstone_key(key: str) -> str:
    """The anonymous stand-in for an erased address (stored in place of the email)."""
    return TOMBSTONE_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SubscriberView:
    id: int
    email: str
    name: str
    language: str
    status: str
    source: str
    attributes: dict
    created_at: object
    confirmed_at: object
    unsubscribed_at: object
    lists: tuple[str, ...] = ()
    events: tuple[dict, ...] = ()
    deliveries: tuple[dict, ...] = ()


# ----- single-person operations -------------------------------------------------------------------
def add_subscriber(store: Store, email: str, *, name: str = "", language: str = "", status: str = "active",
                   source: str = "cli", attributes: dict | None = None, lists: Sequence[str] = (),
                   reason: str = "") -> tuple[int, bool]:
    """Add a person (active: the operator vouches; pending: web form). Returns (id, created).

    An existing active/pending person gets their name/language updated; a suppressed one raises —
    only they can come back (web resubscribe).
    """
    if status not in ("active", "pending"):
        raise ValueError(f"new subscribers are active or pending, not {status!r}")
    address = parse_address(email)
    name = clean_text(name, 200)
    with store.begin() as conn:
        row = store.subscriber_by_email(conn, address.key)
        if row is None and store.subscriber_by_email(conn, tombstone_key(address.key)) is not None:
            raise MailerError(f"{address.given} asked to be erased; they can only come back through the subscribe form")
        if row is None:
            return store.insert_subscriber(conn, email=address.key, email_given=address.given, status=status,
                                           name=name, language=language, source=source, attributes=attributes,
                                           reason=reason, lists=lists), True
        if row.status in SUPPRESSED_STATUSES:
            raise MailerError(f"{row.email_given} is {row.status} since {_day(row.unsubscribed_at)}; "
                              f"only they can resubscribe")
        changes = {k: v for k, v in (("name", name), ("language", language)) if v and getattr(row, k) != v}
        if attributes:
            changes["attributes"] = {**(row.attributes or {}), **attributes}
        if changes:
            conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(updated_at=utcnow(), **changes))
            conn.execute(subscriber_events.insert().values(subscriber_id=row.id, at=utcnow(), kind="updated",
                                                           source=source, reason=", ".join(sorted(changes))))
        if status == "active" and row.status == "pending":
            store.set_status(conn, row.id, "active", source=source, reason=reason or "added by the operator")
        _add_to_lists(conn, row.id, lists)
        return row.id, False


def set_subscriber_status(store: Store, email: str, status: str, *, source: str, reason: str = "") -> bool:
    """Change one person's status by address; returns False when nothing changed."""
    if status not in SUBSCRIBER_STATUSES:
        raise ValueError(f"unknown status {status!r}")
    address = parse_address(email)
    with store.begin() as conn:
        row = store.subscriber_by_email(conn, address.key)
        if row is None:
            raise NotFound(f"no subscriber {address.given}")
        return store.set_status(conn, row.id, status, source=source, reason=reason)


def remove_subscriber(store: Store, email: str, *, purge: bool = False, source: str = "cli", reason: str = "") -> None:
    """Unsubscribe (the record and its history stay, so no import resurrects it); `purge` erases the
    person's data and keeps only an anonymous tombstone."""
    address = parse_address(email)
    with store.begin() as conn:
        row = store.subscriber_by_email(conn, address.key)
        if row is None:
            raise NotFound(f"no subscriber {address.given}")
        if row.status not in SUPPRESSED_STATUSES:
            store.set_status(conn, row.id, "unsubscribed", source=source, reason=reason or "removed by the operator")
        if purge:
            erased = tombstone_key(address.key)
            conn.execute(list_members.delete().where(list_members.c.subscriber_id == row.id))
            conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(
                email=erased, email_given=erased, name="", language="", attributes={}, import_digest=None,
                updated_at=utcnow()))
            conn.execute(subscriber_events.insert().values(subscriber_id=row.id, at=utcnow(), kind="erased",
                                                           source=source, reason=reason or "erased on request"))


def show_subscriber(store: Store, email: str) -> SubscriberView:
    address = parse_address(email)
    with store.engine.connect() as conn:
        row = store.subscriber_by_email(conn, address.key)
        if row is None:
            raise NotFound(f"no subscriber {address.given}")
        events = conn.execute(sa.select(subscriber_events).where(subscriber_events.c.subscriber_id == row.id)
                              .order_by(subscriber_events.c.id)).mappings().all()
        sent = conn.execute(
            sa.select(issues.c.slug, deliveries.c.status, deliveries.c.attempts, deliveries.c.sent_at,
                      deliveries.c.last_error, deliveries.c.provider_message_id)
            .join(issues, issues.c.id == deliveries.c.issue_id)
            .where(deliveries.c.subscriber_id == row.id).order_by(deliveries.c.id)).mappings().all()
        lists = conn.execute(sa.select(list_members.c.list_name).where(list_members.c.subscriber_id == row.id)
                             .order_by(list_members.c.list_name)).scalars().all()
    return SubscriberView(
        id=row.id, email=row.email_given, name=row.name, language=row.language, status=row.status,
        source=row.source, attributes=row.attributes or {}, created_at=as_utc(row.created_at),
        confirmed_at=as_utc(row.confirmed_at), unsubscribed_at=as_utc(row.unsubscribed_at), lists=tuple(lists),
        events=tuple(dict(e) for e in events), deliveries=tuple(dict(d) for d in sent))


def count_subscribers(store: Store, status: str | None = None) -> int:
    with store.engine.connect() as conn:
        return store.count_subscribers(conn, status)


def iter_subscribers(store: Store, status: str | None = None, batch: int = 5000) -> Iterator[tuple[sa.Row, list[str]]]:
    """Every subscriber (tombstones excluded) in id order with their sorted list names: flat memory."""
    for page in store.subscriber_pages(status, batch):
        yield from page


def _add_to_lists(conn: sa.Connection, subscriber_id: int, lists: Iterable[str]) -> None:
    Store.add_list_memberships(conn, subscriber_id, list(lists))


def clean_text(value: str, limit: int = 200) -> str:
    """One line, no control characters (names end up in headers and pages)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in value or "").split())[:limit]


def _day(value: object) -> str:
    value = as_utc(value)  # type: ignore[arg-type]
    return value.date().isoformat() if value else "?"


def __getattr__(name: str):
    """The CSV import and export moved to `mailer.importer`; their names stay importable from here."""
    if name in ("import_csv", "export_csv", "ImportReport", "Rejection"):
        from . import importer
        return getattr(importer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
