"""Backends: where messages go. `make_backend` picks one from the settings. `bounces/`: what comes
back by mail (bounce and complaint mailboxes)."""

from __future__ import annotations

from ..config import Settings
from .base import Backend, Batch, OutgoingMessage, PermanentError, RecipientResult, TransientError


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


__all__ = ["Backend", "Batch", "OutgoingMessage", "RecipientResult", "TransientError", "PermanentError", "make_backend"]
