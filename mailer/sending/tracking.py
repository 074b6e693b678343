"""Click tracking at the freeze: the rendering's links turned into per-recipient click slots before
the edition is stored (see `content/tracking.py` for what is tracked).

`tracked_parts` is pure: positions are the order in which the tracked URLs first appear (HTML part,
then text), so the same folder and settings always give the same edition (the content hash of a
rebuild compares like with like). The edition stores the parts with their `click.N` slots and the
URL list as its `links` rows (`Store.insert_edition`); a resume, a worker or the scheduler reads
both back and never re-renders. Whether clicks and opens are tracked is therefore frozen with the
edition: changing MAILER_TRACK_CLICKS or MAILER_TRACK_OPENS mid-send changes nothing until a
`--rebuild` makes a new edition.
"""

from __future__ import annotations

from .. import links
from ..config import Settings
from ..errors import RenderError
from ..content import tracking
from ..content.render import RenderedIssue, Template, tracks_clicks


def tracked_parts(rendered: RenderedIssue) -> tuple[Template, Template, tuple[str, ...]]:
    """(html, text, links): the rendering's parts with each tracked link replaced by its click slot
    (MAILER_TRACK_CLICKS, or issue.toml `track_clicks` which wins) and the open pixel's slot
    (MAILER_TRACK_OPENS); `links` = the URL at positions 1, 2, …. Unchanged parts and () with both
    off. Raises RenderError beyond MAX_POSITION links (a token holds 2 bytes of position). Tracked: the
    content's links only (`tracking.content_urls`), never the template's (footer: web version, archive,
    unsubscribe…) nor a page of the newsletter's own site; List-Unsubscribe never (headers are never rewritten)."""
    settings: Settings = rendered.settings
    clicks = tracks_clicks(rendered.issue, settings)
    if not clicks and not settings.track_opens:
        return rendered.html, rendered.text, ()
    base = settings.base_url
    skip = (rendered.web_url, links.edition_url(base, rendered.issue.slug), links.unsubscribe_prefix(base),
            links.click_prefix(base), links.open_prefix(base))
    content = tracking.tracked_urls(rendered.issue, rendered.content_language, base)  # not the footer's
    urls = tuple(tracking.find_links(rendered.html, rendered.text, skip, content)) if clicks else ()
    if len(urls) > tracking.MAX_POSITION:
        raise RenderError(f"{rendered.issue.slug}: {len(urls)} distinct links to track, more than "
                          f"{tracking.MAX_POSITION}; nothing was sent")
    positions = {url: position for position, url in enumerate(urls, start=1)}
    html, text = tracking.rewrite(rendered.html, rendered.text, positions, open_pixel=settings.track_opens)
    return html, text, urls
