"""Which characters a CSV file holds: its encoding, decided and checked before anything is written.

Lists come from Excel (Windows-1252 on a French Windows, Mac Roman from an old Mac Excel, UTF-16
"Unicode text"), from web services (UTF-8, sometimes with a BOM) or from files pasted together from
two of those. The decision, in order (`plan_decoding`):

1. `--encoding` given: that codec for the whole file (a UTF BOM of the same family is dropped).
2. A byte-order mark: UTF-8, UTF-16 LE/BE or UTF-32 LE/BE. UTF-16 without a BOM is recognised by
   its pattern of NUL bytes.
3. The whole file is valid UTF-8: UTF-8.
4. Otherwise the lines that are not UTF-8 are given to `charset-normalizer`, whose mess detector keeps
   the code pages that decode them cleanly, and `_plausibility` picks among those. When other lines
   hold UTF-8 multi-byte text (a file pasted together from two sources), each line is read as UTF-8
   when it is valid UTF-8 and in the guessed code page otherwise; the summary names those lines.

Whatever the way, the whole file is decoded once before the first write: a byte that no reading
explains, or a NUL (binary data), stops the import with its line number and nothing written —
wherever it is in the file (`MailerError`).

Why some of our own code: charset-normalizer cannot choose between 8-bit code pages that decode a
short sample equally cleanly (measured with 3.5: it answers cp1250 for French Windows-1252 text,
which turns "Lefèvre" into "Lefčvre", and cp1252 for a Mac Roman "René"). `_plausibility` breaks
those ties by the shape of the text: accented Latin letters sit inside words that also have plain
letters, Cyrillic and Greek letters make words of their own script, an accented capital does not
follow a small letter, and the usual typographic signs (’ « » € …) are likely; on a tie, the code
pages spreadsheets write (Windows-1252, then Mac Roman, then DOS cp850) win.
"""

from __future__ import annotations

import codecs
import io
import json
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ..errors import MailerError

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
    """How to read a file: `codec` for every line, or — when `fallback` is set — UTF-8 for the lines
    that are valid UTF-8 and `fallback` for the others (`fallback_lines` are the first of those,
    `fallback_count` how many)."""

    codec: str
    label: str
    fallback: str | None = None
    fallback_lines: tuple[int, ...] = ()
    fallback_count: int = 0
    guessed: bool = False

    def describe(self) -> str:
        """For the summary: which encoding was used and how it was decided."""
        if self.fallback:
            return f"UTF-8, and {label_of(self.fallback)} for {self.fallback_count} line(s) that are not UTF-8"
        return self.label + (" (detected: the file is not UTF-8)" if self.guessed else "")

    def warnings(self) -> list[str]:
        if self.fallback:
            lines = ", ".join(map(str, self.fallback_lines)) + (", …" if self.fallback_count > len(self.fallback_lines) else "")
            return [f"lines {lines} are not UTF-8 like the rest of the file: read as {label_of(self.fallback)}; "
                    f"check their accents, or force one reading with --encoding"]
        if self.guessed:
            return [f"the file is not UTF-8: read as {self.label}; if accents look wrong, name the encoding "
                    f"with --encoding (e.g. --encoding cp1252, mac_roman, latin-1)"]
        return []

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Decoding":
        data = json.loads(text)
        data["fallback_lines"] = tuple(data["fallback_lines"])
        return cls(**data)


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
            raise MailerError(f"--encoding {forced!r}: unknown encoding (e.g. utf-8, cp1252, latin-1, mac_roman, "
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
    `csv.reader` wants. Only call with a `plan_decoding` result (the file was checked)."""
    if decoding.fallback is None:
        with io.TextIOWrapper(path.open("rb"), encoding=decoding.codec, errors="strict", newline="") as text:
            yield from text
        return
    fallback = decoding.fallback
    with path.open("rb") as raw:
        for chunk in whole_lines(raw):
            for line in chunk.splitlines(keepends=True):
                try:
                    yield line.decode("utf-8")
                except UnicodeDecodeError:
                    yield line.decode(fallback)


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


def _plan_without_bom(path: Path) -> Decoding:
    """Steps 3 and 4 of the module doc: UTF-8 if every line is, else a guessed code page.

    The common case (valid UTF-8) costs one pass of C-speed checks; lines are only counted once a
    line that is not UTF-8 turns up.
    """
    invalid: list[int] = []       # the first non-UTF-8 lines
    invalid_count = 0
    sample = bytearray()
    utf8_text = False             # some line holds valid multi-byte UTF-8
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
                    utf8_text = plain = True
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
                        utf8_text = True
                    except UnicodeDecodeError:
                        invalid_count += 1
                        if len(invalid) < SHOWN_LINES:
                            invalid.append(line)
                        if len(sample) < SAMPLE_LIMIT:
                            sample += piece
                line += 1
            offset += len(chunk)
    if not invalid_count:
        return Decoding("utf-8", "UTF-8")
    guess = guess_code_page(bytes(sample))
    if guess is None:
        raise MailerError(f"{path}:{invalid[0]}: neither UTF-8 nor text in a code page we recognise (binary data?); "
                          f"save it as UTF-8 CSV, or name its encoding with --encoding; nothing imported")
    if not utf8_text:
        decoding = Decoding(guess, label_of(guess), guessed=True)
        _check_whole_file(path, decoding)
        return decoding
    decoding = Decoding("utf-8", "UTF-8", fallback=guess, fallback_lines=tuple(invalid), fallback_count=invalid_count)
    _check_fallback_lines(path, guess)
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


def _check_fallback_lines(path: Path, codec: str) -> None:
    """In a mixed file, every line that is not UTF-8 must read in `codec`."""
    line = 1
    with path.open("rb") as raw:
        for chunk in whole_lines(raw):
            for piece in chunk.splitlines(keepends=True):
                if not piece.isascii():
                    try:
                        piece.decode("utf-8")
                    except UnicodeDecodeError:
                        try:
                            piece.decode(codec)
                        except UnicodeDecodeError as exc:
                            raise MailerError(f"{path}:{line}: neither UTF-8 nor {label_of(codec)} (byte "
                                              f"0x{piece[exc.start:exc.start + 1].hex()}); name the encoding with "
                                              f"--encoding; nothing imported") from None
                line += 1


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
