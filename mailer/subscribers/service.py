"""The managed subscriber list: add, remove, show, list (the CSV import and export are `mailer.subscribers.importer`).

Rules every path here keeps:
* one person, one row: addresses are unique case-insensitively (`addresses.parse_address`);
* suppressed people (unsubscribed, bounced, complained) are never re-activated by an import or by
  the operator — only by their own choice (web resubscribe) or, for unsubscribed ones only, an
  explicit `--resubscribe`; complained is final;
* every change of status is an event (who, when, why);
* erasing a person (`remove --purge`) keeps an anonymous tombstone (a hash of the address) so no
  later import brings them back (`erasure`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..addresses import Address, parse_address
from .importer.values import clean_text  # noqa: F401 - its home is the SQLAlchemy-free values module
from ..errors import MailerError, NotFound
from ..statuses import SUBSCRIBER_STATUSES, SUPPRESSED_STATUSES, SUPPRESSION_RANK
from ..store import Connection, Row, StatusChange, Store, as_utc
from .erasure import ErasureReport, erase_subscriber, tombstone_key


# ----- the suppression rule (bounces, complaints, provider unsubscribes, imports) ---------------------
OUTRANKED = "outranked"    # already as suppressed, or more: nothing is lowered
CAME_BACK = "came back"    # the event is older than their latest confirmation


def suppression_verdict(status: str, confirmed_at: datetime | None, event_at: datetime | None,
                        wanted: str) -> str | None:
    """Whether an event that implies `wanted` (a status of SUPPRESSED_STATUSES) suppresses a person
    who is `status` now and last confirmed at `confirmed_at`: None when it does, else why not.

    The one rule every path applies (provider webhooks and bounce mailboxes through
    `subscribers.feedback`, CSV imports through the import engine):

    1. **rank** (`statuses.SUPPRESSION_RANK`): complained > bounced > unsubscribed > active/pending;
       an event never lowers nor repeats a suppression → OUTRANKED;
    2. **came back since**: an event from before the person's latest confirmation is about an
       earlier subscription → CAME_BACK. `event_at` is when the message the event is about was sent
       when that is known (a bounce report matched to a delivery), else when the event happened (a
       webhook's timestamp, an export's unsubscribe date). No time known: the event counts.

    Times are compared in **whole seconds** (UTC; naive values are read as UTC): providers' times
    have no more (SendGrid's Unix timestamps, RFC 5322 dates in DSN/ARF reports, exports' dates),
    while ours carry microseconds, so within one second the order is unknown. An event in the same
    second as the confirmation counts (suppresses): mailing someone whose address bounced or who
    complained is the costlier mistake, and a wrong suppression is undone by the person
    (resubscribe) or the operator (`subscribers restore`). Raises ValueError for a `wanted` status
    that is not a suppression.
    """
    if wanted not in SUPPRESSED_STATUSES:
        raise ValueError(f"{wanted!r} is not a suppression")
    if SUPPRESSION_RANK[wanted] <= SUPPRESSION_RANK.get(status, 0):
        return OUTRANKED
    if event_at is not None and confirmed_at is not None and _second(event_at) < _second(confirmed_at):
        return CAME_BACK
    return None


def _second(value: datetime) -> datetime:
    return as_utc(value).replace(microsecond=0)  # type: ignore[union-attr]


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
def _person(store: Store, conn: Connection, address: Address) -> Row:
    """The subscriber with this address; NotFound names the address as given."""
    row = store.subscriber_by_email(conn, address.key)
    if row is None:
        raise NotFound(f"no subscriber {address.given}")
    return row


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
            store.update_profile(conn, row.id, changes, source=source)
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
        row = _person(store, conn, address)
        return store.set_status(conn, row.id, status, source=source, reason=reason)


def remove_subscriber(store: Store, email: str, *, purge: bool = False, source: str = "cli", reason: str = "",
                      outbox_dir: Path | None = None) -> "ErasureReport | None":
    """Unsubscribe (the record and its history stay, so no import resurrects it); `purge` erases the
    person (see `erase_subscriber`) and returns what it erased."""
    if purge:
        return erase_subscriber(store, email, source=source, reason=reason, outbox_dir=outbox_dir)
    address = parse_address(email)
    with store.begin() as conn:
        row = _person(store, conn, address)
        if row.status not in SUPPRESSED_STATUSES:
            store.set_status(conn, row.id, "unsubscribed", source=source, reason=reason or "removed by the operator")
    return None


# ----- undoing a wrong suppression -------------------------------------------------------------------
@dataclass(frozen=True)
class Restoration:
    email: str
    old: str            # the status before the restore
    new: str            # the status restored (== old: nothing to do)
    undone: str         # the event undone, as one line

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def summary(self) -> str:
        if not self.changed:
            return f"{self.email} is {self.old}: nothing to restore"
        return f"restored {self.email}: {self.old} → {self.new} (undid {self.undone})"



def restore_subscriber(store: Store, email: str, *, reason: str, force: bool = False,
                       source: str = "cli") -> Restoration:
    """Undo the suppression that gave a person their current status (a bounce, a complaint or an
    unsubscribe recorded in error — e.g. events forged before the webhook was verified): the status
    they had just before it comes back, and the restore is a status event (`source`, "restored:
    REASON (undoes …)").

    Refuses (MailerError, one line) without `force` when the person unsubscribed themselves (an
    unsubscribe from any source but the operator's `remove`: link, one-click, provider, import) or
    when there is no earlier status (created suppressed, e.g. imported as unsubscribed; `force`
    then makes them active). Not suppressed: nothing changes. Raises NotFound for an unknown address.
    """
    reason = clean_text(reason, 500)
    if not reason:
        raise MailerError("restore needs --reason (it is recorded in the person's history)")
    address = parse_address(email)
    with store.begin() as conn:
        row = _person(store, conn, address)
        if row.status not in SUPPRESSED_STATUSES:
            return Restoration(row.email_given, row.status, row.status, "")
        history = [event for event in store.status_history(conn, row.id) if event.new_status == row.status]
        last = history[-1] if history else None
        when = f"{as_utc(last.at):%Y-%m-%d %H:%M} UTC" if last is not None else "?"
        undone = "?" if last is None else (
            f"{last.old_status or 'created'} → {row.status} by {last.source or '?'} on {when}"
            + (f", {last.reason.strip()!r}" if last.reason.strip() else ""))
        previous = last.old_status if last is not None else None
        if previous is None and not force:
            raise MailerError(f"{row.email_given} was {row.status} from the start ({undone}); there is no earlier "
                              f"status to restore (--force makes them active)")
        if row.status == "unsubscribed" and (last is None or last.source != "cli") and not force:
            raise MailerError(f"{row.email_given} unsubscribed themselves ({undone}); restore only with their "
                              f"consent, using --force")
        new = previous or "active"
        store.apply_status_changes(conn, [StatusChange(row.id, row.status, new, source,
                                                       f"restored: {reason} (undoes {undone})")])
    return Restoration(row.email_given, row.status, new, undone)


def show_subscriber(store: Store, email: str) -> SubscriberView:
    address = parse_address(email)
    with store.connect() as conn:
        row = _person(store, conn, address)
        events, sent, lists = store.person_record(conn, row.id)
    return SubscriberView(
        id=row.id, email=row.email_given, name=row.name, language=row.language, status=row.status,
        source=row.source, attributes=row.attributes or {}, created_at=as_utc(row.created_at),
        confirmed_at=as_utc(row.confirmed_at), unsubscribed_at=as_utc(row.unsubscribed_at), lists=tuple(lists),
        events=tuple(dict(e) for e in events), deliveries=tuple(dict(d) for d in sent))


def count_subscribers(store: Store, status: str | None = None) -> int:
    with store.connect() as conn:
        return store.count_subscribers(conn, status)


def iter_subscribers(store: Store, status: str | None = None, batch: int = 5000) -> Iterator[tuple[Row, list[str]]]:
    """Every subscriber (tombstones excluded) in id order with their sorted list names: flat memory."""
    for page in store.subscriber_pages(status, batch):
        yield from page


def _add_to_lists(conn: Connection, subscriber_id: int, lists: Iterable[str]) -> None:
    Store.add_list_memberships(conn, subscriber_id, list(lists))



def _day(value: object) -> str:
    value = as_utc(value)  # type: ignore[arg-type]
    return value.date().isoformat() if value else "?"

