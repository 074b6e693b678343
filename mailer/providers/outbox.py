"""The default backend: each message becomes an RFC 5322 `.eml` file in `outbox/<issue>/` (notices:
`outbox/confirm/`, `outbox/welcome/`, named by time).

Needs nothing, so `make demo` and editors' test sends work anywhere. One file per recipient and
issue, written atomically (temporary file + rename): a message resent after a crash replaces its
own file, never adds a second copy.

Nothing here is about a recipient: a failure to write is the folder's (the whole path's). A full
disk or quota (ENOSPC, EDQUOT) or an I/O error is `TransientError` (dispatch retries with backoff,
then pauses); a read-only or forbidden folder (EROFS, EACCES, EPERM) is `PermanentError` (the send
pauses at once). Either way nobody's attempts are spent; once part of a batch is written, the rest
comes back `deferred` instead, so what was written is recorded as sent. A stop is heard between two
files (the send's `Batch.before_request`, or `abort`): the rest of the batch comes back `deferred` too.

`PROVIDER` declares it to the registry: its one setting (MAILER_OUTBOX_DIR), and that it reaches
nobody (`delivers=False`: no public base URL or strong secret key is demanded, `mailer doctor` skips
SPF).
"""

from __future__ import annotations

import errno
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from typing import TYPE_CHECKING

from ..registry import Provider, Setting
from .base import Backend, Batch, PermanentError, RecipientResult, TransientError

if TYPE_CHECKING:
    from ..config import Settings
    from .bounces.verp import Verp

_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]")
_NEEDS_A_FIX = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR})


def folder_error(path: Path, exc: OSError) -> TransientError | PermanentError:
    """The batch-level error for a failed write under `path` (see the module docstring)."""
    reason = exc.strerror or str(exc)
    if exc.errno in _NEEDS_A_FIX:
        return PermanentError(f"cannot write to the outbox {path}: {reason} (MAILER_OUTBOX_DIR)")
    return TransientError(f"cannot write to the outbox {path}: {reason}")


def safe_filename(text: str) -> str:
    return _UNSAFE.sub("_", text)[:120]


class OutboxBackend(Backend):
    name = "outbox"
    max_batch = 1000
    cut = "writing no more files; those not written stay queued"

    def __init__(self, directory: Path, verp: "Verp | None" = None) -> None:
        self.directory = directory
        self.verp = verp  # with MAILER_BOUNCE_ADDRESS: a `Return-Path:` naming the delivery heads each file
        self._cut = False

    def abort(self) -> None:
        """Write no more files (from any thread): the file being written is finished, the rest of the
        batch comes back `deferred` (it stays queued)."""
        self._cut = True

    def _stopped(self, batch: Batch) -> TransientError | None:
        """Before each file: the send stopped (`Batch.before_request` raises) or `abort` was called."""
        if self._cut:
            return TransientError("the send was stopped")
        if batch.before_request is not None:
            try:
                batch.before_request()
            except TransientError as exc:
                return exc
        return None

    def open(self) -> None:
        self._cut = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise folder_error(self.directory, exc) from None

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
            raise folder_error(folder, exc) from None
        failure: TransientError | PermanentError | None = None
        for message in batch.messages:
            if failure is None:
                failure = self._stopped(batch)  # a stop is heard between two files, not after the batch
                if failure is not None and not results:
                    raise failure
            if failure is not None:
                results.append(RecipientResult(message, "deferred", error=str(failure)))
                continue
            recipient = message.recipient
            path = self.path_for(batch.slug, recipient.email,
                                 recipient.subscriber_id if message.delivery_id is not None else None,
                                 notice=batch.factory.is_notice)
            data = batch.factory.build(recipient, message.message_id, batch.date)
            if self.verp is not None:
                sender = self.verp.sender(recipient.subscriber_id if message.delivery_id is not None else None,
                                          batch.issue_id)
                data = b"Return-Path: <" + sender.encode("ascii") + b">\r\n" + data
            tmp = path.with_name(path.name + ".tmp")
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except OSError as exc:
                try:
                    tmp.unlink(missing_ok=True)  # a half-written file must not stay behind
                except OSError:
                    pass
                failure = folder_error(folder, exc)
                if not results:  # nothing written yet: the whole batch failed
                    raise failure from None
                results.append(RecipientResult(message, "deferred", error=str(failure)))
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


def _backend(settings: "Settings") -> OutboxBackend:
    from .bounces.verp import Verp
    return OutboxBackend(settings.outbox_dir, Verp.from_settings(settings))


PROVIDER = Provider(
    name="outbox",
    backend=_backend,
    settings=(Setting("outbox_dir", Path("outbox"), "MAILER_OUTBOX_DIR"),),
    delivers=False,
    writes_to=lambda settings: settings.outbox_dir,
)
