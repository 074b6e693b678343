"""The managed subscriber list: add, remove, show, list (the CSV import and export are `mailer.subscribers.importer`).

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
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import idna

from ..addresses import Address, parse_address
from .importer.values import clean_text  # noqa: F401 - its home is the SQLAlchemy-free values module
from ..errors import InvalidAddress, MailerError, NotFound
from ..statuses import SUBSCRIBER_STATUSES, SUPPRESSED_STATUSES, SUPPRESSION_RANK, TOMBSTONE_PREFIX
from ..store import Connection, Row, StatusChange, Store, as_utc


def tombstone_key(key: str) -> str:
    """The anonymous stand-in for an erased address (stored in place of the email)."""
    return TOMBSTONE_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


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


# ----- erasure (GDPR art. 17) ------------------------------------------------------------------------
# This section is the one owner of what an erased person's data becomes: their history and ledger
# rows (`person_redactor`), and every provider event about them, stored before the erasure or arriving
# after it, from a webhook or a bounce mailbox (`anonymised_event`, applied by `Store.erase_person`
# and by `feedback.record_provider_events`). Our own code: the rules are this product's promise
# (README, "Privacy"), and no library knows which words of a bounce are a person's.
ERASED = "[erased]"
# Anything shaped like an address, its local part an atom or quoted (SMTP replies quote them, outbox
# paths and errors hold them).
_ADDRESS_LIKE = re.compile(r"""(?:"[^"\r\n]*"|[^\s<>"'(),;:/\[\]\\]+)@[^\s<>"'(),;:/\[\]\\]+""")
# What an erased person's provider events keep: what happened and when, nothing about who or where
# (no address, IP, user agent, clicked URL, SMTP reply, message id).
PROVIDER_EVENT_KEPT_FIELDS = ("event", "timestamp", "type", "sg_event_id", "mailer_issue", "mailer_subscriber",
                              "asm_group_id", "bounce_classification")
# The words of a provider's reason an erased person's event keeps: SMTP reply codes (550) and RFC 3463
# enhanced status codes (5.1.1), never part of an address, a number or an IP address.
_STATUS_CODE = re.compile(r"(?<![\w.@%+-])(?:[245]\.\d{1,3}\.\d{1,3}|[245]\d\d)(?![\w@%+-]|\.\d)")


def redact_addresses(text: str) -> str:
    """`text` with every address-like word (`local@domain`, `"quoted local"@domain`) replaced by
    `[erased]`."""
    return _ADDRESS_LIKE.sub(ERASED, text) if "@" in text else text


def person_redactor(forms: Iterable[str], name: str = "") -> Callable[[str], str]:
    """What erasing one person does to the text of their history and ledger rows (README: "every
    address in them replaced by `[erased]`"): a function of a str returning it with

    * each address of `forms` (the ways it was written), in any case, its domain in Unicode or IDNA
      (`xn--`) form, its local part bare or quoted, `@` or `%40` between;
    * any other address-like word (`redact_addresses`);
    * the local part of `forms` standing alone (a sendmail-style `jane.doe... User unknown`), when
      it has 3 characters or more;
    * `name` (any case, any spacing), when it has 3 characters or more;

    replaced by `[erased]`.
    """
    addresses: set[str] = set()
    words: set[str] = set()
    for form in forms:
        local, at, domain = form.strip().rpartition("@")
        if not at or not local or not domain:
            continue
        local = local[1:-1] if len(local) > 1 and local[0] == local[-1] == '"' else local
        domains = {domain, *_idna_forms(domain)}
        addresses.update(f'"?{re.escape(local)}"?(?:@|%40){re.escape(d)}' for d in domains)
        if len(local) >= 3:
            words.add(re.escape(local))
    name = " ".join(name.split())
    if len(name) >= 3:
        words.add(r"\s+".join(re.escape(part) for part in name.split(" ")))
    known = re.compile("|".join(sorted(addresses, key=len, reverse=True)), re.IGNORECASE) if addresses else None
    alone = (re.compile(r"(?<![\w.+-])(?:" + "|".join(sorted(words, key=len, reverse=True)) + r")(?![\w+-]|\.\w)",
                        re.IGNORECASE) if words else None)

    def redact(text: str) -> str:
        if known is not None:
            text = known.sub(ERASED, text)
        text = redact_addresses(text)
        return alone.sub(ERASED, text) if alone is not None else text
    return redact


def _idna_forms(domain: str) -> set[str]:
    """`domain` in IDNA ASCII and Unicode form (whichever it is not), when it converts."""
    found = set()
    for convert in (lambda d: idna.encode(d, uts46=True).decode("ascii"), lambda d: idna.decode(d)):
        try:
            found.add(convert(domain))
        except (idna.IDNAError, UnicodeError, ValueError):
            continue
    return found


def anonymised_payload(payload: Mapping[str, Any]) -> dict:
    """A provider event's raw payload reduced to PROVIDER_EVENT_KEPT_FIELDS (scalars only, addresses redacted)."""
    kept: dict = {"erased": True}
    for name in PROVIDER_EVENT_KEPT_FIELDS:
        value = payload.get(name)
        if isinstance(value, str):
            kept[name] = redact_addresses(value)
        elif isinstance(value, (int, float, bool)):
            kept[name] = value
    return kept


def anonymised_event(reason: str, payload: Mapping[str, Any] | None) -> tuple[str, dict]:
    """What a provider event about an erased person keeps, as (reason, payload): of the reason, the
    status codes it gives, in their order (`5.1.1 550 [erased]`; "" when it was empty), since a
    remote server's words may hold the address in any form, or the name, which are no longer known;
    of the payload, the fields of `anonymised_payload`. Every path that stores such an event applies
    it: the erasure (events stored before) and `feedback.record_provider_events` (webhooks and bounce
    mailboxes, after)."""
    codes = list(dict.fromkeys(_STATUS_CODE.findall(reason or "")))
    kept = " ".join([*codes, ERASED]) if (reason or "").strip() else ""
    return kept, anonymised_payload(payload if isinstance(payload, Mapping) else {})


def erased_keys(address: str) -> set[str]:
    """The tombstones (`tombstone_key`) an address of a provider event may stand for: as given, and
    normalised (`parse_address`: case, IDNA domain; `Name <address>` read as the address; a quoted
    dot-atom local part unquoted)."""
    text = address.strip()
    keys = {tombstone_key(text)}
    if "<" in text:
        text = parseaddr(text)[1] or text
    local, at, domain = text.rpartition("@")
    if at and len(local) > 1 and local[0] == local[-1] == '"':
        text = f"{local[1:-1]}@{domain}"
    try:
        keys.add(tombstone_key(parse_address(text).key))
    except InvalidAddress:
        pass
    return keys


@dataclass(frozen=True)
class ErasureReport:
    email: str
    already_erased: bool
    events: int            # history lines kept, address-like words redacted
    deliveries: int        # ledger rows kept, paths and errors redacted
    provider_events: int   # webhook events kept, anonymised
    files: int             # outbox files deleted
    compacted: bool        # database files rewritten without the freed data (SQLite)

    def summary(self) -> str:
        head = (f"{self.email} was already erased; checked again" if self.already_erased
                else f"erased {self.email}")
        text = (f"{head}: {self.events} history events and {self.deliveries} deliveries kept without the address, "
                f"{self.provider_events} webhook events anonymised, {self.files} outbox files deleted; "
                f"an anonymous tombstone keeps the address from being imported again")
        if not self.compacted:
            text += " (warning: another process held the database; run `mailer subscribers remove --purge` again later)"
        return text


def erase_subscriber(store: Store, email: str, *, source: str = "cli", reason: str = "",
                     outbox_dir: Path | None = None) -> ErasureReport:
    """Erase every copy of a person's data this product made, keeping an anonymous tombstone (a
    SHA-256 of the normalised address in place of the address) so no import brings them back:

    * the subscriber row: address, name, language, attributes, lists, source;
    * their history (`subscriber_events`) and ledger rows (`deliveries`): kept for the counts, with
      their address (any spelling), any other address-like word and their name in reasons, errors and
      outbox paths replaced by `[erased]` (`person_redactor`);
    * webhook events and bounce reports (`provider_events`) naming them or their address: reduced to
      what happened and when (`anonymised_event`; those arriving later too, `feedback`);
    * outbox files written for them (issues, test sends, confirmation and welcome emails);
    * on SQLite, the freed pages and the write-ahead log (VACUUM, checkpoint), so the address is
      not left in the database file's free space.

    Idempotent: erasing an erased address checks everything again. Raises NotFound for an address
    never seen. What stays elsewhere (provider logs, backups, delivered mail) is listed in the README.
    """
    from ..providers.outbox import person_files

    address = parse_address(email)
    erased = tombstone_key(address.key)
    forms = sorted({address.key, address.given, email.strip()})
    with store.begin() as conn:
        row = store.subscriber_by_email(conn, address.key)
        already = row is None
        if row is None:
            row = store.subscriber_by_email(conn, erased)
            if row is None:
                raise NotFound(f"no subscriber {address.given}")
        if row.status not in SUPPRESSED_STATUSES:
            store.set_status(conn, row.id, "unsubscribed", source=source, reason=reason or "erased on request")
        forms = sorted({*forms, row.email, row.email_given} - {erased})
        redact = person_redactor(forms, row.name or "")
        counts = store.erase_person(conn, row.id, email_keys=forms, tombstone=erased, redact=redact,
                                    anonymise=anonymised_event, source=source,
                                    reason=redact(reason) or "erased on request")
    files = 0
    if outbox_dir is not None:
        root = outbox_dir.resolve()
        candidates = set(person_files(outbox_dir, row.id, forms))
        for recorded in counts["paths"]:  # the ledger's own record of where the outbox put them
            path = Path(recorded)
            if path.suffix in (".eml", ".tmp") and path.resolve().is_relative_to(root):
                candidates.add(path)
        for path in candidates:
            try:
                path.unlink()
                files += 1
            except FileNotFoundError:
                pass
    compacted = store.compact()
    return ErasureReport(email=address.given if already else row.email_given, already_erased=already, events=counts["events"],
                         deliveries=counts["deliveries"], provider_events=counts["provider_events"], files=files,
                         compacted=compacted)


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

