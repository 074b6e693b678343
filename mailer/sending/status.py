"""The ledger as data: one issue's figures (`LedgerView`, `read_ledger`: what the scheduler decides
on and `schedule list` shows) and what `mailer status` shows — one issue (`issue_status`) or every
issue with a ledger (`ledger_overview`), with the current edition (its number, reason, hash, and the
segment and language frozen with it). No wording here: the words for people are `mailer.wording`'s
(the CLI and the scheduler's log lines say them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import NotFound
from ..config import Settings
from ..statuses import STOPPED
from ..store import Store, as_utc
from .prepare import issue_slug
from . import waves


@dataclass(frozen=True)
class LedgerView:
    """One issue's ledger: `status` none (never started) | draft | sending | paused | sent, `counts`
    of its deliveries by status (queued, sending, sent, failed, skipped), `paused_reason`."""

    status: str = "none"
    counts: dict[str, int] = field(default_factory=dict)
    paused_reason: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def sent(self) -> int:
        return self.counts.get("sent", 0)

    @property
    def left(self) -> int:
        return self.counts.get("queued", 0) + self.counts.get("sending", 0)

    @property
    def done(self) -> bool:
        return self.status == "sent"

    @property
    def started(self) -> bool:
        return self.total > 0

    @property
    def held_paused(self) -> bool:
        """Paused for a cause a human must look at; a graceful stop (`statuses.STOPPED`) is paused
        too, but the scheduler resumes it like an interrupted send."""
        return self.status == "paused" and self.paused_reason != STOPPED

    def as_dict(self) -> dict:
        """`schedule list --json`'s `ledger`: status, sent, total, left, counts, paused_reason."""
        return {"status": self.status, "sent": self.sent, "total": self.total, "left": self.left,
                "counts": dict(self.counts), "paused_reason": self.paused_reason}


def read_ledger(store: Store, slug: str) -> LedgerView:
    """The ledger of the issue `slug` (an empty view, status "none", before its first freeze)."""
    with store.connect() as conn:
        row = store.issue_row(conn, slug)
        if row is None:
            return LedgerView()
        return LedgerView(row.status, store.delivery_counts(conn, row.id), row.paused_reason)


def _ledger_summary(row, counts: dict[str, int], edition=None) -> dict:  # noqa: ANN001 - `issues`, `editions` rows
    """One issue's ledger as `mailer status` shows it (`--json`): issue (slug), subject, status
    (draft | sending | paused | sent), paused_reason, counts (queued, sending, sent, failed, skipped),
    total, frozen_at, started_at, finished_at (ISO 8601 UTC or null), when (the last of those), edition
    (number, created_at, reason, subject, template, content_hash, segment and language: issue.toml's
    frozen with it or null, editions: how many; null before the first freeze); `issue_status` and
    `ledger_overview` add send_local and waves."""
    ledger = LedgerView(row.status, counts, row.paused_reason)
    times = {key: as_utc(getattr(row, key)) for key in ("frozen_at", "started_at", "finished_at")}
    when = times["finished_at"] or times["started_at"] or times["frozen_at"]
    return {"issue": row.slug, "subject": row.subject, "status": ledger.status, "paused_reason": ledger.paused_reason,
            "counts": ledger.counts, "total": ledger.total,
            **{key: value.isoformat() if value else None for key, value in times.items()},
            "when": when.isoformat() if when else None,
            "edition": None if edition is None else {
                "number": edition.number, "created_at": as_utc(edition.created_at).isoformat(),
                "reason": edition.reason, "subject": edition.subject, "template": edition.template,
                "content_hash": edition.content_hash, "segment": edition.segment,
                "language": edition.forced_language, "editions": edition.count}}


def issue_status(settings: Settings, store: Store, issue_ref: str) -> dict:
    """Ledger counts by status, plus the issue's own state and edition (`_ledger_summary`'s shape).
    NotFound when the issue has no ledger yet."""
    slug = issue_slug(settings, store, issue_ref)
    with store.connect() as conn:
        row = store.issue_row(conn, slug)
        if row is None:
            raise NotFound(f"issue {issue_ref!r} has never been sent (no ledger yet)")
        counts = store.delivery_counts(conn, row.id)
        edition = store.current_editions(conn, [row.id]).get(row.id)
    return _with_waves(settings, store, _ledger_summary(row, counts, edition), row.send_local)


def _with_waves(settings: Settings, store: Store, summary: dict, send_local: str | None) -> dict:
    """`summary` plus `send_local` and `waves` (a local-time send's, as of now; [] otherwise)."""
    found = waves.ledger_waves(settings, store, summary["issue"]) if send_local else []
    return {**summary, "send_local": send_local, "waves": [wave.as_dict() for wave in found]}


def ledger_overview(store: Store, settings: Settings | None = None) -> list[dict]:
    """`mailer status` without ISSUE: every issue with a ledger, newest first (its last activity:
    finished, else started, else frozen), each in `_ledger_summary`'s shape; [] before the first send."""
    with store.connect() as conn:
        overview = store.ledger_overview(conn)
        current = store.current_editions(conn, [row.id for row, _ in overview])
        summaries = [(row.send_local, _ledger_summary(row, counts, current.get(row.id))) for row, counts in overview]
    if settings is None:
        return [summary for _, summary in summaries]
    return [_with_waves(settings, store, summary, local) for local, summary in summaries]

