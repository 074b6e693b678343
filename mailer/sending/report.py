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
  link of the issue's link table, less what link scanners fetched (`scanners`: a scanner's or bot's
  User-Agent, or every link of a message first followed within a second), counted apart as
  `scanner_clicks`; zeros when it was off. opens — only with MAILER_TRACK_OPENS.

Shapes: `issue_report(...)` → `IssueReport` (`.as_json()` is the `--json` object);
`reports_overview(...)` → list of them, newest first. The preview's Reports page draws
`send_timeline` and `list_growth` with `web/charts.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

from ..config import Settings
from ..content import i18n
from ..errors import MailerError, NotFound
from ..providers.bounces.process import COMPLAINT_RATE_LIMIT, deliverability
from ..store import Store, as_utc
from .scanners import scan_burst
from .waves import ledger_waves


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
    paused_reason: str | None = None
    waves: tuple[dict[str, Any], ...] = ()  # a local-time send's waves (`Wave.as_dict`), with `settings`
    scanner_clicks: int = 0      # follows not counted: a link scanner's (sending/scanners.py), not a reader's
    language: str | None = None  # issue.toml `language` frozen with the current edition (None: not forced)

    @property
    def state(self) -> str:
        """Where the send stands, in a word or three (`SendState.name`)."""
        return self.send_state().name

    def send_state(self) -> "SendState":
        """Where the send stands, with why (`SendState`): the one owner of the state `mailer report`
        and the preview's Reports page show."""
        if self.status == "sent":
            return SendState("finished")
        if self.status == "paused":
            return SendState("paused", reason=self.paused_reason or None)
        missed = tuple(wave["zone"] for wave in self.waves if wave["state"] == "missed")
        if missed:
            return SendState("missed waves", missed=missed)
        ahead = [wave for wave in self.waves if wave["state"] == "pending"]
        if self.status == "sending" and ahead and not any(wave["state"] == "due" for wave in self.waves):
            return SendState("waves scheduled", next_wave=(ahead[0]["zone"], ahead[0]["at"]))
        return SendState("sending" if self.status == "sending" else "frozen")

    def as_json(self) -> dict[str, Any]:
        """The `mailer report ISSUE --json` object (documented in the README)."""
        out: dict[str, Any] = {
            "issue": self.issue, "recipients": self.recipients, "sent": self.sent, "failed": self.failed,
            "bounced": self.bounced, "complained": self.complained, "unsubscribed": self.unsubscribed,
            "clicks": {"total": self.clicks_total, "unique": self.clicks_unique, "links": list(self.links),
                       "scanners_excluded": self.scanner_clicks},
            "skipped": self.skipped, "queued": self.queued, "soft_bounced": self.soft_bounced,
            "complaint_rate": self.complaint_rate, "complaint_rate_limit": COMPLAINT_RATE_LIMIT,
            "over_complaint_limit": self.over_limit, "click_tracking": self.tracked, "clickers": self.clickers,
            "subject": self.subject, "status": self.status, "state": self.state, "paused_reason": self.paused_reason,
            "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at), "waves": list(self.waves),
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


@dataclass(frozen=True)
class SendState:
    """Where a send stands. `name`: `finished`, `sending`, `paused`, `waves scheduled` (a local-time
    send whose next wave is ahead), `missed waves` (waves passed beyond the grace, not sent), `frozen`
    (recipients frozen, nothing sent yet); with why: `reason` (paused: the stop's reason),
    `next_wave` ((zone, ISO 8601 instant with offset) of waves scheduled), `missed` (zones of missed waves).
    `text(language)` words it from `content.i18n` (`state_*`): `mailer report` in English, the Reports
    page in the issue's language — the same state and the same why in both."""

    name: str
    reason: str | None = None
    next_wave: tuple[str, str] | None = None
    missed: tuple[str, ...] = ()

    def text(self, language: str = "en") -> str:
        strings = i18n.strings(language)
        key = "state_" + self.name.replace(" ", "_")
        if self.reason:
            return strings[key + "_why"].format(reason=self.reason)
        if self.next_wave:
            return strings[key + "_why"].format(zone=self.next_wave[0], at=self.next_wave[1])
        if self.missed:
            return strings[key + "_why"].format(zones=", ".join(self.missed))
        return strings[key]


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
    return _report(store, row, settings)


def reports_overview(store: Store, settings: Settings | None = None) -> list[IssueReport]:
    """Every issue with a ledger, newest first (by the start of its send, else its freeze). With
    `settings`, a local-time send's waves as of now too (`IssueReport.state`)."""
    with store.engine.connect() as conn:
        rows = store.sent_issues(conn)
        full = [store.issue_row(conn, row.slug) for row in rows]
    return [_report(store, row, settings) for row in full]


def _report(store: Store, row: Any, settings: Settings | None = None) -> IssueReport:
    with store.engine.connect() as conn:
        figures = store.issue_figures(conn, row.id)
        clicks = store.click_figures(conn, row.id)
        opens_row = store.open_figures(conn, row.id)
        followed = store.click_rows(conn, row.id)
        scanner_hits = store.scanner_hits(conn, row.id)
        edition = store.current_editions(conn, [row.id]).get(row.id)
    health = (deliverability(store, row.id) or [{}])[0]
    statuses = figures["statuses"]
    links, bursts, clickers = _without_scans(clicks, followed)
    return IssueReport(
        issue=row.slug, subject=row.subject, status=row.status, recipients=figures["recipients"],
        sent=statuses.get("sent", 0), failed=statuses.get("failed", 0), skipped=statuses.get("skipped", 0),
        queued=statuses.get("queued", 0) + statuses.get("sending", 0),
        bounced=figures["bounced"], soft_bounced=int(health.get("soft_bounces", 0)),
        complained=int(health.get("complaints", 0)), unsubscribed=figures["unsubscribed"],
        complaint_rate=float(health.get("complaint_rate", 0.0)), over_limit=bool(health.get("over_limit", False)),
        tracked=bool(links), clicks_total=sum(link["total"] for link in links),
        clicks_unique=sum(link["unique"] for link in links), clickers=clickers, links=links,
        scanner_clicks=int(scanner_hits) + bursts,
        opens=None if opens_row is None else {"total": int(opens_row.total), "unique": int(opens_row.unique)},
        started_at=as_utc(row.started_at), finished_at=as_utc(row.finished_at), issue_id=row.id,
        language=edition.forced_language if edition is not None else None, paused_reason=row.paused_reason,
        waves=tuple(wave.as_dict() for wave in ledger_waves(settings, store, row.slug))
        if settings is not None and row.send_local else ())


def _without_scans(figures: list[Any], followed: list[Any]) -> tuple[tuple[dict[str, Any], ...], int, int]:
    """(links [{url, total, unique}], follows taken out as a scan, readers who clicked): the store's
    per-link figures less one follow per link of each recipient whose first follows of every link
    of their message came as a scan burst (`scanners.scan_burst`)."""
    groups: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for item in followed:
        groups[(item.edition_id, item.subscriber_id)].append(item)
    less_total: Counter = Counter()
    less_unique: Counter = Counter()
    readers: set[int] = set()
    for (_, subscriber), items in groups.items():
        if scan_burst([as_utc(item.first_at) for item in items], int(items[0].links_in_edition)):
            for item in items:
                less_total[item.url] += 1
                if item.clicks == 1:
                    less_unique[item.url] += 1
                else:
                    readers.add(subscriber)
        else:
            readers.add(subscriber)
    links = tuple({"url": item.url, "total": int(item.total) - less_total[item.url],
                   "unique": int(item.unique) - less_unique[item.url]} for item in figures)
    return links, sum(less_total.values()), len(readers)


# ----- the Reports page's series ---------------------------------------------------------------------
# Interval lengths the deliveries chart may use (seconds): the shortest that covers the send in at most
# MAX_INTERVALS bars wins, so a 30-second send gets 5-second bars and a month-long one weekly bars.
INTERVALS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600,
             86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)
MAX_INTERVALS = 12
_MONDAY = 4 * 86400  # 1970-01-05, a Monday, seconds after the epoch: weekly bars start on Mondays


@dataclass(frozen=True)
class Timeline:
    """Deliveries of one send counted per interval of `step` seconds. `starts[i]` (aware, UTC) begins
    interval i; `counts[i]` messages were sent in it (their sum is every delivery sent). Intervals are
    aligned on the wall clock of `offset` (the editor's zone's UTC offset at the first delivery, kept
    for the whole chart so that labels stay distinct across a DST change): 10-minute bars start at
    :00, :10…, daily ones at midnight, weekly ones on Mondays."""

    step: int
    starts: tuple[datetime, ...]
    counts: tuple[int, ...]
    offset: timedelta = timedelta(0)

    def local(self, index: int) -> datetime:
        """The start of interval `index` on the chart's wall clock (naive)."""
        return (self.starts[index] + self.offset).replace(tzinfo=None)


def bucket_deliveries(times: list[datetime], zone: tzinfo, max_intervals: int = MAX_INTERVALS) -> Timeline:
    """`times` (aware `sent_at`, oldest first) counted per interval: the shortest of `INTERVALS` (or a
    whole number of 28-day periods beyond them) giving at most `max_intervals` intervals from the one
    holding the first delivery to the one holding the last; empty intervals between count 0."""
    if not times:
        return Timeline(0, (), ())
    offset = times[0].astimezone(zone).utcoffset() or timedelta(0)
    shift = offset.total_seconds()
    local = [moment.timestamp() + shift for moment in times]
    first, last = min(local), max(local)

    def origin(step: int) -> float:
        anchor = _MONDAY if step % (7 * 86400) == 0 else 0
        return math.floor((first - anchor) / step) * step + anchor

    steps = iter(INTERVALS)
    step = next(steps)
    while int((last - origin(step)) // step) + 1 > max_intervals:
        step = next(steps, step + 28 * 86400 if step >= 28 * 86400 else INTERVALS[-1])
    start = origin(step)
    count = int((last - start) // step) + 1
    counts = [0] * count
    for moment in local:
        counts[int((moment - start) // step)] += 1
    starts = tuple(datetime.fromtimestamp(start + index * step - shift, timezone.utc) for index in range(count))
    return Timeline(step, starts, tuple(counts), offset)


def send_timeline(store: Store, issue_id: int, zone: tzinfo = timezone.utc) -> Timeline:
    """Deliveries over time during the send (`bucket_deliveries` of the ledger's `sent_at`), on the
    wall clock of `zone` (the editor's MAILER_TIMEZONE)."""
    with store.engine.connect() as conn:
        times = [as_utc(moment) for moment in store.sent_times(conn, issue_id)]
    return bucket_deliveries(times, zone)


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
