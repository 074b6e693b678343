"""Which characters a CSV file holds: its encoding, decided and checked before anything is written.

Lists come from Excel (Windows-1252 on a French Windows, Mac Roman from an old Mac Excel, UTF-16
"Unicode text"), from web services (UTF-8, sometimes with a BOM) or from files pasted together from
two of those. The decision, in order (`plan_decoding`):

1. `--encoding` given: that codec for the whole file (a UTF BOM of the same family is dropped).
2. A byte-order mark: UTF-8, UTF-16 LE/BE or UTF-32 LE/BE. UTF-16 without a BOM is recognised by
   its pattern of NUL bytes.
3. The whole file is valid UTF-8: UTF-8.
4. Otherwise the file holds bytes that are not UTF-8. Which kind of file is it, decided on the whole
   file (so never by where the bad bytes are)? `utf8_sequences` counts its valid multi-byte UTF-8
   sequences, `bad_bytes` its bytes that are part of none:
   * fewer sequences than bad bytes (none at all, or the few a legacy code page forms by accident:
     Mac Roman "L’É" is the valid UTF-8 pair D5 83): a legacy file. Its lines that are not UTF-8
     are given to `charset-normalizer`, whose mess detector keeps the code pages that decode them
     cleanly, and `_plausibility` picks among those: ONE code page for the whole file;
   * otherwise (a UTF-8 file with a stray byte, or lines pasted from another source): UTF-8, and
     each row whose line is not valid UTF-8 is rejected ("not valid UTF-8 (byte 0xFF at column
     12)"), so nothing garbled is written. No code page is ever guessed for a single line: a guess
     on one short line depends on what that line holds (measured: one stray 0xFF made its line
     iso8859-13 at line 6 and Windows-1252 at line 8002).
Whatever the way, the file is checked once before the first write: a byte that no reading explains
(with `--encoding`, a BOM or a legacy code page), or binary data (a NUL, or control characters on a
line that is not UTF-8), stops the import with its line number and nothing written — wherever it is
in the file (`MailerError`).

Why some of our own code: charset-normalizer cannot choose between 8-bit code pages that decode a
short sample equally cleanly (measured with 3.5: it answers cp1250 for French Windows-1252 text,
which turns "Lefèvre" into "Lefčvre", and cp1252 for a Mac Roman "René"). `_plausibility` breaks
those ties by the shape of the text: accented Latin letters sit inside words that also have plain
letters, Cyrillic and Greek letters make words of their own script, an accented capital does not
follow a small letter, and the usual typographic signs (’ « » € …) are likely; on a tie, the code
pages spreadsheets write (Windows-1252, then Mac Roman, then DOS cp850) win.

Longer than ~400 lines because deciding a file's encoding over the whole file (BOMs, UTF-8,
legacy code pages, mixed files) is one decision with its evidence.
"""

from __future__ import annotations

import codecs
import io
import json
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ...errors import InvalidOption, MailerError

BLOCK = 1 << 20            # bytes read at a time while checking a file
SAMPLE_LIMIT = 64 * 1024   # bytes of non-UTF-8 lines given to the detector
SHOWN_LINES = 5            # line numbers a warning names

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32", "UTF-32 LE"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32 BE"),
         (codecs.BOM_UTF8, "utf-8-sig", "UTF-8 with BOM"), (codecs.BOM_UTF16_LE, "utf-16", "UTF-16 LE"),
         (codecs.BOM_UTF16_BE, "utf-16", "UTF-16 BE"))
# The code pages spreadsheets write, most likely first: the tie-break of the guess.
SPREADSHEET_CODE_PAGES = ("cp1252", "mac_roman", "cp850")
_LABELS = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8 with BOM", "cp1252": "Windows-1252", "mac-roman": "Mac Roman",
           "cp850": "DOS Latin-1 (cp850)", "iso8859-15": "ISO-8859-15", "latin-1": "ISO-8859-1",
           "iso8859-1": "ISO-8859-1", "cp1250": "Windows-1250", "cp1251": "Windows-1251", "cp1253": "Windows-1253",
           "cp1254": "Windows-1254", "cp1257": "Windows-1257", "utf-16": "UTF-16", "utf-16-le": "UTF-16 LE",
           "utf-16-be": "UTF-16 BE", "utf-32": "UTF-32"}


