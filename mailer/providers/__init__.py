"""Providers: where messages go, and what they tell us afterwards. One module (or module pair) per
provider owns its whole contract and declares it in a module-level `PROVIDER` (`registry.Provider`):
its name, its own settings (read and checked by `config` like every other), sending a batch
(`Backend`), what its settings lack for a real send, reading its webhook into `ProviderEvent`s
(`Webhook`), and the capabilities generic code asks about instead of comparing names.

A new provider is one module: drop it in this package (found by its `PROVIDER`), or ship it in
another package with an entry point in the group `mailer.providers`, or call
`registry.register_provider`. Nothing else changes: `make_backend` builds the configured one,
`make_webhooks` every registered one's webhook (`POST /webhooks/{provider}`). `bounces/`: what comes
back by mail (bounce and complaint mailboxes), read into the same kind of events.
"""

from __future__ import annotations

from ..config import Settings
from ..registry import OwnDkim, Provider, Setting, provider_for, providers, register_provider
from .base import Backend, Batch, OutgoingMessage, PermanentError, RecipientResult, TransientError
from .events import ProviderEvent, Webhook, WebhookRefused


def make_backend(settings: Settings) -> Backend:
    """The configured backend, checked for its required settings (nothing is sent yet)."""
    return provider_for(settings).backend(settings)


def backend_problems(settings: Settings) -> list[str]:
    """What the configured backend's own settings lack, one line each (its `Provider.problems`)."""
    return provider_for(settings).send_problems(settings)


def require_ready(settings: Settings) -> None:
    """Raise ConfigError naming every missing or invalid setting a real send needs: the general ones
    (`Settings.require_for_send`) and the configured backend's own."""
    settings.require_for_send(backend_problems(settings))


def make_webhooks(settings: Settings) -> dict[str, Webhook]:
    """Provider name → its webhook, for every registered provider that has one (ConfigError for a
    verification key that does not parse)."""
    return {provider.name: provider.webhook(settings) for provider in providers() if provider.webhook is not None}


__all__ = ["backend_problems", "require_ready", "ProviderEvent", "Webhook", "WebhookRefused", "make_webhooks", "Backend",
           "Batch", "OutgoingMessage", "RecipientResult", "TransientError", "PermanentError", "make_backend",
           "OwnDkim", "Provider", "Setting", "provider_for", "providers", "register_provider"]
