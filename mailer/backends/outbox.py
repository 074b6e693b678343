"""The default backend: each message becomes an RFC 5322 `.eml` file in `outbox/<issue>/`.

Needs nothing, so `make demo` and editors' test sends work anywhere. One file per recipient and
issue, written atomically (temporary file + rename): a message resent after a crash replaces its
own file, never adds a second copy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import Backend, Batch, RecipientResult, TransientError

_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]")


def safe_filename(text: str) -> str:
    return _UNSAFE.sub("_", text)[:120]


class OutboxBackend(Backend):
    name = "outbox"
    max_batch = 1000

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, slug: str, email: str, subscriber_id: int | None) -> Path:
        prefix = f"{subscriber_id:07d}" if subscriber_id is not None else "test"
        return self.directory / safe_filename(slug) / f"{prefix}-{safe_filename(email)}.eml"

    def send_batch(self, batch: Batch) -> list[RecipientResult]:
        results = []
        folder = self.directory / safe_filename(batch.slug)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransientError(f"cannot create {folder}: {exc.strerror}") from None
        for message in batch.messages:
            recipient = message.recipient
            path = self.path_for(batch.slug, recipient.email,
                                 recipient.subscriber_id if message.delivery_id is not None else None)
            data = batch.factory.build(recipient, message.message_id, batch.date)
            tmp = path.with_name(path.name + ".tmp")
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except OSError as exc:
                results.append(RecipientResult(message, "transient", error=f"{path}: {exc.strerror}"))
                continue
            results.append(RecipientResult(message, "sent", provider_message_id=str(path)))
        return results
