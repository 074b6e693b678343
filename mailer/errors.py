"""The library's error types. The CLI turns each into one line and a non-zero exit code."""

from __future__ import annotations

from pathlib import Path


class MailerError(Exception):
    """Base class: its message is what the user sees, on one line."""

    exit_code = 1


class ConfigError(MailerError):
    """A setting is missing or invalid."""

    exit_code = 2


class SourceError(MailerError):
    """Bad input in an editor's file; names the file and, when known, the line."""

    exit_code = 3

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line else f"{self.path}"
        super().__init__(f"{where}: {message}")


class DraftIssue(MailerError):
    """A real send of an issue whose issue.toml says `draft = true` (names the file and line)."""

    exit_code = 3


class RenderError(MailerError):
    """The template or the MJML could not be turned into an email."""

    exit_code = 3


class NotFound(MailerError):
    """An issue, subscriber or token that does not exist."""

    exit_code = 4


class AmbiguousIssue(NotFound):
    """ISSUE matches several folders (or, once they are gone, several issues of the ledger)."""


class InvalidOption(MailerError):
    """A command-line option or argument click accepted but whose value is invalid (`--timezone`,
    `--map`, `--encoding`, a folder for a file): names the option; the exit code of click's own usage
    errors."""

    exit_code = 2


class InvalidAddress(MailerError):
    """An email address that does not pass validation."""

    exit_code = 2


class SendAborted(MailerError):
    """A send stopped before its end (too many failures in a row, interrupted); the ledger is consistent."""

    exit_code = 5


class EmptyAudience(MailerError):
    """A send whose audience is empty (no subscriber, nobody active, an unknown list): refused, nothing touched."""

    exit_code = 6


class RebuildRefused(MailerError):
    """`mailer send ISSUE --rebuild` while a live sender holds deliveries of the issue, or with nobody
    left to send the new edition to: refused, nothing touched."""

    exit_code = 7


class CorruptEdition(MailerError):
    """A stored edition whose row no longer parses or no longer matches its `content_hash`: nothing
    is sent from it (names the issue and the edition id)."""

    exit_code = 3


class UnresumableSend(MailerError):
    """A send started before editions were stored (nothing frozen to resume from) whose folder is gone:
    its content cannot be rebuilt, so nothing of it is sent or requeued. `sent`: what the run sent
    before it stopped for this (`mailer worker`)."""

    exit_code = 9

    def __init__(self, message: str, sent: int = 0) -> None:
        super().__init__(message)
        self.sent = sent


class NotDueYet(MailerError):
    """A local-time send asked for before any of its waves is due (or only missed ones, without
    `--release-missed`): nothing was frozen or sent."""

    exit_code = 8
