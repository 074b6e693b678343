"""An edition: what a send delivers, frozen when the send starts.

`prepare_send` renders the issue folder once and stores the result in the ledger (`editions`) with
the frozen recipient set: the subject as sent, the compiled HTML and the text part with their slot
markers, the greeting pattern, the settings behind the headers that do not vary per recipient
(From, Reply-To, List-Id), the template's name and the mailer version, and a SHA-256 of all of it.
The HTML, text and greeting are stored once per language of fixed strings a recipient may get
(`render.render_variants`: issue.toml's `language` alone when it forces one, else every shipped
language, MAILER_LANGUAGE's first), each recipient getting their `language`'s (`render.variant_key`);
the forced `language` and the `segment` text are frozen with them. The segment is not content: it
stays out of the hash, and only `--include-new` reads it again (the stored text, never the folder's),
to draw newcomers from the same audience; `--rebuild` keeps it.
Every later claim — a resume, `mailer worker`, the scheduler, `--retry-failed`, `--include-new` —
sends the stored edition and never reads the folder again, so editing a brief after a send started
changes nothing until the editor asks for a new edition (`mailer send ISSUE --rebuild`).

What stays live, read from the settings of the process that sends: everything per recipient (the
unsubscribe link on MAILER_BASE_URL, the unsubscribe mailbox, the Message-ID's domain) and how the
message travels (backend, DKIM). Click tracking is frozen with the content: the stored HTML and text
carry the `click.N` slots and the edition's `links` rows the URLs (`sending/tracking.py`); each
recipient's click and open tokens name the stored edition and are filled on the live base URL, like
the unsubscribe link. An `Edition` is a `content.email.EmailWithSlots`, what `MessageFactory` builds
messages from (`settings`, `subject`, `html`, `text`, `key`, `notice_kind`, `slot_values`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any

from .. import __version__
from ..config import Settings, secret_key_for
from ..errors import CorruptEdition
from ..content import tracking
from ..content.render import Recipient, RenderedIssue, Template, personal_values, variant_key
from ..segments import Segment
from .tracking import tracked_parts

# The settings the fixed headers come from (From: name and from_address; Reply-To; List-Id: list_id,
# else name and the From domain): frozen with the content.
FIXED_HEADER_SETTINGS = ("name", "from_address", "reply_to", "list_id")


@dataclass(frozen=True)
class Edition:
    """One stored edition of an issue (`id`, `number`, `created_at`, `reason` are None/0/"" until
    stored). `settings` are the sending process's settings with the edition's fixed-header settings."""

    slug: str
    settings: Settings
    subject: str
    html: Template
    text: Template
    greeting: str
    template: str
    content_hash: str
    id: int | None = None
    number: int = 0
    created_at: datetime | None = None
    reason: str = ""
    links: tuple[str, ...] = ()  # tracked URLs, position 1… (set before it is stored; `Store.insert_edition`)
    language: str = ""                  # the fixed strings' language of html/text/greeting (the default variant)
    forced_language: str | None = None  # issue.toml `language` (forces the fixed strings for everyone)
    segment: str | None = None          # issue.toml `segment`, as written: the frozen audience's definition
    segment_zone: str | None = None     # the zone its dates were read in (MAILER_TIMEZONE then)
    # the other languages' (html, text, greeting), by language; empty when `forced_language` is set
    variants: dict[str, tuple[Template, Template, str]] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        """Names this email's outbox folder and provider category (the issue's slug)."""
        return self.slug

    @property
    def notice_kind(self) -> None:
        """An edition is an issue's, not a notice (`content.email.EmailWithSlots`)."""
        return None

    @cached_property
    def tracking(self) -> tracking.ClickTracking | None:
        """Its click/open slots' filler (tokens naming this edition; edition 0 before it is stored),
        None when the edition tracks nothing."""
        return tracking.from_parts(secret_key_for(self.settings), self.settings.base_url, self.id or 0,
                                   self.html, self.text)

    def slot_values(self, recipient: Recipient) -> dict[str, str]:
        values = personal_values(self.settings, recipient, greeting=self.greeting)
        if self.tracking is not None:
            values.update(self.tracking.values(recipient.subscriber_id))
        return values

    def personalise(self, recipient: Recipient) -> tuple[str, str]:
        """(html, text) for one recipient."""
        values = self.slot_values(recipient)
        return self.html.fill(values), self.text.fill(values)

    def by_language(self) -> dict[str, "Edition"]:
        """This edition as one sendable email per language of fixed strings, the default first."""
        found = {self.language: self}
        for language, (html, text, greeting) in self.variants.items():
            found[language] = replace(self, html=html, text=text, greeting=greeting, language=language, variants={})
        return found

    def frozen_segment(self) -> "Segment | None":
        """The frozen segment, parsed again (for `--include-new`); None when the issue has none."""
        if self.segment is None:
            return None
        from ..segments import parse
        return parse(self.segment, self.segment_zone or self.settings.timezone)

    def language_for(self, subscriber_language: str | None) -> str:
        """Which variant a subscriber of `language` (None: unknown) gets (`render.variant_key`)."""
        return variant_key(subscriber_language, {self.language: None, **self.variants})

    def values(self) -> dict[str, Any]:
        """The `editions` columns this edition stores (`Store.insert_edition`)."""
        return {"subject": self.subject, "html": self.html.raw, "text": self.text.raw, "greeting": self.greeting,
                "headers": fixed_header_settings(self.settings), "template": self.template,
                "mailer_version": __version__, "content_hash": self.content_hash, "language": self.language,
                "forced_language": self.forced_language, "segment": self.segment,
                "segment_zone": self.segment_zone,
                "variants": _variants_json(self.variants)}


