"""Parsing a CSV file into rows ready to write: validated, normalised, de-duplicated, digested.

Files of PARALLEL_MIN_BYTES or more are parsed in a helper process so parsing and writing run at
once on two cores; smaller ones in process. Both ways run the same code (`parsed_items`) and give
the same result (`bench/bench_import.py --verify` checks it). `parse_rows` is the hot loop of the
import, written out for speed: one function per concern would cost a call per cell on a million rows.

Longer than ~400 lines because row validation and the helper process that runs it for big
files share one row format.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from multiprocessing.connection import Connection
from operator import itemgetter
from pathlib import Path
from typing import Iterable, Iterator
from zlib import crc32

from ...addresses import address_parts
from ...errors import InvalidAddress, MailerError
from ...statuses import SUBSCRIBER_STATUSES, SUPPRESSED_STATUSES
from .columns import STATUS_WORDS, Layout, build_layout, headerless_layout, looks_like_header
from .encoding import Decoding, readable, text_lines, undecodable
from .report import LayoutInfo, ParseStats, Rejection
from .table import BrokenRow, CsvRows
from .values import (clean_text, json_object_cells, normalise_language, normalise_name, normalise_timezone,
                     parse_timestamp)

IMPORT_BATCH = 50_000                 # rows per transaction (SQLite rewrites fewer index pages per row than at 10,000)
WRITE_CHUNK = 10_000                  # rows held in memory and written at once (more costs memory, not speed)
PARSE_CHUNK = 5000                    # rows parsed per message (the helper's pickles stay small)
PARALLEL_MIN_BYTES = 4 * 1024 * 1024  # ≈ 60,000 rows; below this a helper process costs more than it saves
READ_AHEAD = 4                        # chunks the helper may be ahead of the importer (≈ 650 KB pickled each)


class _SeenKeys:
    """The addresses already met in this file, for duplicate detection.

    79-bit fingerprints — the address's `hash()` (SipHash-1-3 under this process's random key, 64
    bits) and 15 bits of its CRC-32 (a false "duplicate" among 10 million addresses has odds of
    about one in 10^10) — in an open-addressing table of two arrays, at most 70 % full: 10 bytes a
    slot, 20 MB for a million rows where a set of 96-bit Python ints took about 80 MB. `hash()` and
    `zlib.crc32` cost ≈ 0.2 µs an address where the blake2b fingerprint this replaced cost ≈ 0.6 µs.
    `parse_rows` probes the table itself (`lows`, `highs`, `mask`; `grow` when it is 70 % full):
    a method call per row cost ≈ 0.1 µs more.
    """

    def __init__(self, expected_rows: int = 0) -> None:
        self.lows = self.highs = None
        self._resize(max(1 << 12, 1 << (expected_rows * 10 // 7).bit_length()))

    def _resize(self, size: int) -> None:
        old_low, old_high = self.lows, self.highs
        self.mask = size - 1
        self.limit = size * 7 // 10  # entries before the table grows
        self.lows = array("Q", [0]) * size  # no temporary buffer: a resize holds only the old and new arrays
        self.highs = array("H", [0]) * size
        self.count = 0
        if old_low is not None:
            for low, high in zip(old_low, old_high):
                if high:
                    self.add(low, high)

    def grow(self) -> None:
        self._resize((self.mask + 1) * 2)

    @staticmethod
    def fingerprint(key: str) -> tuple[int, int]:
        """(low, high): 64 bits of `hash(key)` and 15 bits of its CRC-32, high never 0."""
        return hash(key) & 0xFFFFFFFFFFFFFFFF, (crc32(key.encode()) & 0xFFFF) | 1

    def add(self, low: int, high: int) -> bool:
        """Record a fingerprint (`high` != 0); False when it was already there."""
        mask, lows, highs = self.mask, self.lows, self.highs
        index = low & mask
        while True:
            stored = highs[index]
            if not stored:
                lows[index] = low
                highs[index] = high
                self.count += 1
                if self.count > self.limit:
                    self.grow()
                return True
            if stored == high and lows[index] == low:
                return False
            index = (index + 1) & mask



def parse_rows(rows: Iterable[tuple[int, list[str]]], layout: Layout, extra_lists: tuple[str, ...],
               seen: _SeenKeys | None, stats: ParseStats, batch: int = PARSE_CHUNK
               ) -> Iterator[tuple[list[tuple], list[Rejection]]]:
    """Rows → chunks `(valid rows, rejections)`: up to `batch` valid row tuples
    (`store.IMPORT_ROW_FIELDS`) and the `Rejection`s among them, each list in file order (blank
    rows vanish). With `seen`, a row whose address is already in it is a duplicate.

    The hot loop of the import: column lookups and the JSON of constant parts are hoisted, the
    common cases (one attribute, printable names without double spaces, no status column) take no
    detour, and the duplicate table is probed here.
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
    parts, blake2b = address_parts, hashlib.blake2b
    # JSON the way json.dumps writes it (the same C escaping functions), without its per-call setup:
    # `ascii_text` for what the store keeps (json.dumps defaults), `text_json` for the digest.
    ascii_text, text_json = json.encoder.encode_basestring_ascii, json.encoder.encode_basestring
    ascii_keys: dict[str, str] = {}  # attribute name → its JSON key and ": ", for the store and the digest
    text_keys: dict[str, str] = {}
    constant_lists_json = "[" + ", ".join(map(text_json, constant_lists)) + "]"
    languages: dict[str, tuple[str | None, str]] = {}  # raw cell → (language or None, its JSON)
    zones: dict[str, str | None] = {}
    status_words: dict[str, str | None] = {}
    reasons: dict[str, str] = {}
    unfilled = {attribute for _, attribute in attribute_columns}  # attribute columns no row has filled yet
    valid = False
    if seen is not None:
        lows, highs, mask, limit, fingerprint = seen.lows, seen.highs, seen.mask, seen.limit, seen.fingerprint
    chunk: list[tuple] = []
    rejected: list[Rejection] = []
    keep, reject = chunk.append, rejected.append
    no_language = (None, '""')
    for line, cells in rows:
        if type(cells) is not list:  # a BrokenRow (unterminated quote)
            reject(Rejection(line, cells.text[:120], cells.reason))
            continue
        count = len(cells)
        raw = cells[email_i] if email_i < count else ""
        text = raw.strip()
        if not text:
            if not any(c.strip() for c in cells):
                continue  # blank line: not a row
            reject(Rejection(line, "", "empty email"))
            continue
        try:
            key, given = parts(text)
        except InvalidAddress as exc:
            message = str(exc)
            reason = message.partition(": ")[2] or message
            if len(reasons) < 1000:
                reason = reasons.setdefault(reason, reason)  # a few distinct reasons: shared, pickled once a chunk
            reject(Rejection(line, text, reason))
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
            if name.isprintable():  # its only white space is U+0020: " ".join(name.split()) only folds runs
                if "  " in name:
                    name = " ".join(name.split())
                if len(name) > 200:
                    name = name[:200]
            else:
                name = clean_text(name, 200)
        language, language_json = "", '""'
        if language_i is not None:
            raw_language = cells[language_i] if language_i < count else ""
            known = languages.get(raw_language)
            if known is None:
                normalised = normalise_language(raw_language)
                known = languages[raw_language] = (no_language if normalised is None
                                                   else (normalised, text_json(normalised)))
            language, language_json = known
            if language is None:
                stats.note("language", line, raw_language)
                language, language_json = "", '""'
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
            row_lists, lists_json = constant_lists, constant_lists_json
        else:
            named = cells[lists_i].strip() if lists_i < count else ""
            if named:
                row_lists = tuple(sorted({*named.replace(",", " ").split(), *extra_lists}))
                lists_json = "[" + ", ".join(map(text_json, row_lists)) + "]"
            else:
                row_lists, lists_json = constant_lists, constant_lists_json
        status = None
        if status_rule is not None:
            try:
                status = status_rule(cells)
            except ValueError as exc:
                reject(Rejection(line, text, str(exc)))
                continue
        elif status_i is not None:
            word = cells[status_i].strip() if status_i < count else ""
            if word:
                if word not in status_words:
                    status_words[word] = STATUS_WORDS.get(normalise_name(word))
                status = status_words[word]
                if status is None:
                    reject(Rejection(line, text, f"unknown status {word!r} (one of {', '.join(SUBSCRIBER_STATUSES)})"))
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
        if not attributes:
            attributes_json = sorted_json = "{}"
        elif len(attributes) == 1:
            (attribute, value), = attributes.items()
            akey = ascii_keys.get(attribute) or ascii_keys.setdefault(attribute, ascii_text(attribute) + ": ")
            tkey = text_keys.get(attribute) or text_keys.setdefault(attribute, text_json(attribute) + ": ")
            attributes_json = "{" + akey + ascii_text(value) + "}"
            sorted_json = "{" + tkey + text_json(value) + "}"
        else:
            attributes_json = "{" + ", ".join([ascii_text(k) + ": " + ascii_text(v) for k, v in attributes.items()]) + "}"
            sorted_json = ("{" + ", ".join([text_json(k) + ": " + text_json(attributes[k]) for k in sorted(attributes)])
                           + "}")
        # == json.dumps([given, name, language, attributes, row_lists, status], ensure_ascii=False, sort_keys=True)
        digest = blake2b(f"[{text_json(given)}, {text_json(name)}, {language_json}, {sorted_json}, {lists_json}, "
                         f"{'null' if status is None else text_json(status)}]".encode(), digest_size=16).hexdigest()
        if seen is not None:  # the duplicate table (_SeenKeys), probed here
            low, high = fingerprint(key)
            index = low & mask
            while True:
                stored = highs[index]
                if not stored:
                    lows[index], highs[index] = low, high
                    seen.count += 1
                    if seen.count > limit:
                        seen.grow()
                        lows, highs, mask, limit = seen.lows, seen.highs, seen.mask, seen.limit
                    break
                if stored == high and lows[index] == low:
                    break
                index = (index + 1) & mask
            if stored:
                reject(Rejection(line, given, "duplicate of an earlier row in this file"))
                continue
        if given == key:
            given = key  # one string object for both: less memory, smaller pickles
        if unfilled and attributes:
            unfilled.difference_update(attributes)
        valid = True
        keep((line, key, given, name, language, attributes_json, row_lists, digest, status, created_at, status_date))
        if len(chunk) >= batch:
            yield chunk, rejected
            chunk, rejected = [], []
            keep, reject = chunk.append, rejected.append
    if chunk or rejected:
        yield chunk, rejected
    if valid:
        stats.empty_attributes = [attribute for _, attribute in attribute_columns if attribute in unfilled]


