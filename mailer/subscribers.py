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
import json
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa

from .addresses import Address, parse_address
from .errors import InvalidAddress, MailerError, NotFound
from .schema import SUBSCRIBER_STATUSES, SUPPRESSED_STATUSES, deliveries, issues, list_members, subscriber_events, subscribers
from .store import Store, as_utc, utcnow

EMAIL_HEADERS = ("email", "e-mail", "mail", "courriel", "adresse", "address", "email address", "adresse email",
                 "adresse e-mail")
NAME_HEADERS = ("name", "nom", "full name", "nom complet", "fullname")
LANGUAGE_HEADERS = ("language", "langue", "lang", "locale")
LISTS_HEADERS = ("lists", "listes", "list")
IMPORT_BATCH = 2000
EXPORT_COLUMNS = ("email", "name", "language", "status", "source", "created_at", "confirmed_at", "unsubscribed_at")


def tombstone_key(key: str) -> str:
    """The anonymous stand-in for an erased address (stored in place of the email)."""
    return "erased:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


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
    name = _clean_text(name, 200)
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


def iter_subscribers(store: Store, status: str | None = None, batch: int = 5000) -> Iterator[sa.Row]:
    """Every subscriber (tombstones excluded) in id order, fetched in keyset pages: flat memory."""
    last_id = 0
    while True:
        query = (sa.select(subscribers).where(subscribers.c.id > last_id, ~subscribers.c.email.startswith("erased:"))
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
    names: set[str] = set()
    for row, _ in iter_subscribers(store, status):
        names.update((row.attributes or {}).keys())
    return sorted(names)


# ----- CSV import -----------------------------------------------------------------------------------
@dataclass
class Rejection:
    line: int
    value: str
    reason: str


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

    def summary(self) -> str:
        verb = "would add" if self.dry_run else "added"
        text = (f"{verb} {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
                f"rejected {self.rejected}")
        if self.suppressed_kept:
            text += f" ({self.suppressed_kept} left unsubscribed/bounced/complained)"
        if self.resubscribed:
            text += f", resubscribed {self.resubscribed}"
        return text + (" (dry run: nothing written)" if self.dry_run else "")


@dataclass(frozen=True)
class _ImportRow:
    line: int
    address: Address
    name: str
    language: str
    attributes: dict
    lists: tuple[str, ...]
    digest: str
    status: str | None = None        # from a `status` column: suppressions are honoured, never the reverse
    created_at: datetime | None = None


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
            raise MailerError(f"{path}:{reader.line_num + 1}: not valid UTF-8 ({exc.reason})") from None
        except csv.Error as exc:
            raise MailerError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
        finally:
            text.close()

    return rows(), delimiter


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
    rows, _ = open_csv(path)
    layout: CsvLayout | None = None
    seen: set[int] = set()  # 96-bit digests of keys already in this file (duplicate detection, ~70 B a row)
    batch: list[_ImportRow] = []
    for line, cells in rows:
        if layout is None:
            if not any(c.strip() for c in cells):
                continue
            if _looks_like_header(cells):
                layout = CsvLayout(cells)
                continue
            layout = CsvLayout(None)
        parsed = _parse_row(line, cells, layout, lists, report)
        if parsed is None:
            continue
        fingerprint = int.from_bytes(hashlib.blake2b(parsed.address.key.encode(), digest_size=12).digest(), "big")
        if fingerprint in seen:
            report.rejected += 1
            report.rejections.append(Rejection(line, parsed.address.given, "duplicate of an earlier row in this file"))
            continue
        seen.add(fingerprint)
        batch.append(parsed)
        if len(batch) >= IMPORT_BATCH:
            _write_batch(store, batch, report, dry_run=dry_run, resubscribe=resubscribe, source=source)
            if progress:
                progress(report.rows)
            batch = []
    if batch:
        _write_batch(store, batch, report, dry_run=dry_run, resubscribe=resubscribe, source=source)
    if progress:
        progress(report.rows)
    return report


def _parse_row(line: int, cells: list[str], layout: CsvLayout, extra_lists: Sequence[str],
               report: ImportReport) -> _ImportRow | None:
    if not any(c.strip() for c in cells):
        return None  # blank line: not a row
    raw = cells[layout.email] if layout.email < len(cells) else ""

    def reject(reason: str) -> None:
        report.rejected += 1
        report.rejections.append(Rejection(line, raw.strip(), reason))

    if not raw.strip():
        reject("empty email")
        return None
    try:
        address = parse_address(raw)
    except InvalidAddress as exc:
        reject(str(exc).partition(": ")[2] or str(exc))
        return None

    def cell(index: int | None) -> str:
        return cells[index].strip() if index is not None and index < len(cells) else ""

    name = _clean_text(cell(layout.name), 200)
    language = cell(layout.language).lower()[:16]
    attributes = {key: cells[i].strip() for i, key in layout.attributes if i < len(cells) and cells[i].strip()}
    row_lists = tuple(sorted({*(cell(layout.lists).replace(",", " ").split()), *extra_lists}))
    status = cell(layout.status).lower() or None
    if status is not None and status not in SUBSCRIBER_STATUSES:
        reject(f"unknown status {status!r} (one of {', '.join(SUBSCRIBER_STATUSES)})")
        return None
    created_at = _parse_timestamp(cell(layout.created_at))
    digest = hashlib.blake2b(json.dumps([address.given, name, language, attributes, row_lists, status], ensure_ascii=False,
                                        sort_keys=True).encode(), digest_size=16).hexdigest()
    return _ImportRow(line, address, name, language, attributes, row_lists, digest, status, created_at)


def _write_batch(store: Store, batch: list[_ImportRow], report: ImportReport, *, dry_run: bool, resubscribe: bool,
                 source: str) -> None:
    keys = [row.address.key for row in batch]
    tombstones = {tombstone_key(k): k for k in keys}
    now = utcnow()
    with store.begin() as conn:
        existing = {r.email: r for r in conn.execute(
            sa.select(subscribers.c.id, subscribers.c.email, subscribers.c.status, subscribers.c.import_digest,
                      subscribers.c.attributes)
            .where(subscribers.c.email.in_(keys + list(tombstones))))}
        erased = {tombstones[e] for e in existing if e in tombstones}
        inserts: list[_ImportRow] = []
        updates: list[dict] = []
        status_changes: list[tuple[int, str]] = []
        for row in batch:
            current = existing.get(row.address.key)
            if current is None:
                if row.address.key in erased:
                    report.suppressed_kept += 1
                    report.unchanged += 1
                else:
                    inserts.append(row)
                continue
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
            updates.append({"b_id": current.id, "b_given": row.address.given, "b_name": row.name,
                            "b_language": row.language, "b_attributes": {**(current.attributes or {}), **row.attributes},
                            "b_digest": row.digest})
            if row.lists:
                _add_to_lists(conn, current.id, row.lists, dry_run=dry_run)
        report.added += len(inserts)
        if dry_run:
            conn.rollback()
            return
        if inserts:
            ids = conn.execute(subscribers.insert().returning(subscribers.c.id, sort_by_parameter_order=True), [{
                "email": r.address.key, "email_given": r.address.given, "name": r.name, "language": r.language,
                "status": r.status or "active", "source": source, "attributes": r.attributes, "import_digest": r.digest,
                "created_at": r.created_at or now, "updated_at": now,
                "confirmed_at": now if (r.status or "active") == "active" else None,
                "unsubscribed_at": now if r.status in SUPPRESSED_STATUSES else None,
            } for r in inserts]).scalars().all()
            conn.execute(subscriber_events.insert(), [{
                "subscriber_id": sid, "at": now, "kind": "created", "old_status": None, "new_status": r.status or "active",
                "source": source, "reason": f"import line {r.line}",
            } for sid, r in zip(ids, inserts)])
            memberships = [{"list_name": name, "subscriber_id": sid} for sid, r in zip(ids, inserts) for name in r.lists]
            if memberships:
                conn.execute(list_members.insert(), memberships)
        if updates:
            conn.execute(subscribers.update().where(subscribers.c.id == sa.bindparam("b_id")).values(
                email_given=sa.bindparam("b_given"), name=sa.bindparam("b_name"), language=sa.bindparam("b_language"),
                attributes=sa.bindparam("b_attributes"), import_digest=sa.bindparam("b_digest"), updated_at=now),
                updates)
            conn.execute(subscriber_events.insert(), [{
                "subscriber_id": u["b_id"], "at": now, "kind": "updated", "source": source, "reason": "import",
            } for u in updates])
        for subscriber_id, new_status in status_changes:
            reason = "--resubscribe on import" if new_status == "active" else "status column of the import"
            store.set_status(conn, subscriber_id, new_status, source=source, reason=reason)


def _add_to_lists(conn: sa.Connection, subscriber_id: int, lists: Iterable[str], dry_run: bool = False) -> None:
    lists = list(lists)
    if not lists or dry_run:
        return
    have = set(conn.execute(sa.select(list_members.c.list_name).where(list_members.c.subscriber_id == subscriber_id)).scalars())
    new = [{"list_name": n, "subscriber_id": subscriber_id} for n in lists if n not in have]
    if new:
        conn.execute(list_members.insert(), new)


def _clean_text(value: str, limit: int) -> str:
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
