"""Wrapping the plain-text part by what is actually written, not by what the editor wrote.

A URL in the text part is not always sent as written: with click tracking each content link becomes
`BASE/c/TOKEN` (`content/tracking.py`), and slots (`%%mailer:unsubscribe_url%%`) become a recipient's
URL. Wrapping must count each by the length it has in the message, or lines overflow (a short link
tracked) or break early (a long one). So every URL and slot is swapped for a stand-in of its written
length (private-use characters, no whitespace: `textwrap` never breaks it), the line is wrapped with
the standard library's `textwrap` (no word broken, no break at hyphens or no-break spaces), and the
originals are put back.

A URL longer than the width stays whole on a line of its own (with a list, quote or arrow marker
before it, or the punctuation that closes a sentence after it): a broken URL no longer works.

Shapes: `wrap(text, width, first, rest, measure)` → str (one paragraph, hard line breaks kept);
`layout(text, width, measure, slots)` → str (every line of a rendered text part over `width`
rewrapped). `measure(url)` → the URL's written length; None: its own length. `slots`: a `Slots`
(the slot syntax, owned by `render`, which passes its pattern, and each slot's filled length);
None: slots are measured as written.
"""

from __future__ import annotations

import re
import textwrap
from typing import Callable, NamedTuple

TEXT_WIDTH = 76  # characters per line of the text part (RFC 5322 §2.1.1 recommends at most 78)
# a URL in running text: up to whitespace or a bracket that cannot belong to it
TEXT_URL = re.compile(r"""https?://[^\s<>"'\[\]{}]+""", re.IGNORECASE)
_TRAILING = ".,;:!?»”’'"
_STAND_IN = re.compile("([\U000F0000-\U000FFFFD])\uE000*")
_MARKERS = re.compile(r"^\s*(?:[-*>→•]\s*|\d+\.\s+)*")

Measure = Callable[[str], int]


class Slots(NamedTuple):
    """The slots of a text: `pattern` finds one (group 1 its name), `width(name)` → the length it has
    once filled."""

    pattern: re.Pattern[str]
    width: Callable[[str], int]


def text_url(match: str) -> str:
    """A URL found in running text, without the punctuation that ends the sentence around it
    (a closing parenthesis is kept when the URL opened one: Wikipedia's `…_(film)`)."""
    url = match
    while url:
        if url[-1] in _TRAILING:
            url = url[:-1]
        elif url[-1] == ")" and url.count(")") > url.count("("):
            url = url[:-1]
        else:
            break
    return url


def _swap(text: str, measure: Measure | None, slots: Slots | None) -> tuple[str, list[str]]:
    """`text` with each URL (and slot) replaced by a stand-in of its written length; the originals."""
    originals: list[str] = []

    def stand_in(original: str, length: int) -> str:
        originals.append(original)
        return chr(0xF0000 + len(originals) - 1) + "\uE000" * max(0, length - 1)

    def url(match: re.Match) -> str:
        whole = match.group(0)
        found = text_url(whole)
        return stand_in(found, measure(found) if measure else len(found)) + whole[len(found):]

    if slots is not None:
        text = slots.pattern.sub(lambda m: stand_in(m.group(0), slots.width(m.group(1))), text)
    return TEXT_URL.sub(url, text), originals


def _restore(text: str, originals: list[str]) -> str:
    return _STAND_IN.sub(lambda m: originals[ord(m.group(1)) - 0xF0000], text)


def wrap(text: str, width: int, first: str = "", rest: str = "", measure: Measure | None = None,
         slots: Slots | None = None) -> str:
    """One paragraph wrapped at `width` as written (`measure`), `first`/`rest` the indents of its
    first and following lines; hard line breaks (`\\n`) kept."""
    swapped, originals = _swap(text, measure, slots)
    lines = []
    for index, hard_line in enumerate(swapped.split("\n")):
        wrapped = textwrap.wrap(hard_line, width=width, initial_indent=first if index == 0 else rest,
                                subsequent_indent=rest, break_long_words=False, break_on_hyphens=False)
        lines.extend(wrapped or [rest.rstrip()])
    return _restore("\n".join(lines), originals)


def layout(text: str, width: int = TEXT_WIDTH, measure: Measure | None = None,
           slots: Slots | None = None) -> str:
    """Every line of a rendered text part longer than `width` as written, rewrapped (its leading
    blanks kept as the indent of its continuation lines); lines within the width, and lines holding
    a single URL or slot after their markers, stay as they are. What the template writes (footer,
    titles) gets the same rule as the briefs (`markup.to_text`, which wraps with `wrap`)."""
    out = []
    for line in text.split("\n"):
        swapped, _ = _swap(line, measure, slots)
        if len(swapped) <= width or len(_MARKERS.sub("", swapped).split(" ")) == 1:
            out.append(line)
            continue
        indent = line[:len(line) - len(line.lstrip(" "))]
        out.append(wrap(line.lstrip(" "), width, indent, indent, measure, slots))
    return "\n".join(out)