@dataclass
class ParseOptions:
    decoding: Decoding
    lists: tuple[str, ...] = ()
    mapping: dict[str, str] = field(default_factory=dict)
    batch: int = PARSE_CHUNK

    def to_json(self) -> str:
        return json.dumps({"decoding": self.decoding.to_json(), "lists": list(self.lists), "mapping": self.mapping,
                           "batch": self.batch})

    @classmethod
    def from_json(cls, text: str) -> "ParseOptions":
        data = json.loads(text)
        return cls(Decoding.from_json(data["decoding"]), tuple(data["lists"]), data["mapping"], data["batch"])


def parsed_items(path: Path, options: ParseOptions) -> Iterator[LayoutInfo | tuple | ParseStats]:
    """The whole file parsed: a `LayoutInfo`, then chunks `(valid rows, rejections)` of up to
    `options.batch` valid rows and the rejections among them (`parse_rows`), then the `ParseStats`."""
    table = CsvRows(text_lines(path, options.decoding), path)
    rows: Iterator = iter(table)
    layout: Layout | None = None
    for line, cells in rows:  # the layout comes from the first non-blank row
        if type(cells) is not list:
            raise MailerError(f"{path}:{line}: {cells.reason} — in the first row, so the columns are unknown")
        if not any(c.strip() for c in cells):
            continue
        if options.decoding.reject_invalid and looks_like_header(cells):
            bad = undecodable("\0".join(cells))
            if bad is not None:
                raise MailerError(f"{path}:{line}: the header is not valid UTF-8 (byte 0x{bad[0]:02X}), so the "
                                  f"columns are unknown; fix it, or name the file's encoding with --encoding")
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
        yield LayoutInfo(delimiter=table.delimiter, has_header=False)
        yield stats
        return
    table.shape = (layout.width, layout.fields["email"])
    yield LayoutInfo(layout.format_label, table.delimiter, [name for _, name in layout.attributes], layout.ignored,
                     layout.has_header, layout.status_note)
    seen = _SeenKeys(_estimated_rows(path))
    if options.decoding.reject_invalid:
        rows = _rejecting_undecodable(rows, layout.fields["email"])
    yield from parse_rows(rows, layout, options.lists, seen, stats, options.batch)
    yield stats


