"""Reading one message of a bounce mailbox: a bounce (which recipients, hard or soft, the status code),
a complaint (an ARF feedback report), something else, or not a message at all. No database here.

Sources and rules:
- Detection is GNU Mailman's `flufl.bounce` (`all_failures`: DSN first, then 16 heuristic detectors
  for non-standard bounces: Exim, qmail, Postfix's old format, Exchange, Yahoo, AOL…).
- RFC 3464 delivery status notifications (`multipart/report; report-type=delivery-status`) are read
  here field by field, whatever the status part's Content-Transfer-Encoding (Microsoft's servers send
  it base64 or quoted-printable, which Python's parser does not undo for message/delivery-status), and
  RFC 6533 internationalised ones (`message/global-delivery-status`, UTF-8 fields, `utf-8;` address
  type; the original's headers as `message/global-headers` or the whole of it as `message/global`), (Action, Status, Final-Recipient, Original-Recipient, Diagnostic-Code,
  Remote-MTA) for the status code, which `flufl.bounce` does not report. A non-DSN bounce gets the
  first RFC 3463 enhanced code (`5.1.1`) found in its text, if any.
- The status code decides, not the Action: `failed` with 5.x.x is a hard bounce; `failed` with 4.x.x
  (given up after retries) is a soft one; `delayed` is a warning (the message is still queued), never
  a bounce. RFC 3463 calls X.2.2 (mailbox full) "a persistent transient failure", and X.7.X
  (security or policy: a block, a content filter) and X.3.4 (message too big) are about the message or
  the sender, not the address: these 5.x.x codes count as soft bounces, so only a repeated refusal
  suppresses the address (MAILER_SOFT_BOUNCE_LIMIT over MAILER_SOFT_BOUNCE_SENDS).
- RFC 5965 feedback reports (`multipart/report; report-type=feedback-report`): Feedback-Type `abuse`
  or `fraud` is a complaint; `not-spam`, `virus`, `auth-failure` (DMARC/SPF failure reports) and
  others are not about the person and change no one.
- The original message's identity, for matching (see `process`): every address of the form
  `bounces+TOKEN@domain` in the bounce's envelope headers, in the returned original headers
  (`message/rfc822` or `text/rfc822-headers`: Return-Path) and in the report's Original-Mail-From;
  the original Message-ID; the List-Unsubscribe URLs.

Longer than ~400 lines because one message's whole reading lives here: the reports (RFC 3464, 6533,
5965) and the plain-text path (flufl.bounce, `X-Failed-Recipients`, the text near an address) share
their decoding helpers and the `Failure` rules; split in two, each half would import the other.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.policy
import hashlib
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from datetime import datetime, timezone
from typing import Literal

Kind = Literal["bounce", "complaint", "other", "unparseable"]
Severity = Literal["hard", "soft", "delayed"]

COMPLAINT_FEEDBACK_TYPES = ("abuse", "fraud")
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# RFC 3463 codes that are not about the address: mailbox full (X.2.2, "persistent transient"),
# message too big (X.2.3, X.3.4), mail system full (X.3.1), security or policy (X.7.X).
_NOT_ABOUT_ADDRESS = re.compile(r"\d\.(2\.2|2\.3|3\.1|3\.4|7\.\d{1,3})$")
_ENVELOPE_HEADERS = ("to", "delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "x-rcpt-to",
                     "x-failed-recipients-to", "received")
_RETURNED_HEADERS = ("return-path", "from", "sender", "errors-to")
_URL = re.compile(r"<(https?://[^>\s]+)>")


@dataclass(frozen=True)
class Failure:
    """One recipient a bounce reports as failed or delayed."""

    recipient: str                 # Final-Recipient (or what the detector found), lower-cased
    severity: Severity
    status: str = ""               # RFC 3463 enhanced code, "5.1.1", or ""
    action: str = ""               # RFC 3464 Action, "" when not a DSN
    diagnostic: str = ""           # Diagnostic-Code, or the detector's name
    original_recipient: str = ""   # Original-Recipient, lower-cased
    remote_mta: str = ""

    @property
    def reason(self) -> str:
        text = " ".join(part for part in (self.status, self.diagnostic) if part)
        return text or f"{self.severity} bounce"


@dataclass(frozen=True)
class Reading:
    """What one mailbox message says."""

    kind: Kind
    digest: str                                   # sha256 of the message (line endings normalised)
    failures: tuple[Failure, ...] = ()
    feedback_type: str = ""                       # ARF Feedback-Type, lower-cased
    complaint_recipient: str = ""                 # ARF Original-Rcpt-To (often redacted), lower-cased
    original_message_id: str = ""                 # the bounced/reported message's Message-ID, "<…>"
    original_recipients: tuple[str, ...] = ()     # the returned headers' To, lower-cased
    envelope_text: str = ""                       # header text where VERP addresses may appear
    unsubscribe_urls: tuple[str, ...] = ()        # the returned List-Unsubscribe URLs
    message_id: str = ""                          # the report's own Message-ID
    subject: str = ""
    occurred: datetime | None = None              # the report's Date
    detector: str = ""                            # "dsn", "arf", or the flufl.bounce detector's answer
    problem: str = ""                             # why unparseable

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every address the report names for the failed delivery, most specific first."""
        found: list[str] = []
        for failure in self.failures:
            found += [failure.recipient, failure.original_recipient]
        found += [self.complaint_recipient, *self.original_recipients]
        return tuple(dict.fromkeys(address for address in found if address and "@" in address))


