"""`mailer report`: per-issue figures after the send, from the ledger, the events and the click table.

Definitions (one issue; people are counted once each):
* recipients — deliveries in the issue's ledger (the frozen recipient set, `--include-new` added);
  sent / failed / skipped / queued — deliveries by status;
* bounced — people reported `bounced` for this issue by a provider webhook or the bounce mailbox,
  or refused permanently at send time (SMTP 5xx on RCPT);
* complained, complaint_rate — from `providers.bounces.deliverability` (complaints / sent), checked
  against Gmail's and Yahoo's 0.3 % bulk-sender rule (`COMPLAINT_RATE_LIMIT`): `over_limit`;
* unsubscribed — people who unsubscribed through this issue's unsubscribe link (the token names the
  issue) or whom a provider reported unsubscribing from it;
* clicks — when click tracking was on: total follows and unique (once per delivery and link), per
  link of the issue's link table; zeros when it was off. opens — only with MAILER_TRACK_OPENS.

Shapes: `issue_report(...)` → `IssueReport` (`.as_json()` is the `--json` object);
`reports_overview(...)` → list of them, newest first. The preview's Reports page draws
`send_timeline` and `list_growth` with `web/charts.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from ..config import Settings
from ..errors import MailerError, NotFound
from ..providers.bounces.process import COMPLAINT_RATE_LIMIT, deliverability
from ..store import Store, as_utc


@dataclass(frozen=True)
class IssueReport:
    issue: str
    subject: str
    status: str
    recipients: int
    sent: int
    failed: int
    skipped: int
    queued: int
    bounced: int
    soft_bounced: int
    complained: int
    unsubscribed: int
    complaint_rate: float
    over_limit: bool
    tracked: bool
    clicks_total: int
    clicks_unique: int
    clickers: int
    links: tuple[dict[str, Any], ...]
    opens: dict[str, int] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    issue_id: int = field(default=0, compare=False)

    def as_json(self) -> dict[str, Any]:
        """The `mailer report ISSUE --json` object (documented in the README)."""
        out: dict[str, Any] = {
            "issue": self.issue, "recipients": self.recipients, "sent": self.sent, "failed": self.failed,
            "bounced": self.bounced, "complained": self.complained, "unsubscribed": self.unsubscribed,
            "clicks": {"total": self.clicks_total, "unique": self.clicks_unique, "links": list(self.links)},
            "skipped": self.skipped, "queued": self.queued, "soft_bounced": self.soft_bounced,
            "complaint_rate": self.complaint_rate, "complaint_rate_limit": COMPLAINT_RATE_LIMIT,
            "over_complaint_limit": self.over_limit, "click_tracking": self.tracked, "clickers": self.clickers,
            "subject": self.subject, "status": self.status,
            "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
        }
        if self.opens is not None:
            out["opens"] = self.opens
        return out

    def warning(self) -> str | None:
        """The line an editor must read, when the complaint rate is over 0.3 %."""
        if not self.over_limit:
            return None
        return (f"warning: complaint rate {percent(self.complaint_rate)} is over Gmail's and Yahoo's limit of "
                f"{percent(COMPLAINT_RATE_LIMIT)} (bulk-sender rules, 2024): mail only people who asked for it, "
                f"make unsubscribing obvious")


def percent(rate: float) -> str:
    return f"{rate * 100:.2f} %"


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value else None


def resolve_issue(settings: Settings, store: Store, issue_ref: str) -> Any:
    """The issue row ISSUE names (a slug, an issue folder, or the unique end of a sent issue's slug);
    NotFound (one line) when no send of it exists."""
    with store.engine.connect() as conn:
        row = store.issue_row(conn, issue_ref)
        if row is None:
            try:
                from ..content.issue import find_issue_folder
                row = store.issue_row(conn, find_issue_folder(issue_ref, settings.issues_dir).name)
            except MailerError:
                row = None
        if row is None:
            matches = [sent for sent in store.sent_issues(conn) if sent.slug.endswith(f"-{issue_ref}")]
            if len(matches) == 1:
                row = store.issue_row(conn, matches[0].slug)
        if row is None or not sum(store.delivery_counts(conn, row.id).values()):
            raise NotFound(f"issue {issue_ref!r} has never been sent (no ledger): `mailer report` lists the sent issues")
    return row


def issue_report(settings: Settings, store: Store, issue_ref: str) -> IssueReport:
    """The figures of one sent issue. Raises NotFound for an issue never sent."""
    row = resolve_issue(settings, store, issue_ref)
    return _report(store, row)


def reports_overview(store: Store) -> list[IssueReport]:
    """Every issue with a ledger, newest first."""
    with store.engine.connect() as conn:
        rows = store.sent_issues(conn)
        full = [store.issue_row(conn, row.slug) for row in rows]
    return [_report(store, row) for row in full]


def _report(store: Store, row: Any) -> IssueReport:
    with store.engine.connect() as conn:
        figures = store.issue_figures(conn, row.id)
        clicks = store.click_figures(conn, row.id)
        opens_row = store.open_figures(conn, row.id)
        clickers = store.unique_clickers(conn, row.id)
    health = (deliverability(store, row.id) or [{}])[0]
    statuses = figures["statuses"]
    links = tuple({"url": item.url, "total": int(item.total), "unique": int(item.unique)}
                  for item in clicks)
    return IssueReport(
        issue=row.slug, subject=row.subject, status=row.status, recipients=figures["recipients"],
        sent=statuses.get("sent", 0), failed=statuses.get("failed", 0), skipped=statuses.get("skipped", 0),
        queued=statuses.get("queued", 0) + statuses.get("sending", 0),
        bounced=figures["bounced"], soft_bounced=int(health.get("soft_bounces", 0)),
        complained=int(health.get("complaints", 0)), unsubscribed=figures["unsubscribed"],
        complaint_rate=float(health.get("complaint_rate", 0.0)), over_limit=bool(health.get("over_limit", False)),
        tracked=bool(links), clicks_total=sum(link["total"] for link in links),
        clicks_unique=sum(link["unique"] for link in links), clickers=clickers, links=links,
        opens=None if opens_row is None else {"total": int(opens_row.total), "unique": int(opens_row.unique)},
        started_at=as_utc(row.started_at), finished_at=as_utc(row.finished_at), issue_id=row.id)


# ----- the Reports page's series ---------------------------------------------------------------------
def send_timeline(store: Store, issue_id: int, buckets: int = 30) -> list[tuple[datetime, int]]:
    """Deliveries over time during the send: (end of interval, messages sent by then), at most
    `buckets` equal intervals from the first `sent_at` to the last (one point for an instant send)."""
    with store.engine.connect() as conn:
        times = [as_utc(moment) for moment in store.sent_times(conn, issue_id)]
    if not times:
        return []
    first, last = times[0], times[-1]
    span = (last - first).total_seconds()
    if span <= 0:
        return [(last, len(times))]
    step = span / buckets
    out: list[tuple[datetime, int]] = []
    index = 0
    for number in range(1, buckets + 1):
        end = first + timedelta(seconds=step * number)
        while index < len(times) and (times[index] <= end or number == buckets):
            index += 1
        out.append((end, index))
    return out


def list_growth(store: Store, today: date | None = None, weeks: int = 26) -> list[tuple[date, int]]:
    """Active subscribers at the end of each ISO week (Monday start), from the events table, for the
    last `weeks` weeks up to the current one: (Monday of the week, active count)."""
    with store.engine.connect() as conn:
        changes = store.active_changes(conn)
    today = today or datetime.now(timezone.utc).date()
    this_monday = today - timedelta(days=today.weekday())
    mondays = [this_monday - timedelta(weeks=back) for back in range(weeks - 1, -1, -1)]
    out: list[tuple[date, int]] = []
    running, index = 0, 0
    for monday in mondays:
        end = datetime.combine(monday + timedelta(days=7), datetime.min.time(), tzinfo=timezone.utc)
        while index < len(changes) and as_utc(changes[index].at) < end:
            running += changes[index].delta
            index += 1
        out.append((monday, running))
    return out
