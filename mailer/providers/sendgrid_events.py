"""SendGrid's Event Webhook, read without a database: request verification, body parsing, and what
each event says (who, which issue, when, what kind, which suppression it implies) as a normalised
`ProviderEvent`. `subscribers.feedback` decides what an event does to whom; this module only reads.

Sources: SendGrid, "Event Webhook Reference" (event names and fields: `event`, `email`,
`timestamp`, `sg_event_id`, `reason`, `type`, custom_args flattened into the event) and "Getting
Started with the Event Webhook Security Features" (ECDSA P-256 with SHA-256 over the timestamp
header followed by the raw body; headers X-Twilio-Email-Event-Webhook-Signature and -Timestamp).
The key is parsed by the `sendgrid` library's `EventWebhook`; the signature is checked with
`cryptography` over the bytes exactly as received (the library's helper re-encodes a str).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ec import ECDSA, EllipticCurvePublicKey
from cryptography.hazmat.primitives.hashes import SHA256

from ..addresses import parse_address
from ..config import Settings
from ..errors import ConfigError, InvalidAddress
from .events import ProviderEvent, WebhookRefused

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_EVENTS = 10_000   # SendGrid posts batches of up to ~1000 events

log = logging.getLogger("mailer.sendgrid")


class SendGridWebhook:
    """`POST /webhooks/sendgrid`: refused (403, with the reason) unless MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY
    is set; ECDSA signature over the raw body, timestamp at most MAILER_WEBHOOK_MAX_AGE seconds away;
    the body a JSON array of at most MAX_EVENTS objects. ConfigError at construction for a key that
    does not parse (the app refuses to start rather than refuse every event)."""

    provider = "sendgrid"

    def __init__(self, settings: Settings) -> None:
        self.max_age = settings.webhook_max_age
        self.key: EllipticCurvePublicKey | None = None
        if settings.sendgrid_webhook_public_key:
            self.key = load_public_key(settings.sendgrid_webhook_public_key)
        elif settings.backend == "sendgrid":
            log.warning("SendGrid webhook disabled: MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY is unset, so bounces and "
                        "spam reports from SendGrid suppress no one (Mail Settings → Signed Event Webhook)")

    def receive(self, body: bytes, headers: Mapping[str, str]) -> list[ProviderEvent]:
        if self.key is None:
            raise WebhookRefused(403, "webhook disabled: MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY is not set on this "
                                      "server, and unsigned events are never accepted")
        refusal = check_signature(self.key, body, headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER),
                                  self.max_age)
        if refusal:
            raise WebhookRefused(403, refusal)
        try:
            events = parse_events(body)
        except BadPayload as exc:
            raise WebhookRefused(400, str(exc)[:300]) from None
        if len(events) > MAX_EVENTS:
            raise WebhookRefused(413, f"more than {MAX_EVENTS} events")
        return [read_event(event) for event in events]


def load_public_key(text: str) -> EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER); ConfigError naming the setting otherwise."""
    from sendgrid.helpers.eventwebhook import EventWebhook
    try:
        return EventWebhook(text.strip()).public_key
    except Exception as exc:  # noqa: BLE001 - whatever the key parser raises
        raise ConfigError(f"MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY is not a valid public key "
                          f"(paste the base64 key from SendGrid's Mail Settings): {exc}") from None


def check_signature(key: EllipticCurvePublicKey, body: bytes, signature: str | None, timestamp: str | None,
                    max_age: float) -> str | None:
    """None when the request is SendGrid's and fresh, else why not (one line): missing headers, a
    timestamp more than `max_age` seconds away from now (a replayed capture), a bad signature."""
    if not signature or not timestamp:
        return f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}"
    try:
        stamp = int(timestamp.strip())
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not a number"
    if abs(time.time() - stamp) > max_age:
        return f"{TIMESTAMP_HEADER} is more than {max_age:g} s away from now"
    try:
        key.verify(base64.b64decode(signature.strip(), validate=True), timestamp.strip().encode("ascii") + body,
                   ECDSA(SHA256()))
    except (InvalidSignature, ValueError, TypeError):  # bad base64 or DER too
        return "bad signature"
    return None


def read_event(event: dict) -> ProviderEvent:
    """One SendGrid event (a JSON object) → a `ProviderEvent`: `reason` is SendGrid's reason,
    response or type; ids come from our custom_args `mailer_subscriber` and `mailer_issue`."""
    reason = event.get("reason") or event.get("response") or event.get("type") or ""
    classified = classify_sendgrid_event(event)
    return ProviderEvent(provider="sendgrid", event_id=_event_id(event), kind=classified.kind,
                         suppress=classified.suppress, name=str(event.get("event")),
                         email_key=_email_key(event.get("email")),
                         subscriber_id=_as_int(_custom_arg(event, "mailer_subscriber")),
                         issue_id=_as_int(_custom_arg(event, "mailer_issue")), occurred=_event_time(event),
                         reason=str(reason)[:2000], payload=event)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 2 ** 63 else None
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 19:
        return int(value.strip())
    return None