def digest_of(raw: bytes) -> str:
    """The message's identity for idempotency: the same message read from Maildir (LF), IMAP (CRLF)
    or an mbox gives the same digest."""
    return hashlib.sha256(raw.replace(b"\r\n", b"\n").strip()).hexdigest()


def classify(action: str, status: str) -> Severity | None:
    """RFC 3464 Action + RFC 3463 status → hard, soft, delayed, or None (delivered, relayed, expanded).
    See the module docstring for why some 5.x.x codes are soft."""
    action = action.strip().lower()
    if action.startswith("delayed"):
        return "delayed"
    if action and not action.startswith(("fail", "error")):
        return None
    if status.startswith("4") or (status.startswith("5") and _NOT_ABOUT_ADDRESS.search(status)):
        return "soft"
    return "hard"


def read_message(raw: bytes) -> Reading:
    """Read one message (bytes as stored). Never raises for bad input: `kind == "unparseable"` with a
    `problem` instead (no header fields, a report whose report part cannot be read, a detector crash)."""
    digest = digest_of(raw)
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception as exc:  # noqa: BLE001 - the parser is lenient; belt and braces
        return Reading("unparseable", digest, problem=f"not a message: {exc}")
    if not msg.keys():
        return Reading("unparseable", digest, problem="no header fields: not an RFC 5322 message")
    try:
        reading = _read(msg, _leaf_view(raw), digest)
    except Exception as exc:  # noqa: BLE001 - a malformed MIME tree must not stop the mailbox
        reading = Reading("unparseable", digest, problem=f"unreadable: {type(exc).__name__}: {exc}"[:300])
    if any(msg.get(name) for name in ("from", "date", "subject", "message-id")):
        return reading
    found = ", ".join(dict.fromkeys(str(name) for name in msg.keys()))[:120]
    problem = f"no From, Date, Subject or Message-ID field (only {found}): not an RFC 5322 message"
    more = f"; and its body: {reading.problem}" if reading.kind == "unparseable" and reading.problem else ""
    return Reading("unparseable", digest, problem=(problem + more)[:300])


# The report parts Python's parser would split into header blocks (message/delivery-status) or parse as
# an embedded message (message/global…) without undoing a base64 or quoted-printable encoding first:
# renamed, in a second parse only, to a private leaf type whose payload `get_payload(decode=True)` decodes.
_REPORT_PARTS = re.compile(rb"(?im)^(content-type:[ \t]*(?:\r?\n[ \t]+)?)message/"
                           rb"(delivery-status|global-delivery-status|global-headers|global)(?=[\s;]|$)")
_LEAF = "application/x-mailer-"


def _leaf_view(raw: bytes) -> Message:
    return email.message_from_bytes(_REPORT_PARTS.sub(rb"\1application/x-mailer-\2", raw), policy=email.policy.compat32)


def _read(msg: Message, leaf: Message, digest: str) -> Reading:
    common = dict(message_id=_text(msg.get("message-id")), subject=_decoded(msg.get("subject"))[:300],
                  occurred=_date(msg.get("date")))
    original = _original_headers(leaf) or _inline_original(msg)
    returned = dict(
        original_message_id=_message_id(original.get("message-id") if original else None),
        original_recipients=tuple(a.lower() for _, a in getaddresses(original.get_all("to", []) if original else [])
                                  if "@" in a),
        unsubscribe_urls=tuple(_URL.findall(" ".join(original.get_all("list-unsubscribe", []))) if original else ()),
        envelope_text=_envelope_text(msg, original))
    report_type = (msg.get_param("report-type", "") or "") if msg.get_content_type() == "multipart/report" else ""
    if str(report_type).lower() == "feedback-report":
        fields = _feedback_fields(msg)
        if fields is None:
            return Reading("unparseable", digest, problem="feedback report without a message/feedback-report part",
                           **common)
        feedback_type = _text(fields.get("feedback-type")).lower()
        kind: Kind = "complaint" if feedback_type in COMPLAINT_FEEDBACK_TYPES else "other"
        mail_from = _text(fields.get("original-mail-from"))
        returned["envelope_text"] += "\n" + mail_from
        rcpt = parseaddr(_text(fields.get("original-rcpt-to")))[1].lower()
        return Reading(kind, digest, feedback_type=feedback_type, complaint_recipient=rcpt, detector="arf",
                       **returned, **common)
    failures = _dsn_failures(leaf)
    detector = "dsn"
    if failures is None:  # no readable delivery-status part: the heuristic detectors
        failures, detector = _detected_failures(msg)
        if not failures and str(report_type).lower() == "delivery-status":
            return Reading("unparseable", digest, problem="delivery status notification without a readable "
                                                          "message/delivery-status part", **common)
    if any(f.severity in ("hard", "soft") for f in failures):
        return Reading("bounce", digest, failures=tuple(failures), detector=detector, **returned, **common)
    # delays only (a warning: the message is still being retried), a success notice, or not a bounce
    return Reading("other", digest, failures=tuple(failures), detector=detector, **returned, **common)


