"""The one contract every backend obeys, so `dispatch` never knows which one it drives.

A backend takes a `Batch` (one issue's `MessageFactory` and up to `max_batch` messages) and returns a
`RecipientResult` per message. Failures are classified by **whose** failure it is:

- about the recipient: `transient` (this recipient was refused for now: greylisting, mailbox busy;
  counts against them) or `permanent` (never retry; `hard_bounce` when the address itself is bad);
- about the path: `deferred` (the message could not be handed over because the connection, the
  server or the disk failed, or a stop cut it; it goes back to the queue and counts against nobody).

A failure of the whole batch raises `TransientError` (nothing was accepted and trying later may
work: 429, 5xx, timeout, connection refused, DNS, disk full) or `PermanentError` (nothing will be
accepted until someone fixes something: bad credentials, a read-only folder, a malformed request).
Neither counts against any recipient: dispatch retries with backoff, then pauses the send.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from ..errors import MailerError
from ..mime import MessageFactory
from ..content.render import Recipient

Outcome = Literal["sent", "transient", "permanent", "deferred"]


class BackendError(MailerError):
    """Base of batch-level failures."""


class TransientError(BackendError):
    """Nothing in the batch was accepted, and trying again later may work."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(BackendError):
    """Nothing in the batch was accepted, and retrying will not help (credentials, configuration)."""


@dataclass(frozen=True)
class OutgoingMessage:
    recipient: Recipient
    message_id: str
    delivery_id: int | None = None  # None for test sends (no ledger)


@dataclass(frozen=True)
class Batch:
    factory: MessageFactory
    messages: tuple[OutgoingMessage, ...]
    issue_id: int | None = None
    date: str | None = None  # one Date header for the whole batch
    # called by request-based backends right before each request leaves (after it was built): the send
    # loop waits there while its gate is closed (a 429 heard by another thread) and raises
    # TransientError when the send stopped meanwhile
    before_request: Callable[[], None] | None = field(default=None, compare=False)

    @property
    def slug(self) -> str:
        return self.factory.key


@dataclass(frozen=True)
class RecipientResult:
    message: OutgoingMessage
    outcome: Outcome
    provider_message_id: str | None = None
    error: str | None = None
    hard_bounce: bool = False
    retry_after: float | None = None

    @classmethod
    def all_sent(cls, messages: Sequence[OutgoingMessage], provider_message_id: str | None) -> list["RecipientResult"]:
        """`[RecipientResult(m, "sent", provider_message_id) for m in messages]` (a request accepted
        whole), for about half the CPU: the constructor of a frozen dataclass sets each of its six
        fields through `object.__setattr__` (~0.85 µs a result, 1000 a request; issue 12); these
        copy one such result's fields and change the message. Equal, field for field, to the
        constructor's (tests/test_sendgrid.py)."""
        model = cls(None, "sent", provider_message_id).__dict__  # type: ignore[arg-type]
        new, set_fields = object.__new__, object.__setattr__
        made = []
        for message in messages:
            fields = model.copy()
            fields["message"] = message
            result = new(cls)
            set_fields(result, "__dict__", fields)
            made.append(result)
        return made


class Backend(ABC):
    """Open once, send many batches, close. Backends are used by one thread at a time."""

    name: str = "backend"
    max_batch: int = 1000
    # Messages handed over per send_batch call, i.e. between two ledger writes. A backend that
    # delivers message by message (SMTP) sets 1, so a crash can duplicate only the message in
    # flight; a request-based one (SendGrid) keeps its whole request.
    ledger_step: int | None = None
    # what `abort` does, as the log says it when a stop cuts what a backend still has in flight
    cut: str = "cutting what is in flight; it stays queued"

    def open(self) -> None:
        """Connect / check credentials; raise ConfigError or TransientError."""

    def close(self) -> None:
        """Release connections."""

    def abort(self) -> None:
        """Cut whatever is in flight now; called from another thread when a stop must take effect within
        seconds. The interrupted call returns (`deferred` results) or raises `TransientError` promptly."""

    @abstractmethod
    def send_batch(self, batch: Batch) -> list[RecipientResult]:
        """Send every message of the batch; one result per message, in order."""

    def __enter__(self) -> "Backend":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
