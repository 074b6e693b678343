"""The per-recipient message: headers (List-Unsubscribe, Message-ID, List-Id…) and MIME bytes.

Building an `EmailMessage` per recipient costs ~7 ms for a 48 KB newsletter, far too slow for a
large list. So `MessageFactory` serialises everything static ONCE — folded, RFC 2047-encoded
headers and both parts quoted-printable-encoded — and keeps every per-recipient slot on a line of its
own (a soft line break before and after it). Per recipient only the few slot values are encoded and
the pieces joined: the result is byte-for-byte a valid RFC 5322 / MIME message with CRLF line
endings and no line over 78 characters in the bodies (SMTP's 998-octet limit is never at risk,
although MJML writes the HTML as one 45 KB line).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid

from .errors import InvalidAddress
from .render import Recipient, RenderedIssue, Template

CRLF = b"\r\n"
SOFT_BREAK = b"=\r\n"
# Default folding rules (RFC 2047 encoded words stay <= 75 chars) but CRLF line ends; the long-line
# variant only for headers that must not be encoded (List-Unsubscribe URLs).
HEADER_POLICY = policy.SMTP
ONE_CLICK = "List-Unsubscribe=One-Click"


def clean_header_value(value: str) -> str:
    """Neutralise CR/LF and other control characters: a value can never inject a header."""
    return " ".join("".join(ch if ch >= " " or ch == "\t" else " " for ch in value).split())


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


class MessageFactory:
    """Everything static about one issue's messages, serialised once; `build()` per recipient."""

    def __init__(self, rendered: RenderedIssue, *, subject_prefix: str = "", extra_headers: dict[str, str] | None = None) -> None:
        settings = rendered.settings
        self.rendered = rendered
        self.settings = settings
        self.domain = settings.sender_domain
        self.subject = clean_header_value(subject_prefix + rendered.subject)
        self.boundary = "=_mailer_" + secrets.token_hex(12)
        self.html_part = EncodedPart.encode(rendered.html)
        self.text_part = EncodedPart.encode(rendered.text)
        static = EmailMessage(policy=HEADER_POLICY)
        static["Subject"] = self.subject
        for name, value in (extra_headers or {}).items():
            static[name] = clean_header_value(value)
        # From, Reply-To and List-Id hold configured values and are written by hand (see their helpers)
        reply_to = settings.reply_to_mailbox
        self._static_headers = b"".join((
            _mailbox_header("From", settings.sender_name, settings.sender_email),
            _mailbox_header("Reply-To", reply_to.display_name, reply_to.address) if reply_to else b"",
            *(HEADER_POLICY.fold_binary(k, v) for k, v in static.items()),
            b"List-Id: " + list_id_header(settings).encode("ascii") + CRLF,
        ))
        self._mime_head = (
            b"MIME-Version: 1.0\r\n"
            b'Content-Type: multipart/alternative; boundary="' + self.boundary.encode("ascii") + b'"\r\n'
        )
        delimiter = b"--" + self.boundary.encode("ascii")
        self._text_head = (CRLF + delimiter + CRLF + b'Content-Type: text/plain; charset="utf-8"\r\n'
                           b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
        self._html_head = (CRLF + delimiter + CRLF + b'Content-Type: text/html; charset="utf-8"\r\n'
                           b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
        self._closing = CRLF + delimiter + b"--" + CRLF

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
        values = self.rendered.slot_values(recipient)
        return b"".join((
            b"Date: " + (date or formatdate(localtime=False, usegmt=True)).encode("ascii") + CRLF,
            self._static_headers,
            to,
            b"Message-ID: " + headers["Message-ID"].encode("ascii") + CRLF,
            b"List-Unsubscribe: <" + recipient.unsubscribe_url.encode("ascii") + b">,\r\n <"
            + self.settings.unsubscribe_mailto_url.encode("ascii") + b">" + CRLF,
            b"List-Unsubscribe-Post: " + ONE_CLICK.encode("ascii") + CRLF,
            self._mime_head,
            self._text_head,
            self.text_part.fill(values),
            self._html_head,
            self.html_part.fill(values),
            self._closing,
        ))


# RFC 5322 atext words separated by single spaces: a phrase that needs neither quoting nor encoding
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def list_id_header(settings, *, fold: bool = True) -> str:
    """The List-Id value (RFC 2919 §3): `phrase <list-id>`, ASCII only.

    The phrase (`settings.list_id_phrase`) stays as written when it is plain atoms and short;
    otherwise it becomes RFC 2047 B encoded words of at most 64 characters, so that each line holding
    them stays within RFC 2047's 76 (`List-Id: ` included). The id (`settings.list_id_value`, an
    ASCII dot-atom) is never encoded. `fold=False` joins with spaces instead of CRLF+space (for APIs
    that fold themselves, such as SendGrid's `headers`).
    """
    ident = f"<{settings.list_id_value}>"
    phrase = " ".join(settings.list_id_phrase.split())
    if not phrase:
        return ident
    if _ATOM_PHRASE.fullmatch(phrase) and "=?" not in phrase and len("List-Id: ") + len(phrase) + 1 + len(ident) <= 78:
        return f"{phrase} {ident}"
    separator = "\r\n " if fold else " "
    words = [word.decode("ascii") for word in _encoded_words(phrase, max_bytes=39)]
    last_line = len(words[-1]) + (len("List-Id: ") if len(words) == 1 else 1)
    joint = " " if not fold or last_line + 1 + len(ident) <= 76 else separator
    return separator.join(words) + joint + ident


def _address(name: str, email: str) -> Address:
    local, _, domain = email.rpartition("@")
    # "=?" would be decoded as an RFC 2047 word when the email package parses the header back,
    # letting an encoded CR LF out as a real line break (a header injection): never an encoded word
    return Address(display_name=clean_header_value(name).replace("=?", "= ?"), username=local, domain=domain)


def _to_header(recipient: Recipient) -> bytes:
    email = recipient.email
    if any(ch in email for ch in "\r\n<>,\"") or "@" not in email:
        raise InvalidAddress(f"refusing to build a message to {email!r}: not a single plain address")
    if email.isascii():
        return _mailbox_header("To", recipient.name, email)
    name = clean_header_value(recipient.name)  # non-ASCII address: SMTPUTF8 anyway
    return policy.SMTPUTF8.fold_binary("To", policy.SMTPUTF8.header_factory("To", _address(name, email)))


def _mailbox_header(field: str, name: str, email: str) -> bytes:
    """`Field: name <email>` + CRLF for an ASCII address (From, Reply-To, To).

    The name is cleaned (`clean_header_value`) and `=?` defused, so it is never read as an RFC 2047
    word. An ASCII name is written as is or quoted (`formataddr`), folded at its spaces; a non-ASCII
    one as B encoded words cut on character boundaries: the email package's folder can split or glue the
    words of a long non-ASCII name (cpython#92081) and costs ~200 µs where this costs ~3 µs. Every
    line holding an encoded word stays within RFC 2047's 76 characters.
    """
    name = clean_header_value(name).replace("=?", "= ?")
    head = field.encode("ascii") + b": "
    if not name:
        return head + email.encode("ascii") + CRLF
    if name.isascii():  # atoms or a quoted-string, folded at its spaces (an unbroken word may pass 78)
        phrase = formataddr((name, email)).rpartition(" <")[0]
        lines, column = [], len(head)
        for word in phrase.split(" "):
            if lines and column + 1 + len(word) > 78:
                lines.append("\r\n " + word)
                column = 1 + len(word)
            else:
                lines.append(" " + word if lines else word)
                column += len(word) + (1 if len(lines) > 1 else 0)
        tail = f" <{email}>" if column + 2 + len(email) + 1 <= 78 else f"\r\n <{email}>"
        return head + "".join(lines).encode("ascii") + tail.encode("ascii") + CRLF
    words = _encoded_words(name, max_bytes=45 if len(head) + 72 <= 76 else 39)
    tail = b"<" + email.encode("ascii") + b">"
    last_line = (len(head) if len(words) == 1 else 1) + len(words[-1])
    joint = b" " if last_line + 1 + len(tail) <= 76 else b"\r\n "
    return head + b"\r\n ".join(words) + joint + tail + CRLF


def _encoded_words(text: str, max_bytes: int = 45) -> list[bytes]:
    """RFC 2047 `=?utf-8?b?…?=` words of at most 75 characters, never splitting a character.

    `max_bytes` of UTF-8 per word: 45 → 60 base64 characters → a 72-character word; 39 → 64.
    A word ends after a space when one is in its second half: RFC 2047 decoders drop the blank
    between two encoded words, but Python's address parser keeps it (so a cut inside a word
    reads back as `Zo é` there, a cut after a space only as a double space)."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for char in text:
        length = len(char.encode("utf-8"))
        if size + length > max_bytes:
            cut = max((i + 1 for i, c in enumerate(chunk) if c == " "), default=0)
            if cut * 2 < len(chunk):
                cut = len(chunk)
            words.append("".join(chunk[:cut]))
            chunk = chunk[cut:]
            size = len("".join(chunk).encode("utf-8"))
            if size + length > max_bytes:
                words.append("".join(chunk))
                chunk, size = [], 0
        chunk.append(char)
        size += length
    words.append("".join(chunk))
    return [b"=?utf-8?b?" + base64.b64encode(word.encode("utf-8")) + b"?=" for word in words]
