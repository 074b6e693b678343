"""The managed subscriber list: add, remove, show, list, export, and the streaming CSV import.

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

import codecs
import csv
import hashlib
import io
import itertools
import json
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from operator import itemgetter
from typing import IO, Callable, Iterable, Iterator, NamedTuple, Sequence

import sqlalchemy as sa

from .addresses import Address, address_parts, parse_address
from .errors import InvalidAddress, MailerError, NotFound
from .schema import SUBSCRIBER_STATUSES, SUPPRESSED_STATUSES, TOMBSTONE_PREFIX, deliveries, issues, list_members, subscriber_events, subscribers
from .store import StatusChange, Store, as_utc, utcnow

EMAIL_HEADERS = ("email", "e-mail", "mail", "courriel", "adresse", "address", "email address", "adresse email",
                 "adresse e-mail")
NAME_HEADERS = ("name", "nom", "full name", "nom complet", "fullname")
LANGUAGE_HEADERS = ("language", "langue", "lang", "locale")
LISTS_HEADERS = ("lists", "listes", "list")
EXPORT_COLUMNS = ("email", "name", "language", "status", "source", "created_at", "confirmed_at", "unsubscribed_at")




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
def _person(store: Store, conn: sa.Connection, address: Address) -> sa.Row:
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
ERASED = "[erased]"
# Anything shaped like an address (SMTP replies quote them, outbox paths and errors hold them).
_ADDRESS_LIKE = re.compile(r"""[^\s<>"'(),;:/\[\]\\]+@[^\s<>"'(),;:/\[\]\\]+""")
# What an erased person's provider events keep: what happened and when, nothing about who or where
# (no address, IP, user agent, clicked URL, SMTP reply, message id).
PROVIDER_EVENT_KEPT_FIELDS = ("event", "timestamp", "type", "sg_event_id", "mailer_issue", "mailer_subscriber",
                              "asm_group_id", "bounce_classification")


def redact_addresses(text: str) -> str:
    """`text` with every address-like word replaced by `[erased]`."""
    return _ADDRESS_LIKE.sub(ERASED, text) if "@" in text else text


def anonymised_payload(payload: dict) -> dict:
    """A provider event's raw payload reduced to PROVIDER_EVENT_KEPT_FIELDS (scalars only, addresses redacted)."""
    kept: dict = {"erased": True}
    for name in PROVIDER_EVENT_KEPT_FIELDS:
        value = payload.get(name)
        if isinstance(value, str):
            kept[name] = redact_addresses(value)
        elif isinstance(value, (int, float, bool)):
            kept[name] = value
    return kept


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
      every address-like word in reasons, errors and outbox paths replaced by `[erased]`;
    * webhook events (`provider_events`) naming them or their address: reduced to what happened and when;
    * outbox files written for them (issues, test sends, confirmation and welcome emails);
    * on SQLite, the freed pages and the write-ahead log (VACUUM, checkpoint), so the address is
      not left in the database file's free space.

    Idempotent: erasing an erased address checks everything again. Raises NotFound for an address
    never seen. What stays elsewhere (provider logs, backups, delivered mail) is listed in the README.
    """
    from .backends.outbox import person_files

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
        counts = store.erase_person(conn, row.id, email_keys=forms, tombstone=erased, redact=redact_addresses,
                                    anonymise=anonymised_payload, source=source,
                                    reason=redact_addresses(reason) or "erased on request")
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
    with store.engine.connect() as conn:
        row = _person(store, conn, address)
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


def iter_subscribers(store: Store, status: str | None = None, batch: int = 5000) -> Iterator[sa.Row]:
    """Every subscriber (tombstones excluded) in id order, fetched in keyset pages: flat memory."""
    last_id = 0
    while True:
        query = (sa.select(subscribers).where(subscribers.c.id > last_id, ~subscribers.c.email.startswith(TOMBSTONE_PREFIX))
                 .order_by(subscribers.c.id).limit(batch))
        if status:
            query = query.where(subscribers.c.status == status)
        with store.engine.connect() as conn:
            rows = conn.execute(query).all()
            members: dict[int, list[str]] = {}
            if rows:
                for sid, list_name in conn.execute(sa.select(list_members.c.subscriber_id, list_members.c.list_name)
                                                   .where(list_members.c.subscriber_id.between(rows[0].id, rows[-1].id))):
                    members.setdefault(sid, []).append(list_name)
        if not rows:
            return
        for row in rows:
            yield row, sorted(members.get(row.id, ()))
        last_id = rows[-1].id


def export_csv(store: Store, out: IO[str], status: str | None = None) -> int:
    """Write the list as CSV (UTF-8, comma, header); attributes become their own columns."""
    rows = iter_subscribers(store, status)
    attribute_names = _attribute_names(store, status)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*EXPORT_COLUMNS, "lists", *attribute_names])
    count = 0
    for row, lists in rows:
        attributes = row.attributes or {}
        writer.writerow([
            row.email_given, row.name, row.language, row.status, row.source,
            *(_iso(getattr(row, c)) for c in ("created_at", "confirmed_at", "unsubscribed_at")),
            " ".join(lists),
            *(_attr_out(attributes.get(a)) for a in attribute_names),
        ])
        count += 1
    return count


def _attribute_names(store: Store, status: str | None) -> list[str]:
    """Every attribute name in use, sorted: one query where the database can list JSON keys (the
    export then reads the table once, not twice), else a scan."""
    dialect = store.engine.dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            keys = sa.func.json_each(subscribers.c.attributes).table_valued("key")
            query = (sa.select(keys.c.key).select_from(subscribers).join(keys, sa.true())
                     .where(sa.func.json_type(subscribers.c.attributes) == "object"))
        else:
            query = (sa.select(sa.func.json_object_keys(subscribers.c.attributes))
                     .where(sa.func.json_typeof(subscribers.c.attributes) == "object"))
        query = query.where(~subscribers.c.email.startswith(TOMBSTONE_PREFIX)).distinct()
        if status:
            query = query.where(subscribers.c.status == status)
        with store.engine.connect() as conn:
            return sorted(conn.execute(query).scalars())
    names: set[str] = set()
    for row, _ in iter_subscribers(store, status):
        names.update((row.attributes or {}).keys())
    return sorted(names)


# ----- CSV import -----------------------------------------------------------------------------------
# The import is a two-stage pipeline: parsing (CSV, address validation, normalisation, digest,
# duplicate detection) then writing (one transaction per batch). Files of PARALLEL_MIN_BYTES or more
# are parsed in a helper process so both stages run at once on two cores; smaller ones in
# process. Both ways run the same code (`_parsed_chunks`, `_write_batch`) and give the same result.
IMPORT_BATCH = 5000                # rows written per transaction (and parsed per message)
PARALLEL_MIN_BYTES = 4 * 1024 * 1024  # ≈ 60,000 rows; below this a helper process costs more than it saves


@dataclass
class Rejection:
    line: int
    value: str
    reason: str


MAX_KEPT_REJECTIONS = 10_000


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    suppressed_kept: int = 0  # present again but unsubscribed/bounced/complained: left as they are
    resubscribed: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    dry_run: bool = False

    @property
    def rows(self) -> int:
        return self.added + self.updated + self.unchanged + self.rejected

    def reject(self, item: Rejection) -> None:
        """Count every rejection; keep the first MAX_KEPT_REJECTIONS (memory stays flat on a bad file)."""
        self.rejected += 1
        if len(self.rejections) < MAX_KEPT_REJECTIONS:
            self.rejections.append(item)

    def summary(self) -> str:
        verb = "would add" if self.dry_run else "added"
        text = (f"{verb} {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
                f"rejected {self.rejected}")
        if self.suppressed_kept:
            text += f" ({self.suppressed_kept} left unsubscribed/bounced/complained)"
        if self.resubscribed:
            text += f", resubscribed {self.resubscribed}"
        return text + (" (dry run: nothing written)" if self.dry_run else "")


# A valid row travels as a plain tuple — the cheapest thing to build, to pickle from the helper
# process and back, and to hold by the thousand — indexed by these; `_ImportRow` names the fields.
_LINE, _KEY, _GIVEN, _NAME, _LANGUAGE, _ATTRIBUTES, _LISTS, _DIGEST, _STATUS, _CREATED_AT = range(10)


class _ImportRow(tuple):
    """A named view of a row tuple:
    (line, key, given, name, language, attributes_json, lists, digest, status, created_at)."""

    __slots__ = ()
    line: int = property(itemgetter(0))                   # type: ignore[assignment]
    key: str = property(itemgetter(1))                    # type: ignore[assignment]  # normalised, unique
    given: str = property(itemgetter(2))                  # type: ignore[assignment]  # as given, domain normalised
    name: str = property(itemgetter(3))                   # type: ignore[assignment]
    language: str = property(itemgetter(4))               # type: ignore[assignment]
    attributes_json: str = property(itemgetter(5))        # type: ignore[assignment]  # as the store writes it
    lists: tuple[str, ...] = property(itemgetter(6))      # type: ignore[assignment]
    digest: str = property(itemgetter(7))                 # type: ignore[assignment]
    status: str | None = property(itemgetter(8))          # type: ignore[assignment]  # from a `status` column
    created_at: datetime | None = property(itemgetter(9))  # type: ignore[assignment]

    @property
    def address(self) -> Address:
        return Address(key=self.key, given=self.given)

    @property
    def attributes(self) -> dict:
        return json.loads(self.attributes_json)


class CsvLayout:
    """Which column holds what, decided from the header (or its absence)."""

    def __init__(self, header: Sequence[str] | None) -> None:
        self.has_header = header is not None
        if header is None:
            self.email, self.name, self.language, self.lists = 0, 1, 2, None
            self.status = self.created_at = None
            self.attributes: list[tuple[int, str]] = []
            return
        lowered = [h.strip().lower() for h in header]

        def find(candidates: Sequence[str]) -> int | None:
            for index, value in enumerate(lowered):
                if value in candidates:
                    return index
            return None

        email = find(EMAIL_HEADERS)
        if email is None:
            raise MailerError(f"no email column in the header ({', '.join(header)}); name it 'email'")
        self.email, self.name, self.language, self.lists = email, find(NAME_HEADERS), find(LANGUAGE_HEADERS), find(LISTS_HEADERS)
        self.status, self.created_at = find(("status", "statut")), find(("created_at",))
        taken = {self.email, self.name, self.language, self.lists, self.status, self.created_at}
        self.attributes = [(i, header[i].strip()) for i in range(len(header))
                           if i not in taken and header[i].strip() and lowered[i] not in EXPORT_COLUMNS]


def _looks_like_header(row: Sequence[str]) -> bool:
    return any(cell.strip().lower() in EMAIL_HEADERS for cell in row) or not any("@" in cell for cell in row)


def _sniff_delimiter(sample: str) -> str:
    first_line = next((line for line in sample.splitlines() if line.strip()), "")
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def open_csv(path: Path) -> tuple[Iterator[tuple[int, list[str]]], str]:
    """Rows of a CSV file as (line number, cells), any of `,` `;` tab, UTF-8 with or without BOM.

    Line numbers are the physical line where the row starts (quoted fields may span lines).
    """
    raw = path.open("rb")
    head = raw.read(65536)
    raw.seek(0)
    try:
        codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        line = head[:exc.start].count(b"\n") + 1
        raw.close()
        raise MailerError(f"{path}:{line}: not valid UTF-8; save the file as UTF-8") from None
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    delimiter = _sniff_delimiter(head.decode("utf-8-sig", errors="replace"))
    reader = csv.reader(text, delimiter=delimiter, quotechar='"', skipinitialspace=False, strict=False)

    def rows() -> Iterator[tuple[int, list[str]]]:
        start = 1
        try:
            for cells in reader:
                yield start, cells
                start = reader.line_num + 1
        except UnicodeDecodeError as exc:
            # The text layer decodes ahead of the CSV reader: find the line in the bytes themselves.
            raise MailerError(f"{path}:{_first_invalid_utf8_line(path)}: not valid UTF-8 ({exc.reason})") from None
        except csv.Error as exc:
            raise MailerError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
        finally:
            text.close()

    return rows(), delimiter


def _first_invalid_utf8_line(path: Path) -> int:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    line = 1
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 16), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                return line + block[:max(0, exc.start)].count(b"\n")
            line += block.count(b"\n")
    return line


class _SeenKeys:
    """The addresses already met in this file, for duplicate detection.

    79-bit blake2b fingerprints (a false "duplicate" among 10 million addresses has odds of about
    one in 10^10) in an open-addressing table of two arrays, at most 70 % full: 10 bytes a slot,
    20 MB for a million rows where a set of 96-bit Python ints took about 80 MB.
    """

    def __init__(self, expected_rows: int = 0) -> None:
        self._low = self._high = None
        self._resize(max(1 << 12, 1 << (expected_rows * 10 // 7).bit_length()))

    def _resize(self, size: int) -> None:
        old_low, old_high = self._low, self._high
        self._mask = size - 1
        self._low = array("Q", [0]) * size  # no temporary buffer: a resize holds only the old and new arrays
        self._high = array("H", [0]) * size
        self._count = 0
        if old_low is not None:
            for low, high in zip(old_low, old_high):
                if high:
                    self.add(low, high)

    def add(self, low: int, high: int) -> bool:
        """Record a fingerprint (`high` != 0); False when it was already there."""
        mask, lows, highs = self._mask, self._low, self._high
        index = low & mask
        while True:
            stored = highs[index]
            if not stored:
                lows[index] = low
                highs[index] = high
                self._count += 1
                if self._count * 10 > mask * 7:
                    self._resize((mask + 1) * 2)
                return True
            if stored == high and lows[index] == low:
                return False
            index = (index + 1) & mask

    def add_key(self, key: str) -> bool:
        """Record an address key; False when it was already there."""
        digest = hashlib.blake2b(key.encode(), digest_size=10).digest()
        return self.add(int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1)


def _parse_row(line: int, cells: list[str], layout: CsvLayout, extra_lists: Sequence[str],
               report: ImportReport) -> _ImportRow | None:
    """One row: the valid `_ImportRow`, or None (blank, or a rejection recorded in `report`)."""
    for item in _parse_rows([(line, cells)], layout, tuple(extra_lists), None):
        if isinstance(item, Rejection):
            report.reject(item)
            return None
        return _ImportRow(item)
    return None


def _parse_rows(rows: Iterable[tuple[int, list[str]]], layout: CsvLayout, extra_lists: tuple[str, ...],
                seen: _SeenKeys | None) -> Iterator[tuple | Rejection]:
    """Rows → valid row tuples (see `_ImportRow`) and `Rejection`s, in file order (blank rows vanish).

    With `seen`, a row whose address is already in it is a duplicate. The hot loop of the import:
    column lookups are hoisted, the common cases (no attributes, printable names) take no detour.
    """
    email_i, name_i, language_i, lists_i = layout.email, layout.name, layout.language, layout.lists
    status_i, created_i, attribute_columns = layout.status, layout.created_at, layout.attributes
    constant_lists = tuple(sorted(set(extra_lists)))
    statuses = frozenset(SUBSCRIBER_STATUSES)
    add_key = seen.add_key if seen is not None else None
    parts, blake2b = address_parts, hashlib.blake2b
    # JSON the way json.dumps writes it (the same C escaping functions), without its per-call setup:
    # `ascii_text` for what the store keeps (json.dumps defaults), `text_json` for the digest.
    ascii_text, text_json = json.encoder.encode_basestring_ascii, json.encoder.encode_basestring
    languages: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for line, cells in rows:
        count = len(cells)
        raw = cells[email_i] if email_i < count else ""
        text = raw.strip()
        if not text:
            if not any(c.strip() for c in cells):
                continue  # blank line: not a row
            yield Rejection(line, "", "empty email")
            continue
        try:
            key, given = parts(raw)
        except InvalidAddress as exc:
            message = str(exc)
            reason = message.partition(": ")[2] or message
            if len(reasons) < 1000:
                reason = reasons.setdefault(reason, reason)  # a few distinct reasons: shared, pickled once a chunk
            yield Rejection(line, text, reason)
            continue
        name = cells[name_i].strip() if name_i is not None and name_i < count else ""
        if name:
            name = " ".join(name.split())[:200] if name.isprintable() else clean_text(name, 200)
        language = cells[language_i].strip().lower()[:16] if language_i is not None and language_i < count else ""
        language = languages.setdefault(language, language)  # a handful of distinct values: share them
        attributes = {}
        for index, attribute in attribute_columns:
            if index < count:
                value = cells[index].strip()
                if value:
                    attributes[attribute] = value
        if lists_i is None:
            row_lists = constant_lists
        else:
            named = cells[lists_i].strip() if lists_i < count else ""
            row_lists = tuple(sorted({*named.replace(",", " ").split(), *extra_lists})) if named else constant_lists
        status = None
        created_at = None
        if status_i is not None:
            status = (cells[status_i].strip() if status_i < count else "").lower() or None
            if status is not None and status not in statuses:
                yield Rejection(line, text, f"unknown status {status!r} (one of {', '.join(SUBSCRIBER_STATUSES)})")
                continue
        if created_i is not None:
            created_at = _parse_timestamp(cells[created_i].strip() if created_i < count else "")
        if attributes:
            attributes_json = "{" + ", ".join([ascii_text(k) + ": " + ascii_text(v) for k, v in attributes.items()]) + "}"
            sorted_json = ("{" + ", ".join([text_json(k) + ": " + text_json(attributes[k]) for k in sorted(attributes)])
                           + "}")
        else:
            attributes_json = sorted_json = "{}"
        # == json.dumps([given, name, language, attributes, row_lists, status], ensure_ascii=False, sort_keys=True)
        digest = blake2b((f"[{text_json(given)}, {text_json(name)}, {text_json(language)}, {sorted_json}, "
                          f"[{', '.join(map(text_json, row_lists))}], "
                          f"{'null' if status is None else text_json(status)}]").encode(), digest_size=16).hexdigest()
        if add_key is not None and not add_key(key):
            yield Rejection(line, given, "duplicate of an earlier row in this file")
            continue
        if given == key:
            given = key  # one string object for both: less memory, smaller pickles
        yield (line, key, given, name, language, attributes_json, row_lists, digest, status, created_at)


def _parsed_chunks(path: Path, extra_lists: tuple[str, ...], batch: int | None = None
                   ) -> Iterator[list[tuple | Rejection]]:
    """The whole file, parsed and de-duplicated, as lists holding up to `batch` (IMPORT_BATCH)
    valid rows, rejections interleaved in file order."""
    batch = batch or IMPORT_BATCH
    rows, _ = open_csv(path)
    layout: CsvLayout | None = None
    for line, cells in rows:  # the layout comes from the first non-blank row
        if not any(c.strip() for c in cells):
            continue
        if _looks_like_header(cells):
            layout = CsvLayout(cells)
        else:
            layout = CsvLayout(None)
            rows = itertools.chain([(line, cells)], rows)
        break
    if layout is None:
        return
    chunk: list[tuple | Rejection] = []
    valid = 0
    seen = _SeenKeys(_estimated_rows(path))
    for item in _parse_rows(rows, layout, extra_lists, seen):
        chunk.append(item)
        if type(item) is tuple:
            valid += 1
            if valid >= batch:
                yield chunk
                chunk, valid = [], 0
    if chunk:
        yield chunk


def _estimated_rows(path: Path) -> int:
    """Rows in the file, from the size of its first lines (sizes the duplicate table once)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(65536)
    return int(size / (len(head) / max(1, head.count(b"\n")))) if head else 0


_HELPER_CODE = "import sys; sys.path.insert(0, sys.argv[1]); from mailer.subscribers import _parser_main; _parser_main()"


def _parser_main() -> None:
    """The helper process (a fresh interpreter): parse the file named in argv, send each chunk
    pickled down the pipe whose fd is in argv, then ("end", the error or None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the importing process's to handle
    sender = Connection(int(sys.argv[2]), readable=False)
    error: BaseException | None = None
    try:
        for chunk in _parsed_chunks(Path(sys.argv[3]), tuple(json.loads(sys.argv[4])), int(sys.argv[5])):
            data = pickle.dumps(chunk, pickle.HIGHEST_PROTOCOL)
            del chunk  # not alive while the next one is parsed
            sender.send_bytes(data)
            del data
    except BrokenPipeError:
        return  # the importer stopped listening (it failed or was interrupted): nothing left to tell
    except BaseException as exc:  # noqa: BLE001 - every failure is the importer's to report
        error = exc
    try:
        message = pickle.dumps(("end", error), pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an unpicklable exception still gets its message across
        message = pickle.dumps(("end", MailerError(f"{type(error).__name__}: {error}")), pickle.HIGHEST_PROTOCOL)
    try:
        sender.send_bytes(message)
    except BrokenPipeError:
        pass


@contextmanager
def _parsed_source(path: Path, extra_lists: tuple[str, ...]) -> Iterator[Iterator[list[tuple | Rejection]]]:
    """`_parsed_chunks` of the file: from a helper process for a big file (so parsing and writing
    run at once, on two cores), else in process.

    The helper is a fresh interpreter rather than a fork: it holds none of this process's memory,
    connections or threads (a fork would count this process's ~50 MB twice and inherit locks).
    """
    if (path.stat().st_size < PARALLEL_MIN_BYTES or os.name != "posix" or not sys.executable
            or getattr(sys, "frozen", False)):
        yield _parsed_chunks(path, extra_lists)
        return
    read_fd, write_fd = os.pipe()
    try:
        process: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, "-c", _HELPER_CODE, str(Path(__file__).resolve().parent.parent), str(write_fd),
             str(path), json.dumps(list(extra_lists)), str(IMPORT_BATCH)],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    except OSError:
        process = None
    finally:
        os.close(write_fd)
    if process is None:
        os.close(read_fd)
        yield _parsed_chunks(path, extra_lists)
        return
    receiver = Connection(read_fd, writable=False)

    def chunks() -> Iterator[list[tuple | Rejection]]:
        received = False
        while True:
            try:
                data = receiver.recv_bytes()
            except EOFError:
                if received:
                    raise MailerError(f"{path}: the CSV parser process stopped unexpectedly "
                                      f"(exit code {process.wait()})") from None
                # It could not even start (an interpreter that cannot import mailer?): nothing was
                # written yet, so parse here instead.
                yield from _parsed_chunks(path, extra_lists)
                return
            received = True
            message = pickle.loads(data)  # from our own helper process
            if type(message) is tuple:
                if message[1] is not None:
                    raise message[1]
                return
            yield message

    try:
        yield chunks()
    finally:
        receiver.close()  # a helper still sending gets a broken pipe and stops
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def import_csv(store: Store, path: Path, *, dry_run: bool = False, resubscribe: bool = False,
               source: str = "import", lists: Sequence[str] = (),
               progress: Callable[[int], None] | None = None) -> ImportReport:
    """Upsert the rows of a CSV file, streaming in batches (memory flat in file size).

    Valid rows go in even when others are rejected; each rejection names its line and reason.
    Rows whose normalised content is unchanged since the last import are skipped without a write.
    """
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    report = ImportReport(dry_run=dry_run)
    with _parsed_source(path, tuple(lists)) as chunks, _import_connection(store) as conn:
        for chunk in chunks:
            batch = []
            for item in chunk:
                if type(item) is tuple:
                    batch.append(item)
                else:
                    item.reason = sys.intern(item.reason)  # thousands of rejections share a few reasons
                    report.reject(item)
            del chunk
            if batch:
                _write_batch(store, conn, batch, report, dry_run=dry_run, resubscribe=resubscribe, source=source)
            if progress:
                progress(report.rows)
    if progress:
        progress(report.rows)
    return report


class _Existing(NamedTuple):
    id: int
    status: str
    import_digest: str | None


# For the import's connection on SQLite: a bigger page cache (the email index is written at random)
# and fewer, larger checkpoints. Restored when the import ends (the connection goes back to the pool).
_SQLITE_IMPORT_PRAGMAS = (("cache_size", -8192), ("wal_autocheckpoint", 10000))


@contextmanager
def _import_connection(store: Store) -> Iterator[sa.Connection]:
    """One connection for the whole import; each batch is its own transaction on it."""
    with store.engine.connect() as conn:
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


def _write_batch(store: Store, conn: sa.Connection, batch: list[tuple], report: ImportReport, *, dry_run: bool,
                 resubscribe: bool, source: str) -> None:
    """One transaction: look the batch's addresses up, then insert, update and change statuses."""
    now = utcnow()
    with conn.begin() as transaction:
        fast = _bulk_path(conn, source)
        keys = [row[_KEY] for row in batch]
        existing = _existing_by_email(conn, keys, fast)
        missing = [key for key in keys if key not in existing]
        erased = _erased(conn, missing, fast) if missing else set()
        inserts: list[tuple] = []
        updates: list[tuple[_ImportRow, int]] = []
        status_changes: list[tuple[int, str]] = []
        for row in batch:
            current = existing.get(row[_KEY])
            if current is None:
                if row[_KEY] in erased:
                    report.suppressed_kept += 1
                    report.unchanged += 1
                else:
                    inserts.append(row)
                continue
            row = _ImportRow(row)
            if row.status in SUPPRESSED_STATUSES and current.status not in SUPPRESSED_STATUSES:
                status_changes.append((current.id, row.status))  # an imported suppression always applies
            reactivate = (resubscribe and current.status == "unsubscribed"
                          and row.status in (None, "active"))
            if current.status in SUPPRESSED_STATUSES and not reactivate:
                report.suppressed_kept += 1
            if reactivate:
                status_changes.append((current.id, "active"))
                report.resubscribed += 1
            if current.import_digest == row.digest and not reactivate:
                report.unchanged += 1
                continue
            report.updated += 1
            updates.append((row, current.id))
        report.added += len(inserts)
        if dry_run:
            transaction.rollback()
            return
        if inserts:
            {"sqlite": _insert_sqlite, "postgresql": _insert_postgresql}.get(fast, _insert_core)(conn, inserts, source, now)
        if updates:
            _update(conn, updates, source, now)
        for subscriber_id, new_status in status_changes:
            reason = "--resubscribe on import" if new_status == "active" else "status column of the import"
            store.set_status(conn, subscriber_id, new_status, source=source, reason=reason)


def _bulk_path(conn: sa.Connection, source: str) -> str | None:
    """"sqlite" or "postgresql" where raw driver statements replace SQLAlchemy Core for the bulk of
    the work (its per-row, per-value processing was most of the import's cost), else None.

    They write exactly what the Core statements would — `_insert_core` stays the reference, and the
    test suite runs both engines: timestamps through the same bind processors (SQLite) or the same
    datetime objects (PostgreSQL), JSON as json.dumps writes it, which is what Core does with the
    default serializer (so only with that one).
    """
    dialect = conn.dialect
    if getattr(dialect, "_json_serializer", None) is not None:
        return None
    if dialect.name == "sqlite" and "\0" not in source:
        return "sqlite"
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        return "postgresql"
    return None


def _existing_by_email(conn: sa.Connection, keys: list[str], fast: str | None) -> dict[str, _Existing]:
    if fast == "sqlite":
        found = _sqlite_in(conn, "email, id, status, import_digest", keys)
    elif fast == "postgresql":  # one array parameter, not thousands of placeholders for the driver to parse
        found = conn.connection.driver_connection.execute(
            f"SELECT email, id, status, import_digest FROM {subscribers.name} WHERE email = ANY(%s)", (keys,))
    else:
        found = conn.execute(sa.select(subscribers.c.email, subscribers.c.id, subscribers.c.status,
                                       subscribers.c.import_digest).where(subscribers.c.email.in_(keys)))
    return {email: _Existing(sid, status, digest) for email, sid, status, digest in found}


def _erased(conn: sa.Connection, keys: list[str], fast: str | None) -> set[str]:
    """The keys among `keys` of people who were erased (their tombstone is in the table)."""
    if fast == "sqlite" and conn.connection.driver_connection.execute(
            f"SELECT 1 FROM {subscribers.name} WHERE email >= 'erased:' AND email < 'erased;' LIMIT 1").fetchone() is None:
        return set()  # nobody was ever erased: one index probe instead of a hash and a lookup per row
    tombstones = {tombstone_key(key): key for key in keys}
    if fast == "sqlite":
        found = _sqlite_in(conn, "email", list(tombstones))
    elif fast == "postgresql":
        found = conn.connection.driver_connection.execute(
            f"SELECT email FROM {subscribers.name} WHERE email = ANY(%s)", (list(tombstones),))
    else:
        found = conn.execute(sa.select(subscribers.c.email).where(subscribers.c.email.in_(list(tombstones))))
    return {tombstones[email] for email, in found}


# SQLite before 3.32 allows 999 parameters a statement, later versions 32,766.
_SQLITE_MAX_PARAMS = 30_000 if sqlite3.sqlite_version_info >= (3, 32) else 999


def _sqlite_in(conn: sa.Connection, columns: str, emails: list[str]) -> list[tuple]:
    """`SELECT columns FROM subscribers WHERE email IN (emails)` on the raw connection."""
    dbapi = conn.connection.driver_connection
    found: list[tuple] = []
    for start in range(0, len(emails), _SQLITE_MAX_PARAMS):
        part = emails[start:start + _SQLITE_MAX_PARAMS]
        found.extend(dbapi.execute(f"SELECT {columns} FROM {subscribers.name} WHERE email IN ({_marks(len(part))})", part))
    return found


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _insert_values(row: _ImportRow, source: str, now: datetime) -> dict:
    status = row.status or "active"
    return {
        "email": row.key, "email_given": row.given, "name": row.name, "language": row.language, "status": status,
        "source": source, "attributes": row.attributes, "import_digest": row.digest,
        "created_at": row.created_at or now, "updated_at": now,
        "confirmed_at": now if status == "active" else None,
        "unsubscribed_at": now if status in SUPPRESSED_STATUSES else None,
    }


def _insert_core(conn: sa.Connection, inserts: list[tuple], source: str, now: datetime) -> None:
    inserts = [_ImportRow(row) for row in inserts]
    ids = conn.execute(subscribers.insert().returning(subscribers.c.id, sort_by_parameter_order=True),
                       [_insert_values(r, source, now) for r in inserts]).scalars().all()
    conn.execute(subscriber_events.insert(), [{
        "subscriber_id": sid, "at": now, "kind": "created", "old_status": None, "new_status": r.status or "active",
        "source": source, "reason": f"import line {r.line}",
    } for sid, r in zip(ids, inserts)])
    memberships = [{"list_name": name, "subscriber_id": sid} for sid, r in zip(ids, inserts) for name in r.lists]
    if memberships:
        conn.execute(list_members.insert(), memberships)


def _insert_sqlite(conn: sa.Connection, inserts: list[tuple], source: str, now: datetime) -> None:
    """`_insert_core` in two or three `executemany` calls sharing one small tuple a row.

    Ids are assigned here (max + 1 …): the batch runs in a BEGIN IMMEDIATE transaction, so no other
    writer can take them meanwhile. What is the same for every row (source, timestamps) is a literal
    in the statement, written exactly as SQLAlchemy's bind processors would have.
    """
    dialect = conn.dialect
    stamp = _bind_processor(subscribers.c.created_at, dialect)
    now_sql = _sql_literal(stamp(now))
    at_sql = _sql_literal(_bind_processor(subscriber_events.c.at, dialect)(now))
    source_sql = _sql_literal(source)
    suppressed_sql = ", ".join(_sql_literal(s) for s in SUPPRESSED_STATUSES)
    dbapi = conn.connection.driver_connection
    first = dbapi.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {subscribers.name}").fetchone()[0]
    # ?1 id, ?2 key, ?3 given, ?4 name, ?5 language, ?6 status, ?7 attributes, ?8 digest, ?9 created_at, ?10 line
    params = [(sid, row[_KEY], row[_GIVEN], row[_NAME], row[_LANGUAGE], row[_STATUS] or "active", row[_ATTRIBUTES],
               row[_DIGEST], None if row[_CREATED_AT] is None else stamp(row[_CREATED_AT]), row[_LINE])
              for sid, row in enumerate(inserts, first)]
    dbapi.executemany(
        f"INSERT INTO {subscribers.name} (id, email, email_given, name, language, status, source, attributes, "
        f"import_digest, created_at, updated_at, confirmed_at, unsubscribed_at) "
        f"VALUES (?1, ?2, ?3, ?4, ?5, ?6, {source_sql}, ?7, ?8, coalesce(?9, {now_sql}, ?10), {now_sql}, "
        f"CASE WHEN ?6 = 'active' THEN {now_sql} END, CASE WHEN ?6 IN ({suppressed_sql}) THEN {now_sql} END)", params)
    dbapi.executemany(
        f"INSERT INTO {subscriber_events.name} (subscriber_id, at, kind, old_status, new_status, source, reason) "
        f"VALUES (?1, {at_sql}, 'created', NULL, ?6, {source_sql}, 'import line ' || ?10)", params)
    memberships = [(name, sid) for sid, row in enumerate(inserts, first) if row[_LISTS] for name in row[_LISTS]]
    if memberships:
        dbapi.executemany(f"INSERT INTO {list_members.name} (list_name, subscriber_id) VALUES (?, ?)", memberships)


def _insert_postgresql(conn: sa.Connection, inserts: list[tuple], source: str, now: datetime) -> None:
    """`_insert_core` with COPY: ids drawn from the table's own sequence, rows streamed."""
    cursor = conn.connection.driver_connection.cursor()
    cursor.execute(f"SELECT nextval(pg_get_serial_sequence('{subscribers.name}', 'id')) "
                   f"FROM generate_series(1, %s)", (len(inserts),))
    ids = sorted(sid for sid, in cursor.fetchall())
    statuses = [row[_STATUS] or "active" for row in inserts]
    suppressed = SUPPRESSED_STATUSES
    with cursor.copy(f"COPY {subscribers.name} (id, email, email_given, name, language, status, source, attributes, "
                     f"import_digest, created_at, updated_at, confirmed_at, unsubscribed_at) FROM STDIN") as copy:
        for sid, row, status in zip(ids, inserts, statuses):
            copy.write_row((sid, row[_KEY], row[_GIVEN], row[_NAME], row[_LANGUAGE], status, source, row[_ATTRIBUTES],
                            row[_DIGEST], row[_CREATED_AT] or now, now, now if status == "active" else None,
                            now if status in suppressed else None))
    with cursor.copy(f"COPY {subscriber_events.name} (subscriber_id, at, kind, old_status, new_status, source, reason) "
                     f"FROM STDIN") as copy:
        for sid, row, status in zip(ids, inserts, statuses):
            copy.write_row((sid, now, "created", None, status, source, f"import line {row[_LINE]}"))
    memberships = [(name, sid) for sid, row in zip(ids, inserts) if row[_LISTS] for name in row[_LISTS]]
    if memberships:
        with cursor.copy(f"COPY {list_members.name} (list_name, subscriber_id) FROM STDIN") as copy:
            for membership in memberships:
                copy.write_row(membership)
    cursor.close()


def _sql_literal(value: str) -> str:
    if "\0" in value:
        raise ValueError("NUL in an SQL literal")
    return "'" + value.replace("'", "''") + "'"


def _bind_processor(column: sa.Column, dialect: sa.Dialect) -> Callable[[object], object]:
    processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


def _update(conn: sa.Connection, updates: list[tuple[_ImportRow, int]], source: str, now: datetime) -> None:
    """Changed rows (rare next to inserts and unchanged ones): SQLAlchemy Core on every engine."""
    ids = [sid for _, sid in updates]
    current = dict(conn.execute(sa.select(subscribers.c.id, subscribers.c.attributes).where(subscribers.c.id.in_(ids))).all())
    conn.execute(subscribers.update().where(subscribers.c.id == sa.bindparam("b_id")).values(
        email_given=sa.bindparam("b_given"), name=sa.bindparam("b_name"), language=sa.bindparam("b_language"),
        attributes=sa.bindparam("b_attributes"), import_digest=sa.bindparam("b_digest"), updated_at=now), [{
            "b_id": sid, "b_given": row.given, "b_name": row.name, "b_language": row.language,
            "b_attributes": {**(current.get(sid) or {}), **row.attributes}, "b_digest": row.digest,
        } for row, sid in updates])
    for row, sid in updates:
        if row.lists:
            _add_to_lists(conn, sid, row.lists)
    conn.execute(subscriber_events.insert(), [{
        "subscriber_id": sid, "at": now, "kind": "updated", "source": source, "reason": "import",
    } for _, sid in updates])


def _add_to_lists(conn: sa.Connection, subscriber_id: int, lists: Iterable[str], dry_run: bool = False) -> None:
    lists = list(lists)
    if not lists or dry_run:
        return
    have = set(conn.execute(sa.select(list_members.c.list_name).where(list_members.c.subscriber_id == subscriber_id)).scalars())
    new = [{"list_name": n, "subscriber_id": subscriber_id} for n in lists if n not in have]
    if new:
        conn.execute(list_members.insert(), new)


def clean_text(value: str, limit: int = 200) -> str:
    """One line, no control characters (names end up in headers and pages)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in value or "").split())[:limit]


def _parse_timestamp(text: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _iso(value: object) -> str:
    value = as_utc(value)  # type: ignore[arg-type]
    return value.isoformat(timespec="seconds") if value else ""


def _day(value: object) -> str:
    value = as_utc(value)  # type: ignore[arg-type]
    return value.date().isoformat() if value else "?"


def _attr_out(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
