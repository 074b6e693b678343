"""The CSV import: parse, validate and de-duplicate rows, then upsert them in batches.

Rules it keeps (the README's "The subscriber list" states them):
* nothing is written before the whole file has been decoded (`encoding.plan_decoding`): a file
  that cannot be read imports nobody, wherever its bad byte is;
* each physical row is accounted for — added, updated, unchanged, rejected with its line and reason,
  or left as it was — and the summary says so even when the import stops half-way;
* an import never re-activates a suppressed person (unsubscribed, bounced, complained, erased) and
  never rewrites their name or attributes; only a stronger suppression from the file applies
  (`--resubscribe` may re-activate unsubscribed people, never the others);
* suppressions a file states (a status column, or a recognised export such as Mailchimp's
  unsubscribed or cleaned files) apply to new and existing people alike.

It is a two-stage pipeline: parsing (CSV, address validation, normalisation, digest, duplicates)
then writing (one transaction per batch of IMPORT_BATCH rows). Files of PARALLEL_MIN_BYTES or more
are parsed in a helper process so both stages run at once on two cores; smaller ones in process.
Both ways run the same code (`parsed_items`, `_write_batch`) and give the same result. This module is
longer than most because the hot loop (`parse_rows`) is written out for speed: one place per concern
would cost a function call per cell on a million rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from array import array
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa

from ..addresses import address_parts
from ..errors import InvalidAddress, MailerError, NotFound
from ..schema import SUBSCRIBER_STATUSES, SUPPRESSED_STATUSES, SUPPRESSION_RANK
from ..store import (IMPORT_ATTRIBUTES, IMPORT_DIGEST, IMPORT_GIVEN, IMPORT_KEY, IMPORT_LANGUAGE, IMPORT_LINE,
                     IMPORT_LISTS, IMPORT_NAME, IMPORT_STATUS, StatusChange, Store, utcnow)
from ..subscribers import clean_text, tombstone_key
from .columns import (STATUS_WORDS, Layout, build_layout, headerless_layout, json_object_cells, looks_like_header,
                      merged_attributes, normalise_language, normalise_name, normalise_timezone, parse_map,
                      parse_timestamp)
from .encoding import Decoding, plan_decoding, text_lines
from .table import CsvRows

IMPORT_BATCH = 5000                   # rows written per transaction (and parsed per message)
PARALLEL_MIN_BYTES = 4 * 1024 * 1024  # ≈ 60,000 rows; below this a helper process costs more than it saves
MAX_KEPT_REJECTIONS = 10_000


class ImportStopped(MailerError):
    """The import stopped after writing part of the file; the message says what was written."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Rejection:
    line: int
    value: str
    reason: str


@dataclass
class LayoutInfo:
    """What the parser decided about the file's columns (sent before its rows)."""

    format_label: str = ""
    delimiter: str = ","
    attributes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    has_header: bool = True


