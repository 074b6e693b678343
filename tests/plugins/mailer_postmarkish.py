"""A provider mailer does not ship, written as a third party would: ONE module, nothing else changed.

"postmarkish" speaks a Postmark-like HTTP API (Postmark, "Email API: send batch emails"): each
request is a JSON array of up to 500 messages POSTed to `/email/batch` with the
`X-Postmark-Server-Token` header; the answer is one object per message, `ErrorCode` 0 for accepted
(with its `MessageID`), 300 for an invalid address, 406 for an inactive (suppressed) recipient. It
takes per-recipient BODIES, not RFC 5322 bytes, so it uses `MessageFactory.personalise()`.

Its webhook (Postmark, "Bounce webhook" / "Spam complaint webhook") posts one JSON object per
event, authenticated by HTTP Basic credentials set in the webhook's URL: here the password is the
provider's own setting MAILER_POSTMARKISH_WEBHOOK_PASSWORD.

Registered through the entry point group `mailer.providers` (tests/test_provider_plugin.py
writes the `.dist-info` an installer would) or `mailer.registry.register_provider(PROVIDER)`.
"""

from __future__ import annotations

import base64
import hmac
import json
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any, Mapping

from mailer.config import Settings, normalise_base_url, positive_seconds
from mailer.errors import ConfigError
from mailer.mime import list_id_header
from mailer.providers import Backend, Batch, PermanentError, RecipientResult, TransientError
from mailer.providers.events import ProviderEvent, WebhookRefused
from mailer.registry import OwnDkim, Provider, Setting

MAX_BATCH = 500
PERMANENT_CODES = {300: True, 406: False}  # ErrorCode → hard bounce?


class PostmarkishBackend(Backend):
    name = "postmarkish"
    max_batch = MAX_BATCH

    def __init__(self, settings: Settings) -> None:
        self.token = settings.postmarkish_server_token
        self.url = settings.postmarkish_api_url + "/email/batch"
        self.timeout = settings.postmarkish_timeout

    def send_batch(self, batch: Batch) -> list[RecipientResult]:
        factory = batch.factory
        settings = factory.settings
        payload = []
        for message in batch.messages:
            recipient = message.recipient
            html, text = factory.personalise(recipient)
            headers = {**factory.recipient_headers(recipient, message.message_id),
                       "List-Id": list_id_header(settings, fold=False)}
            payload.append({
                "From": f"{settings.sender_name} <{settings.sender_email}>", "To": recipient.email,
                "Subject": factory.subject, "HtmlBody": html, "TextBody": text, "Tag": factory.key,
                "Headers": [{"Name": name, "Value": value} for name, value in headers.items()],
                "MessageStream": "broadcast",
                "Metadata": {"mailer_issue": str(batch.issue_id or ""),
                             "mailer_subscriber": str(recipient.subscriber_id or "")},
            })
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "Accept": "application/json",
                                                  "X-Postmark-Server-Token": self.token})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answers = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 422):
                raise PermanentError(f"postmarkish answered {exc.code}: {exc.read()[:200]!r}") from None
            raise TransientError(f"postmarkish answered {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise TransientError(f"postmarkish unreachable: {exc}") from None
        results = []
        for message, answer in zip(batch.messages, answers):
            code = answer.get("ErrorCode", -1)
            if code == 0:
                results.append(RecipientResult(message, "sent", provider_message_id=answer["MessageID"]))
            elif code in PERMANENT_CODES:
                results.append(RecipientResult(message, "permanent", error=answer.get("Message", ""),
                                               hard_bounce=PERMANENT_CODES[code]))
            else:
                results.append(RecipientResult(message, "transient", error=answer.get("Message", "")))
        return results


def _problems(settings: Settings) -> list[str]:
    return [] if settings.postmarkish_server_token else ["MAILER_POSTMARKISH_SERVER_TOKEN is missing for the "
                                                         "postmarkish backend"]


def _backend(settings: Settings) -> PostmarkishBackend:
    problems = _problems(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    return PostmarkishBackend(settings)


KINDS = {"Bounce": ("bounced", "bounced"), "SpamComplaint": ("complained", "complained"),
         "Delivery": ("delivered", None), "Open": ("opened", None)}


class PostmarkishWebhook:
    provider = "postmarkish"

    def __init__(self, settings: Settings) -> None:
        self.password = settings.postmarkish_webhook_password

    def receive(self, body: bytes, headers: Mapping[str, str]) -> list[ProviderEvent]:
        if not self.password:
            raise WebhookRefused(403, "webhook disabled: MAILER_POSTMARKISH_WEBHOOK_PASSWORD is not set")
        scheme, _, given = headers.get("authorization", "").partition(" ")
        try:
            password = base64.b64decode(given, validate=True).decode().partition(":")[2]
        except ValueError:
            password = ""
        if scheme.lower() != "basic" or not hmac.compare_digest(password.encode(), self.password.encode()):
            raise WebhookRefused(401, "wrong or missing credentials")
        try:
            event = json.loads(body)
        except ValueError as exc:
            raise WebhookRefused(400, f"body is not JSON: {exc}") from None
        if not isinstance(event, dict):
            raise WebhookRefused(400, "expected one JSON object")
        record = str(event.get("RecordType", ""))
        kind, suppress = KINDS.get(record, (record.lower() or "unknown", None))
        if record == "Bounce" and event.get("Type") != "HardBounce":
            kind, suppress = "blocked", None  # soft bounces suppress nobody
        metadata = event.get("Metadata") if isinstance(event.get("Metadata"), dict) else {}
        stamp = event.get("BouncedAt") or event.get("ReceivedAt") or event.get("DeliveredAt")
        return [ProviderEvent(
            provider="postmarkish", event_id=f"{record}:{event.get('ID')}", kind=kind, suppress=suppress,
            name=str(event.get("Type") or record), email_key=str(event.get("Email", "")).strip().lower(),
            subscriber_id=_int(metadata.get("mailer_subscriber")), issue_id=_int(metadata.get("mailer_issue")),
            occurred=datetime.fromisoformat(stamp.replace("Z", "+00:00")) if isinstance(stamp, str) else None,
            reason=str(event.get("Description", ""))[:2000], payload=event)]


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


PROVIDER = Provider(
    name="postmarkish",
    label="Postmarkish",
    backend=_backend,
    problems=_problems,
    webhook=PostmarkishWebhook,
    settings=(
        Setting("postmarkish_server_token", "", "MAILER_POSTMARKISH_SERVER_TOKEN"),
        Setting("postmarkish_api_url", "https://api.postmarkapp.com", "MAILER_POSTMARKISH_API_URL",
                normalise=normalise_base_url),
        Setting("postmarkish_webhook_password", "", "MAILER_POSTMARKISH_WEBHOOK_PASSWORD"),
        Setting("postmarkish_timeout", 10.0, "MAILER_POSTMARKISH_TIMEOUT", check=positive_seconds),
    ),
    own_dkim=OwnDkim(selector="pm", fallback_domain="pm.mtasv.net",
                     setup="publish the DKIM record Postmark shows under Sender Signatures"),
    own_envelope=True,
    spf_include="spf.mtasv.net",
)
