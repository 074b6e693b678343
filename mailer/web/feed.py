"""The Atom 1.0 feed of the public archive (`/feed.xml`), written by `feedgen`.

Exactly the issues `/archive` lists (`Store.published_issues`: sent, with a web edition, public —
never list-only or segment-only ones unless `archive = true`), in the same order. Per entry (RFC 4287):
- `id`: a tag: URI (RFC 4151) `tag:HOST,ISSUE-DATE:PATH/issues/SLUG`, stable for the life of the
  issue (host and path of MAILER_BASE_URL, the issue's own date, its slug; nothing that a resend or
  a redeploy changes). RFC 4151's authority is a domain name (or an email address): when
  MAILER_BASE_URL's host is an IP address (or no DNS name), the id is `urn:uuid:` + the UUID5 of the
  issue's public URL (RFC 9562, URL namespace) — as stable, for the same base URL and slug;
- `title` the subject, `link rel=alternate` to `BASE/issues/SLUG`;
- `published` and `updated`: when the issue became public (RFC 3339, UTC; the send's start, or for a
  local-time send its last wave's instant: `Store.published_issues`), else the issue's date at 00:00
  in MAILER_TIMEZONE;
- `summary` (plain text): the preheader, else the first brief (`content.render.edition_summary`).
The feed: `id` = the archive's URL, title = MAILER_NAME, author = MAILER_NAME, `link rel=self` to
`BASE/feed.xml` and `rel=alternate` to `BASE/archive`, `updated` = the newest entry's (the Unix epoch
for an empty archive, so the bytes — and the ETag — change only when the archive does).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from feedgen.feed import FeedGenerator

from .. import links
from ..config import Settings

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
CONTENT_TYPE = "application/atom+xml; charset=utf-8"


@dataclass(frozen=True)
class FeedEntry:
    """One archived issue as the feed shows it."""

    slug: str
    subject: str
    issue_date: str | None     # YYYY-MM-DD as stored
    sent_at: datetime | None   # when it became public (aware): the send's start, a local-time send's last wave
    summary: str


def feed_url(settings: Settings) -> str:
    return links.feed_url(settings.base_url)


def entry_published(entry: FeedEntry, zone: ZoneInfo | timezone) -> datetime:
    """When the issue was published: its send's start (UTC), else its date at midnight in `zone`, else the epoch."""
    if entry.sent_at is not None:
        sent = entry.sent_at if entry.sent_at.tzinfo else entry.sent_at.replace(tzinfo=timezone.utc)
        return sent.astimezone(timezone.utc).replace(microsecond=0)
    try:
        day = date.fromisoformat(entry.issue_date or "")
    except ValueError:
        return EPOCH
    return datetime.combine(day, time(0, 0), tzinfo=zone).astimezone(timezone.utc)


# RFC 4151 §2.1: DNSname = DNScomp *( "." DNScomp ); DNScomp = alphaNum [*(alphaNum /"-") alphaNum]
_DNS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")


def _is_dns_name(host: str | None) -> bool:
    """A domain name a tag: URI may use as its authority: RFC 4151's DNSname, not an IP address."""
    if not host or not _DNS_NAME.fullmatch(host):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def entry_id(settings: Settings, entry: FeedEntry, published: datetime) -> str:
    """`tag:HOST,DATE:PATH/issues/SLUG` (RFC 4151): DATE is the issue's date (else its publication's);
    `urn:uuid:` + UUID5(URL namespace, the issue's public URL) when HOST is no domain name (an IP)."""
    parts = urlsplit(settings.base_url)
    if not _is_dns_name(parts.hostname):
        return uuid.uuid5(uuid.NAMESPACE_URL, links.public_issue_url(settings.base_url, entry.slug)).urn
    try:
        day = date.fromisoformat(entry.issue_date or "").isoformat()
    except ValueError:
        day = published.date().isoformat()
    return f"tag:{parts.hostname},{day}:{quote(parts.path.rstrip('/'))}{links.public_issue_path(entry.slug)}"


def atom_feed(settings: Settings, entries: list[FeedEntry]) -> tuple[bytes, datetime]:
    """The feed's bytes (UTF-8 XML) and its `updated` time. `entries` newest first, as the archive lists them."""
    zone = settings.zone
    base = settings.base_url
    feed = FeedGenerator()
    feed.id(links.archive_url(base))
    feed.title(settings.name)
    feed.author({"name": settings.name})
    feed.link(href=feed_url(settings), rel="self", type="application/atom+xml")
    feed.link(href=links.archive_url(base), rel="alternate", type="text/html")
    feed.language(settings.language)
    feed.generator("mailer")
    newest = EPOCH
    for entry in entries:
        published = entry_published(entry, zone)
        newest = max(newest, published)
        item = feed.add_entry(order="append")
        item.id(entry_id(settings, entry, published))
        item.title(entry.subject)
        item.link(href=links.public_issue_url(base, entry.slug), rel="alternate", type="text/html")
        item.published(published)
        item.updated(published)
        if entry.summary:
            item.summary(entry.summary)
    feed.updated(newest)
    return feed.atom_str(pretty=True, encoding="UTF-8", xml_declaration=True), newest
