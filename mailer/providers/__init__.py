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


def backend_problems(settings: Settings) -> list[str]:
    """What the configured backend's own settings lack, one line each (its `settings_problems`)."""
    if settings.backend == "smtp":
        from .smtp import SmtpBackend
        return SmtpBackend.settings_problems(settings)
    if settings.backend == "sendgrid":
        from .sendgrid import SendGridBackend
        return SendGridBackend.settings_problems(settings)
    return []


def require_ready(settings: Settings) -> None:
    """Raise ConfigError naming every missing or invalid setting a real send needs: the general ones
    (`Settings.require_for_send`) and the configured backend's own."""
    settings.require_for_send(backend_problems(settings))


def make_webhooks(settings: Settings) -> dict[str, Webhook]:
    """Provider name → its webhook (ConfigError for a verification key that does not parse)."""
    from .sendgrid_events import SendGridWebhook
    return {"sendgrid": SendGridWebhook(settings)}


__all__ = ["backend_problems", "require_ready", "ProviderEvent", "Webhook", "WebhookRefused", "make_webhooks", "Backend", "Batch", "OutgoingMessage", "RecipientResult", "TransientError", "PermanentError", "make_backend"]