def _rejecting_undecodable(rows: Iterator[tuple[int, list[str] | BrokenRow]], email: int
                           ) -> Iterator[tuple[int, list[str] | BrokenRow]]:
    """`rows` of a file read with `surrogateescape`, where a row holding a byte that is not UTF-8
    becomes a `BrokenRow` "not valid UTF-8 (byte 0xFF at column 12)": rejected, nothing of it
    written. A row spanning lines names the line of the byte."""
    for line, cells in rows:
        text = cells.text if type(cells) is BrokenRow else cells[email] if email < len(cells) else ""
        joined = cells.text if type(cells) is BrokenRow else "\0".join(cells)
        bad = undecodable(joined)
        if bad is None:
            yield line, cells
            continue
        byte = bad[0]
        # The cells joined by one character stand for the line: the column is exact unless a quoted
        # cell comes before the byte (its quotes are not counted).
        before = joined[:bad[1] - 1]
        extra_lines = before.count("\n") + before.count("\r") - before.count("\r\n")
        column = bad[1] - max(before.rfind("\n"), before.rfind("\r")) - 1
        where = f"column {column}" if not extra_lines else f"line {line + extra_lines}, column {column}"
        yield line, BrokenRow(f"not valid UTF-8 (byte 0x{byte:02X} at {where})", readable(text.strip())[:120])


