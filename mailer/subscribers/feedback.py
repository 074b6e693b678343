"""What providers' events do to subscribers: store every event (idempotent by provider event id)
and apply the suppressions of new ones, by the suppression ranking (`statuses.SUPPRESSION_RANK`).

The events arrive normalised (`providers.ProviderEvent`), from a webhook or a bounce mailbox; nothing
here knows a provider's format.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..config import Settings

from ..providers.events import ProviderEvent
from ..statuses import MAILBOX_PROVIDER, SOFT_BOUNCE_KINDS, TOMBSTONE_PREFIX
from ..store import Connection, Row, StatusChange, Store, as_utc, utcnow
from .erasure import anonymised_event, erased_keys
from .service import suppression_verdict

if TYPE_CHECKING:
    import ssl

    from ..providers.bounces.process import Summary

log = logging.getLogger("mailer.web")


def record_provider_events(store: Store, events: Sequence[ProviderEvent], *,
                           transaction: Callable[[], AbstractContextManager[Connection]] | None = None,
                           soft_bounce_rule: tuple[int, int] | None = None) -> dict[str, int]:
    """Store every event (idempotent by provider and event id) and apply the suppressions of new ones.

    An event counts for an issue (`provider_events.issue_id`, `mailer report`) only when the ledger has
    a delivery of that issue to the subscriber it acts on (`_attribute`); otherwise it is stored
    for the person, with no issue. An event acts on a subscriber only when its address is that subscriber's: the subscriber named
    by the event's `subscriber_id` when present (and only if the addresses match), else the one with
    that address. Events without an address, or naming a subscriber whose address is another, are
    stored and change no one (`ignored`). Events about an erased person, from any path, are stored
    as `erasure.anonymised_event` says (on their tombstone when they name it) and change no one: no
    status, no line of history (`_correlate`). Whether a new event suppresses is
    `service.suppression_verdict` (the ranking; an event older than the person's last confirmation,
    in whole seconds, suppresses no one: they came back since). A new soft bounce (`statuses.SOFT_BOUNCE_KINDS`: a mailbox's `soft_bounced`, a
    webhook's `blocked`) is a `soft_bounce` line of the person's history, whichever path brought it;
    with `soft_bounce_rule` (limit, sends: bounce mailboxes only) repeated ones make the person `bounced`.
    Status changes are recorded with source `mailbox` (bounce mailboxes) or `webhook`.
    Returns counts: received, new, suppressed, ignored.
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
        _attribute(store, conn, rows)
        inserted = store.insert_provider_events(conn, rows)
        acting = [(row, event) for row, event in zip(rows, kept)
                  if row["provider_event_id"] in inserted and row["subscriber_id"] and row["subscriber_id"] in people]
        current = {person.id: (person.status, as_utc(person.confirmed_at)) for person in people.values()}
        changes: list[StatusChange] = []
        for row, event in acting:
            person = row["subscriber_id"]
            source = "mailbox" if event.provider == MAILBOX_PROVIDER else "webhook"
            history = event.history or f"{event.provider} {event.name}: {row['reason']}"
            wanted = event.suppress
            if event.kind in SOFT_BOUNCE_KINDS:  # a line of the person's history; a status only when they repeat
                store.record_event(conn, person, "soft_bounce", source=source, reason=history[:2000])
                if soft_bounce_rule is not None and not wanted:
                    limit, sends = soft_bounce_rule
                    count = store.soft_bounced_sends(conn, person, sends)
                    if count >= limit:
                        wanted, history = "bounced", f"{count} soft bounces over the last {sends} sends (latest: {history})"
            if not wanted:
                continue
            status, confirmed_at = current[person]
            if suppression_verdict(status, confirmed_at, as_utc(event.sent_at) or event.occurred, wanted):
                continue  # already as suppressed or more, or about an earlier subscription
            current[person] = (wanted, confirmed_at)
            changes.append(StatusChange(person, status, wanted, source, history[:500]))
        suppressed = len(store.apply_status_changes(conn, changes))
    if ignored:
        log.warning("%s events: %d changed no one: no address, or an address that is not the "
                    "subscriber's their custom_args name", kept[0].provider, ignored)
    return {"received": len(events), "new": len(inserted), "suppressed": suppressed, "ignored": ignored}


def mailbox_recorder(store: Store, settings: Settings) -> Callable[..., dict[str, int]]:
    """The `record` a bounce mailbox run hands its events to (`providers.bounces.process`): this
    module's rules, with the soft-bounce rule of `settings`."""
    rule = (settings.soft_bounce_limit, settings.soft_bounce_sends)

    def record(events: Sequence[ProviderEvent], transaction: Callable[[], AbstractContextManager[Connection]]
               ) -> dict[str, int]:
        return record_provider_events(store, events, transaction=transaction, soft_bounce_rule=rule)
    return record


def process_bounce_source(store: Store, settings: Settings, source: str, *,
                          ssl_context: "ssl.SSLContext | None" = None) -> "Summary":
    """Read a bounce mailbox (`providers.bounces.process.process_source`: a Maildir, an mbox or an
    `imap://` URL) and apply what it reports to the subscribers. Raises MailboxError (one line)."""
    from ..providers.bounces.process import process_source

    return process_source(store, settings, source, mailbox_recorder(store, settings), ssl_context=ssl_context)


def _attribute(store: Store, conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Keep each row's `issue_id` (what the event's custom argument or VERP address said) only when the
    ledger has a delivery of that issue to the row's subscriber: an event carrying another issue's id
    (forged, or a provider's mix-up) is the person's, never counted in that issue's report."""
    claimed = [(row["issue_id"], row["subscriber_id"]) for row in rows
               if row["issue_id"] is not None and row["subscriber_id"] is not None]
    delivered = store.delivered_pairs(conn, claimed) if claimed else set()
    for row in rows:
        if (row["issue_id"], row["subscriber_id"]) not in delivered:
            row["issue_id"] = None


def _correlate(store: Store, conn: Connection, rows: list[dict[str, Any]],
               events: list[ProviderEvent]) -> tuple[dict[int, Row], int]:
    """Set each row's subscriber_id (see `record_provider_events`); returns the people events may act
    on (id -> row with status, confirmed_at) and how many suppressing events were ignored.

    An event about an erased person is stored as `erasure.anonymised_event` says, without an address,
    and acts on no one: one naming a tombstone by id (a webhook's custom argument, a bounce's VERP
    token or unsubscribe link, whatever address it carries), or carrying an address whose tombstone
    is in the table (as given or normalised: `erasure.erased_keys`) and nobody's now (a person who
    came back through the subscribe form has a new row: their events are theirs)."""
    named = store.people_by_ids(conn, [event.subscriber_id for event in events if event.subscriber_id])
    keys = {event.email_key for event in events if event.email_key}
    tombstones = {key: erased_keys(key) for key in keys if not key.startswith(TOMBSTONE_PREFIX)}
    by_email = store.ids_by_emails(conn, [*keys, *(t for found in tombstones.values() for t in found)])
    living: dict[int, Row] = {}
    ignored = 0
    for row, event in zip(rows, events):
        given, key = event.subscriber_id, event.email_key
        named_row = named.get(given) if given else None
        holder = by_email.get(key) if key else None       # whoever has this address now (a tombstone's own key too)
        erased_as = [by_email[t] for t in tombstones.get(key, ()) if t in by_email]
        person: int | None = None
        if named_row is not None:
            erased = named_row.email.startswith(TOMBSTONE_PREFIX)
            if key and (named_row.email == key or named_row.email in tombstones.get(key, ())):
                person = given
            elif not erased:  # someone else's address: an erased person's, unless they came back since
                erased = holder is None and bool(erased_as)
        else:
            erased = key.startswith(TOMBSTONE_PREFIX) if holder is not None else bool(erased_as)
            if key and not given and event.by_address:
                person = holder if holder is not None else (erased_as[0] if erased_as else None)
        if person is None and event.suppress and event.by_address and not erased:
            ignored += 1
        row["subscriber_id"] = person
        if erased:  # nothing about who they were: what happened and when
            row["reason"], row["payload"] = anonymised_event(row["reason"], row["payload"])
            row["email"] = ""
        elif person is not None:
            living[person] = named.get(person)  # type: ignore[assignment]
    missing = [pid for pid, found in living.items() if found is None]
    living.update(store.people_by_ids(conn, missing))
    return {pid: found for pid, found in living.items() if found is not None}, ignored