@dataclass
class ParseStats:
    """Values the parser could not use, by kind: count and first example (sent after the rows)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, tuple[int, str]] = field(default_factory=dict)

    def note(self, kind: str, line: int, value: str) -> None:
        self.counts[kind] += 1
        self.examples.setdefault(kind, (line, value[:80]))

    def warnings(self) -> list[str]:
        what = {"timezone": ("time zone", "not an IANA name such as Europe/Paris; left unset"),
                "language": ("language", "left empty"),
                "created_at": ("sign-up date", "not a date; the import date is used")}
        out = []
        for kind, count in sorted(self.counts.items()):
            label, consequence = what[kind]
            line, value = self.examples[kind]
            out.append(f"{label} not understood on {count} row(s) (first: line {line}, {value!r}): {consequence}")
        return out


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    resubscribed: int = 0
    added_as: Counter = field(default_factory=Counter)        # new people whose status is not active
    suppressed_now: Counter = field(default_factory=Counter)  # existing people the file suppressed
    kept: Counter = field(default_factory=Counter)            # people left as they were: status (or "erased") → n
    rejections: list[Rejection] = field(default_factory=list)
    dry_run: bool = False
    encoding: str = ""
    format_label: str = ""
    delimiter: str = ","
    attributes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    written_batches: int = 0

    @property
    def rows(self) -> int:
        """Data rows accounted for (blank lines are no rows)."""
        return self.added + self.updated + self.unchanged + self.rejected + sum(self.kept.values())

    @property
    def suppressed_kept(self) -> int:
        return sum(self.kept.values())

    def add(self, other: "ImportReport") -> None:
        """Add the counts of `other` (a batch) to these."""
        for name in ("added", "updated", "unchanged", "rejected", "resubscribed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("added_as", "suppressed_now", "kept"):
            getattr(self, name).update(getattr(other, name))

    def reject(self, item: Rejection) -> None:
        """Count every rejection; keep the first MAX_KEPT_REJECTIONS (memory stays flat on a bad file)."""
        self.rejected += 1
        if len(self.rejections) < MAX_KEPT_REJECTIONS:
            self.rejections.append(item)

    def counts_line(self) -> str:
        """`added 120, updated 3, unchanged 40, rejected 3; 1 more left unsubscribed (…)`."""
        def detail(counter: Counter, prefix: str) -> str:
            parts = [f"{n} {prefix}{status}" for status, n in sorted(counter.items())]
            return f" ({', '.join(parts)})" if parts else ""

        updated_details = Counter({f"now {status}": n for status, n in self.suppressed_now.items()})
        if self.resubscribed:
            updated_details["resubscribed"] = self.resubscribed
        if self.dry_run:
            text = (f"would add {self.added}{detail(self.added_as, 'as ')}, would update {self.updated}"
                    f"{detail(updated_details, '')}, unchanged {self.unchanged}, rejected {self.rejected}")
        else:
            text = (f"added {self.added}{detail(self.added_as, 'as ')}, updated {self.updated}"
                    f"{detail(updated_details, '')}, unchanged {self.unchanged}, rejected {self.rejected}")
        kept = sum(self.kept.values())
        if kept:
            if len(self.kept) == 1:
                text += f"; {kept} more left {next(iter(self.kept))}"
            else:
                text += f"; {kept} more left as they were: " + ", ".join(
                    f"{n} {status}" for status, n in sorted(self.kept.items()))
            text += " (an import never re-activates anyone)"
        return text + (" — dry run: nothing written" if self.dry_run else "")

    def summary(self) -> str:
        """The counts line, then how the file was read, the attributes it filled and any warnings."""
        lines = [self.counts_line()]
        read_as = [self.format_label or "generic CSV", self.encoding, f"delimiter {self.delimiter!r}"]
        lines.append("read as " + ", ".join(part for part in read_as if part))
        if self.attributes:
            lines.append("other columns kept as attributes: " + ", ".join(self.attributes))
        if self.ignored:
            lines.append("columns ignored: " + ", ".join(self.ignored))
        lines.extend(f"warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


# ----- parsing ------------------------------------------------------------------------------------------
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


def parse_rows(rows: Iterable[tuple[int, list[str]]], layout: Layout, extra_lists: tuple[str, ...],
               seen: _SeenKeys | None, stats: ParseStats) -> Iterator[tuple | Rejection]:
    """Rows → valid row tuples (`store.IMPORT_ROW_FIELDS`) and `Rejection`s, in file order (blank
    rows vanish). With `seen`, a row whose address is already in it is a duplicate.

    The hot loop of the import: column lookups are hoisted, the common cases (no attributes,
    printable names, no status column) take no detour.
    """
    fields = layout.fields
    email_i, name_i, language_i, lists_i = fields["email"], fields.get("name"), fields.get("language"), fields.get("lists")
    first_i, last_i, tz_i = fields.get("first_name"), fields.get("last_name"), fields.get("timezone")
    status_i, created_i = fields.get("status"), fields.get("created_at")
    status_rule, status_at = layout.status_rule, layout.status_at
    attribute_columns, json_columns = layout.attributes, layout.json_attributes
    has_names = first_i is not None or last_i is not None
    constant_lists = tuple(sorted(set(extra_lists)))
    suppressed = frozenset(SUPPRESSED_STATUSES)
    add_key = seen.add_key if seen is not None else None
    parts, blake2b = address_parts, hashlib.blake2b
    # JSON the way json.dumps writes it (the same C escaping functions), without its per-call setup:
    # `ascii_text` for what the store keeps (json.dumps defaults), `text_json` for the digest.
    ascii_text, text_json = json.encoder.encode_basestring_ascii, json.encoder.encode_basestring
    languages: dict[str, str | None] = {}
    zones: dict[str, str | None] = {}
    status_words: dict[str, str | None] = {}
    reasons: dict[str, str] = {}
    for line, cells in rows:
        if type(cells) is not list:  # a BrokenRow (unterminated quote)
            yield Rejection(line, cells.text[:120], cells.reason)
            continue
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
        attributes = {}
        if has_names:
            first = clean_text(cells[first_i], 100) if first_i is not None and first_i < count else ""
            last = clean_text(cells[last_i], 100) if last_i is not None and last_i < count else ""
            if first:
                attributes["first_name"] = first
            if last:
                attributes["last_name"] = last
            if not name:
                name = f"{first} {last}".strip()
        if name:
            name = " ".join(name.split())[:200] if name.isprintable() else clean_text(name, 200)
        language = ""
        if language_i is not None:
            raw_language = cells[language_i] if language_i < count else ""
            if raw_language not in languages:
                languages[raw_language] = normalise_language(raw_language)
            language = languages[raw_language]
            if language is None:
                stats.note("language", line, raw_language)
                language = ""
        if tz_i is not None and tz_i < count and cells[tz_i]:
            raw_zone = cells[tz_i]
            if raw_zone not in zones:
                zones[raw_zone] = normalise_timezone(raw_zone)
            zone = zones[raw_zone]
            if zone:
                attributes["timezone"] = zone
            elif zone is None:
                stats.note("timezone", line, raw_zone)
        for index, attribute in attribute_columns:
            if index < count:
                value = cells[index].strip()
                if value:
                    attributes[attribute] = value
        for index in json_columns:
            if index < count:
                for attribute, value in json_object_cells(cells[index]).items():
                    attributes.setdefault(attribute or "attributes", value)
                if not name and ("first_name" in attributes or "last_name" in attributes or "name" in attributes):
                    name = clean_text(attributes.get("name") or
                                      f"{attributes.get('first_name', '')} {attributes.get('last_name', '')}", 200)
        if lists_i is None:
            row_lists = constant_lists
        else:
            named = cells[lists_i].strip() if lists_i < count else ""
            row_lists = tuple(sorted({*named.replace(",", " ").split(), *extra_lists})) if named else constant_lists
        status = None
        if status_rule is not None:
            try:
                status = status_rule(cells)
            except ValueError as exc:
                yield Rejection(line, text, str(exc))
                continue
        elif status_i is not None:
            word = cells[status_i].strip() if status_i < count else ""
            if word:
                if word not in status_words:
                    status_words[word] = STATUS_WORDS.get(normalise_name(word))
                status = status_words[word]
                if status is None:
                    yield Rejection(line, text, f"unknown status {word!r} (one of {', '.join(SUBSCRIBER_STATUSES)})")
                    continue
        created_at = status_date = None
        if created_i is not None and created_i < count and cells[created_i].strip():
            created_at = parse_timestamp(cells[created_i])
            if created_at is None:
                stats.note("created_at", line, cells[created_i])
        if status_at:
            column = status_at.get("suppressed" if status in suppressed else "active")
            if column is not None and column < count:
                status_date = parse_timestamp(cells[column])
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
        yield (line, key, given, name, language, attributes_json, row_lists, digest, status, created_at, status_date)


@dataclass
class ParseOptions:
    decoding: Decoding
    lists: tuple[str, ...] = ()
    mapping: dict[str, str] = field(default_factory=dict)
    batch: int = IMPORT_BATCH

    def to_json(self) -> str:
        return json.dumps({"decoding": self.decoding.to_json(), "lists": list(self.lists), "mapping": self.mapping,
                           "batch": self.batch})

    @classmethod
    def from_json(cls, text: str) -> "ParseOptions":
        data = json.loads(text)
        return cls(Decoding.from_json(data["decoding"]), tuple(data["lists"]), data["mapping"], data["batch"])


def parsed_items(path: Path, options: ParseOptions) -> Iterator[LayoutInfo | list | ParseStats]:
    """The whole file parsed: a `LayoutInfo`, then lists of up to `options.batch` valid rows with the
    rejections interleaved in file order, then the `ParseStats`."""
    table = CsvRows(text_lines(path, options.decoding), path)
    rows: Iterator = iter(table)
    layout: Layout | None = None
    for line, cells in rows:  # the layout comes from the first non-blank row
        if type(cells) is not list:
            raise MailerError(f"{path}:{line}: {cells.reason} — in the first row, so the columns are unknown")
        if not any(c.strip() for c in cells):
            continue
        if looks_like_header(cells):
            layout = build_layout(cells, path.name, options.mapping)
        else:
            if options.mapping:
                raise MailerError(f"{path}: --map needs a header row naming the columns")
            layout = headerless_layout(len(cells))
            rows = chain([(line, cells)], rows)
        break
    stats = ParseStats()
    if layout is None:
        yield LayoutInfo(delimiter=table.delimiter)
        yield stats
        return
    table.shape = (layout.width, layout.fields["email"])
    yield LayoutInfo(layout.format_label, table.delimiter, [name for _, name in layout.attributes], layout.ignored,
                     layout.has_header)
    chunk: list = []
    valid = 0
    batch = options.batch
    seen = _SeenKeys(_estimated_rows(path))
    for item in parse_rows(rows, layout, options.lists, seen, stats):
        chunk.append(item)
        if type(item) is tuple:
            valid += 1
            if valid >= batch:
                yield chunk
                chunk, valid = [], 0
    if chunk:
        yield chunk
    yield stats


def _estimated_rows(path: Path) -> int:
    """Rows in the file, from the size of its first lines (sizes the duplicate table once)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(65536)
    return int(size / (len(head) / max(1, head.count(b"\n")))) if head else 0