def _estimated_rows(path: Path) -> int:
    """Rows in the file, from the size of its first lines (sizes the duplicate table once)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(65536)
    return int(size / (len(head) / max(1, head.count(b"\n")))) if head else 0


_PACKAGE_ROOT = Path(__file__).resolve().parents[__name__.count(".")]  # the folder holding `mailer/`
# The packages between `mailer` and this module, as empty package objects: the helper needs only the
# parsing modules, and these packages' __init__ load the store and SQLAlchemy (~20 MB of RSS, ~0.3 s).
_SKIPPED_INITS = [(".".join(__name__.split(".")[:depth]), str(Path(__file__).resolve().parents[__name__.count(".") - depth]))
                  for depth in range(2, __name__.count(".") + 1)]
# This module by its own name (it moved once, and the helper silently fell back to parsing in process).
_HELPER_CODE = (f"import sys, types; sys.path.insert(0, sys.argv[1]); import {__name__.split('.')[0]}\n"
                f"for name, path in {_SKIPPED_INITS!r}:\n"
                f"    package = sys.modules[name] = types.ModuleType(name); package.__path__ = [path]\n"
                f"from {__name__} import _parser_main; _parser_main()")


_DATES = (itemgetter(9), itemgetter(10))  # created_at, status_at of an IMPORT_ROW_FIELDS tuple


def _encoded(item: object) -> bytes:
    """A message of the helper: a chunk of rows without dates as b"M" + marshal (strings, ints,
    tuples: both ends run the same interpreter; ≈ 0.6 s less CPU a million rows than pickle, over
    both processes), anything else as b"P" + pickle."""
    if type(item) is tuple and type(item[0]) is list and not any(map(_DATES[0], item[0])) \
            and not any(map(_DATES[1], item[0])):
        return b"M" + marshal.dumps((item[0], [(r.line, r.value, r.reason) for r in item[1]]))
    return b"P" + pickle.dumps(item, pickle.HIGHEST_PROTOCOL)


def _decoded(data: bytes) -> object:
    """The item `_encoded` made `data` of (from our own helper process)."""
    if data[:1] == b"M":
        rows, rejected = marshal.loads(memoryview(data)[1:])
        return rows, [Rejection(*rejection) for rejection in rejected]
    return pickle.loads(memoryview(data)[1:])


def _parser_main() -> None:
    """The helper process (a fresh interpreter): parse the file named in argv, send each item
    (`_encoded`) down the pipe whose fd is in argv, then ("end", the error or None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the importing process's to handle
    sender = Connection(int(sys.argv[2]), readable=False)
    error: BaseException | None = None
    try:
        for item in parsed_items(Path(sys.argv[3]), ParseOptions.from_json(sys.argv[4])):
            data = _encoded(item)
            del item  # not alive while the next one is parsed
            sender.send_bytes(data)
            del data
    except BrokenPipeError:
        return  # the importer stopped listening (it failed or was interrupted): nothing left to tell
    except BaseException as exc:  # noqa: BLE001 - every failure is the importer's to report
        error = exc
    try:
        message = _encoded(("end", error))
    except Exception:  # noqa: BLE001 - an unpicklable exception still gets its message across
        message = _encoded(("end", MailerError(f"{type(error).__name__}: {error}")))
    try:
        sender.send_bytes(message)
    except BrokenPipeError:
        pass


@contextmanager
def parsed_source(path: Path, options: ParseOptions) -> Iterator[Iterator]:
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
            [sys.executable, "-c", _HELPER_CODE, str(_PACKAGE_ROOT), str(write_fd),
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
    # A thread receives the helper's messages as they come, up to READ_AHEAD of them ahead of the
    # import: without it the helper waited, its next chunk half-written into the pipe, while the
    # importer wrote a batch, and the importer then waited for the helper to parse the next one
    # (≈ 5 s of a million rows, measured).
    inbox: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
    stopping = threading.Event()
    ended = False

    def receive() -> None:
        while not stopping.is_set():
            try:
                data: bytes | None = receiver.recv_bytes()
            except Exception:  # noqa: BLE001 - the end of the pipe (EOFError, OSError) or worse: the end
                data = None
            inbox.put(data)
            if data is None:
                return

    reader = threading.Thread(target=receive, name="import-parser-reader", daemon=True)
    reader.start()

    def items() -> Iterator:
        nonlocal ended
        received = False
        while True:
            data = inbox.get()
            if data is None:
                if received:
                    try:
                        code = process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        code = process.wait()
                    raise MailerError(f"{path}: the CSV parser process stopped unexpectedly (exit code {code})")
                # It could not even start (an interpreter that cannot import mailer?): nothing was
                # written yet, so parse here instead.
                ended = True
                yield from parsed_items(path, options)
                return
            received = True
            message = _decoded(data)
            del data
            if type(message) is tuple and type(message[0]) is str:  # ("end", the error or None)
                ended = True
                if message[1] is not None:
                    raise message[1]
                return
            yield message

    try:
        yield items()
    finally:
        stopping.set()
        if not ended:
            process.kill()  # stopped early (a failure, Ctrl-C): the reader then meets the end of the pipe
        while reader.is_alive():
            try:  # room for a message the reader is putting
                inbox.get(timeout=0.05)
            except queue.Empty:
                pass
        receiver.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
