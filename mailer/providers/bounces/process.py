"""Processing a bounce mailbox: read each report, match it to the delivery, record it, suppress.

For each message not yet set aside (`sources`), `process_mailbox`:

1. reads it (`reading.read_message`): bounce, complaint, other, or unparseable. Unparseable ones are
   counted and left exactly where they are (they are counted again on the next run);
2. skips it when its digest is already in the store (a run that stopped between recording and moving
   it, an mbox that is never rewritten, the same report in two mailboxes) and sets it aside again;
3. matches it to one delivery (issue + subscriber), in this order:
   - **VERP**: an address `bounces+TOKEN@domain` (MAILER_BOUNCE_ADDRESS) in the report's envelope
     headers or the returned original's Return-Path / ARF Original-Mail-From, whose signed token
     (`tokens.read_bounce_token`) names a delivery in the ledger. A forged or altered token is no match;
   - **Message-ID + recipient**: the returned original's Message-ID equals the stable Message-ID of a
     delivery (`tokens.message_id`) to a subscriber the report names (Final-Recipient,
     Original-Recipient, Original-Rcpt-To, the returned To) or whose signed List-Unsubscribe token the
     returned headers carry. An address alone matches no one: anybody can write a bounce;
4. turns it into one normalised `ProviderEvent` per failed recipient (provider `mailbox`; kind
   `bounced`, `soft_bounced`, `delayed`, `complained`, `feedback`, `other`; the raw reason and the
   parsed report in the payload; a hard bounce implies `bounced`, a complaint `complained`; the
   matched delivery's send time) and hands them to `record`, in the same transaction as the check of
   step 2. `record` is the subscribers' feedback path (`subscribers.feedback.mailbox_recorder`, the
   one the webhooks use): it stores the events and applies the subscriber rules (the suppression
   ranking, "came back since", a soft bounce as a history line and `bounced` once
   MAILER_SOFT_BOUNCE_LIMIT of the last MAILER_SOFT_BOUNCE_SENDS sends came back soft). This module
   reads the ledger to match a report (a `Store` handed in by the caller) and writes nothing itself;
5. sets it aside (Maildir: `.Processed`; IMAP: flags, optional move; mbox: the store remembers).
"""

from __future__ import annotations

import logging
import ssl
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from ...config import Settings, secret_key_for
from ...statuses import MAILBOX_PROVIDER
from ..events import ProviderEvent
from ...tokens import InvalidToken, message_id as delivery_message_id, read_token
from .reading import Failure, Reading, read_message
from .sources import MailboxSource, open_source
from .verp import Verp

Store = Any       # a mailer.store.Store, handed in by the caller: read to match a report to a delivery
Connection = Any  # a store connection (SQLAlchemy's; this module writes no SQL of its own)
Row = Any         # a row returned by a store function
# Where the events go: (events, how to open the transaction) → counts with "suppressed" (subscribers.feedback).
Record = Callable[[Sequence[ProviderEvent], Callable[[], AbstractContextManager[Connection]]], dict[str, int]]

log = logging.getLogger("mailer.bounces")


@dataclass
class Summary:
    """What one run did. `processed` = new messages recorded, split into disjoint counts:
    processed == hard_bounces + soft_bounces + complaints + unmatched + other (a bounce or complaint
    that names no delivery of ours counts as unmatched only)."""

    source: str
    processed: int = 0
    hard_bounces: int = 0
    soft_bounces: int = 0
    complaints: int = 0
    unmatched: int = 0
    unparseable: int = 0
    other: int = 0                 # auto-replies, delay warnings, feedback that is not a complaint
    already_processed: int = 0     # in the store from an earlier run, set aside again
    suppressed: int = 0            # subscribers whose status changed
    problems: list[str] = field(default_factory=list)   # why each unparseable one is

    def line(self) -> str:
        return (f"{self.source}: {self.processed} new processed: {self.hard_bounces} hard "
                f"{_plural(self.hard_bounces, 'bounce')}, {self.soft_bounces} soft "
                f"{_plural(self.soft_bounces, 'bounce')}, {self.complaints} "
                f"{_plural(self.complaints, 'complaint')}, {self.unmatched} unmatched, {self.other} "
                f"{_plural(self.other, 'other')}; {self.unparseable} unparseable (left in place); {self.suppressed} "
                f"{_plural(self.suppressed, 'subscriber')} suppressed")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


@dataclass(frozen=True)
class Match:
    subscriber_id: int
    issue_id: int
    how: str          # "verp" or "message-id"
    facts: Row     # Store.delivery_facts


def process_mailbox(store: Store, settings: Settings, source: MailboxSource, record: Record) -> Summary:
    """Process every message of an opened `source` (see the module docstring). Raises MailboxError
    when the mailbox fails mid-way; what was recorded before stays recorded."""
    key = secret_key_for(settings)
    verp = Verp.from_settings(settings)
    summary = Summary(source.label)
    for message_key, raw in source.messages():
        reading = read_message(raw)
        if reading.kind == "unparseable":
            summary.unparseable += 1
            summary.problems.append(reading.problem)
            log.warning("%s: message %s left in place: %s", source.label, message_key, reading.problem)
            continue
        with store.begin() as conn:
            if store.mailbox_seen(conn, [reading.digest]):
                summary.already_processed += 1
            else:
                _record(store, conn, settings, key, verp, reading, source.kind, summary, record)
        source.set_aside(message_key)
    return summary


def process_source(store: Store, settings: Settings, source: str, record: Record, *,
                   ssl_context: "ssl.SSLContext | None" = None) -> Summary:
    """Open SOURCE (a Maildir folder, an mbox file or an `imap://` URL, see `sources.open_source`;
    the IMAP password is MAILER_IMAP_PASSWORD), process it and close it. Raises MailboxError (one line
    naming SOURCE) when it cannot be opened or read."""
    with open_source(source, imap_password=settings.imap_password, ssl_context=ssl_context) as mailbox:
        return process_mailbox(store, settings, mailbox, record)


