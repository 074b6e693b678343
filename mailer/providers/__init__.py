"""Backends: where messages go. `make_backend` picks one from the settings."""

from __future__ import annotations

from ..config import Settings
from .base import Backend, Batch, OutgoingMessage, PermanentError, RecipientResult, TransientError


def make_backend(settings: Settings) -> Backend:
    """The configured backend, checked for its required settings (nothing is sent yet)."""
    if settings.backend == "outbox":
        from .outbox import OutboxBackend
        return OutboxBackend(settings.outbox_dir)
    if settings.backend == "smtp":
        from .smtp import SmtpBackend
        return SmtpBackend.from_settings(settings)
    if settings.backend == "sendgrid":
        from .sendgrid import SendGridBackend
        return SendGridBackend.from_settings(settings)
    raise ValueError(settings.backend)


__all__ = ["Backend", "Batch", "OutgoingMessage", "RecipientResult", "TransientError", "PermanentError", "make_backend"]
