"""The per-recipient message: headers (List-Unsubscribe, Message-ID, List-Id…) and MIME bytes.

Building an `EmailMessage` per recipient costs ~7 ms for a 48 KB newsletter, far too slow for a
large list. So `MessageFactory` serialises everything static ONCE — headers folded and RFC 2047-encoded
by `headers` (which any standard parser reads back exactly) and both parts quoted-printable-encoded — and keeps every per-recipient slot on a line of its
own (a soft line break before and after it). Per recipient only the few slot values are encoded and
the pieces joined: the result is byte-for-byte a valid RFC 5322 / MIME message with CRLF line
endings and no line over 78 characters in the bodies (SMTP's 998-octet limit is never at risk,
although MJML writes the HTML as one 45 KB line).

It is built from any `content.email.EmailWithSlots` (a rendered issue, a stored edition, a notice)
and is all a provider reads of one: `build()` for per-recipient bytes (outbox, SMTP), or for
provider-side substitution (SendGrid) the fixed parts — `subject`, `raw_text`/`raw_html` (the parts
with their slot markers), `slot_names` — and per recipient `slot_values()` and `recipient_headers()`;
`personalise()` gives one recipient's filled (html, text) to a provider that takes bodies, not bytes.
`key` and `is_notice` say what names the messages.

With MAILER_DKIM_* set, `build()` puts a DKIM-Signature on top (`dkim_signing`): the body hash comes
from the static pieces canonicalised once per issue plus the slots' few encoded lines, so signing
costs one header hash and one private-key operation per recipient.
"""

from __future__ import annotations

import binascii
import secrets
from dataclasses import dataclass
from email.utils import formatdate, make_msgid

from .errors import InvalidAddress
from .headers import CRLF, clean_header_value, list_id, phrase_and_tail, unstructured
from .content.email import EmailWithSlots
from .content.render import Recipient, Template

__all__ = ["MessageFactory", "EncodedPart", "ONE_CLICK"]

SOFT_BREAK = b"=\r\n"
ONE_CLICK = "List-Unsubscribe=One-Click"


def _qp(data: str) -> bytes:
    """Quoted-printable with CRLF line ends, soft breaks included (b2a_qp uses LF for a value
    that has no line break of its own)."""
    encoded = binascii.b2a_qp(data.replace("\r\n", "\n").encode("utf-8"), istext=True)
    return encoded.replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class EncodedPart:
    """A QP-encoded body part with slots, each on its own soft-broken line."""

    pieces: tuple[bytes | str, ...]  # bytes = encoded static piece, str = slot name

    @classmethod
    def encode(cls, template: Template) -> "EncodedPart":
        pieces: list[bytes | str] = []
        for index, piece in enumerate(template.pieces):
            if index % 2:
                pieces.append(piece)
                continue
            if not piece:
                continue
            encoded = _qp(piece)
            is_last = index == len(template.pieces) - 1
            if not is_last and not encoded.endswith(CRLF):
                encoded += SOFT_BREAK
            pieces.append(encoded)
        return cls(tuple(pieces))

    def fill(self, values: dict[str, str]) -> bytes:
        out: list[bytes] = []
        for piece in self.pieces:
            if isinstance(piece, bytes):
                out.append(piece)
            else:
                out.append(_qp(values[piece]) + SOFT_BREAK)
        return b"".join(out)

    def join(self, fills: dict[str, bytes]) -> bytes:
        """Like `fill`, with each slot already encoded (`encode_slots`)."""
        return b"".join([piece if isinstance(piece, bytes) else fills[piece] for piece in self.pieces])


def encode_slots(names, values: dict[str, str]) -> dict[str, bytes]:
    """Each slot's encoded line(s) as `EncodedPart.fill` writes them: whole QP lines ending in a soft break."""
    return {name: _qp(values[name]) + SOFT_BREAK for name in names}