@dataclass(frozen=True)
class Decoding:
    """How to read a file: `codec` for every line. With `reject_invalid` (a UTF-8 file holding some
    bytes that are not UTF-8), lines are read as UTF-8 with the bad bytes kept as lone surrogates
    (`surrogateescape`) so that the parser rejects their rows; `invalid_lines` are the first of
    those lines, `invalid_count` how many."""

    codec: str
    label: str
    reject_invalid: bool = False
    invalid_lines: tuple[int, ...] = ()
    invalid_count: int = 0
    guessed: bool = False

    def describe(self) -> str:
        """For the summary: which encoding was used and how it was decided."""
        if self.reject_invalid:
            return f"UTF-8 ({plural(self.invalid_count, 'line')} not valid UTF-8: rejected)"
        return self.label + (" (detected: the file is not UTF-8)" if self.guessed else "")

    def warnings(self) -> list[str]:
        if self.reject_invalid:
            lines, verb = line_list(self.invalid_lines, self.invalid_count)
            their = "its row is" if self.invalid_count == 1 else "their rows are"
            return [f"{lines} {verb} not valid UTF-8 like the rest of the file: {their} rejected, nothing of "
                    f"{'it' if self.invalid_count == 1 else 'them'} written; fix the bytes, or if the whole file "
                    f"is in one other encoding, name it with --encoding"]
        if self.guessed:
            return [f"the file is not UTF-8: read as {self.label}; if accents look wrong, name the encoding "
                    f"with --encoding (e.g. --encoding cp1252, mac_roman, latin-1)"]
        return []

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Decoding":
        data = json.loads(text)
        data["invalid_lines"] = tuple(data["invalid_lines"])
        return cls(**data)


