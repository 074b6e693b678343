"""What providers tell us after a send, in one shape: `ProviderEvent`, and the `Webhook` contract
each provider that posts events implements (verify the request, parse the body). The web route only
limits the body's size and hands it to the provider's webhook; the subscriber rules
(`subscribers.feedback`) act on the normalised events and never see a provider's format.

Bounce and complaint mailboxes (DSN, ARF, `providers.bounces`) produce the same `ProviderEvent`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Protocol


@dataclass(frozen=True)
class ProviderEvent:
    """One event, every field checked (wrong types read as absent), the raw payload kept.

    * `provider`: "sendgrid"…; `event_id`: the provider's id, or a hash of the content (a replay is a duplicate);
    * `kind`: normalised kind stored in provider_events (bounced, blocked, complained, unsubscribed,
      dropped, delivered, opened, clicked…; a soft bounce is one of `statuses.SOFT_BOUNCE_KINDS`); `suppress`: the subscriber status it implies, if any;
    * `name`: the provider's own event name (for the reason recorded in a person's history);
    * `email_key`: the address normalised as `subscribers.email` ("" if none); `subscriber_id`,
      `issue_id`: what our own custom arguments say (subscriber 0: a test send); `occurred`: UTC;
    * `reason`: what the provider says happened (≤ 2,000 characters); `payload`: the event as received;
    * `sent_at`: when the message the event is about was sent, when the provider knows (a bounce
      report matched to a delivery; the "came back since" rule then uses it instead of `occurred`);
    * `history`: the line a status change (or a soft bounce) writes in the person's history, when
      the provider has a better one than "PROVIDER NAME: REASON";
    * `by_address`: whether the address alone may name the person (a verified webhook: yes; a
      bounce mailbox, where anybody can write a report: no, only `subscriber_id` does).
    """

    provider: str
    event_id: str
    kind: str
    suppress: str | None
    name: str
    email_key: str
    subscriber_id: int | None
    issue_id: int | None
    occurred: datetime | None
    reason: str
    payload: dict[str, Any]
    sent_at: datetime | None = None
    history: str = ""
    by_address: bool = True


class WebhookRefused(Exception):
    """A webhook request answered with `status` (401/403 unverified, 400 malformed, 413 too many
    events) and `message` (one line, the body's `error`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Webhook(Protocol):
    """A provider's event webhook (`POST /webhooks/{provider}`)."""

    provider: str

    def receive(self, body: bytes, headers: Mapping[str, str]) -> list[ProviderEvent]:
        """The raw body exactly as received and the request headers → the events, or WebhookRefused."""
        ...
