"""`EmailWithSlots`: the one typed shape of "an email with slots" — what `mime.MessageFactory` builds
messages from and what providers send.

Three kinds of content have it, structurally (no common base class: `typing.Protocol`, PEP 544):
a `render.RenderedIssue` (an issue rendered from its folder), a `sending.edition.Edition` (the
content a send froze) and a `sending.notices.Notice` (a confirmation or welcome email). Everything in
it is the same for every recipient except the slots: the `html` and `text` parts are `Template`s
whose slots (`%%mailer:NAME%%`) `slot_values(recipient)` fills. `tests/test_email_protocol.py`
checks the three against this protocol (attributes present with the right types, and mypy when it
is installed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..config import Settings
    from .render import Recipient, Template


@runtime_checkable
class EmailWithSlots(Protocol):
    """One email's content, identical for every recipient but its slots."""

    @property
    def settings(self) -> "Settings":
        """Where the fixed headers come from: From (name, from_address), Reply-To, List-Id; an
        edition's are the values frozen with its content."""
        ...

    @property
    def subject(self) -> str:
        """The Subject as sent (no per-recipient part)."""
        ...

    @property
    def html(self) -> "Template":
        """The HTML part, with its slots."""
        ...

    @property
    def text(self) -> "Template":
        """The text/plain part, with its slots."""
        ...

    @property
    def key(self) -> str:
        """What names this email's messages: the outbox folder, the provider's category (the
        issue's slug; a notice's kind)."""
        ...

    @property
    def notice_kind(self) -> str | None:
        """A notice's kind (`confirm`, `welcome`), None for an issue: backends that file messages
        name a notice by kind and time."""
        ...

    def slot_values(self, recipient: "Recipient") -> dict[str, str]:
        """Every slot's value for `recipient` (each also as `NAME.html`, HTML-escaped)."""
        ...
