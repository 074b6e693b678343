"""Rows of a decoded CSV text, each with the physical line it starts on — and no row lost to a stray quote.

`csv.reader` (non-strict, as spreadsheets need) reads a quote that is never closed as the start of
one long field: every following line becomes part of it, until the next quote or the end of the
file (measured before this module: "added 1, rejected 1" for a 5,129-line file whose line 3 had an
unclosed quote, the error naming line 5129). A quoted field may legitimately span lines (a note
with line breaks, a postal address), so a line break inside quotes alone proves nothing. `CsvRows`
decides a quote was left open, and reports the line where it opened, when:

* the file ends inside the quoted field, or
* a line the field swallowed has the shape of a row of this file (as many cells as the header, give
  or take one, and an address-like cell where the email column is).

The row holding that quote is then rejected ("unterminated quote") and every line after the quote's
line is read again as rows of its own: each physical row is counted once.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator

from ...errors import MailerError

DELIMITERS = (",", ";", "\t", "|")


@dataclass(frozen=True)
class BrokenRow:
    """Stands in for the cells of a row that cannot be read (an unterminated quote)."""

    reason: str
    text: str


def sniff_delimiter(line: str) -> str:
    """The delimiter of a file, from its first non-blank line: the most frequent of `, ; TAB |`
    outside quotes (comma when none)."""
    outside = "".join(line.split('"')[0::2])  # drop quoted parts: "Bernard; Hugo" is no delimiter
    counts = {d: outside.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


class CsvRows:
    """Iterate (line, cells) over decoded physical lines (each with its line break); `cells` is a
    list of strings, or a `BrokenRow`. Blank lines come through as empty lists.

    Set `shape` = (number of columns, index of the email column) once the header is known, so that
    swallowed rows can be recognised (before that, any line holding an address-like cell is one).
    """

    def __init__(self, lines: Iterator[str], path: Path | str = "") -> None:
        self.path = path
        lines = iter(lines)
        peeked: list[str] = []
        for line in lines:
            peeked.append(line)
            if line.strip():
                break
        self.delimiter = sniff_delimiter(peeked[-1] if peeked else "")
        self.shape: tuple[int, int] | None = None
        self._source: Iterator[str] = chain(peeked, lines)
        self._record: list = []

    def _feed(self) -> Iterator[str]:
        """The source's lines, each also appended to the current record; at the end, a None in the
        record marks that the last record was cut by the end of the file."""
        record = self._record
        append = record.append
        for line in self._source:
            append(line)
            yield line
        append(None)

    def _reader(self) -> Iterator[list[str]]:
        return csv.reader(self._feed(), delimiter=self.delimiter, quotechar='"', skipinitialspace=False, strict=False)

    def __iter__(self) -> Iterator[tuple[int, list[str] | BrokenRow]]:
        record = self._record
        reader = self._reader()
        line = 1  # where the next record starts
        while True:
            failure = None
            try:
                for cells in reader:
                    if len(record) != 1:
                        break  # several lines, or the end of the file: look closer (below)
                    record.clear()
                    line += 1
                    yield line - 1, cells
                else:
                    return
            except csv.Error as exc:  # e.g. "field larger than field limit": a quote swallowing many rows
                cells, failure = [], exc
            exhausted = bool(record) and record[-1] is None
            if exhausted:
                record.pop()
            broken = self._unterminated(record, exhausted or failure is not None)
            if broken is None:
                if failure is not None:
                    raise MailerError(f"{self.path}:{line}: malformed CSV ({failure})")
                start, line = line, line + len(record)
                record.clear()
                yield start, cells
                if exhausted:
                    return
                continue
            opened, swallowed = broken
            if swallowed:
                reason = f"the quoted field runs into line {line + swallowed}, which is a row of its own"
            elif failure is not None:
                reason = f"the quoted field runs on for {len(record) - opened} lines ({failure})"
            else:
                reason = "the file ends before the quote is closed"
            rest = record[opened + 1:]
            text = "".join(record[:opened + 1]).rstrip("\r\n")
            start = line
            line += opened + 1
            record.clear()
            self._source = chain(rest, self._source)  # read the swallowed lines again, as rows
            reader = self._reader()
            quote_line = start + opened
            where = "" if quote_line == start else f" (the quote opens on line {quote_line})"
            yield start, BrokenRow(f"unterminated quote{where}: {reason}; close the quote or remove it", text)

    def _unterminated(self, record: list[str], exhausted: bool = False) -> tuple[int, int] | None:
        """(index in `record` of the line where an unclosed quote opens, index of the first row it
        swallowed or 0 when it runs to the end of the file), or None when the record is sound."""
        delimiter = self.delimiter
        in_quotes = False
        opened = 0
        for index, text in enumerate(record):
            if index and in_quotes and self._looks_like_row(text):
                return opened, index
            field_start = True
            position, length = 0, len(text)
            while position < length:
                char = text[position]
                if in_quotes:
                    if char == '"':
                        if position + 1 < length and text[position + 1] == '"':
                            position += 2
                            continue
                        in_quotes = False
                        field_start = False
                elif char == '"' and field_start:
                    in_quotes, opened, field_start = True, index, False
                else:
                    field_start = char == delimiter or char in "\r\n"
                position += 1
        if in_quotes and exhausted:
            return opened, 0
        return None

    def _looks_like_row(self, text: str) -> bool:
        cells = next(csv.reader([text], delimiter=self.delimiter, strict=False), [])
        if self.shape is None:
            return any(_address_like(cell) for cell in cells)
        width, email_index = self.shape
        if width > 1 and abs(len(cells) - width) > 1:
            return False
        return email_index < len(cells) and _address_like(cells[email_index])


def _address_like(cell: str) -> bool:
    text = cell.strip()
    local, at, domain = text.partition("@")
    return bool(at and local and "." in domain) and not any(c.isspace() for c in text)
