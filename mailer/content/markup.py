"""The editors' Markdown, rendered to email-safe HTML and to plain text from the same parse.

One parser (markdown-it-py, CommonMark + linkify for bare URLs, raw HTML off so editor text can
never break the MJML around it). French typography is applied to text tokens only (never to URLs or
markup): an existing space before `; ! ?` becomes a narrow no-break space, before `:` and inside
« guillemets » a no-break space, so punctuation never wraps alone onto a new line.
"""

from __future__ import annotations

import re
import unicodedata
from contextlib import suppress
from functools import lru_cache
from typing import Sequence
from urllib.parse import quote

import mdurl
from markdown_it import MarkdownIt
from markdown_it.common.normalize_url import RECODE_HOSTNAME_FOR, normalizeLinkText
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

from .textlayout import TEXT_WIDTH, Measure, wrap
from ..addresses import ascii_domain
from ..errors import InvalidAddress

NBSP = "\u00a0"
NNBSP = "\u202f"
_BEFORE_TIGHT = re.compile(r"[ \u00a0]+([;!?])")
_BEFORE_COLON = re.compile(r"[ \u00a0]+(:)(?=\s|$)")
_AFTER_OPEN_QUOTE = re.compile(r"«[ \u00a0\u202f]*")
_BEFORE_CLOSE_QUOTE = re.compile(r"[ \u00a0\u202f]*»")
_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")


def french_typography(text: str) -> str:
    """Bind French high punctuation to the preceding word; only replaces spaces the editor typed
    (and the inside of guillemets, where a space is always due). A straight apostrophe between
    letters becomes the typographic one (l’école)."""
    text = _APOSTROPHE.sub("\u2019", text)
    text = _BEFORE_TIGHT.sub(NNBSP + r"\1", text)
    text = _BEFORE_COLON.sub(NBSP + r"\1", text)
    text = _AFTER_OPEN_QUOTE.sub("«" + NBSP, text)
    text = _BEFORE_CLOSE_QUOTE.sub(NBSP + "»", text)
    return text


def typeset(text: str, language: str) -> str:
    """Plain text (a subject, a preheader) with the body's typography: French rules in French."""
    return french_typography(text) if language == "fr" else text


def _typography_rule(state: StateCore) -> None:
    """Typography on text tokens, except the text of a link that shows its own URL (a bare URL, an
    autolink, `[https://…](https://…)`): a URL is never retouched."""
    for token in state.tokens:
        if token.type == "inline" and token.children:
            href: str | None = None
            for child in token.children:
                if child.type == "link_open":
                    href = str(child.attrs.get("href", ""))
                elif child.type == "link_close":
                    href = None
                elif child.type == "text" and not (href is not None and shows_its_url(child.content, href)):
                    child.content = french_typography(child.content)


_SCHEME = re.compile(r"^(?:https?://|mailto:)", re.IGNORECASE)


def link_href(url: str) -> str:
    """A link target as it goes into `href`: percent-encoded (markdown-it's rules) with its host in
    ASCII by `addresses.ascii_domain` (UTS #46: `https://MÉDIATHÈQUE.fr/` →
    `https://xn--mdiathque-d1a.fr/`). A host IDNA refuses (`a_b.example.org`) is kept as written.
    Shapes: str → str, never raises."""
    parsed = mdurl.parse(url, slashes_denote_host=True)
    host = parsed.hostname
    if host and ":" not in host and (not parsed.protocol or parsed.protocol.lower() in RECODE_HOSTNAME_FOR):
        with suppress(InvalidAddress):
            parsed = parsed._replace(hostname=ascii_domain(host))
    return mdurl.encode(mdurl.format(parsed))


def _hidden(char: str) -> bool:
    """A code point a reader cannot see or would misread in a URL (WHATWG URL Standard §4.8):
    spaces and other separators, controls, format characters (bidi, zero-width), unassigned, and
    the lone bytes of an escape that is not UTF-8 (decoded as surrogates)."""
    return unicodedata.category(char)[0] in "CZ"


_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_KEEP_ENCODED = frozenset(";/?:@&=+$,#%")  # reserved: decoding them would change the URL


def _decode_escapes(match: re.Match[str]) -> str:
    raw = match.group()
    data = bytes.fromhex(raw.replace("%", ""))
    out, offset = [], 0
    for char in data.decode("utf-8", errors="surrogateescape"):
        size = len(char.encode("utf-8", errors="surrogateescape"))
        out.append(raw[3 * offset:3 * (offset + size)] if char in _KEEP_ENCODED or _hidden(char) else char)
        offset += size
    return "".join(out)


def link_text(url: str) -> str:
    """A URL as shown to readers (a bare URL's or an autolink's text): Unicode host (markdown-it's
    punycode decoding) and UTF-8 percent-escapes decoded, except escapes of reserved characters
    (`%2F`, `%25`…), of `_hidden` characters (`%20`, `%0A`, `%E2%80%AE`…) and of bytes that are not
    UTF-8 (`%E9`), which stay as written; a `_hidden` character written raw is escaped.
    Shapes: str → str, never raises."""
    shown = normalizeLinkText(url.replace("%", "%25")).replace("%25", "%")  # host only
    shown = _ESCAPES.sub(_decode_escapes, shown)
    return "".join(quote(char, safe="") if _hidden(char) else char for char in shown)


