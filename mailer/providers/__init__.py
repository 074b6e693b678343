"""Providers: where messages go, and what they tell us afterwards. One module (or module pair) per
provider owns its whole contract: sending a batch (`Backend`), checking its own settings
(`from_settings`), and reading its webhook into `ProviderEvent`s (`Webhook`).

`make_backend` picks the configured backend; `make_webhooks` builds every provider's webhook
(`POST /webhooks/{provider}`). A new provider is one module plus a line in each. `bounces/`: what
comes back by mail (bounce and complaint mailboxes), read into the same kind of events.
"""

from __future__ import annotations

from ..config import Settings
from .base import Backend, Batch, OutgoingMessage, PermanentError, RecipientResult, TransientError
from .events import ProviderEvent, Webhook, WebhookRefused


def make_backend(settings: Settings) -> Backend:
    """The configured backend, checked for its required settings (nothing is sent yet)."""
    if settings.backend == "outbox":
        from ..providers.bounces.verp import Verp
        from .outbox import OutboxBackend
        return OutboxBackend(settings.outbox_dir, Verp.from_settings(settings))
    if settings.backend == "smtp":
        from .smtp import SmtpBackend
        return SmtpBackend.from_settings(settings)
    if settings.backend == "sendgrid":
        from .sendgrid import SendGridBackend
        return SendGridBackend.from_settings(settings)
    raise ValueError(settings.backend)


def make_webhooks(settings: Settings) -> dict[str, Webhook]:
    """Provider name → its webhook (ConfigError for a verification key that does not parse)."""
    from .sendgrid_events import SendGridWebhook
    return {"sendgrid": SendGridWebhook(settings)}


__all__ = ["ProviderEvent", "Webhook", "WebhookRefused", "make_webhooks", "Backend", "Batch", "OutgoingMessage", "RecipientResult", "TransientError", "PermanentError", "make_backend"]
