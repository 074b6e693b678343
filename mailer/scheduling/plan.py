"""The schedule as data: what the issue folders and the ledger say, what is due, held, ready or
missed, when the cadence runs next — and `mailer schedule list`, which shows it as of any moment.

Read by the running scheduler (`mailer.scheduling.runtime`, which acts on it) and by `schedule list` (which
only reads: the folders, the ledger and the job store's rows, without starting a scheduler).
The vocabulary (due, missed, held, ready…) is defined in `mailer.scheduling.runtime`'s docstring.

`schedule list --json` prints one object (README "Scheduler" shows an example):
- `now`, `now_local`: the moment shown (ISO 8601, UTC and MAILER_TIMEZONE); `timezone`; `grace_seconds`;
- `issues`: one object per issue folder, sorted by folder name: `slug`, `date`, `send_at` (as
  written, resolved), `send_at_local`, `send_at_utc`, `send_local` (the wall time of a local-time
  send, or null), `waves` (its waves, `waves.Wave.as_dict`: `zone`, `at` with the zone's offset,
  `at_utc`, `recipients`, `sent`, `left`, `state` pending | due | missed | released | sent;
  [] otherwise), `state` (sent | paused | draft | placeholder |
  unbuildable | error | scheduled | due | missed | unscheduled), `due`, `missed`, `draft`, `ready` (the cadence
  would send it), `not_ready` (why not, or null), `warnings` (lines naming file:line), `ledger`
  (`sending.status.LedgerView.as_dict`: status, sent, total, left, counts, paused_reason; the CLI
  adds `text`, `wording.ledger_text`), `job` (a stored job exists), `error`;
- `cadence`: null without `[schedule] cron`, else `cron`, `timezone`, `next_runs` (the next 5:
  `at` with the zone's offset, `at_utc`, `issue` it would send if each run sends one, or null),
  `next_fire_local`, `next_fire_utc`, `next_issue` (those of the first run), `stored_run`,
  `stored_run_state` (null | due | missed: a stored run the scheduler has not made);
- `cadence_in_flight`: cadence sends started and not finished (`slug`, `started`, `ledger`, `resumable`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from .cadence import CadenceTrigger, build_cadence_trigger
from ..wallclock import localize
from ..config import Settings
from ..errors import MailerError
from ..segments import Segment
from ..content.issue import ISSUE_FILE, holds, load_issue
from ..content.render import template_problem
from ..store import Store
from ..store.jobs import stored_jobs
from ..sending.status import LedgerView, read_ledger
from ..sending.waves import Wave, issue_waves

JOBS_TABLE = "scheduler_jobs"
CADENCE_JOB = "cadence"
ISSUE_PREFIX = "issue:"
WAVE_PREFIX = "wave:"  # wave:<slug>@<UTC ISO>: one job per distinct release instant of a local-time send
MARKER_PREFIX = "cadence:"
NEXT_RUNS = 5  # cadence runs shown by `schedule list`
RECENT = timedelta(days=7)  # sent issues older than this are counted, not listed, in the text output


def cadence_trigger(settings: Settings) -> CadenceTrigger | None:
    """The `[schedule] cron` of mailer.toml in its zone; None without one. ConfigError if it is bad."""
    if not settings.schedule_cron.strip():
        return None
    return build_cadence_trigger(settings.schedule_cron, settings.schedule_zone)


def grace_seconds(settings: Settings) -> int:
    return settings.schedule_grace


@dataclass(frozen=True)
class IssueEntry:
    slug: str
    folder: Path
    date: date | None
    send_at: datetime | None
    fingerprint: tuple
    error: str | None = None
    # what keeps the scheduler from starting it: ("unbuildable", why) when its template's files are
    # missing (render.template_problem), then issue.holds(): (reason, line naming file:line)
    hold: tuple[str, str] | None = None  # the first of them
    hold_lines: tuple[str, ...] = ()  # every line
    send_local: datetime | None = None  # a local-time send's wall time (naive): released in waves (waves.py)
    list_name: str | None = None
    segment: Segment | None = None  # issue.toml's `segment`: narrows the planned waves as the freeze will

    @property
    def held(self) -> str | None:
        """"unbuildable", "draft" or "placeholder" when the scheduler must not start a send of it; else None."""
        return self.hold[0] if self.hold else None


def folder_fingerprint(folder: Path) -> tuple:
    """Changes whenever a file of the folder changes (an edited issue deserves a new attempt)."""
    try:
        return tuple(sorted((entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                            for entry in os.scandir(folder) if entry.is_file()))
    except OSError:
        return ()


def scan_issues(settings: Settings) -> list[IssueEntry]:
    """Every issue folder, sorted by name; unreadable ones carry their error instead of a send_at."""
    entries: list[IssueEntry] = []
    if not settings.issues_dir.is_dir():
        return entries
    for folder in sorted(p for p in settings.issues_dir.iterdir() if (p / ISSUE_FILE).is_file()):
        fingerprint = folder_fingerprint(folder)
        try:
            issue = load_issue(folder, settings.issues_dir, settings.zone)
        except MailerError as exc:
            try:
                folder_date = date.fromisoformat(folder.name[:10])
            except ValueError:
                folder_date = None
            entries.append(IssueEntry(folder.name, folder, folder_date, None, fingerprint, str(exc)))
            continue
        found = holds(issue)
        problem = template_problem(settings, issue)
        if problem is not None:  # it cannot render: the scheduler must not start it
            found.insert(0, ("unbuildable", str(problem)))
        entries.append(IssueEntry(issue.slug, issue.folder, issue.date, issue.send_at, fingerprint,
                                  hold=found[0] if found else None, hold_lines=tuple(line for _, line in found),
                                  send_local=issue.send_local, list_name=issue.list_name, segment=issue.segment))
    return entries


def local_state(found: list[Wave]) -> str:
    """A local-time send's state from its waves: due (a wave to send now) | missed (a wave missed,
    none due) | scheduled (waves ahead) | sent."""
    states = {wave.state for wave in found}
    for state in ("due", "released", "missed", "pending"):
        if state in states:
            return {"released": "due", "pending": "scheduled"}.get(state, state)
    return "sent" if found else "unscheduled"


def classify(send_at: datetime | None, ledger: LedgerView, now: datetime, grace: timedelta) -> str:
    """sent | paused | unscheduled (no send_at) | scheduled (future) | due (within grace) | missed."""
    if ledger.done:
        return "sent"
    if ledger.held_paused:
        return "paused"
    if send_at is None:
        return "unscheduled"
    if send_at > now:
        return "scheduled"
    if now - send_at <= grace:
        return "due"
    return "missed"


def not_ready_reason(entry: IssueEntry, today: date, ledger: LedgerView | None = None) -> str | None:
    """Why the cadence would not send this issue on `today` (None: it is ready). See "ready" above;
    without `ledger` only what the folder says is checked."""
    if entry.error is not None:
        return "cannot be read"
    if entry.held is not None:
        return entry.held
    if entry.send_at is not None:
        return "has its own send_at"
    if entry.send_local is not None:
        return "has its own send_local"
    if entry.date is None or entry.date > today:
        return "dated after today"
    if ledger is not None and ledger.done:
        return "already sent"
    if ledger is not None and ledger.held_paused:
        return "paused"
    return None


def next_ready_issue(settings: Settings, store: Store, today: date,
                     entries: list[IssueEntry] | None = None, exclude: frozenset[str] = frozenset()) -> IssueEntry | None:
    """The issue the cadence sends next (see "ready" in the module docstring), skipping `exclude`."""
    candidates = sorted((e for e in (entries if entries is not None else scan_issues(settings))
                         if e.slug not in exclude and not_ready_reason(e, today) is None),
                        key=lambda e: (e.date, e.slug))
    for entry in candidates:
        if not_ready_reason(entry, today, read_ledger(store, entry.slug)) is None:
            return entry
    return None


def parse_moment(text: str, zone: ZoneInfo) -> datetime:
    """`--now`: ISO 8601 (`2027-03-29T00:00:00+02:00`, `…Z`, or a wall time read in `zone` by the
    cadence's rule). Raises MailerError with one line."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise MailerError(f"--now {text!r}: not an ISO 8601 date-time (e.g. 2027-03-29T00:00:00+02:00)") from None
    return moment if moment.tzinfo is not None else localize(moment, zone)


def schedule_data(settings: Settings, store: Store, now: datetime) -> dict:
    """The schedule as of `now` (aware), as the JSON object documented at the top of this module."""
    now = now.astimezone(timezone.utc)
    grace = timedelta(seconds=grace_seconds(settings))
    zone, schedule_zone = settings.zone, settings.schedule_zone
    today = now.astimezone(schedule_zone).date()
    jobs = stored_jobs(store, JOBS_TABLE)
    entries = scan_issues(settings)

    cadence = None
    picks: dict[str, str] = {}  # slug → the cadence run (ISO) that sends it
    trigger = cadence_trigger(settings)
    if trigger is not None:
        runs = []
        for run in trigger.next_fire_times(now.astimezone(schedule_zone), NEXT_RUNS):
            entry = next_ready_issue(settings, store, run.date(), entries, exclude=frozenset(picks))
            if entry is not None:
                picks[entry.slug] = run.isoformat()
            runs.append({"at": run.isoformat(), "at_utc": run.astimezone(timezone.utc).isoformat(),
                         "issue": entry.slug if entry else None})
        stored = jobs.get(CADENCE_JOB)
        stored_next = stored.get("next_run_time") if stored else None
        overdue = None
        if stored_next is not None and stored_next <= now:
            overdue = "missed" if now - stored_next > grace else "due"
        first = runs[0] if runs else None
        cadence = {
            "cron": settings.schedule_cron, "timezone": schedule_zone.key, "next_runs": runs,
            "next_fire_local": first["at"] if first else None,
            "next_fire_utc": first["at_utc"] if first else None,
            "next_issue": first["issue"] if first else None,
            "stored_run": stored_next.astimezone(timezone.utc).isoformat() if stored_next else None,
            "stored_run_state": overdue,
        }

    rows = []
    for entry in entries:
        ledger = read_ledger(store, entry.slug)
        _, found = issue_waves(store, entry.slug, entry.send_local, entry.list_name, zone, now, grace, entry.segment)
        if entry.error:
            state = "error"
        elif not ledger.done and ledger.status != "paused" and entry.held and not ledger.started:
            state = entry.held  # draft | placeholder | unbuildable
        elif found and not ledger.done and not ledger.held_paused:  # a graceful stop keeps its waves
            state = local_state(found)
        else:
            state = classify(entry.send_at, ledger, now, grace)
        reason = not_ready_reason(entry, today, ledger)
        rows.append({
            "slug": entry.slug,
            "date": entry.date.isoformat() if entry.date else None,
            "send_at": entry.send_at.isoformat() if entry.send_at else None,
            "send_at_local": entry.send_at.astimezone(zone).isoformat() if entry.send_at else None,
            "send_at_utc": entry.send_at.astimezone(timezone.utc).isoformat() if entry.send_at else None,
            "send_local": entry.send_local.isoformat() if entry.send_local else None,
            "waves": [wave.as_dict() for wave in found],
            "state": state,
            "due": state == "due",
            "missed": state == "missed",
            "draft": entry.held == "draft",
            "ready": reason is None,
            "not_ready": reason,
            "cadence_run": picks.get(entry.slug),
            "warnings": list(entry.hold_lines),
            "ledger": ledger.as_dict(),
            "job": ISSUE_PREFIX + entry.slug in jobs or any(
                job_id.startswith(f"{WAVE_PREFIX}{entry.slug}@") for job_id in jobs),
            "error": entry.error,
        })

    in_flight = []
    for job_id, state in jobs.items():
        if job_id.startswith(MARKER_PREFIX) and state.get("trigger") is not None:
            slug = job_id[len(MARKER_PREFIX):]
            started = state["trigger"].run_date
            in_flight.append({"slug": slug, "started": started.astimezone(timezone.utc).isoformat(),
                              "ledger": read_ledger(store, slug).as_dict(),
                              "resumable": now - started <= grace})
    return {"now": now.isoformat(), "now_local": now.astimezone(zone).isoformat(), "timezone": zone.key,
            "grace_seconds": int(grace.total_seconds()), "issues": rows, "cadence": cadence,
            "cadence_in_flight": in_flight}
