"""What providers' events do to subscribers: store every event (idempotent by provider event id)
and apply the suppressions of new ones, by the suppression ranking (`statuses.SUPPRESSION_RANK`).

The events arrive normalised (`providers.ProviderEvent`), from a webhook or a bounce mailbox; nothing
here knows a provider's format.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any, Callable, Sequence

from ..providers.events import ProviderEvent
from ..statuses import SUPPRESSION_RANK
from ..store import Connection, Row, StatusChange, Store, as_utc, utcnow
from .service import anonymised_payload, redact_addresses, tombstone_key

log = logging.getLogger("mailer.web")


def record_provider_events(store: Store, events: Sequence[ProviderEvent], *,
                           transaction: Callable[[], AbstractContextManager[Connection]] | None = None) -> dict[str, int]:
    """Store every event (idempotent by provider and event id) and apply the suppressions of new ones.

    An event acts on a subscriber only when its address is that subscriber's: the subscriber named
    by the event's `subscriber_id` when present (and only if the addresses match), else the one with
    that address. Events without an address, or naming a subscriber whose address is another, are
    stored and change no one (`ignored`). Events about an erased person are stored anonymised, on
    their tombstone. An event older (whole seconds) than the person's last confirmation suppresses
    no one: they came back since. Returns counts: received, new, suppressed, ignored.
    `transaction`: how to open the write transaction (default `store.begin`).
    """
    now = utcnow()
    rows: list[dict[str, Any]] = []
    kept: list[ProviderEvent] = []
    seen: set[tuple[str, str]] = set()
    for event in events:
        if (event.provider, event.event_id) in seen:
            continue
        seen.add((event.provider, event.event_id))
        rows.append({"provider": event.provider, "provider_event_id": event.event_id, "kind": event.kind,
                     "email": event.email_key, "subscriber_id": None, "issue_id": event.issue_id,
                     "occurred_at": event.occurred, "received_at": now, "reason": event.reason,
                     "payload": event.payload})
        kept.append(event)
    if not rows:
        return {"received": len(events), "new": 0, "suppressed": 0, "ignored": 0}
    with (transaction or store.begin)() as conn:
        people, ignored = _correlate(store, conn, rows, kept)
        inserted = store.insert_provider_events(conn, rows)
        todo = [(row, event) for row, event in zip(rows, kept)
                if row["provider_event_id"] in inserted and event.suppress and row["subscriber_id"]
                and row["subscriber_id"] in people]
        current = {person.id: (person.status, as_utc(person.confirmed_at)) for person in people.values()}
        changes: list[StatusChange] = []
        for row, event in todo:
            person = row["subscriber_id"]
            status, confirmed_at = current[person]
            if SUPPRESSION_RANK[event.suppress] <= SUPPRESSION_RANK.get(status, 0):
                continue  # already as suppressed, or more
            if event.occurred is not None and confirmed_at is not None and event.occurred < confirmed_at.replace(microsecond=0):
                continue  # an old event (whole seconds) about an earlier subscription: they came back since
            current[person] = (event.suppress, confirmed_at)
            changes.append(StatusChange(person, status, event.suppress, "webhook",
                                        f"{event.provider} {event.name}: {row['reason']}"[:500]))
        suppressed = len(store.apply_status_changes(conn, changes))
    if ignored:
        log.warning("%s events: %d changed no one: no address, or an address that is not the "
                    "subscriber's their custom_args name", kept[0].provider, ignored)
    return {"received": len(events), "new": len(inserted), "suppressed": suppressed, "ignored": ignored}


def _correlate(store: Store, conn: Connection, rows: list[dict[str, Any]],
               events: list[ProviderEvent]) -> tuple[dict[int, Row], int]:
    """Set each row's subscriber_id (see `record_provider_events`); returns the people events may act
    on (id -> row with status, confirmed_at) and how many suppressing events were ignored."""
    named = store.people_by_ids(conn, [event.subscriber_id for event in events if event.subscriber_id])
    keys = {event.email_key for event in events if event.email_key}
    by_email = store.ids_by_emails(conn, [*keys, *(tombstone_key(key) for key in keys)])
    living: dict[int, Row] = {}
    erased: set[int] = set()
    ignored = 0
    for row, event in zip(rows, events):
        given, key = event.subscriber_id, event.email_key
        person: int | None = None
        if key and given and given in named:
            if named[given].email == key:
                person = given
            elif named[given].email == tombstone_key(key):
                person = given
                erased.add(given)
        elif key and not given:
            person = by_email.get(key)
            if person is None and tombstone_key(key) in by_email:
                person = by_email[tombstone_key(key)]
                erased.add(person)
        if person is None and event.suppress:
            ignored += 1
        row["subscriber_id"] = person
        if person in erased:  # nothing about who they were: what happened and when
            row.update(email="", reason=redact_addresses(row["reason"]), payload=anonymised_payload(row["payload"]))
        elif person is not None:
            living[person] = named.get(person)  # type: ignore[assignment]
    missing = [pid for pid, found in living.items() if found is None]
    living.update(store.people_by_ids(conn, missing))
    return {pid: found for pid, found in living.items() if found is not None}, ignored
