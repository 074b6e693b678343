"""An edition: what a send delivers, frozen when the send starts.

`prepare_send` renders the issue folder once and stores the result in the ledger (`editions`) with
the frozen recipient set: the subject as sent, the compiled HTML and the text part with their slot
markers, the greeting pattern, the settings behind the headers that do not vary per recipient
(From, Reply-To, List-Id), the template's name and the mailer version, and a SHA-256 of all of it.
Every later claim — a resume, `mailer worker`, the scheduler, `--retry-failed`, `--include-new` —
sends the stored edition and never reads the folder again, so editing a brief after a send started
changes nothing until the editor asks for a new edition (`mailer send ISSUE --rebuild`).

What stays live, read from the settings of the process that sends: everything per recipient (the
unsubscribe link on MAILER_BASE_URL, the unsubscribe mailbox, the Message-ID's domain) and how the
message travels (backend, DKIM). Click tracking is frozen with the content: the stored HTML and text
carry the `click.N` slots and the edition's `links` rows the URLs (`sending/tracking.py`); each
recipient's click and open tokens name the stored edition and are filled on the live base URL, like
the unsubscribe link. An `Edition` offers what `MessageFactory` and the backends read of
an email with slots (`settings`, `subject`, `html`, `text`, `slot_values`, `key`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Any

from .. import __version__
from ..config import Settings, secret_key_for
from ..content import tracking
from ..content.render import Recipient, RenderedIssue, Template, personal_values
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

    @property
    def key(self) -> str:
        """Names this email's outbox folder and provider category (the issue's slug)."""
        return self.slug

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

    def values(self) -> dict[str, Any]:
        """The `editions` columns this edition stores (`Store.insert_edition`)."""
        return {"subject": self.subject, "html": self.html.raw, "text": self.text.raw, "greeting": self.greeting,
                "headers": fixed_header_settings(self.settings), "template": self.template,
                "mailer_version": __version__, "content_hash": self.content_hash}


def fixed_header_settings(settings: Settings) -> dict[str, str]:
    return {name: getattr(settings, name) for name in FIXED_HEADER_SETTINGS}


def content_hash(subject: str, html: str, text: str, greeting: str, headers: dict[str, str], template: str,
                 links: tuple[str, ...] = ()) -> str:
    """SHA-256 (hex) of everything an edition sends the same to every recipient (with tracked links,
    their URLs too: the parts hold only their slots)."""
    digest = hashlib.sha256()
    parts = (subject, html, text, greeting, json.dumps(headers, sort_keys=True), template)
    if links:  # absent when off: editions stored before tracking keep their hash
        parts += (json.dumps(links),)
    for part in parts:
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def from_rendered(rendered: RenderedIssue) -> Edition:
    """The edition a freeze of this rendering would store: its links rewritten to click slots when
    tracking is on (`tracked_parts`), so what is stored — and hashed — is what is sent."""
    settings = rendered.settings
    subject = rendered.subject
    html, text, links = tracked_parts(rendered)
    return Edition(slug=rendered.issue.slug, settings=settings, subject=subject, html=html,
                   text=text, greeting=rendered.greeting, template=rendered.issue.template,
                   content_hash=content_hash(subject, html.raw, text.raw, rendered.greeting,
                                             fixed_header_settings(settings), rendered.issue.template, links),
                   links=links)


def from_row(row: Any, slug: str, settings: Settings) -> Edition:
    """A stored edition (an `editions` row), to be sent with `settings` (the fixed headers' settings
    replaced by the stored ones)."""
    headers = {name: str(value) for name, value in (row.headers or {}).items() if name in FIXED_HEADER_SETTINGS}
    return Edition(slug=slug, settings=replace(settings, **headers), subject=row.subject,
                   html=Template.parse(row.html), text=Template.parse(row.text), greeting=row.greeting,
                   template=row.template, content_hash=row.content_hash, id=row.id, number=row.number,
                   created_at=row.created_at, reason=row.reason)