class MessageFactory:
    """Everything static about one issue's messages, serialised once; `build()` per recipient."""

    def __init__(self, email: EmailWithSlots, *, subject_prefix: str = "",
                 extra_headers: dict[str, str] | None = None) -> None:
        settings = email.settings
        self.email = email
        self.settings = settings
        self.key = email.key  # the outbox folder, the provider's category
        self.is_notice = email.notice_kind is not None
        self.slot_values = email.slot_values  # recipient -> {slot: value}; bound once (hot path)
        self.slot_names = frozenset((*email.html.slot_names, *email.text.slot_names))
        self.domain = settings.sender_domain
        self.subject = clean_header_value(subject_prefix + email.subject)
        self.boundary = "=_mailer_" + secrets.token_hex(12)
        self.html_part = EncodedPart.encode(email.html)
        self.text_part = EncodedPart.encode(email.text)
        reply_to = settings.reply_to_mailbox  # parsed and IDNA-converted at load (config)
        static = [phrase_and_tail("From", settings.sender_name, f"<{settings.sender_email}>")]
        if reply_to:
            static.append(phrase_and_tail("Reply-To", reply_to.display_name, f"<{reply_to.address}>"))
        static.append(unstructured("Subject", self.subject))
        static.append(list_id(settings.list_id_phrase, settings.list_id_value))
        for name, value in (extra_headers or {}).items():
            static.append(unstructured(name, value))
        self._static_headers = b"".join(static)
        self._mime_head = (
            b"MIME-Version: 1.0\r\n"
            b'Content-Type: multipart/alternative;\r\n boundary="' + self.boundary.encode("ascii") + b'"\r\n'
        )
        delimiter = b"--" + self.boundary.encode("ascii")
        self._text_head = (CRLF + delimiter + CRLF + b'Content-Type: text/plain; charset="utf-8"\r\n'
                           b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
        self._html_head = (CRLF + delimiter + CRLF + b'Content-Type: text/html; charset="utf-8"\r\n'
                           b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
        self._closing = CRLF + delimiter + b"--" + CRLF
        # DKIM (dkim_signing): the signer, validated at load, and the body hash's static pieces
        self.signer = None
        if settings.dkim_private_key:
            from .dkim_signing import BodyHasher, signer_for
            self.signer = signer_for(settings)
            self._body_hasher = BodyHasher((self._text_head[len(CRLF):], *self.text_part.pieces, self._html_head,
                                            *self.html_part.pieces, self._closing))
            self._slot_names = tuple({p for p in (*self.text_part.pieces, *self.html_part.pieces) if isinstance(p, str)})

    # ----- for providers that substitute slots themselves (SendGrid) or take bodies ------------------
    @property
    def raw_text(self) -> str:
        """The text part with its slot markers (`%%mailer:NAME%%`), for provider-side substitution."""
        return self.email.text.raw

    @property
    def raw_html(self) -> str:
        """The HTML part with its slot markers."""
        return self.email.html.raw

    def personalise(self, recipient: Recipient) -> tuple[str, str]:
        """(html, text) filled for one recipient, for a provider that takes bodies rather than bytes."""
        values = self.slot_values(recipient)
        return self.email.html.fill(values), self.email.text.fill(values)

    # ----- per recipient ------------------------------------------------------------------------
    def list_unsubscribe(self, recipient: Recipient) -> str:
        return f"<{recipient.unsubscribe_url}>, <{self.settings.unsubscribe_mailto_url}>"

    def recipient_headers(self, recipient: Recipient, message_id: str | None = None) -> dict[str, str]:
        """Headers that differ per recipient (also what SendGrid takes per personalization)."""
        return {
            "List-Unsubscribe": self.list_unsubscribe(recipient),
            "List-Unsubscribe-Post": ONE_CLICK,
            "Message-ID": message_id or make_msgid(domain=self.domain),
        }

    def build(self, recipient: Recipient, message_id: str | None = None, date: str | None = None) -> bytes:
        """The complete message for one recipient, CRLF line endings, ready for SMTP or a .eml file."""
        headers = self.recipient_headers(recipient, message_id)
        to = _to_header(recipient)
        values = self.slot_values(recipient)
        head = (
            b"Date: " + (date or formatdate(localtime=False, usegmt=True)).encode("ascii") + CRLF,
            self._static_headers,
            to,
            b"Message-ID: " + headers["Message-ID"].encode("ascii") + CRLF,
            b"List-Unsubscribe: <" + recipient.unsubscribe_url.encode("ascii") + b">,\r\n <"
            + self.settings.unsubscribe_mailto_url.encode("ascii") + b">" + CRLF,
            b"List-Unsubscribe-Post: " + ONE_CLICK.encode("ascii") + CRLF,
            self._mime_head,
        )
        if self.signer is not None:  # DKIM: bh= from pre-canonicalised pieces, then one signature
            fills = encode_slots(self._slot_names, values)
            head_bytes = b"".join(head)
            signature = self.signer.signature(head_bytes, self._body_hasher.body_hash(fills))
            return b"".join((signature, head_bytes, self._text_head, self.text_part.join(fills), self._html_head,
                             self.html_part.join(fills), self._closing))
        return b"".join((
            *head,
            self._text_head,
            self.text_part.fill(values),
            self._html_head,
            self.html_part.fill(values),
            self._closing,
        ))


def list_id_header(settings, *, fold: bool = True) -> str:
    """The List-Id value (RFC 2919 §3): `phrase <list-id>`, ASCII only, as `headers.phrase_and_tail`
    writes it in every message (`headers.list_id`). `fold=False` joins folded lines with a space (for APIs
    that fold themselves, such as SendGrid's `headers`)."""
    field = list_id(settings.list_id_phrase, settings.list_id_value)
    value = field[len(b"List-Id: "):-len(CRLF)].decode("ascii")
    return value if fold else value.replace("\r\n ", " ")


def _to_header(recipient: Recipient) -> bytes:
    email = recipient.email
    if any(ch in email for ch in "\r\n<>,\" ") or "@" not in email:
        raise InvalidAddress(f"refusing to build a message to {email!r}: not a single plain address")
    if not recipient.name:
        return b"To: " + email.encode("utf-8") + CRLF
    return phrase_and_tail("To", recipient.name, f"<{email}>")
