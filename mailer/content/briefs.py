"""Parsing brief files into `Brief` objects, with file:line errors.

Two formats live side by side in an issue folder, ordered by file name:

* `*.txt` — the editors' arrow format: a line starting with `-->` starts a brief that runs to the
  next such line or the end of the file; text before the first arrow is the issue's intro.
  A brief whose first line is a Markdown heading (`--> # Titre`) takes it as its title.
* `*.md` — one brief per file, with optional front matter between `---` lines
  (`title`, `link`, `image`, `image_alt`); a leading `# Heading` is the title when none is given.

Files are UTF-8 (a BOM is allowed), with LF or CRLF line endings. Control characters are refused
with the file, line, column and code point (`control_character`): C0 controls other than TAB, LF
and CR, DEL, C1 controls, U+2028 and U+2029, Unicode's 66 noncharacters (U+FDD0–U+FDEF and the
last two code points of every plane, U+FFFE/U+FFFF … U+10FFFE/U+10FFFF; Unicode 15 §23.7) and
surrogates (only reachable as a reference), typed or written as a character reference (`&#12;`).
They are invisible in most editors, and none means anything in an email: a form feed or an escape
pasted from another program would otherwise break the MJML or show as garbage (an XML parser
refuses U+FFFE/U+FFFF and surrogates, XML 1.0 §2.2). In a subject or preheader (`header=True`) the
bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069, Unicode UAX #9) are
refused too: there they can disguise what the subject says (a reversed file name, a fake sender);
in a brief's text they are left alone, as right-to-left writing legitimately uses them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError

ARROW = "-->"
FRONT_MATTER_KEYS = ("title", "link", "image", "image_alt")
BRIEF_SUFFIXES = (".txt", ".md")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
_FRONT_LINE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_-]*)\s*:\s*(?P<value>.*?)\s*$")
_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
CONTROL_CHARACTERS = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff{_NONCHARACTERS}]")
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")  # refused in subjects and preheaders only
_CHARACTER_REFERENCE = re.compile(r"&#(?:[xX]([0-9a-fA-F]{1,8})|([0-9]{1,10}));")
# Unicode's name aliases of the C0 controls (unicodedata.name() has none for them).
_C0_NAMES = ("NULL", "START OF HEADING", "START OF TEXT", "END OF TEXT", "END OF TRANSMISSION", "ENQUIRY",
             "ACKNOWLEDGE", "BELL", "BACKSPACE", "CHARACTER TABULATION", "LINE FEED", "LINE TABULATION",
             "FORM FEED", "CARRIAGE RETURN", "SHIFT OUT", "SHIFT IN", "DATA LINK ESCAPE", "DEVICE CONTROL ONE",
             "DEVICE CONTROL TWO", "DEVICE CONTROL THREE", "DEVICE CONTROL FOUR", "NEGATIVE ACKNOWLEDGE",
             "SYNCHRONOUS IDLE", "END OF TRANSMISSION BLOCK", "CANCEL", "END OF MEDIUM", "SUBSTITUTE", "ESCAPE",
             "INFORMATION SEPARATOR FOUR", "INFORMATION SEPARATOR THREE", "INFORMATION SEPARATOR TWO",
             "INFORMATION SEPARATOR ONE")


@dataclass(frozen=True)
class Brief:
    """One news item. `body` is the editor's Markdown, untouched."""

    body: str
    path: Path
    line: int
    title: str | None = None
    link: str | None = None
    image: str | None = None
    image_alt: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class BriefFile:
    """What one file contributes: an optional intro and its briefs, in order."""

    path: Path
    intro: str | None
    briefs: tuple[Brief, ...]


def describe_character(char: str) -> str:
    """`U+000C (FORM FEED)`: the code point and its name (or alias, for C0 controls)."""
    code = ord(char)
    if code < 0x20:
        name = _C0_NAMES[code]
    elif code == 0x7F:
        name = "DELETE"
    elif 0x80 <= code <= 0x9F:
        name = "C1 CONTROL"
    elif 0xD800 <= code <= 0xDFFF:
        name = "SURROGATE"
    elif 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
        name = "NONCHARACTER"
    else:
        name = unicodedata.name(char, "unnamed")
    return f"U+{code:04X} ({name})"


def control_character(text: str, *, markdown: bool = False, header: bool = False) -> tuple[int, str, str] | None:
    """The first control character of `text` (see the module docstring; `header`: bidirectional
    controls too), also as a character reference when `markdown`: (index in text, the character,
    how it was written), or None."""
    found = CONTROL_CHARACTERS.search(text)
    if header:
        bidi = BIDI_CONTROLS.search(text)
        if bidi and (found is None or bidi.start() < found.start()):
            found = bidi
    first = (found.start(), found.group(), "") if found else None
    if markdown and "&#" in text:
        for ref in _CHARACTER_REFERENCE.finditer(text):
            if first and ref.start() > first[0]:
                break
            code = int(ref.group(1), 16) if ref.group(1) else int(ref.group(2))
            if code < 0x110000 and (CONTROL_CHARACTERS.fullmatch(chr(code))
                                    or (header and BIDI_CONTROLS.fullmatch(chr(code)))):
                return ref.start(), chr(code), ref.group()
    return first


