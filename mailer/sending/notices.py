"""Transactional notices: the double opt-in confirmation email and the optional welcome email.

They go out through the configured backend with the same contract as an issue (`MessageFactory`,
`Batch`, `Backend.send_batch`): a `Notice` is a `content.email.EmailWithSlots` — `subject`,
`key` (the outbox folder / provider category: `confirm`, `welcome`), `html` and `text` templates
with slots, `slot_values(recipient)`, `settings` and its `notice_kind`. The MJML is compiled ONCE per kind (a
`NoticeTemplate`); per person only the slots are filled (greeting, email, unsubscribe and
confirmation links). The confirmation email is neutral: no name (see `Notifier.build`).

Templates: `templates/confirm.mjml.j2` + `confirm.txt.j2` (required by the subscribe form) and
`templates/welcome.mjml.j2` + `welcome.txt.j2` (optional: delete them and no welcome email is sent).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from typing import Callable


from ..content import i18n
from .. import links
from ..providers import Backend, Batch, OutgoingMessage, RecipientResult, make_backend
from ..config import Settings, secret_key_for
from ..errors import MailerError, RenderError
from ..mime import MessageFactory
from ..content.render import Recipient, Template, compile_email, missing_templates, personal_values, slot_marker

log = logging.getLogger("mailer.notices")

NOTICE_KINDS = ("confirm", "welcome")
UNCONFIRMED_KINDS = ("confirm",)  # sent before the address is confirmed: nothing the form's sender typed
NOTICE_SLOTS = ("greeting", "email", "unsubscribe_url", "confirm_url")
_ALL_SLOTS = (*NOTICE_SLOTS, *(f"{name}.html" for name in NOTICE_SLOTS))


@dataclass(frozen=True)
class NoticeTemplate:
    """One kind of notice, compiled once: HTML and text with slots."""

    kind: str
    subject: str
    html: Template
    text: Template


@dataclass(frozen=True)
class Notice:
    """One notice for one person: an `EmailWithSlots`, what `MessageFactory` builds from."""

    template: NoticeTemplate
    settings: Settings
    values: dict[str, str] = field(default_factory=dict)  # extra slot values (confirm_url)

    @property
    def subject(self) -> str:
        return self.template.subject

    @property
    def key(self) -> str:
        return self.template.kind

    @property
    def html(self) -> Template:
        return self.template.html

    @property
    def text(self) -> Template:
        return self.template.text

    def slot_values(self, recipient: Recipient) -> dict[str, str]:
        return personal_values(self.settings, recipient, {"confirm_url": "", **self.values})

    def personalise(self, recipient: Recipient) -> tuple[str, str]:
        values = self.slot_values(recipient)
        return self.html.fill(values), self.text.fill(values)

    @property
    def notice_kind(self) -> str:
        """Marks a notice for backends that file messages (the outbox names notices by kind and time)."""
        return self.template.kind


def notice_available(settings: Settings, kind: str) -> bool:
    return missing_templates(settings, kind) is None


def compile_notice(settings: Settings, kind: str) -> NoticeTemplate:
    """Jinja → MJML → HTML once, and the text part; raises RenderError naming the template."""
    if kind not in NOTICE_KINDS:
        raise ValueError(f"unknown notice {kind!r}")
    problem = missing_templates(settings, kind)
    if problem is not None:
        raise RenderError(f"{problem}: they are needed for the {kind} email")
    strings = i18n.strings(settings.language, settings.name)
    context = {
        "name": settings.name,
        "language": settings.language,
        "t": strings,
        "postal_address": settings.postal_address,
        "base_url": settings.base_url,
        "archive_url": links.archive_url(settings.base_url),
        "slot": {name: slot_marker(name) for name in _ALL_SLOTS},
    }
    compiled = compile_email(settings, kind, context, slots=NOTICE_SLOTS,
                             required=("confirm_url",) if kind == "confirm" else ("unsubscribe_url",))
    subject = strings[f"{kind}_subject"].format(name=settings.name)
    return NoticeTemplate(kind=kind, subject=subject, html=compiled.html, text=compiled.text)


class Notifier:
    """Sends notices through the configured backend; templates compiled on first use, then cached.

    Thread-safe: the web app calls it from Starlette's threadpool (background tasks).
    """

    def __init__(self, settings: Settings, backend_factory: Callable[[], Backend] | None = None) -> None:
        self.settings = settings
        self.key = secret_key_for(settings)
        self.backend_factory = backend_factory or (lambda: make_backend(settings))
        self._templates: dict[str, NoticeTemplate] = {}
        self._lock = threading.Lock()

    def template(self, kind: str) -> NoticeTemplate:
        with self._lock:
            if kind not in self._templates:
                self._templates[kind] = compile_notice(self.settings, kind)
            return self._templates[kind]

    def has(self, kind: str) -> bool:
        return kind in self._templates or notice_available(self.settings, kind)

    def confirm_url(self, subscriber_id: int) -> str:
        return links.confirm_url(self.settings.base_url, self.key, subscriber_id)

    def unsubscribe_url(self, subscriber_id: int) -> str:
        return links.unsubscribe_url(self.settings.base_url, self.key, subscriber_id)

    def build(self, kind: str, subscriber_id: int, email: str, name: str = "") -> tuple[Notice, Recipient]:
        """The notice and its recipient. A confirmation goes to an address nobody has confirmed yet,
        whoever typed it into the form: it carries no text they submitted (no name in the To header
        or the greeting), so the form cannot relay a stranger's words to anyone."""
        values = {"confirm_url": self.confirm_url(subscriber_id)} if kind == "confirm" else {}
        if kind in UNCONFIRMED_KINDS:
            name = ""
        notice = Notice(self.template(kind), self.settings, values)
        recipient = Recipient(email=email, name=name, subscriber_id=subscriber_id,
                              unsubscribe_url=self.unsubscribe_url(subscriber_id))
        return notice, recipient

    def send(self, kind: str, subscriber_id: int, email: str, name: str = "") -> RecipientResult:
        """Build and send one notice; returns the backend's result (raises on a batch-level failure)."""
        notice, recipient = self.build(kind, subscriber_id, email, name)
        message = OutgoingMessage(recipient=recipient, message_id=make_msgid(domain=self.settings.sender_domain))
        batch = Batch(MessageFactory(notice), (message,), None, formatdate(usegmt=True))
        with self.backend_factory() as backend:
            (result,) = backend.send_batch(batch)
        return result

    def send_quietly(self, kind: str, subscriber_id: int, email: str, name: str = "") -> RecipientResult | None:
        """`send`, logging instead of raising: for background tasks after the HTTP answer is gone."""
        try:
            result = self.send(kind, subscriber_id, email, name)
        except (MailerError, OSError) as exc:
            log.error("%s email to subscriber %d not sent: %s", kind, subscriber_id, exc)
            return None
        if result.outcome != "sent":
            log.error("%s email to subscriber %d refused (%s): %s", kind, subscriber_id, result.outcome, result.error)
        else:
            log.info("%s email sent to subscriber %d", kind, subscriber_id)
        return result