def _comparable(url: str) -> str:
    """A URL as a reader would compare it: shown as `link_text` does (decoded percent-escapes and
    punycode), without the scheme, the case of the host, or a trailing slash."""
    text = _SCHEME.sub("", link_text(url.strip()))
    text = _ESCAPES.sub(lambda m: m.group().upper(), text)
    host, slash, rest = text.partition("/")
    return (host.lower() + slash + rest).rstrip("/")


def shows_its_url(label: str, href: str) -> bool:
    """True when a link's visible text is its own target, written another way: the same URL
    decoded or encoded (percent-escapes, including `%20` written as a space, IDN), with or without
    `https://`, `mailto:` or a trailing slash (`[example.org](https://example.org/)`, a bare URL,
    an autolink)."""
    label = label.strip()
    return bool(label) and _comparable(label) == _comparable(href)


@lru_cache(maxsize=4)
def _parser(language: str) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": True, "typographer": False})
    md.enable(["linkify", "strikethrough"])
    md.normalizeLink = link_href  # type: ignore[method-assign]
    md.normalizeLinkText = link_text  # type: ignore[method-assign]
    if language == "fr":
        md.core.ruler.push("fr_typography", _typography_rule)
    return md


def to_html(source: str, language: str = "fr") -> str:
    """Markdown → HTML fragment (escaped, no raw HTML)."""
    md = _parser(language)
    return md.renderer.render(md.parse(source), md.options, {}).strip()


def to_inline_html(source: str, language: str = "fr") -> str:
    """Markdown → HTML without the wrapping paragraph (titles, intro lines)."""
    md = _parser(language)
    return md.renderInline(source).strip()


def to_text(source: str, language: str = "fr", width: int = TEXT_WIDTH, measure: Measure | None = None) -> str:
    """Markdown → readable plain text: links become `text (url)`, or just `url` when the text is
    the URL itself (bare URLs, autolinks, `[example.org](https://example.org/)`): every link of the
    HTML shows once, as its href. Paragraphs are wrapped at `width` without ever breaking a URL or
    a no-break space, each URL counted as written (`measure(url)` → its length in the message: a
    tracked link's click URL; None: as it is; `textlayout.wrap`)."""
    md = _parser(language)
    return _TextRenderer(width, measure).render(md.parse(source)).strip()


def plain_inline(source: str, language: str = "fr") -> str:
    """Markdown → one line of text without URLs (subjects, titles in the text part)."""
    md = _parser(language)
    tokens = md.parseInline(source)
    return " ".join(_inline_text(tokens[0].children or [], with_urls=False).split()) if tokens else source


def _inline_text(children: Sequence[Token], with_urls: bool = True) -> str:
    out: list[str] = []
    href_stack: list[tuple[str, int]] = []
    for tok in children:
        if tok.type in ("text", "code_inline"):
            out.append(tok.content)
        elif tok.type == "softbreak":
            out.append(" ")
        elif tok.type == "hardbreak":
            out.append("\n")
        elif tok.type == "link_open":
            href_stack.append((str(tok.attrs.get("href", "")), len(out)))
        elif tok.type == "link_close" and href_stack:
            href, start = href_stack.pop()
            label = "".join(out[start:]).strip()
            shown = href[len("mailto:"):] if href.startswith("mailto:") else href
            if with_urls and href:
                if shows_its_url(label, href):
                    out[start:] = [shown]  # once, as it works when clicked (encoded, punycode)
                else:
                    out.append(f" ({shown})")
        elif tok.type == "image":
            alt = "".join(c.content for c in tok.children or []) or tok.content
            src = str(tok.attrs.get("src", ""))
            out.append(f"[{alt}]" + (f" ({src})" if with_urls and src else ""))
    return "".join(out)


class _TextRenderer:
    def __init__(self, width: int, measure: Measure | None = None) -> None:
        self.width = width
        self.measure = measure

    def render(self, tokens: Sequence[Token]) -> str:
        blocks: list[str] = []
        prefix_stack: list[str] = []
        ordered_counters: list[int] = []
        pending_item_prefix: str | None = None
        for tok in tokens:
            if tok.type == "bullet_list_open":
                ordered_counters.append(0)
            elif tok.type == "ordered_list_open":
                ordered_counters.append(int(tok.attrs.get("start", 1) or 1))
            elif tok.type in ("bullet_list_close", "ordered_list_close"):
                ordered_counters.pop()
            elif tok.type == "list_item_open":
                counter = ordered_counters[-1] if ordered_counters else 0
                if counter:
                    pending_item_prefix = f"{counter}. "
                    ordered_counters[-1] += 1
                else:
                    pending_item_prefix = "- "
            elif tok.type == "blockquote_open":
                prefix_stack.append("> ")
            elif tok.type == "blockquote_close":
                prefix_stack.pop()
            elif tok.type in ("fence", "code_block"):
                quote = "".join(prefix_stack)
                blocks.append("\n".join(quote + "    " + line for line in tok.content.rstrip("\n").split("\n")))
            elif tok.type == "hr":
                blocks.append("-" * 20)
            elif tok.type == "inline":
                text = _inline_text(tok.children or [])
                quote = "".join(prefix_stack)
                first = quote + (pending_item_prefix or "")
                rest = quote + (" " * len(pending_item_prefix) if pending_item_prefix else "")
                blocks.append(self._wrap(text, first, rest))
                pending_item_prefix = None
        return "\n\n".join(b for b in blocks if b.strip())

    def _wrap(self, text: str, first: str, rest: str) -> str:
        return wrap(text, self.width, first, rest, self.measure)
