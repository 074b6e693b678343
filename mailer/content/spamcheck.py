"""SpamAssassin's verdict on a message, offline: `spamassassin -L -t` (local tests only, no network).

`mailer build ISSUE --spam-check` and the tests use it. The project's own emails aim at a score of
0 or less with no positive-scoring rule at all: a rule that fires today with a small score is one a
receiving filter may weigh more tomorrow.

Source of the report format: spamassassin(1) `-t, --test-mode` ("a report is appended to the
message"), whose table is `pts rule name description` with continuation lines for long descriptions.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import MailerError

SPAMASSASSIN = "spamassassin"
TIMEOUT_SECONDS = 120.0
_TOTAL = re.compile(r"Content analysis details:\s+\((-?\d+(?:\.\d+)?) points?, (-?\d+(?:\.\d+)?) required\)")
_RULE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s+(.*?)\s*$")
_MORE = re.compile(r"^\s{10,}(\S.*?)\s*$")
_FROM_LINE = re.compile(rb"(?m)^(>*From )")
_SEPARATOR = re.compile(r"(?m)^From mailer-check-(\d+)@localhost .*$")


class SpamCheckUnavailable(MailerError):
    """SpamAssassin is not installed (or cannot run) here."""


@dataclass(frozen=True)
class SpamRule:
    """One rule that fired: its name, its score (points, may be 0 or negative) and description."""

    name: str
    score: float
    description: str


@dataclass(frozen=True)
class SpamReport:
    """`score` in SpamAssassin points (its default spam threshold is `required`, 5.0); every rule that fired."""

    score: float
    required: float
    rules: tuple[SpamRule, ...]

    @property
    def positive(self) -> tuple[SpamRule, ...]:
        """The rules that add to the score (what `--spam-check` asks to fix)."""
        return tuple(rule for rule in self.rules if rule.score > 0)

    def lines(self) -> list[str]:
        """Human lines: the score, then one line per rule, highest score first."""
        out = [f"SpamAssassin score {self.score or 0.0:g} (spam at {self.required:g}; local rules only)"]
        for rule in sorted(self.rules, key=lambda r: (-r.score, r.name)):
            out.append(f"  {rule.score:5.1f}  {rule.name}  {rule.description}")
        return out


def spamassassin_path() -> str | None:
    """Where the `spamassassin` command is (PATH), or None."""
    return shutil.which(SPAMASSASSIN)


def parse_reports(output: str) -> list[SpamReport]:
    """Every 'Content analysis details' block in `output`, in order. Raises MailerError when there is none.

    A message SpamAssassin calls spam (score >= required) is wrapped (`report_safe 1`, the default):
    the wrapper's text part quotes the report, and `-t` appends it again, so one message's output
    holds the block twice; the last one is the appended report (what `spam_check` returns)."""
    matches = list(_TOTAL.finditer(output))
    if not matches:
        raise MailerError("spamassassin printed no 'Content analysis details' report")
    reports = []
    for match, following in zip(matches, [*matches[1:], None]):
        rules: list[SpamRule] = []
        for line in output[match.end():following.start() if following else len(output)].splitlines():
            found = _RULE.match(line)
            if found:
                rules.append(SpamRule(found.group(2), float(found.group(1)), found.group(3)))
            elif rules and (more := _MORE.match(line)):
                last = rules[-1]
                rules[-1] = SpamRule(last.name, last.score, f"{last.description} {more.group(1)}")
            elif rules and not line.strip():
                break
        reports.append(SpamReport(float(match.group(1)), float(match.group(2)), tuple(rules)))
    return reports


def spam_check(message: bytes, *, timeout: float = TIMEOUT_SECONDS) -> SpamReport:
    """Score an RFC 5322 message (bytes, CRLF or LF) with SpamAssassin's local rules (`-L`: no DNS
    blocklists, no Razor/Pyzor, so the verdict depends only on the message and the installed rules).

    Raises SpamCheckUnavailable when `spamassassin` is not installed or fails to run, MailerError on a
    timeout or an unreadable report."""
    return spam_check_many([message], timeout=timeout)[0]


def spam_check_many(messages: list[bytes], *, timeout: float = TIMEOUT_SECONDS) -> list[SpamReport]:
    """`spam_check` for several messages in one SpamAssassin process (its start-up, about a second, is
    most of the cost): they are handed over as an mbox (mboxrd quoting of `From ` lines), each From_
    line naming the message's index, since SpamAssassin answers in an order of its own. One report per
    message, in the order given; raises as `spam_check` does."""
    command = spamassassin_path()
    if command is None:
        raise SpamCheckUnavailable("spamassassin is not installed (Debian: apt-get install spamassassin)")
    if not messages:
        return []
    args = [command, "-L", "-t"]
    if len(messages) == 1:
        data = messages[0].replace(b"\r\n", b"\n")
    else:
        args.append("--mbox")
        data = b"".join(_mbox_entry(index, message) for index, message in enumerate(messages))
    env = {**os.environ, "LC_ALL": "C"}  # the report's words and number format, whatever the locale
    try:
        done = subprocess.run(args, input=data, capture_output=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise MailerError(f"spamassassin did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise SpamCheckUnavailable(f"spamassassin could not run: {exc}") from None
    output = done.stdout.decode("utf-8", errors="replace")
    if len(messages) == 1:
        reports = parse_reports(output)[-1:] if "Content analysis details" in output else []
    else:  # SpamAssassin does not keep the mbox's order: each message says its index in its From_ line
        found: dict[int, SpamReport] = {}
        pieces = _SEPARATOR.split(output)
        for index, text in zip(pieces[1::2], pieces[2::2]):
            if "Content analysis details" in text:
                found[int(index)] = parse_reports(text)[-1]
        reports = [found[i] for i in range(len(messages))] if sorted(found) == list(range(len(messages))) else []
    if len(reports) != len(messages):
        error = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise MailerError(f"spamassassin failed (exit {done.returncode}, {len(reports)} report(s) for "
                          f"{len(messages)} message(s)): {error[-1] if error else 'no report'}")
    return reports


def _mbox_entry(index: int, message: bytes) -> bytes:
    body = _FROM_LINE.sub(rb">\1", message.replace(b"\r\n", b"\n"))
    return f"From mailer-check-{index}@localhost Thu Jan  1 00:00:00 1970\n".encode() + body + (b"\n" if body.endswith(b"\n") else b"\n\n")