def _dsn_failures(leaf: Message) -> list[Failure] | None:
    """Per-recipient blocks of every message/delivery-status or message/global-delivery-status part
    (of `_leaf_view`: decoded from any transfer encoding); None when there is no such part or no block
    names a Final-Recipient (RFC 3464 §2.3.2 makes it mandatory)."""
    parts = [part for part in leaf.walk()
             if part.get_content_type() in (_LEAF + "delivery-status", _LEAF + "global-delivery-status")]
    if not parts:
        return None
    failures: list[Failure] = []
    named = 0
    for part in parts:
        text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")  # RFC 6533: UTF-8 fields
        blocks = [HeaderParser().parsestr(chunk) for chunk in re.split(r"\r?\n[ \t]*\r?\n", text.strip()) if chunk.strip()]
        for block in blocks:  # the per-message block (Reporting-MTA…) has no Final-Recipient
            final = _typed_address(block.get("final-recipient"))
            if not final:
                continue
            named += 1
            status = _status(_text(block.get("status")))
            action = _text(block.get("action")).lower()
            diagnostic = _text(block.get("diagnostic-code"))
            if not status:
                status = _first_code(diagnostic)
            severity = classify(action, status)
            if severity is None:
                continue
            failures.append(Failure(final, severity, status, action, diagnostic[:1000],
                                    _typed_address(block.get("original-recipient")),
                                    _text(block.get("remote-mta"))[:200]))
    return failures if named else None


def _detected_failures(msg: Message) -> tuple[list[Failure], str]:
    """Failures of a bounce that carries no delivery-status part: `flufl.bounce`'s detectors, then the
    recipients an `X-Failed-Recipients` field names that they missed. Exim writes that field on every
    bounce (Gmail's and others' too) listing the addresses it gave up on; flufl.bounce reads addresses
    off the body with ASCII patterns, so for an internationalised address (RFC 6531: a UTF-8 local part
    or domain) it found nothing, the report read as "not a bounce", and the address kept being mailed."""
    from flufl.bounce import all_failures
    temporary, permanent = all_failures(msg)
    named = _failed_recipients(msg)
    if not temporary and not permanent and not named:
        return [], ""
    body = _body_text(msg)

    def failed(recipient: str) -> Failure:  # given up on: hard unless its code says soft
        status = _code_near(body, recipient)
        return Failure(recipient, classify("failed", status) or "hard", status, "", _line_near(body, recipient))

    failures = [failed(address.decode("ascii", "replace").lower()) for address in sorted(permanent)]
    for address in sorted(temporary - permanent):
        recipient = address.decode("ascii", "replace").lower()
        failures.append(Failure(recipient, "delayed", _code_near(body, recipient), "", _line_near(body, recipient)))
    found = {failure.recipient for failure in failures}
    failures += [failed(recipient) for recipient in named if recipient not in found]  # X-Failed-Recipients' meaning
    return failures, "flufl.bounce" if temporary or permanent else "x-failed-recipients"


def _failed_recipients(msg: Message) -> list[str]:
    """The addresses of every `X-Failed-Recipients` field (comma-separated; raw UTF-8 or RFC 2047
    encoded words), lowercased, in order, once each."""
    values = [_decoded(value) for value in msg.get_all("x-failed-recipients", [])]
    addresses = [address.strip().lower() for _, address in getaddresses(values)]
    return list(dict.fromkeys(address for address in addresses if "@" in address))


def _feedback_fields(msg: Message) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        text = part.get_payload(decode=True) or b""
        return HeaderParser().parsestr(text.decode("utf-8", "replace"))
    return None


