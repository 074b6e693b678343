"""Header fields holding free text (Subject, display names, List-Id phrase), written so that any
value reads back exactly through a standard parser.

Why our own encoder rather than the `email` package's: its folder (Python 3.11, cpython#92081) can
leave the space between two words *between* two RFC 2047 encoded words, where RFC 2047 §6.2 makes
every decoder drop it — about 4 % of accented French subjects came back with two words glued
(`…régionalesDonnées`). It also costs ~200 µs a header, and the To header is built per recipient.
`email.header.Header` round-trips but costs ~180 µs and encodes plain ASCII for nothing. The rule
used here is short, and tests/test_headers.py checks it on thousands of generated values against
`email.parser.BytesParser(policy=policy.default)` and `email.header.decode_header`:

* the value is normalised first (`clean_header_value`): control characters (C0, DEL, C1, U+2028,
  U+2029; TAB, CR and LF included) become spaces, runs of ASCII spaces one space, no space at either
  end. Other Unicode spaces (the no-break spaces of French typography) are kept in unstructured
  text; in display names every space is a plain one (`clean_display_name`);
* printable ASCII without `=?` is written as it is, folded at its spaces (RFC 5322 §2.2.3); in a
  display name, as atoms or one quoted-string (§3.2.4, §3.2.5);
* anything else is written ENTIRELY as encoded words (`=?utf-8?q?…?=` or `?b?`, whichever is
  shorter; Q for ASCII), every space of the value inside a word: the only whitespace left between words is the
  folding whitespace that decoders drop by design. A word is at most 75 characters (RFC 2047 §2),
  never splits a character (§5), and in Q uses only the characters §5(3) allows in a phrase;
* lines are at most 78 characters (76 when they hold an encoded word, RFC 2047 §2), except a single ASCII word too long for a line, written whole
  (RFC 5322 allows 998; longer than that, the value is encoded instead).
"""

from __future__ import annotations

import base64
import re
import string

CRLF = b"\r\n"
MAX_LINE = 78  # RFC 5322 §2.1.1: SHOULD
ENCODED_LINE = 76  # RFC 2047 §2: each line of a header field holding an encoded word
HARD_LINE = 998  # RFC 5322 §2.1.1: MUST
MAX_WORD = 75  # RFC 2047 §2
_WORD_OVERHEAD = len("=?utf-8?q??=")

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(" {2,}")
# RFC 2047 §5(3): the only characters a Q-encoded word may hold in a phrase (we use them everywhere).
_Q_SAFE = (string.ascii_letters + string.digits + "!*+-/").encode("ascii")
_Q_TABLE = tuple(chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in range(256))
# RFC 5322 §3.2.3 atext: what a display name may hold without quotes.
_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~ ")
_PRINTABLE_ASCII = frozenset(chr(c) for c in range(0x20, 0x7f))


def clean_header_value(value: str) -> str:
    """One line of text for a header: control characters → spaces, ASCII space runs → one, stripped.

    The no-break spaces (U+00A0, U+202F) of French typography survive; a value can never inject a
    header (CR and LF are control characters)."""
    if _CONTROLS.search(value):
        value = _CONTROLS.sub(" ", value)
    if "  " in value:
        value = _SPACES.sub(" ", value)
    return value.strip(" ")


def clean_display_name(value: str) -> str:
    """A display name as `clean_header_value`, with every Unicode space a plain one: parsers fold
    any run of whitespace in a phrase into one space (`email`'s does, after decoding), so that is
    what round-trips."""
    if value.isprintable() and "  " not in value and value[:1] != " " and value[-1:] != " ":
        # already clean (the usual name): every control character and every whitespace but the ASCII
        # space is unprintable, so there is nothing to replace, fold or strip
        return value
    return " ".join(clean_header_value(value).split())


def needs_encoding(value: str) -> bool:
    """True unless `value` (already clean) can be written as it is: printable ASCII without `=?`."""
    return not (value.isascii() and _PRINTABLE_ASCII.issuperset(value)) or "=?" in value