def _variants_json(variants: dict[str, tuple[Template, Template, str]]) -> dict[str, dict[str, str]]:
    """The `editions.variants` column: {language: {"html", "text", "greeting"}}."""
    return {language: {"html": html.raw, "text": text.raw, "greeting": greeting}
            for language, (html, text, greeting) in variants.items()}


def fixed_header_settings(settings: Settings) -> dict[str, str]:
    return {name: getattr(settings, name) for name in FIXED_HEADER_SETTINGS}


def content_hash(subject: str, html: str, text: str, greeting: str, headers: dict[str, str], template: str,
                 links: tuple[str, ...] = (), language: str = "", forced_language: str | None = None,
                 variants: dict[str, dict[str, str]] | None = None) -> str:
    """SHA-256 (hex) of everything an edition sends the same to every recipient of a language (with
    tracked links, their URLs too: the parts hold only their slots): the default variant, the
    language forced or not, and the other languages' variants (not the segment). Without `links`
    (tracking off) or `language` (an edition from before revision 0006: one variant), those parts
    are left out, so editions stored before keep their hash."""
    digest = hashlib.sha256()
    parts = [subject, html, text, greeting, json.dumps(headers, sort_keys=True), template]
    if links:
        parts.append(json.dumps(links))
    if language:
        parts += [language, forced_language or "", json.dumps(variants or {}, sort_keys=True)]
    for part in parts:
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def from_rendered(rendered: RenderedIssue | dict[str, RenderedIssue]) -> Edition:
    """The edition a freeze of this rendering would store: one `RenderedIssue`, or the language
    variants of `render.render_variants` (the default first); links rewritten to click slots when
    tracking is on (`tracked_parts`), so what is stored — and hashed — is what is sent. The variants
    differ only in their fixed strings: the default's tracked links are everyone's."""
    variants = rendered if isinstance(rendered, dict) else {rendered.language: rendered}
    default, *others = variants.values()
    settings, issue = default.settings, default.issue
    subject = default.subject
    html, text, links = tracked_parts(default)
    other = {}
    for variant in others:
        variant_html, variant_text, _ = tracked_parts(variant)
        other[variant.language] = (variant_html, variant_text, variant.greeting)
    segment, zone = (issue.segment.text, issue.segment.zone) if issue.segment is not None else (None, None)
    return Edition(slug=issue.slug, settings=settings, subject=subject, html=html,
                   text=text, greeting=default.greeting, template=issue.template,
                   content_hash=content_hash(subject, html.raw, text.raw, default.greeting,
                                             fixed_header_settings(settings), issue.template, links,
                                             default.language, issue.language, _variants_json(other)),
                   links=links, language=default.language, forced_language=issue.language, segment=segment,
                   segment_zone=zone, variants=other)


