"""The CSV import: upsert the parsed rows in batches, one transaction each, and report what was done.

Rules it keeps (the README's "The subscriber list" states them):
* nothing is written before the whole file has been decoded (`encoding.plan_decoding`): a file
  that cannot be read imports nobody, wherever its bad byte is;
* each physical row is accounted for — added, updated, unchanged, rejected with its line and reason,
  or left as it was — and the summary says so even when the import stops half-way;
* an import never re-activates a suppressed person (unsubscribed, bounced, complained, erased) and
  never rewrites their name or attributes; only a stronger suppression from the file applies
  (`--resubscribe` may re-activate unsubscribed people, never the others); an empty cell wipes nothing;
* suppressions a file states (a status column, or a recognised export such as Mailchimp's
  unsubscribed or cleaned files) apply to new and existing people alike.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections import Counter
from operator import itemgetter
from pathlib import Path
from typing import Callable, Sequence


from ...errors import InvalidOption, MailerError, NotFound
from ...statuses import SUPPRESSED_STATUSES
from ...store import (IMPORT_ATTRIBUTES, IMPORT_DIGEST, IMPORT_GIVEN, IMPORT_KEY, IMPORT_LANGUAGE, IMPORT_LINE,
                      IMPORT_LISTS, IMPORT_NAME, IMPORT_STATUS, IMPORT_STATUS_AT, Connection, DatabaseError, StatusChange,
                      Store, utcnow)
from ..erasure import tombstone_key
from ..service import suppression_verdict
from .columns import merged_attributes, parse_map
from .encoding import plan_decoding
from . import parse
from .parse import ParseOptions, parsed_source
from .report import ImportReport, ImportStopped, LayoutInfo, ParseStats


def import_csv(store: Store, path: Path, *, dry_run: bool = False, resubscribe: bool = False,
               source: str = "import", lists: Sequence[str] = (), encoding: str | None = None,
               column_map: Sequence[str] = (), progress: Callable[[int], None] | None = None) -> ImportReport:
    """Upsert the rows of a CSV file (any of `,` `;` TAB `|`; see `encoding` for the encodings),
    streaming in batches (memory flat in file size). Returns the `ImportReport`.

    `encoding` forces a codec; `column_map` holds `--map COLUMN=FIELD` options; `lists` adds every
    row to these named lists. Valid rows go in even when others are rejected; each rejection names
    its line and reason. Rows unchanged since the last import are skipped without a write.

    Raises NotFound (no file), MailerError (unreadable file, no email column, bad `--map`: nothing
    written), ImportStopped (a failure or Ctrl-C after some batches were written: its message says
    what was, and running the same import again finishes the job).
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidOption(f"{path} is a folder, not a CSV file")
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    options = ParseOptions(plan_decoding(path, encoding), tuple(lists), parse_map(column_map))
    report = ImportReport(dry_run=dry_run, encoding=options.decoding.describe(),
                          warnings=list(options.decoding.warnings()))
    reason = "import"
    written_through = 0  # the last line of the last batch committed
    transaction = None  # open across chunks until it holds IMPORT_BATCH rows
    try:
        with parsed_source(path, options) as items, store.import_connection() as conn, _StopRequest() as stop:
            pending: list[tuple] = []  # valid rows parsed, not written yet: written WRITE_CHUNK rows at a time
            held: list = []            # the rejections among them, counted once the rows before them are committed
            uncommitted = ImportReport()  # what the open transaction wrote: joins `report` once committed
            in_transaction = last_line = 0
            insert_first = True

            def flush(commit: bool) -> None:
                nonlocal pending, held, written_through, transaction, uncommitted, in_transaction, last_line, insert_first
                if pending:
                    batch, pending = pending, []
                    if transaction is None:
                        transaction = conn.begin()
                    added = _write_batch(store, conn, batch, uncommitted, dry_run=dry_run, resubscribe=resubscribe,
                                         source=source, reason=reason, insert_first=insert_first)
                    # mostly new people (all new where the store cannot leave some out): the next
                    # batch tries inserting first
                    insert_first = added * 2 >= len(batch) if store.is_sqlite else added == len(batch)
                    in_transaction += len(batch)
                    last_line = batch[-1][IMPORT_LINE]
                    del batch
                if transaction is not None and not (commit or in_transaction >= parse.IMPORT_BATCH):
                    return  # its rejections wait for the rows before them
                if transaction is not None:
                    done, transaction = transaction, None
                    if dry_run:
                        done.rollback()
                    else:
                        done.commit()
                    report.add(uncommitted)
                    report.written_batches += not dry_run
                    written_through = last_line
                    uncommitted, in_transaction = ImportReport(), 0
                for rejection in held:
                    report.reject(rejection)
                held = []
                if progress:
                    progress(report.rows)

            write_at = min(parse.WRITE_CHUNK, parse.IMPORT_BATCH)
            try:
                for item in items:
                    if type(item) is tuple:  # (valid rows, the rejections among them)
                        pending.extend(item[0])
                        for rejection in item[1]:
                            rejection.reason = sys.intern(rejection.reason)  # thousands share a few reasons
                        held.extend(item[1])
                        del item
                        if len(pending) >= write_at or len(held) >= write_at or stop.requested:
                            flush(stop.requested)
                        if stop.requested:
                            raise KeyboardInterrupt
                    elif isinstance(item, LayoutInfo):
                        report.format_label, report.delimiter = item.format_label, item.delimiter
                        report.attributes, report.ignored = item.attributes, item.ignored
                        report.has_header = item.has_header
                        report.status_note = item.status_note
                        if item.format_label:  # events read "import of Mailchimp unsubscribed export line 4"
                            reason = "import of " + item.format_label.replace(" (", " ").replace(")", "")
                    elif isinstance(item, ParseStats):
                        report.warnings.extend(item.warnings())
                        report.empty_columns = item.empty_attributes
                        report.attributes = [name for name in report.attributes if name not in item.empty_attributes]
                flush(True)
            finally:
                if transaction is not None and transaction.is_active:
                    transaction.rollback()  # a failure or a second Ctrl-C mid-transaction: none of it stays
    except KeyboardInterrupt:
        raise _stopped(path, report, written_through, "interrupted", 130) from None
    except (MailerError, DatabaseError, OSError) as exc:
        if not report.written_batches:
            if not isinstance(exc, MailerError):
                raise MailerError(f"{path}: {_one_line(exc)}; nothing imported") from None
            if "nothing imported" not in str(exc):
                exc.args = (f"{exc}; nothing imported",)
            raise
        raise _stopped(path, report, written_through, _one_line(exc), getattr(exc, "exit_code", 1)) from None
    if not report.rows:
        report.warnings.append("the file has no data rows" + (" (only a header)" if report.has_header else ""))
    if progress:
        progress(report.rows)
    return report