_HELPER_CODE = "import sys; sys.path.insert(0, sys.argv[1]); from mailer.importer.engine import _parser_main; _parser_main()"


def _parser_main() -> None:
    """The helper process (a fresh interpreter): parse the file named in argv, send each item
    pickled down the pipe whose fd is in argv, then ("end", the error or None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the importing process's to handle
    sender = Connection(int(sys.argv[2]), readable=False)
    error: BaseException | None = None
    try:
        for item in parsed_items(Path(sys.argv[3]), ParseOptions.from_json(sys.argv[4])):
            data = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
            del item  # not alive while the next one is parsed
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
def _parsed_source(path: Path, options: ParseOptions) -> Iterator[Iterator]:
    """`parsed_items` of the file: from a helper process for a big file (so parsing and writing run
    at once, on two cores), else in process.

    The helper is a fresh interpreter rather than a fork: it holds none of this process's memory,
    connections or threads (a fork would count this process's ~50 MB twice and inherit locks).
    """
    if (path.stat().st_size < PARALLEL_MIN_BYTES or os.name != "posix" or not sys.executable
            or getattr(sys, "frozen", False)):
        yield parsed_items(path, options)
        return
    read_fd, write_fd = os.pipe()
    try:
        process: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, "-c", _HELPER_CODE, str(Path(__file__).resolve().parents[2]), str(write_fd),
             str(path), options.to_json()],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    except OSError:
        process = None
    finally:
        os.close(write_fd)
    if process is None:
        os.close(read_fd)
        yield parsed_items(path, options)
        return
    receiver = Connection(read_fd, writable=False)

    def items() -> Iterator:
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
                yield from parsed_items(path, options)
                return
            received = True
            message = pickle.loads(data)  # from our own helper process
            if type(message) is tuple:
                if message[1] is not None:
                    raise message[1]
                return
            yield message

    try:
        yield items()
    finally:
        receiver.close()  # a helper still sending gets a broken pipe and stops
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ----- the import -----------------------------------------------------------------------------------------
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
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    options = ParseOptions(plan_decoding(path, encoding), tuple(lists), parse_map(column_map))
    report = ImportReport(dry_run=dry_run, encoding=options.decoding.describe(),
                          warnings=list(options.decoding.warnings()))
    reason = "import"
    last_line = 0
    try:
        with _parsed_source(path, options) as items, store.import_connection() as conn, _StopRequest() as stop:
            for item in items:
                if type(item) is list:
                    batch = []
                    for row in item:
                        if type(row) is tuple:
                            batch.append(row)
                        else:
                            row.reason = sys.intern(row.reason)  # thousands of rejections share a few reasons
                            report.reject(row)
                    del item
                    if batch:
                        last_line = batch[0][IMPORT_LINE]
                        _write_batch(store, conn, batch, report, dry_run=dry_run, resubscribe=resubscribe,
                                     source=source, reason=reason)
                        last_line = batch[-1][IMPORT_LINE]
                    if progress:
                        progress(report.rows)
                    if stop.requested:
                        raise KeyboardInterrupt
                elif isinstance(item, LayoutInfo):
                    report.format_label, report.delimiter = item.format_label, item.delimiter
                    report.attributes, report.ignored = item.attributes, item.ignored
                    if item.format_label:
                        reason = f"import of a {item.format_label}"
                elif isinstance(item, ParseStats):
                    report.warnings.extend(item.warnings())
    except KeyboardInterrupt:
        raise _stopped(path, report, last_line, "interrupted", 130) from None
    except (MailerError, sa.exc.SQLAlchemyError, OSError) as exc:
        if not report.written_batches:
            if not isinstance(exc, MailerError):
                raise MailerError(f"{path}: {_one_line(exc)}; nothing imported") from None
            if "nothing imported" not in str(exc):
                exc.args = (f"{exc}; nothing imported",)
            raise
        raise _stopped(path, report, last_line, _one_line(exc), getattr(exc, "exit_code", 1)) from None
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
    return ImportStopped(f"{path}: stopped near line {line} ({cause}); written before that: {report.counts_line()}. "
                         f"Run the same import again to finish: rows already written are skipped", exit_code)


def _write_batch(store: Store, conn: sa.Connection, batch: list[tuple], total: ImportReport, *, dry_run: bool,
                 resubscribe: bool, source: str, reason: str) -> None:
    """One transaction: look the batch's addresses up, then insert, update and change statuses. The
    batch's counts join `total` only once it is committed (so a stop mid-batch reports what is written)."""
    now = utcnow()
    report = ImportReport()
    with conn.begin() as transaction:
        fast = store.import_fast_path(conn, source)
        keys = [row[IMPORT_KEY] for row in batch]
        existing = store.existing_for_import(conn, keys, fast)
        missing = [key for key in keys if key not in existing]
        erased = _erased(store, conn, missing, fast) if missing else set()
        inserts: list[tuple] = []
        updates: list[tuple[tuple, int]] = []
        changes: list[StatusChange] = []
        rank = SUPPRESSION_RANK
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
            if current.status in SUPPRESSED_STATUSES:
                if resubscribe and current.status == "unsubscribed" and wanted in (None, "active"):
                    changes.append(StatusChange(current.id, current.status, "active", source, f"--resubscribe on {at_line}"))
                    report.resubscribed += 1
                    report.updated += 1
                    updates.append((row, current.id))
                elif wanted in SUPPRESSED_STATUSES and rank[wanted] > rank[current.status]:
                    changes.append(StatusChange(current.id, current.status, wanted, source, at_line))
                    report.suppressed_now[wanted] += 1
                    report.updated += 1
                else:
                    report.kept[current.status] += 1  # name, attributes and status stay as they are
                continue
            if wanted in SUPPRESSED_STATUSES:  # the file suppresses them: their status changes, nothing else
                changes.append(StatusChange(current.id, current.status, wanted, source, at_line))
                report.suppressed_now[wanted] += 1
                report.updated += 1
            elif current.import_digest == row[IMPORT_DIGEST]:
                report.unchanged += 1
            else:
                report.updated += 1
                updates.append((row, current.id))
        if dry_run:
            transaction.rollback()
            total.add(report)
            return
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
    total.written_batches += 1


def _erased(store: Store, conn: sa.Connection, keys: list[str], fast: str | None) -> set[str]:
    """The keys among `keys` of people who were erased (their tombstone is in the table)."""
    if not store.any_erased(conn):
        return set()  # nobody was ever erased: one index probe instead of a hash and a lookup per row
    tombstones = {tombstone_key(key): key for key in keys}
    return {tombstones[found] for found in store.tombstones_among(conn, list(tombstones), fast)}
