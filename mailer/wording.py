"""How the ledger and durations are said to people — "sent 3/5 (1 failed)", "paused 2/5: …",
"4h05m" — with one owner for both places that say them: the command line (`mailer schedule list`,
its --json `ledger.text`) and the scheduler's log lines (`scheduling.runtime`).

Top level, like `wallclock.format_moment` (an instant for people): the runtime sits below the CLI
in the layout (tests/test_layout.py) and must not import it, and the ledger's data
(`sending.status.LedgerView`) stays words-free. No imports from the package: `ledger_text` reads
any object with the view's three fields (`LedgerFigures`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Mapping, Protocol


class LedgerFigures(Protocol):
    """What `ledger_text` reads (`sending.status.LedgerView` has it): the issue's ledger status
    (none | draft | sending | paused | sent), its delivery counts by status, its paused reason."""

    status: str
    counts: Mapping[str, int]
    paused_reason: str | None


def ledger_text(ledger: LedgerFigures) -> str:
    """`sent 3/5 (1 failed, 1 skipped)`, `paused 2/5: <reason>`, `sending 3/5`, or `not sent`:
    deliveries sent out of the frozen recipients."""
    counts = ledger.counts
    sent, total = counts.get("sent", 0), sum(counts.values())
    if ledger.status == "sent":
        extra = [f"{counts[k]} {k}" for k in ("failed", "skipped") if counts.get(k)]
        return f"sent {sent}/{total}" + (f" ({', '.join(extra)})" if extra else "")
    if ledger.status == "paused":
        return f"paused {sent}/{total}" + (f": {ledger.paused_reason}" if ledger.paused_reason else "")
    if ledger.status == "sending":
        return f"sending {sent}/{total}"
    return "not sent"


def format_span(delta: timedelta) -> str:
    """`2d03h`, `4h05m`, `3m07s`, `12s`: a duration for people (its sign dropped)."""
    seconds = int(abs(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"