def _original_headers(msg: Message) -> Message | None:
    """The returned original message's headers (of `_leaf_view`): a message/rfc822 part, a
    text/rfc822-headers one, or RFC 6533's message/global-headers or message/global (any encoding)."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if kind in ("text/rfc822-headers", "message/rfc822-headers", _LEAF + "global-headers", _LEAF + "global"):
            data = part.get_payload(decode=True) or b""
            return BytesHeaderParser(policy=email.policy.compat32).parsebytes(data.lstrip())
    return None


_INLINE_HEAD = re.compile(r"(?m)^(?:Return-Path|Received|Date|From|Message-ID|Subject|To|MIME-Version)[ \t]*:")


def _inline_original(msg: Message) -> Message | None:
    """The original's headers quoted in a plain-text bounce (Exim's "This is a copy of the message,
    including all the headers", qmail's "--- Below this line is a copy of the message."): the first
    block of header lines holding a Message-ID field."""
    if msg.is_multipart():
        return None
    body = _body_text(msg)
    for match in _INLINE_HEAD.finditer(body):
        head = body[match.start():].split("\n\n", 1)[0]
        if re.search(r"(?im)^Message-ID[ \t]*:", head):
            return HeaderParser().parsestr(head + "\n\n")
    return None


def _envelope_text(msg: Message, original: Message | None) -> str:
    lines = [f"{name}: {value}" for name, value in msg.items() if name.lower() in _ENVELOPE_HEADERS]
    if original is not None:
        lines += [f"{name}: {value}" for name, value in original.items() if name.lower() in _RETURNED_HEADERS]
    return "\n".join(str(line) for line in lines)


def _body_text(msg: Message) -> str:
    chunks = []
    for part in msg.walk():
        if part.get_content_maintype() == "text" and part.get_content_type() != "text/rfc822-headers":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                chunks.append(data.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(chunks)[:200_000]


def _code_near(body: str, address: str) -> str:
    """The first enhanced status code after the address's first mention (else anywhere)."""
    at = body.lower().find(address)
    return _first_code(body[at:at + 2000] if at >= 0 else body) or _first_code(body)


# Where a plain-text bounce starts quoting the returned message (Exim, qmail, Postfix's old format,
# Exchange): the diagnostic stops there, so no copied header or body text is stored as the reason.
_COPY_BOUNDARY = re.compile(r"(?im)^(?:[ \t-]*(?:this is a copy of|below this line is a copy|the original message|"
                            r"original message follows|-{3,}\s*(?:original|returned|forwarded) message|"
                            r"------ This is a copy)|(?:Return-Path|Received|Message-ID|From|Date|Subject)[ \t]*:)")


def _line_near(body: str, address: str) -> str:
    """What a plain-text bounce says after the address (and qmail's `>:`) up to the copied message."""
    at = body.lower().find(address)
    if at < 0:
        return ""
    at += len(address)
    while at < len(body) and body[at] in ">:;,\"' \t\r\n":
        at += 1
    window = body[at:at + 400]
    cut = _COPY_BOUNDARY.search(window, 1)
    return " ".join((window[:cut.start()] if cut else window).split())[:300]


def _first_code(text: str) -> str:
    match = _ENHANCED.search(text or "")
    return ".".join(match.groups()) if match else ""


def _status(value: str) -> str:
    match = _ENHANCED.match(value.strip())
    return ".".join(match.groups()) if match else ""


def _typed_address(value: object) -> str:
    """`rfc822; user@example.org` (RFC 3464 §2.3.2 address-type; value) → `user@example.org`."""
    text = _text(value)
    if ";" in text:
        kind, _, text = text.partition(";")
        if kind.strip().lower() not in ("rfc822", "utf-8", ""):
            return ""
    return parseaddr(text.strip())[1].lower() or text.strip().strip("<>").lower()


def _message_id(value: object) -> str:
    text = _text(value)
    match = re.search(r"<[^<>\s]+>", text)
    return match.group(0) if match else ""


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, email.header.Header):
        value = str(value)
    return " ".join(str(value).split())


def _decoded(value: object) -> str:
    """A header's text as a reader sees it: RFC 2047 encoded words decoded, raw 8-bit bytes (which the
    compat32 parser keeps as an `unknown-8bit` Header) read as UTF-8, else Latin-1."""
    if value is None:
        return ""
    try:
        pieces = email.header.decode_header(value if isinstance(value, email.header.Header) else str(value))
        out = []
        for data, charset in pieces:
            if isinstance(data, str):
                out.append(data)
                continue
            if charset and charset != "unknown-8bit":
                out.append(data.decode(charset, "replace"))
            else:
                try:
                    out.append(data.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append(data.decode("latin-1"))
        return _text("".join(out))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return _text(value)


def _date(value: object) -> datetime | None:
    try:
        stamp = parsedate_to_datetime(_text(value))
    except (TypeError, ValueError, IndexError):
        return None
    if stamp is None:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


__all__ = ["Reading", "Failure", "read_message", "classify", "digest_of", "COMPLAINT_FEEDBACK_TYPES"]
