"""The subscriber's own choices, as the public web app offers them: subscribe (double opt-in),
confirm, unsubscribe, resubscribe. Each function runs inside the caller's transaction and returns
what the page should say; it never renders anything.

Rules:
* the subscribe form never reveals whether an address is known (the caller shows the same page);
  nothing happens for an active address; a suppressed person may come back only by pressing the
  button of the confirmation email (proof that the mailbox's owner asked), within COMEBACK_VALID;
* confirmation emails: at most one per CONFIRM_RESEND_INTERVAL and CONFIRM_MAX_PER_DAY a day per
  address, whoever asks;
* changes are conditional on the status just read, so two concurrent requests record one event.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ..statuses import SUPPRESSED_STATUSES
from ..store import Connection, Row, StatusChange, Store, as_utc, utcnow

CONFIRM_RESEND_INTERVAL = timedelta(seconds=60)   # at most one confirmation email a minute per address…
CONFIRM_MAX_PER_DAY = 5                           # …and five a day, whoever asks
COMEBACK_VALID = timedelta(days=7)                # a suppressed person's re-subscription request


def request_subscription(store: Store, conn: Connection, key: str, given: str, person: str) -> tuple[int, str] | None:
    """Record a subscribe-form request for the normalised address `key` (as typed: `given`; name
    `person`, already cleaned); returns (id, address) to send a confirmation email to, or None:
    nobody, silently. A new address is `pending`. Raises store.IntegrityError when the same new
    address is inserted concurrently (the other request sends the email)."""
    row = store.subscriber_by_email(conn, key)
    now = utcnow()
    if row is None:
        subscriber_id = store.insert_subscriber(conn, email=key, email_given=given, status="pending",
                                                name=person, source="web", reason="subscribe form")
        store.record_event(conn, subscriber_id, "confirm_sent", source="web", at=now)
        return subscriber_id, given
    if row.status == "active":
        return None  # nothing to do, and nothing visible: no enumeration
    if row.status in SUPPRESSED_STATUSES:
        # Their own choice may bring them back, but only through the emailed link (proof that the
        # mailbox's owner asked), and only by pressing the button on the confirm page.
        store.record_event(conn, row.id, "resubscribe_requested", source="web", at=now,
                           reason=f"subscribe form (is {row.status})")
    if not _may_send_confirmation(store, conn, row.id, now):
        return None
    store.record_event(conn, row.id, "confirm_sent", source="web", at=now)
    return row.id, row.email_given


def _may_send_confirmation(store: Store, conn: Connection, subscriber_id: int, now: datetime) -> bool:
    last, count = store.events_since(conn, subscriber_id, "confirm_sent", now - timedelta(days=1))
    return not (count >= CONFIRM_MAX_PER_DAY or (last is not None and now - last < CONFIRM_RESEND_INTERVAL))


def confirm(store: Store, conn: Connection, row: Row, *, pressed: bool) -> tuple[str, bool]:
    """A confirmation link opened (`pressed` False: the page only, nothing changes) or its button
    pressed. Returns (state, welcome): state is confirmed, ask_pending, ask or stale (a suppressed
    person who did not ask recently); welcome is True when this press made the person active."""
    if row.status == "active":
        return "confirmed", False
    if row.status == "pending":
        if not pressed:
            return "ask_pending", False
        store.set_status(conn, row.id, "active", source="web", reason="confirmed by email link (double opt-in)")
        return "confirmed", True
    if not asked_to_come_back(store, conn, row):
        return "stale", False
    if not pressed:
        return "ask", False
    store.set_status(conn, row.id, "active", source="web", reason=f"re-subscribed by email link (was {row.status})")
    return "confirmed", True


def asked_to_come_back(store: Store, conn: Connection, row: Row) -> bool:
    """A suppressed person asked (subscribe form) after their suppression, and within COMEBACK_VALID."""
    since = as_utc(row.unsubscribed_at) or datetime.min.replace(tzinfo=timezone.utc)
    since = max(since, utcnow() - COMEBACK_VALID)
    asked = store.last_event_at(conn, row.id, "resubscribe_requested")
    return asked is not None and asked >= since


def unsubscribe(store: Store, conn: Connection, row: Row, *, source: str, reason: str,
                issue_id: int | None = None) -> str:
    """Unsubscribe an active or pending person (idempotent); returns their status afterwards. The
    event records `issue_id`, the issue whose link it came through (`mailer report`), when the ledger
    has a delivery of that issue to them (else no issue: the person's event, in no issue's report)."""
    if row.status not in ("active", "pending"):
        return row.status  # already suppressed: nothing changes
    if issue_id is not None and not store.delivered_pairs(conn, [(issue_id, row.id)]):
        issue_id = None
    # conditional on the status just read: two concurrent POSTs record one event
    store.apply_status_changes(conn, [StatusChange(row.id, row.status, "unsubscribed", source, reason,
                                                   issue_id=issue_id)])
    return "unsubscribed"


def resubscribe(store: Store, conn: Connection, row: Row) -> None:
    """The person's own choice from the unsubscribe page (a POST-only button): active again, even
    after a bounce or a complaint."""
    if row.status != "active":
        store.set_status(conn, row.id, "active", source="web",
                         reason=f"resubscribed from the unsubscribe page (was {row.status})")
