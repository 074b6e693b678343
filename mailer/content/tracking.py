"""Click (and optional open) tracking: which links of an email are tracked, and their slots.

Off by default (MAILER_TRACK_CLICKS, or `track_clicks` in issue.toml, which wins). When on, the send
rewrites the rendering before it stores the edition (`sending/tracking.py`): each distinct tracked URL
gets a position, 1…, in order of first appearance, stored as the edition's link table
(`Store.insert_edition`), and every tracked link of the HTML part (`<a href>`) and of the text part
(bare http/https URLs) becomes a slot, `click.N` (text) / `click.N.html` (HTML), filled per recipient
with `BASE/c/TOKEN` (`tokens.click_token`: signed, naming the delivery, the edition and the position).
`GET /c/TOKEN` answers 302 to the URL the edition's table holds for that position — never a URL read
from the request.

Only the content's links are tracked: those of the briefs and the intro (`content_urls`: their
Markdown, titles, `link` and images), never what the template adds around them (footer, header:
web version, archive, subscribe, unsubscribe…), so a report's clicks are the readers' interest in
the content. Never tracked either: any page of the newsletter's own site (`MAILER_BASE_URL`, even
linked from a brief), the List-Unsubscribe header (headers are never rewritten), links that are not
http(s) (mailto:, tel:, anchors) and anything holding a slot marker. An open pixel (`<img src="BASE/o/TOKEN">`, position 0)
is added only with MAILER_TRACK_OPENS.

Shapes: `content_urls(issue, language)` → set of URLs; `find_links(html, text, skip, among)` → ordered distinct URLs; `rewrite(html, text, positions, …)` →
(html, text) Templates with click slots; `ClickTracking.values(subscriber_id)` → slot values.
"""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass, field

from .. import links, tokens
from . import markup
from .issue import Issue
from .render import SLOT_PREFIX, Template, slot
from .textlayout import TEXT_URL, text_url