def same_content(current: Edition, stored: Any) -> bool:
    """Whether `current` (the folder rendered now) sends what the stored edition (an `editions` row)
    sends. An edition from before revision 0006 (no `language`) held MAILER_LANGUAGE's strings alone:
    it is compared with the current default variant, hashed as it was then."""
    if stored.language:
        return current.content_hash == stored.content_hash
    legacy = content_hash(current.subject, current.html.raw, current.text.raw, current.greeting,
                          fixed_header_settings(current.settings), current.template, current.links)
    return current.language == current.settings.language and legacy == stored.content_hash


def _json_column(row: Any, name: str, default: Any) -> Any:
    value = getattr(row, name)
    if value is None:
        return default
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def from_row(row: Any, slug: str, settings: Settings) -> Edition:
    """A stored edition (an `editions` row as `Store.current_edition` returns it: the JSON columns as
    text, its `links`), to be sent with `settings` (the fixed headers' settings replaced by the stored
    ones). Raises CorruptEdition when a column no longer parses or the stored content no longer
    matches its `content_hash` (`content_hash`): nothing is ever sent from a damaged edition."""
    where = f"{slug}: stored edition {getattr(row, 'number', '?')} (id {getattr(row, 'id', '?')})"
    try:
        raw_headers = _json_column(row, "headers", {})
        raw_variants = _json_column(row, "variants", {})
        if not isinstance(raw_headers, dict) or not isinstance(raw_variants, dict):
            raise ValueError("headers and variants must be JSON objects")
        headers = {name: str(value) for name, value in raw_headers.items() if name in FIXED_HEADER_SETTINGS}
        variants = {language: (Template.parse(part["html"]), Template.parse(part["text"]), str(part["greeting"]))
                    for language, part in raw_variants.items()}
        links = tuple(getattr(row, "links", ()) or ())
        if not all(isinstance(getattr(row, name), str) for name in ("subject", "html", "text", "greeting", "template")):
            raise ValueError("subject, html, text, greeting and template must be text")
        if row.language:
            expected = content_hash(row.subject, row.html, row.text, row.greeting, raw_headers, row.template, links,
                                    row.language, row.forced_language, raw_variants)
        else:  # before revision 0006: one variant, hashed without the language parts
            expected = content_hash(row.subject, row.html, row.text, row.greeting, raw_headers, row.template, links)
        html, text = Template.parse(row.html), Template.parse(row.text)
    except CorruptEdition:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever is damaged, the edition cannot be sent
        raise CorruptEdition(f"{where} is corrupt ({type(exc).__name__}: {exc}); nothing was sent") from None
    if expected != row.content_hash:
        raise CorruptEdition(f"{where} no longer matches its content hash (the stored subject, HTML, text, "
                             f"headers or links were changed); nothing was sent")
    if not row.html.strip() or not row.text.strip():
        raise CorruptEdition(f"{where} has an empty HTML or text part; nothing was sent")
    return Edition(slug=slug, settings=replace(settings, **headers), subject=row.subject,
                   html=html, text=text, greeting=row.greeting,
                   template=row.template, content_hash=row.content_hash, id=row.id, number=row.number,
                   created_at=row.created_at, reason=row.reason, links=links,
                   # an edition stored before revision 0006 holds MAILER_LANGUAGE's strings alone
                   language=row.language or settings.language, forced_language=row.forced_language,
                   segment=row.segment, segment_zone=row.segment_zone, variants=variants)
