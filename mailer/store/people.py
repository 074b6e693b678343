"""People: one subscriber's row, status changes (guarded, one event each), erasure."""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import NotFound
from ..statuses import SUPPRESSED_STATUSES
from .schema import (deliveries, issues, link_clicks, list_members, provider_events,
                     subscriber_events, subscribers)
from .bulk import IMPORT_ROW_FIELDS, _insert_imported_core
from .common import StatusChange, _chunks, _NOT_TOMBSTONE, utcnow


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
    new_status=sa.bindparam("p_new"), source=sa.bindparam("p_source"), reason=sa.bindparam("p_reason"),
    issue_id=sa.bindparam("p_issue"))


_PERSON_COLUMNS = (subscribers.c.id, subscribers.c.email, subscribers.c.email_given, subscribers.c.name,
                   subscribers.c.status, subscribers.c.unsubscribed_at)


_PERSON = sa.select(*_PERSON_COLUMNS).where(subscribers.c.id == sa.bindparam("p_id"))


_PERSON_FOR_UPDATE = _PERSON.with_for_update()


class PeopleQueries:
    """Queries about people (mixed into `Store`)."""

    is_sqlite: bool

    # ----- subscribers ----------------------------------------------------------------------
    def subscriber_by_email(self, conn: Connection, email_key: str) -> sa.Row | None:
        return conn.execute(sa.select(subscribers).where(subscribers.c.email == email_key)).first()

    def subscriber_by_id(self, conn: Connection, subscriber_id: int) -> sa.Row | None:
        return conn.execute(sa.select(subscribers).where(subscribers.c.id == subscriber_id)).first()

    def insert_subscriber(self, conn: Connection, *, email: str, email_given: str, status: str, name: str = "",
                          language: str = "", source: str = "", attributes: dict | None = None,
                          reason: str = "", lists: Sequence[str] = ()) -> int:
        """One new person (`email`: the address key), a `created` event with `reason`, their list
        memberships; returns the id. The import's writer with one row (`bulk._insert_imported_core`):
        there is one insert path for subscribers."""
        fields = {"line": None, "key": email, "given": email_given, "name": name, "language": language,
                  "attributes_json": json.dumps(attributes or {}), "lists": tuple(lists), "digest": None,
                  "status": status, "created_at": None, "status_at": None}
        row = tuple(fields[field] for field in IMPORT_ROW_FIELDS)
        return _insert_imported_core(conn, [row], source, reason, utcnow())[0]

    def update_profile(self, conn: Connection, subscriber_id: int, changes: dict[str, Any], *, source: str) -> None:
        """Set profile fields (name, language, attributes) and record one `updated` event naming them."""
        now = utcnow()
        conn.execute(subscribers.update().where(subscribers.c.id == subscriber_id).values(updated_at=now, **changes))
        conn.execute(subscriber_events.insert().values(subscriber_id=subscriber_id, at=now, kind="updated",
                                                       source=source, reason=", ".join(sorted(changes))))

    def person_record(self, conn: Connection, subscriber_id: int) -> tuple[list[dict], list[dict], list[str]]:
        """What `subscribers show` prints: (events oldest first, as dicts of every column;
        deliveries as dicts of slug, status, attempts, sent_at, last_error, provider_message_id;
        sorted list names)."""
        events = conn.execute(sa.select(subscriber_events).where(subscriber_events.c.subscriber_id == subscriber_id)
                              .order_by(subscriber_events.c.id)).mappings().all()
        sent = conn.execute(
            sa.select(issues.c.slug, deliveries.c.status, deliveries.c.attempts, deliveries.c.sent_at,
                      deliveries.c.last_error, deliveries.c.provider_message_id)
            .join(issues, issues.c.id == deliveries.c.issue_id)
            .where(deliveries.c.subscriber_id == subscriber_id).order_by(deliveries.c.id)).mappings().all()
        lists = conn.execute(sa.select(list_members.c.list_name).where(list_members.c.subscriber_id == subscriber_id)
                             .order_by(list_members.c.list_name)).scalars().all()
        return [dict(e) for e in events], [dict(d) for d in sent], list(lists)

    def set_status(self, conn: Connection, subscriber_id: int, new_status: str, *, source: str, reason: str = "",
                   issue_id: int | None = None) -> bool:
        """Change a subscriber's status and record why (and the issue it came from, if any); False when
        it already had that status."""
        row = conn.execute(_STATUS_OF, {"p_id": subscriber_id}).first()
        if row is None:
            raise NotFound(f"no subscriber with id {subscriber_id}")
        if row.status == new_status:
            return False
        return bool(self.apply_status_changes(conn, [StatusChange(subscriber_id, row.status, new_status, source, reason,
                                                                  issue_id=issue_id)]))

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
                                          "p_source": c.source, "p_reason": c.reason[:2000], "p_issue": c.issue_id}
                                         for c in applied])
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

    def erase_person(self, conn: Connection, subscriber_id: int, *, email_keys: Sequence[str], tombstone: str,
                     redact: Callable[[str], str], anonymise: Callable[[str, dict], tuple[str, dict]], source: str,
                     reason: str) -> dict[str, Any]:
        """Erase a person's data in every table, keeping an anonymous tombstone row (the same id,
        `tombstone` in place of the address) and the shape of their history.

        `email_keys`: the normalised forms of the address (webhook events are found by these too);
        `redact(text)`: a history reason or a ledger error without the person's address and name;
        `anonymise(reason, payload)`: what a provider event about them keeps (reason, payload).
        Returns counts and `paths`: the deliveries' provider ids as they were before redaction (for
        the outbox backend, the files written).
        """
        people = [subscriber_id]
        conn.execute(list_members.delete().where(list_members.c.subscriber_id == subscriber_id))
        conn.execute(link_clicks.delete().where(link_clicks.c.subscriber_id == subscriber_id))
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
            kept = [(row.id, *anonymise(row.reason or "", row.payload if isinstance(row.payload, dict) else {}))
                    for row in hooks]
            conn.execute(provider_events.update().where(provider_events.c.id == sa.bindparam("b_id")).values(
                email="", subscriber_id=subscriber_id, reason=sa.bindparam("b_reason"),
                payload=sa.bindparam("b_payload")), [
                {"b_id": hook, "b_reason": reason, "b_payload": payload} for hook, reason, payload in kept])
        self.record_event(conn, subscriber_id, "erased", source=source, reason=reason)
        return {"events": len(events), "deliveries": len(sent), "provider_events": len(hooks), "paths": paths}

    def count_subscribers(self, conn: Connection, status: str | None = None) -> int:
        """People on the list (of `status`); erased people's tombstones are nobody and never counted,
        so this agrees with `subscriber_pages` (what `list` and `export` show)."""
        query = sa.select(sa.func.count()).select_from(subscribers).where(_NOT_TOMBSTONE)
        if status:
            query = query.where(subscribers.c.status == status)
        return conn.execute(query).scalar_one()