def encoded_words(text: str, first_room: int = MAX_WORD, room: int = MAX_WORD) -> list[str]:
    """`text` as RFC 2047 UTF-8 encoded words: the first at most `first_room` characters long, the
    others at most `room` (≤ 75). Q or B, whichever is shorter for the whole text; always Q for
    ASCII (SpamAssassin scores "base64 encoded unnecessarily", SUBJECT_EXCESS_BASE64)."""
    data = text.encode("utf-8")
    # Q costs 3 characters per byte outside the safe set (a space costs 1: "_").
    escaped = len(data.translate(None, _Q_SAFE)) - text.count(" ")
    use_q = text.isascii() or len(data) + 2 * escaped <= 4 * -(-len(data) // 3)
    first_room = max(first_room, _WORD_OVERHEAD + 4)
    if use_q:
        encoded = "".join([_Q_TABLE[b] for b in data])
        if len(encoded) + _WORD_OVERHEAD <= first_room:
            return [f"=?utf-8?q?{encoded}?="]
    else:
        encoded_b = base64.b64encode(data)
        if len(encoded_b) + _WORD_OVERHEAD <= first_room:
            return [f"=?utf-8?b?{encoded_b.decode('ascii')}?="]
    words: list[str] = []
    budget = first_room - _WORD_OVERHEAD
    if use_q:
        chunk: list[str] = []
        size = 0
        for char in text:
            piece = "".join([_Q_TABLE[b] for b in char.encode("utf-8")])
            if size + len(piece) > budget and chunk:
                words.append("=?utf-8?q?" + "".join(chunk) + "?=")
                chunk, size, budget = [], 0, room - _WORD_OVERHEAD
            chunk.append(piece)
            size += len(piece)
        words.append("=?utf-8?q?" + "".join(chunk) + "?=")
        return words
    start = 0
    nbytes = 0
    for index, char in enumerate(text):
        length = len(char.encode("utf-8"))
        if 4 * -(-(nbytes + length) // 3) > budget and index > start:
            words.append("=?utf-8?b?" + base64.b64encode(text[start:index].encode("utf-8")).decode("ascii") + "?=")
            start, nbytes, budget = index, 0, room - _WORD_OVERHEAD
        nbytes += length
    words.append("=?utf-8?b?" + base64.b64encode(text[start:].encode("utf-8")).decode("ascii") + "?=")
    return words


def _fold(name: str, pieces: list[tuple[str, str]]) -> bytes | None:
    """`Name: ` and the (separator, token) pieces, folded before a token when the line would pass 78
    characters; None when a line would still pass 998. A separator is " " between ASCII words (the
    space is kept: unfolding only removes the CRLF) and "" between encoded words (the folding
    space is then the whitespace that decoders drop by design)."""
    lines: list[str] = []
    line = f"{name}:"
    encoded = False  # the current line holds an encoded word: 76, not 78
    for separator, token in pieces:
        is_word = token.startswith("=?")
        limit = ENCODED_LINE if encoded or is_word else MAX_LINE
        if len(line) + 1 + len(token) <= limit or line == f"{name}:":
            line += (" " if line == f"{name}:" else separator) + token
            encoded = encoded or is_word
        else:
            lines.append(line)
            line = " " + token
            encoded = is_word
    lines.append(line)
    if any(len(line) > HARD_LINE for line in lines):
        return None
    return "\r\n".join(lines).encode("utf-8") + CRLF


def _encoded_pieces(text: str, first_room: int) -> list[tuple[str, str]]:
    words = encoded_words(text, first_room=first_room)
    return [(" ", words[0]), *(("", word) for word in words[1:])]


def unstructured(name: str, value: str) -> bytes:
    """A complete `Name: value` field with CRLF for an unstructured header (Subject, Comments…),
    `value` cleaned by `clean_header_value` first."""
    value = clean_header_value(value)
    if not value:
        return f"{name}: ".encode("ascii") + CRLF
    if not needs_encoding(value):
        folded = _fold(name, [(" ", word) for word in value.split(" ")])
        if folded is not None:
            return folded
    folded = _fold(name, _encoded_pieces(value, ENCODED_LINE - len(name) - 2))
    assert folded is not None  # every word is ≤ 75 characters
    return folded


def _encoded_phrase(phrase: str, first_room: int) -> list[tuple[str, str]]:
    """A display name that needs encoding, as phrase pieces. Python's parser (3.11, policy.default)
    reads the whitespace between two adjacent encoded words of a phrase as a space, where RFC 2047
    §6.2 and `decode_header` drop it: no two encoded words may touch in a phrase. So one word when
    the name fits in 75 characters; otherwise each run of words that need encoding becomes one
    encoded word, the plain ASCII atoms between them stay plain (the spaces beside them are kept by
    every decoder). A run longer than 75 characters then stays one longer word (its own line, ≤ 998),
    which decoders accept: the only case where RFC 2047 §2's limit gives way."""
    words = encoded_words(phrase, first_room=first_room)
    if len(words) == 1:
        return [(" ", words[0])]
    pieces: list[tuple[str, str]] = []
    run: list[str] = []
    for token in [*phrase.split(" "), None]:
        if token is not None and (needs_encoding(token) or not _ATEXT.issuperset(token)):
            run.append(token)
            continue
        if run:  # (past ~700 bytes a run needs two words even so: nothing is lost, a space may show)
            long_words = encoded_words(" ".join(run), first_room=HARD_LINE - 2, room=HARD_LINE - 2)
            pieces.extend([(" ", long_words[0]), *(("", word) for word in long_words[1:])])
            run = []
        if token is not None:
            pieces.append((" ", token))
    return pieces


def list_id(phrase: str, ident: str) -> bytes:
    """`List-Id: phrase <ident>` with CRLF (RFC 2919 §3; `ident` an ASCII dot-atom, never encoded).

    Mail parsers read List-Id as unstructured text (Python's registry does), so a phrase that is not
    plain atoms is written as encoded words with every space inside them, as `unstructured` does,
    rather than as a quoted-string that would read back with its quotes and backslashes."""
    phrase = clean_display_name(phrase)
    tail = f"<{ident}>"
    if not phrase:
        pieces = [(" ", tail)]
    elif _ATEXT.issuperset(phrase) and "=?" not in phrase:
        pieces = [*((" ", word) for word in phrase.split(" ")), (" ", tail)]
    else:
        pieces = [*_encoded_pieces(phrase, ENCODED_LINE - len("List-Id: ")), (" ", tail)]
    folded = _fold("List-Id", pieces)
    if folded is None:
        raise ValueError("List-Id: the id is longer than a header line may be")
    return folded


def _quoted(phrase: str) -> str:
    return '"' + phrase.replace("\\", "\\\\").replace('"', '\\"') + '"'


def phrase_and_tail(name: str, display_name: str, tail: str) -> bytes:
    """`Name: display-name tail` with CRLF, `tail` being `<addr-spec>` or a List-Id `<id>`: the
    display name cleaned and written as a phrase (atoms, a quoted-string, or encoded words:
    RFC 5322 §3.2.5, RFC 2047 §5(3)). No display name, no phrase.

    The To header is built per recipient, so the common cases (a clean name that fits on the line
    as atoms or as one B-encoded word) take a short path of about 2 µs; `mailboxes` handles the rest
    and gives the same result for them."""
    if (display_name.isprintable() and display_name[:1] not in " " and display_name[-1] != " "
            and "  " not in display_name):  # clean already: no control, no Unicode space, no run
        if _ATEXT.issuperset(display_name) and "=?" not in display_name:
            line = f"{name}: {display_name} {tail}"
            if len(line) <= MAX_LINE:
                return line.encode("utf-8") + CRLF
        elif not display_name.isascii():
            data = display_name.encode("utf-8")
            if len(name) + 2 + 4 * -(-len(data) // 3) + _WORD_OVERHEAD + 1 + len(tail) <= ENCODED_LINE:
                return (f"{name}: =?utf-8?b?".encode("ascii") + base64.b64encode(data) + b"?= "
                        + tail.encode("utf-8") + CRLF)
    return mailboxes(name, [(display_name, tail)])


def mailboxes(name: str, entries: list[tuple[str, str]]) -> bytes:
    """`Name: phrase tail, phrase tail…` for (display name, tail) entries, each as `phrase_and_tail`.
    A tail may be UTF-8 (an SMTPUTF8 address, RFC 6532); the caller has checked it is one address."""
    names = [clean_display_name(display_name) for display_name, _ in entries]
    tails = [tail + ("," if index < len(entries) - 1 else "") for index, (_, tail) in enumerate(entries)]
    first_room = ENCODED_LINE - len(name) - 2
    for force_encoding in (False, True):  # an ASCII name too long for a line: encoded words fold anywhere
        pieces: list[tuple[str, str]] = []
        for display_name, tail in zip(names, tails):
            if not display_name:
                pass
            elif not force_encoding and not needs_encoding(display_name):
                if _ATEXT.issuperset(display_name):
                    pieces.extend((" ", word) for word in display_name.split(" "))
                else:
                    pieces.append((" ", _quoted(display_name)))
            else:
                pieces.extend(_encoded_phrase(display_name, first_room if not pieces else MAX_WORD))
            pieces.append((" ", tail))
        folded = _fold(name, pieces)
        if folded is not None:
            return folded
    raise ValueError(f"{name}: an address is longer than a header line may be")
