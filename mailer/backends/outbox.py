"""The default backend: each message becomes an RFC 5322 `.eml` file in `outbox/<issue>/` (notices:
`outbox/confirm/`, `outbox/welcome/`, named by time).

Needs nothing, so `make demo` and editors' test sends work anywhere. One file per recipient and
issue, written atomically (temporary file + rename): a message resent after a crash replaces its
own file, never adds a second copy.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
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

    def path_for(self, slug: str, email: str, subscriber_id: int | None, *, notice: bool = False) -> Path:
        """`<slug>/<subscriber id>-<address>.eml` for an issue's delivery, `<slug>/test-<address>.eml`
        for a test send, `<kind>/<UTC time>-<address>.eml` for a notice (confirm, welcome)."""
        if notice:
            prefix = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        else:
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
                                 recipient.subscriber_id if message.delivery_id is not None else None,
                                 notice=getattr(batch.factory.rendered, "notice_kind", None) is not None)
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


def person_files(directory: Path, subscriber_id: int | None, addresses: list[str]) -> list[Path]:
    """Every file this backend wrote for one person (issues, test sends, notices, leftover `.tmp`
    files), found by the names `path_for` gives: `<id>-…` or `…-<address>.eml`, in any case. For
    `remove --purge`; reads directory listings only, never the messages."""
    if not directory.is_dir():
        return []
    names = {"-" + safe_filename(address).lower() for address in addresses if address}
    id_prefix = f"{subscriber_id:07d}-" if subscriber_id is not None else None
    found: list[Path] = []
    for folder in directory.iterdir():
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                lowered = entry.name.lower()
                stem = lowered[:-4] if lowered.endswith(".eml") else lowered[:-8] if lowered.endswith(".eml.tmp") else None
                if stem is None or not entry.is_file(follow_symlinks=False):
                    continue
                if (id_prefix and stem.startswith(id_prefix)) or any(stem.endswith(name) for name in names):
                    found.append(Path(entry.path))
    return found