# an <a …> tag's href, double-quoted as MJML writes it (single quotes too, for hand-written templates)
_A_HREF = re.compile(r"""(<a\b[^>]*?\bhref=)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
OPEN_POSITION = 0
MAX_POSITION = 0xFFFF  # a click token carries the position in 2 bytes
OPEN_SLOT = "open.html"
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def trackable(url: str, skip: tuple[str, ...]) -> bool:
    """Whether a link target is rewritten: http(s), no slot marker, not one of `skip`'s prefixes."""
    lowered = url.lower()
    if not (lowered.startswith("http://") or lowered.startswith("https://")):
        return False
    if SLOT_PREFIX in url or "%%" in url:
        return False
    return not any(url == prefix or url.startswith(prefix) for prefix in skip if prefix)


def own_site(url: str, base_url: str) -> bool:
    """Whether `url` is a page of the newsletter's own site: `base_url` itself or below it."""
    return url == base_url or url.startswith(tuple(base_url + mark for mark in "/?#"))


def content_urls(issue: Issue, language: str) -> set[str]:
    """Every URL the issue's content links or shows, as the rendering writes it: the hrefs of the
    intro's and each brief's Markdown (title included) and the URLs their text rendering shows
    (images' too), each brief's `link` (`markup.link_href`). What the template adds is not content."""
    found: set[str] = set()
    sources = [issue.intro] if issue.intro else []
    for brief in issue.briefs:
        sources.append(brief.body)
        if brief.link:
            found.add(markup.link_href(brief.link))
        if brief.title:
            found.update(_hrefs(markup.to_inline_html(brief.title, language)))
    for source in sources:
        found.update(_hrefs(markup.to_html(source, language)))
        found.update(text_url(match.group(0)) for match in TEXT_URL.finditer(markup.to_text(source, language)))
    return found


def tracked_urls(issue: Issue, language: str, base_url: str) -> set[str]:
    """The content URLs a tracked send rewrites: `content_urls` that are `trackable`, less the pages
    of the newsletter's own site (`own_site`: archive, subscribe, web editions…)."""
    return {url for url in content_urls(issue, language) if trackable(url, ()) and not own_site(url, base_url)}


def written_length(issue: Issue, language: str, base_url: str):  # noqa: ANN201 - a textlayout.Measure
    """`measure(url)` for wrapping the text part of a tracked send (`textlayout`): a tracked URL is
    written as `BASE/c/TOKEN` (`tokens.CLICK_TOKEN_CHARS`), any other as it is."""
    tracked = tracked_urls(issue, language, base_url)
    click_length = len(links.click_prefix(base_url)) + tokens.CLICK_TOKEN_CHARS
    return lambda url: click_length if url in tracked else len(url)


def _hrefs(html_text: str) -> set[str]:
    return {html_lib.unescape(match.group(3)).strip() for match in _A_HREF.finditer(html_text)}


def find_links(html_template: Template, text_template: Template, skip: tuple[str, ...],
               among: set[str] | None = None) -> list[str]:
    """The distinct tracked URLs of both parts, in order of first appearance (HTML first): trackable
    (`skip`: prefixes never tracked) and, with `among` (`content_urls`), one of those."""
    seen: dict[str, None] = {}

    def keep(url: str) -> None:
        if trackable(url, skip) and (among is None or url in among):
            seen.setdefault(url, None)
    for piece in html_template.pieces[0::2]:
        for match in _A_HREF.finditer(piece):
            keep(html_lib.unescape(match.group(3)).strip())
    for piece in text_template.pieces[0::2]:
        for match in TEXT_URL.finditer(piece):
            keep(text_url(match.group(0)))
    return list(seen)


def rewrite(html_template: Template, text_template: Template, positions: dict[str, int], *,
            open_pixel: bool = False) -> tuple[Template, Template]:
    """Both parts with each URL of `positions` replaced by its click slot (and, with `open_pixel`,
    a 1×1 image before `</body>`); slots already there are kept as they are."""
    def html_piece(piece: str) -> str:
        def one(match: re.Match) -> str:
            url = html_lib.unescape(match.group(3)).strip()
            position = positions.get(url)
            if position is None:
                return match.group(0)
            return f"{match.group(1)}{match.group(2)}{slot(f'click.{position}.html')}{match.group(2)}"
        return _A_HREF.sub(one, piece)

    def text_piece(piece: str) -> str:
        def one(match: re.Match) -> str:
            whole = match.group(0)
            url = text_url(whole)
            position = positions.get(url)
            if position is None:
                return whole
            return slot(f"click.{position}") + whole[len(url):]
        return TEXT_URL.sub(one, piece)

    html_raw = _rebuild(html_template, html_piece)
    if open_pixel:
        pixel = (f'<img src="{slot(OPEN_SLOT)}" width="1" height="1" alt="" '
                 'style="display:block;border:0;width:1px;height:1px;overflow:hidden" />')
        found = list(_BODY_END.finditer(html_raw))
        if found:
            at = found[-1].start()
            html_raw = html_raw[:at] + pixel + html_raw[at:]
        else:
            html_raw += pixel
    return Template.parse(html_raw), Template.parse(_rebuild(text_template, text_piece))


def _rebuild(template: Template, change) -> str:  # noqa: ANN001
    pieces = list(template.pieces)
    for index in range(0, len(pieces), 2):
        pieces[index] = change(pieces[index])
    for index in range(1, len(pieces), 2):
        pieces[index] = slot(pieces[index])
    return "".join(pieces)


@dataclass(frozen=True)
class ClickTracking:
    """What a send needs to fill the click slots: the secret key, the base URL, the stored edition's
    id and the positions its templates use (`from_parts`). `values()` is the hot path: one AES-SIV per recipient
    (`tokens.click_delivery`) and one keyed BLAKE2b per link."""

    key: bytes
    base_url: str
    edition_id: int
    positions: tuple[int, ...]
    opens: bool = False
    _prefixes: tuple[str, str] = field(default=("", ""), compare=False)

    def __post_init__(self) -> None:
        text = links.click_prefix(self.base_url)
        object.__setattr__(self, "_prefixes", (text, html_lib.escape(text, quote=True)))

    def values(self, subscriber_id: int | None) -> dict[str, str]:
        """Slot values for one recipient (`click.N`, `click.N.html`, `open.html`). A recipient without
        an id (a test send, the sample before the freeze) gets tokens for `links.TEST_SUBSCRIBER_ID`,
        which record nothing."""
        delivery = tokens.click_delivery(
            self.key, links.TEST_SUBSCRIBER_ID if subscriber_id is None else subscriber_id, self.edition_id)
        text_prefix, html_prefix = self._prefixes
        out: dict[str, str] = {}
        for position in self.positions:
            token = tokens.click_token(self.key, delivery, position)
            out[f"click.{position}"] = text_prefix + token
            out[f"click.{position}.html"] = html_prefix + token
        if self.opens:
            out[OPEN_SLOT] = html_lib.escape(links.open_prefix(self.base_url), quote=True) + tokens.click_token(
                self.key, delivery, OPEN_POSITION)
        return out


def positions_used(html_template: Template, text_template: Template) -> tuple[int, ...]:
    """The link positions whose slots appear in either part."""
    found = set()
    for name in (*html_template.slot_names, *text_template.slot_names):
        if name.startswith("click."):
            found.add(int(name.split(".")[1]))
    return tuple(sorted(found))


def from_parts(key: bytes, base_url: str, edition_id: int, html_template: Template,
               text_template: Template) -> ClickTracking | None:
    """The tracking state of a stored edition, read from its parts alone (the click and open slots
    they hold): None when they hold none (tracking was off when the edition was made)."""
    positions = positions_used(html_template, text_template)
    opens = OPEN_SLOT in html_template.slot_names
    if not positions and not opens:
        return None
    return ClickTracking(key=key, base_url=base_url, edition_id=edition_id, positions=positions, opens=opens)
