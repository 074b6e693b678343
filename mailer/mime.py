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

With MAILER_DKIM_* set, `build()` puts a DKIM-Signature on top (`dkim_signer`): the body hash comes
from the static pieces canonicalised once per issue plus the slots' few encoded lines, the header hash
from the fixed fields canonicalised once plus the four per-recipient ones, so signing costs two short
hashes and one private-key operation per recipient. `prepare()` has those made ahead by signing
processes when the machine has a spare core (the SMTP send loop calls it for each claimed batch).

For SMTP, `smtp_data()` gives the same message as DATA carries it (RFC 5321 §4.5.2: a '.' opening a
line doubled, then CRLF.CRLF): the static pieces are dot-stuffed once per issue (`Stuffed`) and only
the few per-recipient pieces per message, so the ~33 KB of a newsletter are not scanned again for
every recipient (a `bytes.replace` over them cost ~70 µs per message, smtplib's own regex ~185 µs;
measured in bench/bench_smtp.py). `stuffed_join` is checked against smtplib's `_quote_periods` in
tests/test_message.py.
"""

from __future__ import annotations

import binascii
import hashlib
import pickle
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Iterable, NamedTuple, Sequence

from .errors import InvalidAddress
from .headers import CRLF, HARD_LINE, clean_header_value, list_id, phrase_and_tail, unstructured
from .content.email import EmailWithSlots
from .content.render import Recipient, Template

if TYPE_CHECKING:
    from .dkim_signer import SigningPool

__all__ = ["MessageFactory", "EncodedPart", "ONE_CLICK"]

SOFT_BREAK = b"=\r\n"
# the header fields that differ per recipient, in the order `MessageFactory.recipient_fields` gives them
RECIPIENT_FIELDS = (b"Date", b"To", b"Message-ID", b"List-Unsubscribe")
PREPARE_CHUNKS = (4, 16)  # messages per signing request: the first, then the others (`MessageFactory.prepare`)
ONE_CLICK = "List-Unsubscribe=One-Click"


def _qp(data: str) -> bytes:
    """Quoted-printable with CRLF line ends, soft breaks included (b2a_qp uses LF for a value
    that has no line break of its own)."""
    encoded = binascii.b2a_qp(data.replace("\r\n", "\n").encode("utf-8"), istext=True)
    return encoded.replace(b"\n", b"\r\n")


class Stuffed(NamedTuple):
    """A fixed piece of a message, dot-stuffed once (RFC 5321 §4.5.2) for `stuffed_join`."""

    at_line_start: bytes  # stuffed as it reads when the message so far ends a line (or is empty)
    mid_line: bytes       # stuffed as it reads after a partial line
    ends_line: bool       # does it end with LF (the next piece then starts a line)

    @classmethod
    def of(cls, raw: bytes) -> "Stuffed":
        mid = raw.replace(b"\n.", b"\n..")
        return cls(b"." + mid if raw[:1] == b"." else mid, mid, raw[-1:] == b"\n")


def stuffed_join(pieces: Iterable[bytes | Stuffed]) -> bytes:
    """DATA's payload for the message `pieces` make when joined (empty pieces allowed): each '.' that
    opens a line doubled (a line opens after LF, and at the very start), then CRLF if the message
    does not end with one, then `.` CRLF — byte for byte what smtplib's `data()` sends for the joined
    bytes (its `_quote_periods`, `(?m)^\\.`, and its end-of-data). `Stuffed` pieces are not scanned again."""
    out: list[bytes] = []
    line_start = True
    for piece in pieces:
        if type(piece) is Stuffed:
            if piece.mid_line:  # empty: nothing to send, and the line state stays
                out.append(piece.at_line_start if line_start else piece.mid_line)
                line_start = piece.ends_line
        elif piece:
            stuffed = piece.replace(b"\n.", b"\n..")
            out.append(b"." + stuffed if line_start and piece[:1] == b"." else stuffed)
            line_start = piece[-1:] == b"\n"
    tail = b"".join(out[-2:])[-2:]  # each piece is non-empty: the last two hold the message's last two octets
    out.append(b".\r\n" if tail == CRLF else b"\r\n.\r\n")
    return b"".join(out)


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
        self._fixed_tail = b"List-Unsubscribe-Post: " + ONE_CLICK.encode("ascii") + CRLF + self._mime_head
        self._slot_names = tuple(dict.fromkeys(p for p in (*self.text_part.pieces, *self.html_part.pieces)
                                               if isinstance(p, str)))
        # DKIM (dkim_signing): the signer, validated at load; the body hash's static pieces and the fixed
        # header fields, canonicalised once here
        self.signer = None
        if settings.dkim_private_key:
            from .dkim_signer import BodyHasher, HeadHasher
            from .dkim_signing import signer_for
            self.signer = signer_for(settings)
            self._body_hasher = BodyHasher((self._text_head[len(CRLF):], *self.text_part.pieces, self._html_head,
                                            *self.html_part.pieces, self._closing))
            self._head_hasher = HeadHasher(self._static_headers + self._fixed_tail, RECIPIENT_FIELDS)
        # the message's layout for `smtp_data`: the per-recipient fields by index (RECIPIENT_FIELDS order),
        # slots by name, the static pieces dot-stuffed once
        layout = (0, self._static_headers, 1, 2, 3, self._fixed_tail, self._text_head, *self.text_part.pieces,
                  self._html_head, *self.html_part.pieces, self._closing)
        self._wire = tuple(Stuffed.of(piece) if isinstance(piece, bytes) else piece for piece in layout)
        self._ready: dict[str, _Prepared] = {}  # by Message-ID: messages whose signature is being made ahead
        self._plan: tuple[bytes, bytes] | None = None  # (token, pickled SigningPlan) for the signing pool

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
        """The List-Unsubscribe value on ONE line, for APIs that write header values as they are given
        (SendGrid's `headers`): the https one-click URL (RFC 8058), then the mailto alternative (RFC 2369)
        when `List-Unsubscribe: value` stays within RFC 5322's 998 octets — MAILER_BASE_URL's maximum only
        guarantees that for the https URL alone (config.MAX_BASE_URL). `build` folds between the two."""
        url = f"<{recipient.unsubscribe_url}>"
        both = f"{url}, <{self.settings.unsubscribe_mailto_url}>"
        return both if len("List-Unsubscribe: ") + len(both) <= HARD_LINE else url

    def recipient_headers(self, recipient: Recipient, message_id: str | None = None) -> dict[str, str]:
        """Headers that differ per recipient (also what SendGrid takes per personalization)."""
        return {
            "List-Unsubscribe": self.list_unsubscribe(recipient),
            "List-Unsubscribe-Post": ONE_CLICK,
            "Message-ID": message_id or make_msgid(domain=self.domain),
        }

    def recipient_fields(self, recipient: Recipient, message_id: str | None = None,
                         date: str | None = None) -> tuple[bytes, bytes, bytes, bytes]:
        """The per-recipient header fields (RECIPIENT_FIELDS order), each `Name: value` with CRLF."""
        return (
            b"Date: " + (date or formatdate(localtime=False, usegmt=True)).encode("ascii") + CRLF,
            _to_header(recipient),
            b"Message-ID: " + (message_id or make_msgid(domain=self.domain)).encode("ascii") + CRLF,
            b"List-Unsubscribe: <" + recipient.unsubscribe_url.encode("ascii") + b">,\r\n <"
            + self.settings.unsubscribe_mailto_url.encode("ascii") + b">" + CRLF,
        )

    def build(self, recipient: Recipient, message_id: str | None = None, date: str | None = None) -> bytes:
        """The complete message for one recipient, CRLF line endings, ready for SMTP or a .eml file."""
        fields, fills, signature = self._parts(recipient, message_id, date)
        return self._join(fields, fills, signature)

    def smtp_data(self, recipient: Recipient, message_id: str | None = None, date: str | None = None) -> bytes:
        """What SMTP's DATA carries for `build(recipient, message_id, date)`: that message dot-stuffed,
        then the end-of-data line (`stuffed_join`: the same bytes smtplib's `data()` sends for it), with
        the static pieces stuffed once per issue. Raises as `build` does."""
        fields, fills, signature = self._parts(recipient, message_id, date)
        fields_and_fills = {**fills, 0: fields[0], 1: fields[1], 2: fields[2], 3: fields[3]}
        return stuffed_join((signature, *[piece if type(piece) is Stuffed else fields_and_fills[piece]
                                          for piece in self._wire]))

    def _parts(self, recipient: Recipient, message_id: str | None,
               date: str | None) -> tuple[tuple[bytes, bytes, bytes, bytes], dict[str, bytes], bytes]:
        """(recipient fields, encoded slots, DKIM-Signature field or b"") of one recipient's message; the
        signature made ahead by `prepare` when there is one for this recipient and date."""
        if self._ready and message_id is not None:
            prepared = self._ready.pop(message_id, None)
            if prepared is not None and prepared.recipient is recipient and prepared.date == date:
                signature = prepared.signature()
                if signature is not None:
                    return prepared.fields, prepared.fills, signature
        fields = self.recipient_fields(recipient, message_id, date)
        fills = encode_slots(self._slot_names, self.slot_values(recipient))
        return fields, fills, b"" if self.signer is None else self.signature(fields, fills)

    def prepare(self, messages: Sequence[tuple[Recipient, str]], date: str) -> int:
        """Have the DKIM signatures of `messages` ((recipient, Message-ID), in sending order) made
        ahead by the signing processes (`dkim_signer.signing_pool`: one per spare core), from the
        per-recipient bytes only, in chunks whose first is small so the first message waits little.
        `build(recipient, message_id, date)` with the same recipient object and date then returns the
        message with its signature; anything else (another date, a pool that broke) is signed in this
        process as before. A thread's earlier preparations it did not use are dropped. Returns how many
        were handed over (0 without DKIM, on one core, or when the fixed fields repeat a signed name)."""
        from .dkim_signer import SigningPlan, signing_pool
        owner = threading.get_ident()
        for key in [key for key, prepared in list(self._ready.items()) if prepared.owner == owner]:
            self._ready.pop(key, None)
        if self.signer is None or not self._head_hasher.usable or not messages:
            return 0
        pool = signing_pool()
        if pool is None:
            return 0
        if self._plan is None:
            plan = pickle.dumps(SigningPlan.of(self.signer, self._body_hasher.pieces,
                                               self._static_headers + self._fixed_tail, RECIPIENT_FIELDS))
            self._plan = (hashlib.sha256(plan).digest(), plan)
        token, plan = self._plan
        now, handed, start = time.time(), 0, 0
        while start < len(messages):
            size = PREPARE_CHUNKS[0] if start == 0 else PREPARE_CHUNKS[1]
            chunk, items = [], []
            for recipient, message_id in messages[start:start + size]:
                if message_id is None:  # `build` makes one: nothing to find it by
                    continue
                try:
                    fields = self.recipient_fields(recipient, message_id, date)
                    fills = encode_slots(self._slot_names, self.slot_values(recipient))
                except Exception:  # noqa: BLE001 - an unbuildable recipient: `build` reports it in its turn
                    continue
                chunk.append((recipient, message_id, fields, fills))
                items.append((fields, fills))
            start += size
            future = pool.submit(token, plan, items, now) if items else None
            if future is None:
                continue
            for index, (recipient, message_id, fields, fills) in enumerate(chunk):
                self._ready[message_id] = _Prepared(recipient, date, fields, fills, future, index, owner, pool)
            handed += len(chunk)
        return handed

    def _join(self, fields: tuple[bytes, ...], fills: dict[str, bytes], signature: bytes = b"") -> bytes:
        date, to, message_id, list_unsubscribe = fields
        return b"".join((signature, date, self._static_headers, to, message_id, list_unsubscribe, self._fixed_tail,
                         self._text_head, self.text_part.join(fills), self._html_head, self.html_part.join(fills),
                         self._closing))

    def signature(self, fields: tuple[bytes, ...], fills: dict[str, bytes], message: bytes | None = None,
                  now: float | None = None) -> bytes:
        """The DKIM-Signature field for the message `fields` and `fills` make: bh= from the body's
        pre-canonicalised pieces, the header hash from the fixed fields' canonical forms and the
        per-recipient `fields` (the whole head through dkimpy when a signed name repeats)."""
        body_hash = self._body_hasher.body_hash(fills)
        if self._head_hasher.usable:
            return self.signer.signature_fields(self._head_hasher, fields, body_hash, now)
        message = message or self._join(fields, fills)
        return self.signer.signature(message[:message.index(b"\r\n\r\n") + 2], body_hash, now)


@dataclass(frozen=True)
class _Prepared:
    """A message built ahead, its signature being made by a signing process."""

    recipient: Recipient
    date: str
    fields: tuple[bytes, bytes, bytes, bytes]  # the recipient's header fields (RECIPIENT_FIELDS order)
    fills: dict[str, bytes]  # its slots, encoded
    future: "Future[list[bytes]]"
    index: int
    owner: int  # the thread that prepared it
    pool: "SigningPool"

    def signature(self) -> bytes | None:
        try:
            return self.future.result()[self.index]
        except Exception as exc:  # noqa: BLE001 - a signing process died: this process signs instead
            self.pool.failed(exc)
            return None


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