def plural(count: int, noun: str) -> str:
    """`1 line`, `3 lines`."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def line_list(lines: tuple[int, ...] | list[int], count: int | None = None) -> tuple[str, str]:
    """(`line 6`, `is`), (`lines 6, 9 and 12`, `are`), (`lines 6, 9, 12, 15, 18 and 7 more`, `are`):
    the first `lines` of `count` (default: as many as given) and the verb that agrees."""
    count = len(lines) if count is None else count
    shown = [str(line) for line in lines]
    if count == 1:
        return f"line {shown[0]}", "is"
    if count > len(shown):
        return f"lines {', '.join(shown)} and {count - len(shown)} more", "are"
    return f"lines {', '.join(shown[:-1])} and {shown[-1]}", "are"


def label_of(codec: str) -> str:
    name = codecs.lookup(codec).name
    return _LABELS.get(codec, _LABELS.get(name, name))


def plan_decoding(path: Path, forced: str | None = None) -> Decoding:
    """Decide how to read `path` and check that the whole file reads that way (see the module doc).

    Raises MailerError naming the file, the line and the byte when it does not, or when it holds
    binary data.
    """
    with path.open("rb") as raw:
        head = raw.read(4096)
    bom = next(((mark, codec, label) for mark, codec, label in _BOMS if head.startswith(mark)), None)
    if forced:
        try:
            codec = codecs.lookup(forced).name
        except LookupError:
            raise InvalidOption(f"--encoding {forced!r}: unknown encoding (e.g. utf-8, cp1252, latin-1, mac_roman, "
                              f"utf-16)") from None
        if codec == "utf-8" and bom and bom[1] == "utf-8-sig":
            codec = "utf-8-sig"
        decoding = Decoding(codec, f"{label_of(codec)} (--encoding)")
        _check_whole_file(path, decoding)
        return decoding
    if bom:
        decoding = Decoding(bom[1], bom[2])
        _check_whole_file(path, decoding)
        return decoding
    if b"\0" in head:
        utf16 = _utf16_without_bom(head)
        if utf16 is None:
            raise MailerError(f"{path}:{_line_of(head, head.index(0))}: binary data (a NUL byte), not a CSV text "
                              f"file; nothing imported")
        decoding = Decoding(utf16, f"{label_of(utf16)} (no byte-order mark)")
        _check_whole_file(path, decoding)
        return decoding
    return _plan_without_bom(path)


def text_lines(path: Path, decoding: Decoding) -> Iterator[str]:
    """The file's physical lines, decoded, each with its line break (`\\n`, `\\r\\n` or `\\r`): what
    `csv.reader` wants. Only call with a `plan_decoding` result (the file was checked). With
    `decoding.reject_invalid`, a byte that is not UTF-8 comes through as a lone surrogate
    (U+DC80–U+DCFF): see `undecodable`."""
    errors = "surrogateescape" if decoding.reject_invalid else "strict"
    with io.TextIOWrapper(path.open("rb"), encoding=decoding.codec, errors=errors, newline="") as text:
        yield from text


_ESCAPED = re.compile("[\udc80-\udcff]")


def undecodable(text: str) -> tuple[int, int] | None:
    """(byte, 1-based column) of the first byte of `text` (read with `surrogateescape`) that was not
    UTF-8, or None."""
    found = _ESCAPED.search(text)
    if found is None:
        return None
    return ord(found.group()) - 0xDC00, found.start() + 1


def readable(text: str) -> str:
    """`text` with each byte that was not UTF-8 shown as U+FFFD (for messages)."""
    return _ESCAPED.sub("\ufffd", text)


def whole_lines(raw: io.BufferedIOBase, size: int = BLOCK) -> Iterator[bytes]:
    """`raw` in pieces of about `size` bytes that end at a line break (or the end of the file), so a
    multi-byte character or a CR LF pair is never cut."""
    carry = b""
    while True:
        block = raw.read(size)
        if not block:
            if carry:
                yield carry
            return
        data = carry + block
        cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1))  # a final CR may start a CR LF
        if cut < 0:
            carry = data
            continue
        yield data[:cut + 1]
        carry = data[cut + 1:]


def line_breaks(data: bytes | str) -> int:
    """Physical line breaks in `data`: LF, CR LF and a lone CR each count once."""
    if isinstance(data, bytes):
        return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    return data.count("\n") + data.count("\r") - data.count("\r\n")


def _line_of(data: bytes, offset: int, first_line: int = 1) -> int:
    return first_line + line_breaks(data[:offset])


def _utf16_without_bom(head: bytes) -> str | None:
    """utf-16-le / utf-16-be when `head` has the NUL pattern of mostly-ASCII UTF-16 text, else None."""
    even, odd = head[0::2], head[1::2]
    if not odd:
        return None
    zero_even, zero_odd = even.count(0) / len(even), odd.count(0) / len(odd)
    if zero_odd > 0.3 and zero_even < 0.05:
        return "utf-16-le"
    if zero_even > 0.3 and zero_odd < 0.05:
        return "utf-16-be"
    return None


def _check_whole_file(path: Path, decoding: Decoding) -> None:
    """Decode the whole file with `decoding.codec`: an undecodable byte or a NUL is a MailerError."""
    decoder = codecs.getincrementaldecoder(decoding.codec)("strict")
    line = 1
    with path.open("rb") as raw:
        while True:
            block = raw.read(BLOCK)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                before = codecs.getincrementaldecoder(decoding.codec)("ignore").decode(block[:max(0, exc.start)])
                byte = exc.object[exc.start:exc.start + 1].hex() if exc.start < len(exc.object) else ""
                raise MailerError(f"{path}:{line + line_breaks(before)}: not valid {decoding.label}"
                                  + (f" (byte 0x{byte})" if byte else " (the file ends inside a character)")
                                  + "; nothing imported") from None
            if "\0" in text:
                raise MailerError(f"{path}:{line + line_breaks(text[:text.index(chr(0))])}: binary data (a NUL "
                                  f"character), not a CSV text file; nothing imported")
            line += line_breaks(text)
            if not block:
                return


_MULTI_BYTE = re.compile("[^\x00-\x7f\udc80-\udcff]")   # a character UTF-8 writes in several bytes
_LEAD_BYTES = bytes(range(0xC0, 0x100))  # in valid UTF-8, each starts one multi-byte sequence
_CONTROLS = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f]")  # never in text, whatever its code page


def _plan_without_bom(path: Path) -> Decoding:
    """Steps 3 and 4 of the module doc: UTF-8 if every line is; else a code page guessed for the
    whole file, or UTF-8 with its bad lines rejected.

    The common case (valid UTF-8) costs one pass of C-speed checks; lines are only counted once a
    line that is not UTF-8 turns up.
    """
    invalid: list[int] = []       # the first non-UTF-8 lines
    invalid_count = 0
    sample = bytearray()
    utf8_sequences = 0            # valid multi-byte UTF-8 sequences (their lead bytes)
    bad_bytes = 0                 # bytes that are in no valid UTF-8 sequence
    offset = 0                    # bytes before the current chunk
    line: int | None = None       # the line number at `offset`, once needed
    with path.open("rb") as raw:
        for chunk in whole_lines(raw):
            if b"\0" in chunk:
                raise MailerError(f"{path}:{line_at(path, offset + chunk.index(0))}: binary data (a NUL byte), "
                                  f"not a CSV text file; nothing imported")
            plain = chunk.isascii()
            if not plain:
                try:
                    chunk.decode("utf-8")
                    utf8_sequences += len(chunk) - len(chunk.translate(None, _LEAD_BYTES))
                    plain = True
                except UnicodeDecodeError:
                    pass
            if plain:
                if line is not None:
                    line += line_breaks(chunk)
                offset += len(chunk)
                continue
            if line is None:
                line = line_at(path, offset)
            for piece in chunk.splitlines(keepends=True):
                if not piece.isascii():
                    try:
                        piece.decode("utf-8")
                        utf8_sequences += len(piece) - len(piece.translate(None, _LEAD_BYTES))
                    except UnicodeDecodeError:
                        if _CONTROLS.search(piece):
                            raise MailerError(f"{path}:{line}: binary data (control characters), not a CSV text "
                                              f"file; nothing imported") from None
                        text = piece.decode("utf-8", "surrogateescape")  # "Zoë Garçon\xff": 2 sequences, 1 bad byte
                        utf8_sequences += len(_MULTI_BYTE.findall(text))
                        bad_bytes += len(_ESCAPED.findall(text))
                        invalid_count += 1
                        if len(invalid) < SHOWN_LINES:
                            invalid.append(line)
                        if len(sample) < SAMPLE_LIMIT:
                            sample += piece
                line += 1
            offset += len(chunk)
    if not invalid_count:
        return Decoding("utf-8", "UTF-8")
    if utf8_sequences >= bad_bytes:
        return Decoding("utf-8", "UTF-8", reject_invalid=True, invalid_lines=tuple(invalid),
                        invalid_count=invalid_count)
    guess = guess_code_page(bytes(sample))
    if guess is None:
        raise MailerError(f"{path}:{invalid[0]}: neither UTF-8 nor text in a code page we recognise (binary data?); "
                          f"save it as UTF-8 CSV, or name its encoding with --encoding; nothing imported")
    decoding = Decoding(guess, label_of(guess), guessed=True)
    _check_whole_file(path, decoding)
    return decoding


def line_at(path: Path, offset: int) -> int:
    """The line number of the byte at `offset` of the file."""
    line, position = 1, 0
    with path.open("rb") as raw:
        for chunk in whole_lines(raw):
            if position + len(chunk) > offset:
                return line + line_breaks(chunk[:offset - position])
            line += line_breaks(chunk)
            position += len(chunk)
    return line


def guess_code_page(sample: bytes) -> str | None:
    """The 8-bit code page (Python codec name) `sample` is most plausibly written in, or None when
    charset-normalizer finds no clean reading (binary data)."""
    import charset_normalizer  # ~50 ms of imports, only for files that are not UTF-8

    matches = charset_normalizer.from_bytes(sample)
    if not matches:
        return None
    lowest = min(match.chaos for match in matches)
    pool: list[str] = []
    for match in matches:
        if match.chaos <= lowest + 0.05:
            pool.extend(codec for codec in match.could_be_from_charset if codec not in pool)
    # The spreadsheet code pages are always candidates: on a line or two the detector may not propose them.
    order = list(SPREADSHEET_CODE_PAGES) + [codec for codec in pool if codec not in SPREADSHEET_CODE_PAGES]
    scored = []
    for rank, codec in enumerate(order):
        try:
            text = sample.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
        single_byte = len(text) == len(sample)
        scored.append((single_byte, _plausibility(text), -rank, codec))
    if not scored:
        return None
    best = max(scored)
    if not best[0] or best[1] <= 0:  # no clean 8-bit reading: trust the detector's own first choice
        return matches.best().encoding
    return best[3]


_COMMON_LATIN = frozenset("àâäáãåæçèéêëìíîïñòóôöõøœùúûüýÿßÀÂÄÁÃÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÖÕØŒÙÚÛÜÝŸ"
                          "ąćęłńśźżčďěňřšťůžőűĄĆĘŁŃŚŹŻČĎĚŇŘŠŤŮŽŐŰ")
_COMMON_SIGNS = frozenset("’‘“”«»–—…€£°·\u00a0\u202f©®™§¡¿")


def _script(char: str) -> str:
    return unicodedata.name(char, "?").split(" ", 1)[0]


def _plausibility(text: str) -> float:
    """How much `text` looks like real writing rather than a wrong code page (higher is better)."""
    score = 0.0
    length = len(text)
    for index, char in enumerate(text):
        if char < "\x80":
            continue
        if unicodedata.category(char) in ("Cc", "Co", "Cn"):
            score -= 5
            continue
        if not char.isalpha():
            score += 1 if char in _COMMON_SIGNS else -1
            continue
        start = index
        while start > 0 and text[start - 1].isalpha():
            start -= 1
        end = index + 1
        while end < length and text[end].isalpha():
            end += 1
        word, script = text[start:end], _script(char)
        if script == "LATIN":
            if not any(c < "\x80" for c in word):
                score -= 1      # a word of accents only: another script read in the wrong code page
            elif char.isupper() and index > start and text[index - 1].islower():
                score -= 1      # "RenÇ"
            else:
                score += 2 if char in _COMMON_LATIN else 0.5
        elif script in ("CYRILLIC", "GREEK"):
            score += 2 if len(word) > 1 and all(_script(c) == script for c in word) else -2
        else:
            score -= 0.5
    return score