def _email_key(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        return ""
    try:
        return parse_address(value).key
    except InvalidAddress:
        return value.strip().lower()[:320]


@dataclass(frozen=True)
class Classified:
    kind: str                 # normalised kind stored in provider_events
    suppress: str | None      # the status it implies, if any


def classify_sendgrid_event(event: dict) -> Classified:
    """SendGrid event → normalised kind and the suppression it implies.

    Only a real bounce (`type` "bounce", or no type) is a hard bounce; "blocked" is a temporary
    refusal by the receiving server, this message given up: a soft bounce (`statuses.SOFT_BOUNCE_KINDS`,
    a line of the person's history). "deferred" is not one: SendGrid is still retrying (as a bounce
    mailbox's delay warning, it is stored and changes nothing). A dropped message suppresses only when the reason names the
    address (Bounced Address, Spam Reporting Address, Unsubscribed Address); "Spam Content" is about
    the message, not the person, and suppresses no one.
    """
    name = str(event.get("event") or "").strip().lower()
    if name == "bounce":
        bounce_type = str(event.get("type") or "bounce").strip().lower()
        if bounce_type == "blocked":
            return Classified("blocked", None)
        return Classified("bounced", "bounced")
    if name == "spamreport":
        return Classified("complained", "complained")
    if name in ("unsubscribe", "group_unsubscribe"):
        return Classified("unsubscribed", "unsubscribed")
    if name == "dropped":
        reason = str(event.get("reason") or "").lower()
        if "bounce" in reason:
            return Classified("dropped", "bounced")
        if "spam report" in reason or ("spam" in reason and "address" in reason):
            return Classified("dropped", "complained")
        if "unsubscribe" in reason:
            return Classified("dropped", "unsubscribed")
        return Classified("dropped", None)
    # group_resubscribe is recorded but re-activates no one: our list, not SendGrid's, decides who gets mail
    normalised = {"open": "opened", "click": "clicked", "group_resubscribe": "resubscribed"}.get(name, name)
    return Classified((re.sub(r"[^a-z0-9_]", "_", normalised) or "unknown")[:32], None)


def _custom_arg(event: dict, name: str) -> Any:
    """SendGrid flattens custom_args into the event; older payloads nest them (unique_args)."""
    if name in event:
        return event[name]
    for nested in ("custom_args", "unique_args"):
        value = event.get(nested)
        if isinstance(value, dict) and name in value:
            return value[name]
    return None


def _event_time(event: dict) -> datetime | None:
    stamp = event.get("timestamp")
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and 0 < stamp < 2 ** 33:
        return datetime.fromtimestamp(stamp, timezone.utc)
    return None


def _event_id(event: dict) -> str:
    given = event.get("sg_event_id")
    if isinstance(given, str) and given.strip():
        return given.strip()[:200]
    # No id (older payloads): the event's own content names it, so a replay is still a duplicate.
    canonical = json.dumps(event, sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


MAX_JSON_DEPTH = 8   # SendGrid events are flat objects, custom_args/unique_args one level down


class BadPayload(ValueError):
    """A webhook body that is not what SendGrid sends: the one-line reason is the 400's message."""


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def _reject_constant(name: str) -> Any:
    raise BadPayload(f"{name} is not JSON")


def parse_events(body: bytes) -> list[dict]:
    """The webhook body → a list of events, or BadPayload naming what is wrong.

    Accepted: UTF-8 JSON, a top-level array of objects, nesting at most MAX_JSON_DEPTH levels,
    numbers finite (no NaN/Infinity, no integers over Python's 4,300-digit limit). Strings are made
    storable on both databases: NUL and lone surrogates become U+FFFD.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPayload(f"body is not UTF-8 (byte {exc.start})") from None
    try:
        events = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadPayload(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, BadPayload, too many digits
        raise BadPayload(str(exc) if isinstance(exc, BadPayload) else f"body is not JSON: {exc}") from None
    if not isinstance(events, list):
        raise BadPayload(f"expected a JSON array of event objects, got a JSON {_JSON_TYPES[type(events)]}")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise BadPayload(f"event {index} is a JSON {_JSON_TYPES[type(event)]}, not an object")
    return [_storable(event, 1) for event in events]


_UNSTORABLE = re.compile("[\0\ud800-\udfff]")  # NUL (PostgreSQL text refuses it) and lone surrogates (not UTF-8)


def _storable(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, (dict, list)):
        if depth > MAX_JSON_DEPTH:
            raise BadPayload(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            return {_storable(k, depth): _storable(v, depth + 1) for k, v in value.items()}
        return [_storable(item, depth + 1) for item in value]
    return value