def refuse_control_characters(text: str, path: Path, *, markdown: bool = False) -> None:
    """SourceError naming `path:line`, the column and the character when `text` holds one."""
    found = control_character(text, markdown=markdown)
    if found is None:
        return
    index, char, written = found
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    how = f"character reference {written} is " if written else ""
    raise SourceError(path, f"{how}control character {describe_character(char)} at column {column}: "
                            "delete it (most editors do not show it)", line)


def read_text(path: Path, *, markdown: bool = False) -> str:
    """Read a UTF-8 file (BOM allowed), normalise line endings to LF; decoding errors and control
    characters name the line (`markdown`: character references to them too)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(path, f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8", line) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    refuse_control_characters(text, path, markdown=markdown)
    return text


def parse_arrow_text(text: str, path: Path) -> BriefFile:
    """Split arrow-format text into intro and briefs."""
    lines = text.split("\n")
    intro_lines: list[str] = []
    chunks: list[tuple[int, list[str]]] = []
    for number, line in enumerate(lines, start=1):
        if line.startswith(ARROW):
            chunks.append((number, [line[len(ARROW):]]))
        elif chunks:
            chunks[-1][1].append(line)
        else:
            intro_lines.append(line)

    briefs = []
    for number, chunk in chunks:
        body = _dedent_first("\n".join(chunk)).strip()
        if not body:
            raise SourceError(path, "empty brief: a '-->' line with nothing after it", number)
        title, body = _split_heading(body)
        if not body and title:
            raise SourceError(path, f"brief {title!r} has a title but no text", number)
        briefs.append(Brief(body=body, path=path, line=number, title=title))
    intro = "\n".join(intro_lines).strip() or None
    return BriefFile(path=path, intro=intro, briefs=tuple(briefs))


def parse_markdown_text(text: str, path: Path) -> BriefFile:
    """One brief from a Markdown file with optional front matter."""
    lines = text.split("\n")
    meta: dict[str, str] = {}
    body_start = 0
    if lines and lines[0].strip() == "---":
        if not any(line.strip() == "---" for line in lines[1:]):
            raise SourceError(path, "front matter opened with '---' is never closed (add a '---' line after it)", 1)
        for index in range(1, len(lines)):
            line = lines[index]
            if line.strip() == "---":
                body_start = index + 1
                break
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            match = _FRONT_LINE.match(line)
            if not match:
                raise SourceError(path, f"malformed front matter line {line.strip()!r} (expected 'key: value')", index + 1)
            key = match["key"].lower()
            if key not in FRONT_MATTER_KEYS:
                raise SourceError(path, f"unknown front matter key {key!r} (allowed: {', '.join(FRONT_MATTER_KEYS)})", index + 1)
            meta[key] = _unquote(match["value"])

    body_line = body_start + 1
    while body_line <= len(lines) and not lines[body_line - 1].strip():
        body_line += 1
    body = "\n".join(lines[body_start:]).strip()
    title = meta.get("title") or None
    if title is None:
        title, body = _split_heading(body)
    if not body:
        raise SourceError(path, "empty brief: the file has no text", min(body_line, max(len(lines), 1)))
    for key in ("link", "image"):
        value = meta.get(key)
        if value and not re.match(r"^(https?://|mailto:)\S+$", value):
            raise SourceError(path, f"{key} must be an absolute http(s) URL, not {value!r}", 1)
    brief = Brief(body=body, path=path, line=body_line, title=title, link=meta.get("link") or None,
                  image=meta.get("image") or None, image_alt=meta.get("image_alt"))
    return BriefFile(path=path, intro=None, briefs=(brief,))


def parse_file(path: Path) -> BriefFile:
    text = read_text(path, markdown=True)
    if path.suffix == ".md":
        return parse_markdown_text(text, path)
    return parse_arrow_text(text, path)


def brief_files(folder: Path) -> list[Path]:
    """The brief files of an issue folder, in the order their briefs appear (by file name)."""
    return sorted(
        (p for p in folder.iterdir()
         if p.is_file() and p.suffix in BRIEF_SUFFIXES and not p.name.startswith((".", "_"))),
        key=lambda p: p.name,
    )


def _split_heading(body: str) -> tuple[str | None, str]:
    first, _, rest = body.partition("\n")
    match = _HEADING.match(first.strip())
    if match:
        return match["title"], rest.strip()
    return None, body


def _dedent_first(text: str) -> str:
    """`-->   text` keeps no leading blanks; later lines are left alone."""
    return text.lstrip(" \t\u00a0")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value