class _StopRequest:
    """While it lasts (in the main thread), a first Ctrl-C (SIGINT) or SIGTERM asks the import to
    stop after the batch in flight is written, so the summary counts exactly what was committed;
    a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._saved: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return " ".join(text.split()) or type(exc).__name__


def _stopped(path: Path, report: ImportReport, line: int, cause: str, exit_code: int) -> ImportStopped:
    return ImportStopped(f"{path}: stopped ({cause}) after the rows up to line {line} were written; written before "
                         f"that: {report.counts_line()}. Run the same import again to finish: rows already written "
                         f"are skipped", exit_code)


def _write_batch(store: Store, conn: Connection, batch: list[tuple], total: ImportReport, *, dry_run: bool,
                 resubscribe: bool, source: str, reason: str, insert_first: bool = False) -> int:
    """Look the batch's addresses up, then insert, update and change statuses, in the caller's open
    transaction (`dry_run`: write nothing). Its counts are added to `total`, which the caller counts
    once the transaction is committed (so a stop mid-transaction reports what is written).

    `insert_first` (worth it when most rows are new people): insert the rows whose address is not in
    the table without looking them up first, where the store can (`Store.insert_new_imported`); the
    others then take the usual way. Returns how many new people were added."""
    now = utcnow()
    report = ImportReport()
    fast = store.import_fast_path(conn, source)
    if insert_first and not dry_run:
        erased = _erased(store, conn, [row[IMPORT_KEY] for row in batch], fast)
        candidates = [row for row in batch if row[IMPORT_KEY] not in erased] if erased else batch
        left = store.insert_new_imported(conn, candidates, source=source, reason=reason, now=now) if candidates else []
        if left is not None:
            if len(candidates) < len(batch):
                report.kept["erased"] += len(batch) - len(candidates)
            if left:
                kept = set(map(id, left))
                candidates = [row for row in candidates if id(row) not in kept]
            _count_added(report, candidates)
            batch = left
            if not batch:
                total.add(report)
                return report.added
    keys = [row[IMPORT_KEY] for row in batch]
    existing = store.existing_for_import(conn, keys, fast)
    missing = [key for key in keys if key not in existing] if existing else keys
    erased = _erased(store, conn, missing, fast) if missing else set()
    if not existing and not erased:  # all new people: no step per row
        _count_added(report, batch)
        if not dry_run:
            store.insert_imported(conn, batch, source=source, reason=reason, now=now, fast=fast)
        total.add(report)
        return report.added
    inserts: list[tuple] = []
    updates: list[tuple[tuple, int]] = []
    changes: list[StatusChange] = []
    for row in batch:
        current = existing.get(row[IMPORT_KEY])
        wanted = row[IMPORT_STATUS]
        if current is None:
            if row[IMPORT_KEY] in erased:
                report.kept["erased"] += 1
            else:
                inserts.append(row)
                report.added += 1
                if wanted not in (None, "active"):
                    report.added_as[wanted] += 1
            continue
        at_line = f"{reason} line {row[IMPORT_LINE]}"
        if (current.status in SUPPRESSED_STATUSES and resubscribe and current.status == "unsubscribed"
                and wanted in (None, "active")):
            changes.append(StatusChange(current.id, current.status, "active", source, f"--resubscribe on {at_line}"))
            report.resubscribed += 1
            report.updated += 1
            updates.append((row, current.id))
            continue
        if wanted in SUPPRESSED_STATUSES:  # the file suppresses them: their status changes, nothing else ...
            # ... by the one rule (subscribers.service), rank only: the file's date (UNSUB_TIME,
            # CLEAN_TIME, unsubscription_date) is from another system's history, and a confirmation
            # here (often the operator's add) does not show that the person came back after it —
            # keeping them active would mail someone who unsubscribed elsewhere. The date is kept as
            # the change's time.
            if suppression_verdict(current.status, None, None, wanted) is None:
                changes.append(StatusChange(current.id, current.status, wanted, source, at_line,
                                            row[IMPORT_STATUS_AT]))
                report.suppressed_now[wanted] += 1
                report.updated += 1
            else:
                report.kept[current.status] += 1  # name, attributes and status stay as they are
            continue
        if current.status in SUPPRESSED_STATUSES:
            report.kept[current.status] += 1
            continue
        # the file says subscribed (Mailchimp's subscribed export, status active…) and the person is
        # pending (a first import of a file that did not say, an unconfirmed sign-up): the import
        # activates them, as it adds new people as active. Never a suppressed person (above).
        activate = current.status == "pending" and wanted == "active"
        if activate:
            changes.append(StatusChange(current.id, current.status, "active", source, f"subscribed on {at_line}"))
            report.activated += 1
        if current.import_digest == row[IMPORT_DIGEST] and not activate:
            report.unchanged += 1
        else:
            report.updated += 1
            updates.append((row, current.id))
    if dry_run:
        total.add(report)
        return report.added
    if inserts:
        store.insert_imported(conn, inserts, source=source, reason=reason, now=now, fast=fast)
    if updates:  # an empty cell keeps what is known: a file without names wipes no name
        current = store.profiles_of(conn, [sid for _, sid in updates])
        store.update_imported(conn, [{
            "id": sid, "given": row[IMPORT_GIVEN], "name": row[IMPORT_NAME] or current[sid][0],
            "language": row[IMPORT_LANGUAGE] or current[sid][1],
            "attributes": merged_attributes(current[sid][2], json.loads(row[IMPORT_ATTRIBUTES])),
            "digest": row[IMPORT_DIGEST], "lists": row[IMPORT_LISTS],
        } for row, sid in updates], source=source, now=now)
    if changes:
        store.apply_status_changes(conn, changes)
    total.add(report)
    return report.added


def _count_added(report: ImportReport, rows: list[tuple]) -> None:
    """Count `rows` as added (and by status, when the file says one other than active)."""
    report.added += len(rows)
    for status, number in Counter(map(itemgetter(IMPORT_STATUS), rows)).items():
        if status not in (None, "active"):
            report.added_as[status] += number


def _erased(store: Store, conn: Connection, keys: list[str], fast: str | None) -> set[str]:
    """The keys among `keys` of people who were erased (their tombstone is in the table)."""
    if not store.any_erased(conn):
        return set()  # nobody was ever erased: one index probe instead of a hash and a lookup per row
    tombstones = {tombstone_key(key): key for key in keys}
    return {tombstones[found] for found in store.tombstones_among(conn, list(tombstones), fast)}