COMPLAINT_RATE_LIMIT = 0.003  # Gmail's and Yahoo's bulk-sender rule (2024): keep spam complaints under 0.3 %


def deliverability(store: Store, issue_id: int | None = None) -> list[dict[str, Any]]:
    """Per issue with a ledger (one with `issue_id`): {issue_id, slug, sent, hard_bounces, soft_bounces,
    complaints, complaint_rate (complaints / sent, 0 when nothing was sent), over_limit (rate above
    COMPLAINT_RATE_LIMIT)}; people counted once per issue, from every provider's reports."""
    with store.engine.connect() as conn:
        rows = store.deliverability(conn, issue_id)
    report = []
    for row in rows:
        rate = row.complaints / row.sent if row.sent else 0.0
        report.append({"issue_id": row.issue_id, "slug": row.slug, "sent": row.sent, "hard_bounces": row.hard_bounces,
                       "soft_bounces": row.soft_bounces, "complaints": row.complaints, "complaint_rate": rate,
                       "over_limit": rate > COMPLAINT_RATE_LIMIT})
    return report


def _record(store: Store, conn: Connection, settings: Settings, key: bytes, verp: Verp | None,
            reading: Reading, source_kind: str, summary: Summary, record: Record) -> None:
    summary.processed += 1
    match = _match(store, conn, settings, key, verp, reading)
    base = {"source": source_kind, "detector": reading.detector, "report_message_id": reading.message_id,
            "subject": reading.subject, "original_message_id": reading.original_message_id,
            "match": match.how if match else None}
    slug = match.facts.slug if match else ""
    kinds: list[tuple[str, Failure | None, str | None, str]]  # kind, failure, suppression, history line
    if reading.kind == "complaint":
        kinds = [("complained", None, "complained", f"complaint ({reading.feedback_type} feedback report) about {slug}")]
        summary.complaints += match is not None
    elif reading.kind == "bounce":
        bouncing = [f for f in reading.failures if f.severity in ("hard", "soft")]
        if match is not None and len(bouncing) > 1:  # one delivery, one recipient: the one it names
            bouncing = [_failure_for(bouncing, match.facts.email)]
        kinds = [("bounced", f, "bounced", f"hard bounce on {slug}: {f.reason}") if f.severity == "hard" else
                 ("soft_bounced", f, None, f"soft bounce on {slug}: {f.reason}") for f in bouncing]
        worst = "hard" if any(f.severity == "hard" for f in bouncing) else "soft"
        summary.hard_bounces += match is not None and worst == "hard"
        summary.soft_bounces += match is not None and worst == "soft"
    else:
        kinds = [("feedback" if reading.feedback_type else "delayed" if reading.failures else "other", None, None, "")]
        summary.other += 1
    if match is None and reading.kind in ("bounce", "complaint"):
        summary.unmatched += 1
    events = [ProviderEvent(
        provider=MAILBOX_PROVIDER, event_id=f"{reading.digest}:{index}", kind=kind,
        suppress=suppress if match else None, name=kind,
        email_key=(match.facts.email if match else (failure.recipient if failure else reading.complaint_recipient))[:320],
        subscriber_id=match.subscriber_id if match else None, issue_id=match.issue_id if match else None,
        occurred=reading.occurred, reason=_reason(reading, failure)[:2000],
        payload={**base, **({"failure": asdict(failure)} if failure else {}),
                 **({"feedback_type": reading.feedback_type} if reading.feedback_type else {})},
        sent_at=match.facts.sent_at if match else None, history=history, by_address=False)
        for index, (kind, failure, suppress, history) in enumerate(kinds)]
    summary.suppressed += record(events, lambda: nullcontext(conn))["suppressed"]


def _match(store: Store, conn: Connection, settings: Settings, key: bytes, verp: Verp | None,
           reading: Reading) -> Match | None:
    if reading.kind not in ("bounce", "complaint"):
        return None
    if verp is not None:
        for data in verp.find(reading.envelope_text):
            facts = store.delivery_facts(conn, data.issue_id, data.subscriber_id)
            if facts is not None:
                return Match(data.subscriber_id, data.issue_id, "verp", facts)
    wanted = reading.original_message_id
    if not wanted:
        return None
    people: list[int] = []
    keys = [address for address in reading.recipients]
    if keys:
        people += store.ids_by_emails(conn, keys).values()
    for url in reading.unsubscribe_urls:
        token = url.rstrip("/").rsplit("/", 1)[-1]
        try:
            people.append(read_token(key, "unsubscribe", token).subscriber_id)
        except InvalidToken:
            continue
    domain = settings.sender_domain
    for subscriber_id in dict.fromkeys(people):
        for issue_id, slug in store.delivered_issues(conn, subscriber_id):
            if delivery_message_id(key, slug, subscriber_id, domain) == wanted:
                facts = store.delivery_facts(conn, issue_id, subscriber_id)
                if facts is not None:
                    return Match(subscriber_id, issue_id, "message-id", facts)
    return None


def _failure_for(failures: list[Failure], email: str) -> Failure:
    for failure in failures:
        if email and email in (failure.recipient, failure.original_recipient):
            return failure
    return failures[0]


def _reason(reading: Reading, failure: Failure | None) -> str:
    if failure is not None:
        return f"{failure.severity} bounce: {failure.reason}"
    if reading.feedback_type:
        return f"feedback report: {reading.feedback_type}"
    return f"not a bounce: {reading.subject}"


__all__ = ["COMPLAINT_RATE_LIMIT", "Summary", "deliverability", "process_mailbox", "process_source"]
