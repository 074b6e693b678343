"""`mailer schedule run` / `schedule list`: issues go out on time, by themselves, once per cadence run.

One long-lived APScheduler 3.11 `BackgroundScheduler` whose jobs live in the project's own database
(`SQLAlchemyJobStore`, table `scheduler_jobs`, sharing the store's engine: same WAL/busy-timeout
settings on SQLite, same schema on PostgreSQL). Every job is stored with a textual reference to a
function of this module, an explicit id, `replace_existing=True`, string arguments only,
`misfire_grace_time = settings.schedule_grace`, `coalesce=True`, `max_instances=1`.

Jobs
- ``issue:<slug>`` — a `DateTrigger` at the issue's `send_at` → `send_due_issue(slug, "send_at", iso)`.
- ``cadence`` — the `[schedule] cron` of `mailer.toml` (`CadenceTrigger`, a `CronTrigger` in the
  schedule zone) → `run_cadence()`, which sends the next *ready* issue (below).
- ``cadence:<slug>`` — a *paused* marker written when the cadence starts sending an issue and
  removed once its ledger is complete: after a crash or a stop it tells the next start-up that the
  cadence owes this send (resumed when the start-up is within grace of the cadence run).
- ``cadence-resume:<slug>`` — the one-off job that resumes such a send.

The issue folders are the source of truth. The main thread rescans them every
`MAILER_SCHEDULE_RESCAN` seconds (default 30) and reconciles the job store: new or edited
`send_at` → job (re)scheduled, `send_at` removed or folder deleted → job removed. Nothing needs a
restart except changes to `mailer.toml` (the cadence itself).

Decisions (each one logged at INFO to ``mailer.scheduler``):
- **sent** — an issue whose ledger is complete (`issues.status == 'sent'`) is never sent again:
  its job is dropped and "skipped: already sent" is logged. (`dispatch` is idempotent anyway.)
- **paused** — a send paused by `dispatch` (too many failures) is left to the operator
  (`mailer send SLUG` resumes it); the scheduler never retries it by itself.
- **due** — `send_at <= now <= send_at + grace` and not sent: sent now. This covers a send missed
  while the scheduler was down (the persisted job fires at start-up, or the rescan finds it), an
  issue folder that appeared with a `send_at` a little in the past, and a send interrupted by a
  stop or a crash (the ledger resumes it: nobody is skipped; see dispatch for what a crash may repeat).
- **missed** — `now > send_at + grace` and not (fully) sent: NOT sent, reported once per run in the
  log and shown as MISSED by `mailer schedule list`. Send it by hand if it still makes sense.
- **ready** (the cadence) — the oldest issue folder (by `date`, then folder name) whose `date` is on
  or before today (in the schedule zone), that has no `send_at` of its own, that loads without
  error, and whose ledger is not complete and not paused. One issue per cadence run; none ready →
  "skipped: nothing ready" is logged. Keep already-published issues that never went through
  `mailer` out of `issues/` (or the cadence will consider them unsent).

SIGTERM/SIGINT: the stop event handed to every `dispatch.send_issue` is set (the batch in flight
finishes and is recorded; the ledger stays consistent), job processing is paused, running sends
are awaited, the scheduler shuts down and `run_scheduler` returns (exit 0). A second signal exits
at once; rows left in `sending` are put back in the queue by the next run (dead claimant).

DST. Cron fields are wall-clock times in the schedule zone: `0 7 * * MON` fires at 07:00 local on
either side of a change. On the autumn day a wall time that occurs twice (02:30 in Europe/Paris on
2026-10-25) fires ONCE, at its first occurrence (02:30 CEST = 00:30 UTC): plain APScheduler fires
it twice, and a second cadence run would send the *next* ready issue. On the spring day a wall time
that does not exist (02:30 on 2027-03-28) fires once, an hour later on the clock (03:30 CEST =
01:30 UTC, i.e. 02:30 in the old offset). Day-of-week numbers follow crontab (0 and 7 = Sunday,
1 = Monday…), unlike APScheduler 3's `from_crontab` (0 = Monday); names (MON…SUN) are safest.
When both day-of-month and day-of-week are restricted, both must match (APScheduler semantics;
crontab ORs them).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from .config import Settings
from .errors import ConfigError, MailerError, SendAborted
from .issue import ISSUE_FILE, find_issue_folder, load_issue
from .store import Store, as_utc, open_store, utcnow

log = logging.getLogger("mailer.scheduler")

JOBS_TABLE = "scheduler_jobs"
CADENCE_JOB = "cadence"
ISSUE_PREFIX = "issue:"
MARKER_PREFIX = "cadence:"
RESUME_PREFIX = "cadence-resume:"
SEND_FUNC = "mailer.scheduler:send_due_issue"
CADENCE_FUNC = "mailer.scheduler:run_cadence"
EXECUTOR_THREADS = 4


# ----- the cadence trigger -------------------------------------------------------------------------
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 = Sunday


def _wall_time_exists(moment: datetime) -> bool:
    """True when this wall-clock reading (with its fold) really occurs in its zone."""
    back = moment.astimezone(timezone.utc).astimezone(moment.tzinfo)
    return back.replace(tzinfo=None) == moment.replace(tzinfo=None)


def is_repeated_wall_time(moment: datetime) -> bool:
    """The second occurrence of a wall time the autumn change repeats (02:30 CET after 02:30 CEST)."""
    if moment.tzinfo is None:
        return False
    first, second = moment.replace(fold=0), moment.replace(fold=1)
    if first.utcoffset() == second.utcoffset():
        return False
    if not (_wall_time_exists(first) and _wall_time_exists(second)):
        return False  # a spring gap, not a repetition
    return moment.utcoffset() == second.utcoffset()


class CadenceTrigger(CronTrigger):
    """A `CronTrigger` that fires a wall time repeated by a DST change once, not twice."""

    def get_next_fire_time(self, previous_fire_time, now):  # noqa: ANN001 - APScheduler's signature
        candidate = super().get_next_fire_time(previous_fire_time, now)
        while candidate is not None and is_repeated_wall_time(candidate):
            candidate = super().get_next_fire_time(candidate, candidate)
        return candidate


def _day_number(text: str, expr: str) -> int:
    text = text.strip().lower()
    if text.isdigit():
        value = int(text)
        if 0 <= value <= 7:
            return value
    elif len(text) >= 3 and text[:3] in _DAY_NAMES:
        return _DAY_NAMES.index(text[:3])
    raise ConfigError(f"schedule cron {expr!r}: {text!r} is not a day of the week (0-7 or MON…SUN)")


def crontab_weekdays(field_text: str, expr: str = "") -> str:
    """A crontab day-of-week field (0/7 = Sunday, names, ranges, steps) as APScheduler day names."""
    field_text = field_text.strip().lower()
    if field_text in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field_text.split(","):
        span, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
        except ValueError:
            raise ConfigError(f"schedule cron {expr!r}: bad step in {part!r}") from None
        if step < 1:
            raise ConfigError(f"schedule cron {expr!r}: bad step in {part!r}")
        if span in ("*", "?"):
            low, high = 0, 6
        elif "-" in span:
            start, end = span.split("-", 1)
            low, high = _day_number(start, expr), _day_number(end, expr)
            if high < low:
                raise ConfigError(f"schedule cron {expr!r}: range {span!r} runs backwards")
        else:
            low = _day_number(span, expr)
            high = 6 if step_text else low
        days.update(day % 7 for day in range(low, high + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(_DAY_NAMES[day] for day in (1, 2, 3, 4, 5, 6, 0) if day in days)


def build_cadence_trigger(cron: str, zone: ZoneInfo) -> CadenceTrigger:
    """`minute hour day month day-of-week`, read as crontab reads it, in `zone`."""
    parts = cron.split()
    if len(parts) != 5:
        raise ConfigError(f"schedule cron {cron!r}: expected 5 fields (minute hour day month weekday), "
                          f"e.g. '0 7 * * MON'")
    minute, hour, day, month, weekday = parts
    try:
        return CadenceTrigger(minute=minute, hour=hour, day=day, month=month,
                              day_of_week=crontab_weekdays(weekday, cron), timezone=zone)
    except ValueError as exc:
        raise ConfigError(f"schedule cron {cron!r}: {exc}") from None


def cadence_trigger(settings: Settings) -> CadenceTrigger | None:
    if not settings.schedule_cron.strip():
        return None
    return build_cadence_trigger(settings.schedule_cron, settings.schedule_zone)


def grace_seconds(settings: Settings) -> int:
    return settings.schedule_grace


def rescan_seconds(settings: Settings) -> float:
    """How often issue folders are rescanned ([schedule].rescan / MAILER_SCHEDULE_RESCAN, default 30 s)."""
    return settings.schedule_rescan


# ----- what the folders and the ledger say ----------------------------------------------------------
@dataclass(frozen=True)
class IssueEntry:
    slug: str
    folder: Path
    date: date | None
    send_at: datetime | None
    fingerprint: tuple
    error: str | None = None


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
        entries.append(IssueEntry(issue.slug, issue.folder, issue.date, issue.send_at, fingerprint))
    return entries


@dataclass
class Ledger:
    status: str = "none"  # none (never started) | draft | sending | paused | sent
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

    def text(self) -> str:
        if self.status == "sent":
            extra = [f"{self.counts[k]} {k}" for k in ("failed", "skipped") if self.counts.get(k)]
            return f"sent {self.sent}/{self.total}" + (f" ({', '.join(extra)})" if extra else "")
        if self.status == "paused":
            return f"paused {self.sent}/{self.total}" + (f": {self.paused_reason}" if self.paused_reason else "")
        if self.status == "sending":
            return f"sending {self.sent}/{self.total}"
        return "not sent"

    def as_dict(self) -> dict:
        return {"status": self.status, "sent": self.sent, "total": self.total, "left": self.left,
                "counts": dict(self.counts), "paused_reason": self.paused_reason, "text": self.text()}


def read_ledger(store: Store, slug: str) -> Ledger:
    with store.engine.connect() as conn:
        row = store.issue_row(conn, slug)
        if row is None:
            return Ledger()
        return Ledger(row.status, store.delivery_counts(conn, row.id), row.paused_reason)


def classify(send_at: datetime | None, ledger: Ledger, now: datetime, grace: timedelta) -> str:
    """sent | paused | unscheduled (no send_at) | scheduled (future) | due (within grace) | missed."""
    if ledger.done:
        return "sent"
    if ledger.status == "paused":
        return "paused"
    if send_at is None:
        return "unscheduled"
    if send_at > now:
        return "scheduled"
    if now - send_at <= grace:
        return "due"
    return "missed"


def next_ready_issue(settings: Settings, store: Store, today: date,
                     entries: list[IssueEntry] | None = None) -> IssueEntry | None:
    """The issue the cadence sends next (see "ready" in the module docstring)."""
    candidates = sorted((e for e in (entries if entries is not None else scan_issues(settings))
                         if e.error is None and e.send_at is None and e.date is not None and e.date <= today),
                        key=lambda e: (e.date, e.slug))
    for entry in candidates:
        ledger = read_ledger(store, entry.slug)
        if not ledger.done and ledger.status != "paused":
            return entry
    return None


# ----- formatting -----------------------------------------------------------------------------------
def _fmt(moment: datetime | None, zone: ZoneInfo) -> str:
    if moment is None:
        return "-"
    local = moment.astimezone(zone)
    utc = moment.astimezone(timezone.utc)
    clock = "%Y-%m-%d %H:%M:%S" if local.second or local.microsecond else "%Y-%m-%d %H:%M"
    return f"{local.strftime(clock)} {local.tzname()} ({utc.strftime(clock)} UTC)"


def _span(delta: timedelta) -> str:
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


# ----- the running scheduler ------------------------------------------------------------------------
_RUNTIME: "SchedulerRuntime | None" = None
CATCHUP_JOB = "cadence-catchup"


class _Scheduler(BackgroundScheduler):
    """APScheduler 3.11 checks only for "paused" before processing due jobs: a wakeup racing
    `shutdown()` would hand a due job to an executor already shut down and consume its run time
    (a date job is deleted, a cron job moves on). Process jobs only while really running."""

    def _process_jobs(self):
        if self.state != STATE_RUNNING:
            return None
        return super()._process_jobs()

    def quiesce(self) -> None:
        """Pause, then wait for a job-processing pass already under way to finish."""
        self.pause()
        lock = getattr(self, "_jobstores_lock", None)
        if lock is not None:
            with lock:
                pass


class SchedulerRuntime:
    """The process-wide state the stored jobs (plain function references) run against."""

    def __init__(self, settings: Settings, store: Store, stop: threading.Event) -> None:
        self.settings = settings
        self.store = store
        self.stop = stop
        self.grace = timedelta(seconds=grace_seconds(settings))
        self.lock = threading.Lock()
        self.running: set[str] = set()
        # keys of the sends this process has scheduled or started: (origin, slug, when[, fingerprint]).
        # A date job leaves the store the moment it fires, before its send registers as running: this
        # set is what keeps a rescan in that instant from scheduling the same send again.
        self.handled: set[tuple] = set()
        self.reported: set[tuple] = set()
        self.scheduler = _Scheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=store.engine, tablename=JOBS_TABLE)},
            executors={"default": ThreadPoolExecutor(EXECUTOR_THREADS)},
            job_defaults={"misfire_grace_time": grace_seconds(settings), "coalesce": True, "max_instances": 1},
            timezone=settings.schedule_zone,
        )
        self.scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    # ----- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start with job processing paused: the first reconciliation happens before anything fires."""
        global _RUNTIME
        _RUNTIME = self
        self.scheduler.start(paused=True)

    def resume(self) -> None:
        self.scheduler.resume()

    def shutdown(self, timeout: float = 120.0) -> None:
        global _RUNTIME
        try:
            self.scheduler.quiesce()
        except Exception:  # noqa: BLE001 - not running
            pass
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            self.scheduler.shutdown(wait=True)
        except Exception:  # noqa: BLE001 - SchedulerNotRunningError
            pass
        if _RUNTIME is self:
            _RUNTIME = None

    def busy(self) -> bool:
        with self.lock:
            return bool(self.running)

    def note_once(self, key: tuple, message: str, *args: Any, level: int = logging.INFO) -> None:
        with self.lock:
            if key in self.reported:
                return
            self.reported.add(key)
        log.log(level, message, *args)

    # ----- job store helpers ------------------------------------------------------------------------
    def _job_options(self) -> dict:
        return {"replace_existing": True, "misfire_grace_time": grace_seconds(self.settings),
                "coalesce": True, "max_instances": 1}

    def schedule_issue(self, slug: str, send_at: datetime) -> None:
        self.scheduler.add_job(SEND_FUNC, trigger=DateTrigger(run_date=send_at), args=[slug, "send_at", send_at.isoformat()],
                               id=ISSUE_PREFIX + slug, name=f"send {slug}", **self._job_options())

    def remove(self, job_id: str) -> bool:
        try:
            self.scheduler.remove_job(job_id)
            return True
        except JobLookupError:
            return False

    def ensure_marker(self, slug: str, started: datetime) -> None:
        """The cadence owes this send until its ledger is complete (a paused job: never fires)."""
        if self.scheduler.get_job(MARKER_PREFIX + slug) is not None:
            return
        self.scheduler.add_job(SEND_FUNC, trigger=DateTrigger(run_date=started), args=[slug, "cadence", started.isoformat()],
                               id=MARKER_PREFIX + slug, name=f"cadence send of {slug} in progress",
                               next_run_time=None, **self._job_options())

    # ----- events -----------------------------------------------------------------------------------
    def _on_event(self, event: JobExecutionEvent | JobSubmissionEvent) -> None:
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.info("skipped: job %s is still running", event.job_id)
            return
        when = as_utc(event.scheduled_run_time)
        late = utcnow() - when if when else timedelta(0)
        job_id = event.job_id
        if job_id.startswith(ISSUE_PREFIX):
            slug = job_id[len(ISSUE_PREFIX):]
            self.note_once(("missed", slug, when.isoformat() if when else ""),
                           "missed: %s was due at %s, %s ago, beyond the grace of %s; NOT sent "
                           "(send it by hand with `mailer send %s` if it still makes sense)",
                           slug, _fmt(when, self.settings.zone), _span(late), _span(self.grace), slug,
                           level=logging.WARNING)
        elif job_id in (CADENCE_JOB, CATCHUP_JOB):
            log.warning("missed: cadence run due at %s, %s ago, beyond the grace of %s; nothing sent for it "
                        "(the next ready issue waits for the next run)", _fmt(when, self.settings.schedule_zone),
                        _span(late), _span(self.grace))
        else:
            log.warning("missed: job %s due at %s, %s ago, beyond the grace of %s; not run", job_id,
                        _fmt(when, self.settings.zone), _span(late), _span(self.grace))

    # ----- reconciliation -----------------------------------------------------------------------------
    def sync_cadence(self) -> None:
        trigger = cadence_trigger(self.settings)
        job = self.scheduler.get_job(CADENCE_JOB)
        if trigger is None:
            if job is not None:
                self.remove(CADENCE_JOB)
                log.info("unscheduled: cadence (no [schedule] cron configured any more)")
            return
        zone = self.settings.schedule_zone
        if job is not None and repr(job.trigger) == repr(trigger):
            if job.misfire_grace_time != grace_seconds(self.settings):
                self.scheduler.modify_job(CADENCE_JOB, misfire_grace_time=grace_seconds(self.settings))
            next_run = job.next_run_time
            if next_run is not None and next_run <= utcnow():
                log.info("scheduled: cadence %r (%s): the run due at %s was missed while stopped; "
                         "it runs now if within grace", self.settings.schedule_cron, zone.key, _fmt(next_run, zone))
            else:
                log.info("scheduled: cadence %r (%s), next run %s", self.settings.schedule_cron, zone.key,
                         _fmt(next_run, zone))
            return
        job = self.scheduler.add_job(CADENCE_FUNC, trigger=trigger, id=CADENCE_JOB, name="cadence",
                                     **self._job_options())
        log.info("scheduled: cadence %r (%s), next run %s", self.settings.schedule_cron, zone.key,
                 _fmt(trigger.get_next_fire_time(None, datetime.now(zone)), zone))

    def sync(self, initial: bool = False) -> None:
        """Reconcile the job store with the issue folders and the ledger."""
        now = utcnow()
        jobs = {job.id: job for job in self.scheduler.get_jobs()}
        keep: set[str] = set()
        for entry in scan_issues(self.settings):
            job_id = ISSUE_PREFIX + entry.slug
            if entry.error is not None:
                keep.add(job_id)  # a half-edited folder keeps its schedule until it reads again
                self.note_once(("error", entry.slug, entry.fingerprint),
                               "skipped: %s cannot be read (%s); its schedule is unchanged until it is fixed",
                               entry.slug, entry.error, level=logging.ERROR)
                continue
            if entry.send_at is None:
                continue
            keep.add(job_id)
            self._sync_issue(entry, jobs.get(job_id), now, initial)
        for job_id in jobs:
            if job_id.startswith(ISSUE_PREFIX) and job_id not in keep:
                if self.remove(job_id):
                    log.info("unscheduled: %s (its send_at was removed, or the folder is gone)", job_id[len(ISSUE_PREFIX):])
        for job_id, job in jobs.items():
            if job_id.startswith(MARKER_PREFIX):
                self._sync_marker(job_id[len(MARKER_PREFIX):], job, jobs, now)

    def _sync_issue(self, entry: IssueEntry, job, now: datetime, initial: bool) -> None:  # noqa: ANN001
        slug, send_at = entry.slug, entry.send_at
        assert send_at is not None
        with self.lock:
            if slug in self.running:
                return
        ledger = read_ledger(self.store, slug)
        state = classify(send_at, ledger, now, self.grace)
        when = _fmt(send_at, self.settings.zone)
        if state == "sent":
            if job is not None:
                self.remove(job.id)
            self.note_once(("sent", slug), "skipped: %s already sent (%s); send_at %s", slug, ledger.text(), when)
            return
        if state == "paused":
            if job is not None:
                self.remove(job.id)
            self.note_once(("paused", slug, ledger.paused_reason),
                           "skipped: %s is paused (%s); resume it with `mailer send %s`", slug, ledger.text(), slug,
                           level=logging.WARNING)
            return
        same = job is not None and getattr(job.trigger, "run_date", None) == send_at
        key = ("send_at", slug, send_at.isoformat(), entry.fingerprint)
        if state == "missed":
            if job is not None:
                self.remove(job.id)
            partly = f" (interrupted at {ledger.text()})" if ledger.started else ""
            self.note_once(("missed", slug, send_at.astimezone(timezone.utc).isoformat()),
                           "missed: %s was due at %s, %s ago, beyond the grace of %s%s; NOT sent "
                           "(send it by hand with `mailer send %s` if it still makes sense)",
                           slug, when, _span(now - send_at), _span(self.grace), partly, slug, level=logging.WARNING)
            return
        if same:
            with self.lock:
                self.handled.add(key)
            if job.misfire_grace_time != grace_seconds(self.settings):
                self.scheduler.modify_job(job.id, misfire_grace_time=grace_seconds(self.settings))
            if initial:
                if state == "scheduled":
                    log.info("scheduled: %s at %s, in %s (kept from the job store)", slug, when, _span(send_at - now))
                else:
                    log.info("due: %s was due at %s, %s ago (within grace): sending now", slug, when, _span(now - send_at))
            return
        if state == "scheduled":
            with self.lock:
                self.handled.add(key)
            self.schedule_issue(slug, send_at)
            log.info("scheduled: %s at %s, in %s%s", slug, when, _span(send_at - now),
                     " (send_at changed)" if job is not None else "")
            return
        # due, no job for this send_at: new folder, edited send_at or content (a failed send gets another
        # go once the editor fixes it), or a send a previous run did not finish
        with self.lock:
            if key in self.handled:
                return
            self.handled.add(key)
        self.schedule_issue(slug, send_at)
        what = f"resuming ({ledger.text()})" if ledger.started else "sending now"
        log.info("due: %s was due at %s, %s ago (within grace of %s): %s", slug, when, _span(now - send_at),
                 _span(self.grace), what)

    def _sync_marker(self, slug: str, job, jobs: dict, now: datetime) -> None:  # noqa: ANN001
        with self.lock:
            if slug in self.running:
                return
        ledger = read_ledger(self.store, slug)
        if ledger.done or ledger.status == "paused":
            self.remove(job.id)
            if ledger.status == "paused":
                self.note_once(("paused", slug, ledger.paused_reason),
                               "skipped: %s is paused (%s); resume it with `mailer send %s`", slug, ledger.text(), slug,
                               level=logging.WARNING)
            return
        started = job.trigger.run_date
        if now - started <= self.grace:
            key = ("cadence", slug, started.isoformat())
            with self.lock:
                if key in self.handled:
                    return
                self.handled.add(key)
            if RESUME_PREFIX + slug not in jobs:
                self.scheduler.add_job(SEND_FUNC, trigger=DateTrigger(run_date=started),
                                       args=[slug, "cadence", started.isoformat()], id=RESUME_PREFIX + slug,
                                       name=f"resume cadence send of {slug}", **self._job_options())
                log.info("due: cadence send of %s started at %s did not finish (%s): resuming", slug,
                         _fmt(started, self.settings.schedule_zone), ledger.text())
        else:
            self.note_once(("missed-cadence", slug, started.isoformat()),
                           "missed: cadence send of %s started at %s was interrupted (%s) and the grace of %s is over; "
                           "NOT resumed (finish it with `mailer send %s`)", slug, _fmt(started, self.settings.schedule_zone),
                           ledger.text(), _span(self.grace), slug, level=logging.WARNING)

    # ----- sending --------------------------------------------------------------------------------
    def send(self, slug: str, origin: str, planned: str) -> None:
        from . import dispatch

        with self.lock:
            if slug in self.running:
                log.info("skipped: %s is already being sent by this scheduler", slug)
                return
            self.running.add(slug)
        try:
            if self.stop.is_set():
                log.info("skipped: %s: the scheduler is stopping (it is picked up again at the next start)", slug)
                return
            now = utcnow()
            folder = find_issue_folder(slug, self.settings.issues_dir)
            issue = load_issue(folder, self.settings.issues_dir, self.settings.zone)
            ledger = read_ledger(self.store, slug)
            if ledger.done:
                log.info("skipped: %s already sent (%s)", slug, ledger.text())
                self.remove(MARKER_PREFIX + slug)
                return
            if ledger.status == "paused":
                log.warning("skipped: %s is paused (%s); resume it with `mailer send %s`", slug, ledger.text(), slug)
                return
            if origin == "send_at":
                if issue.send_at is None:
                    log.info("skipped: %s no longer has a send_at", slug)
                    return
                if issue.send_at > now + timedelta(seconds=1):
                    log.info("skipped: %s: send_at moved to %s; rescheduled by the next scan", slug,
                             _fmt(issue.send_at, self.settings.zone))
                    return
                if now - issue.send_at > self.grace:
                    self.note_once(("missed", slug, issue.send_at.astimezone(timezone.utc).isoformat()),
                                   "missed: %s was due at %s, beyond the grace of %s; NOT sent", slug,
                                   _fmt(issue.send_at, self.settings.zone), _span(self.grace), level=logging.WARNING)
                    return
                with self.lock:
                    self.handled.add(("send_at", slug, issue.send_at.isoformat(), folder_fingerprint(folder)))
                reason = f"send_at {_fmt(issue.send_at, self.settings.zone)}"
            else:
                started = datetime.fromisoformat(planned) if planned else now
                with self.lock:
                    self.handled.add(("cadence", slug, started.isoformat()))
                self.ensure_marker(slug, started)
                reason = f"cadence run of {_fmt(started, self.settings.schedule_zone)}"
            log.info("started: %s (%s; %s)", slug, reason,
                     f"resuming, {ledger.text()}" if ledger.started else "first run")
            try:
                report = dispatch.send_issue(self.settings, self.store, slug, stop=self.stop)
            except SendAborted as exc:
                log.error("paused: %s", exc)
                self.remove(MARKER_PREFIX + slug)
                return
            counts = report.counts
            summary = (f"{report.sent_now} sent now; ledger: {counts['sent']} sent, {counts['failed']} failed, "
                       f"{counts['skipped']} skipped, {counts['queued'] + counts['sending']} left, "
                       f"of {sum(counts.values())}; {report.elapsed:.1f}s")
            if report.complete:
                log.info("finished: %s: %s", slug, summary)
                self.remove(MARKER_PREFIX + slug)
            elif self.stop.is_set():
                log.info("interrupted: %s: %s; the batch in flight was recorded; the next start resumes it "
                         "within grace", slug, summary)
            else:
                log.warning("incomplete: %s: %s (rows held by another running sender?)", slug, summary)
        except MailerError as exc:
            log.error("failed: %s: %s", slug, exc)
        except Exception:  # noqa: BLE001 - a job must never kill the scheduler
            log.exception("failed: %s: unexpected error", slug)
        finally:
            with self.lock:
                self.running.discard(slug)

    def cadence(self) -> None:
        zone = self.settings.schedule_zone
        if self.stop.is_set():
            # the run fired in the instant of a stop: leave a one-off catch-up run in the job store,
            # which the next start-up runs if it comes within the grace period
            try:
                self.scheduler.add_job(CADENCE_FUNC, trigger=DateTrigger(run_date=utcnow()), id=CATCHUP_JOB,
                                       name="cadence catch-up", **self._job_options())
            except Exception:  # noqa: BLE001 - the scheduler is already shut down
                pass
            log.info("skipped: cadence run: the scheduler is stopping (the next start-up runs it within grace)")
            return
        now = datetime.now(zone)
        try:
            entry = next_ready_issue(self.settings, self.store, now.date())
        except Exception:  # noqa: BLE001
            log.exception("failed: cadence run: cannot list the issues")
            return
        if entry is None:
            log.info("skipped: cadence run at %s: nothing ready (no issue dated on or before %s without its own "
                     "send_at that is not sent yet)", _fmt(now, zone), now.date().isoformat())
            return
        log.info("cadence: run at %s picked %s (dated %s, the oldest ready issue)", _fmt(now, zone), entry.slug,
                 entry.date)
        self.send(entry.slug, "cadence", now.isoformat())


# ----- stored job targets (textual references: keep their names and signatures stable) -------------
def send_due_issue(slug: str, origin: str = "send_at", planned: str = "") -> None:
    """Job target: send (or resume) one issue. `origin` is "send_at" or "cadence"."""
    runtime = _RUNTIME
    if runtime is None:
        log.error("failed: %s: no scheduler runtime in this process", slug)
        return
    runtime.send(slug, origin, planned)


def run_cadence() -> None:
    """Job target of the cadence: send the next ready issue."""
    runtime = _RUNTIME
    if runtime is None:
        log.error("failed: cadence run: no scheduler runtime in this process")
        return
    runtime.cadence()


# ----- entry points ---------------------------------------------------------------------------------
def _install_signal_handlers(stop: threading.Event) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, _frame) -> None:  # noqa: ANN001
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("signal %s again: exiting now; rows left in 'sending' are queued again by the next run", name)
            os._exit(130)
        log.info("signal %s: stopping; sends in flight finish their current batch first", name)
        stop.set()

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    return previous


def run_scheduler(settings: Settings, stop: threading.Event | None = None) -> None:
    """`mailer schedule run`: until SIGTERM/SIGINT (or `stop` is set), then return normally."""
    stop = stop or threading.Event()
    rescan = rescan_seconds(settings)
    settings.require_for_send()  # a scheduler that cannot send says so at start, not at 07:00
    cadence_trigger(settings)  # so does a bad cron
    store = open_store(settings.database_url)
    runtime = SchedulerRuntime(settings, store, stop)
    previous = _install_signal_handlers(stop)
    try:
        runtime.start()
        try:
            runtime.sync_cadence()
            runtime.sync(initial=True)
            runtime.resume()
            log.info("running: job store %s.%s, issues in %s, rescan every %gs, grace %s, times in %s; "
                     "SIGTERM stops cleanly", store.engine.url.render_as_string(hide_password=True), JOBS_TABLE,
                     settings.issues_dir, rescan, _span(runtime.grace), settings.schedule_zone.key)
            while not stop.wait(rescan):
                try:
                    runtime.sync()
                except Exception:  # noqa: BLE001 - keep serving; the next scan retries
                    log.exception("rescan failed")
        finally:
            stop.set()
            log.info("stopping: waiting for sends in flight to record their current batch")
            runtime.shutdown()
            log.info("stopped")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        store.close()


def _stored_jobs(store: Store) -> dict[str, dict]:
    """The job store's rows, read without starting a scheduler: id → job state (trigger, args…)."""
    with store.engine.connect() as conn:
        if not sa.inspect(conn).has_table(JOBS_TABLE):
            return {}
        table = sa.table(JOBS_TABLE, sa.column("id"), sa.column("next_run_time"), sa.column("job_state"))
        rows = conn.execute(sa.select(table.c.id, table.c.job_state)).all()
    jobs = {}
    for job_id, blob in rows:
        try:
            jobs[job_id] = pickle.loads(blob)
        except Exception:  # noqa: BLE001 - a job this version cannot read
            jobs[job_id] = {}
    return jobs


def describe_schedule(settings: Settings, as_json: bool = False) -> str:
    """`mailer schedule list`: every issue's send_at (local and UTC), ledger, due/missed; the cadence."""
    store = open_store(settings.database_url)
    try:
        return _describe(settings, store, as_json)
    finally:
        store.close()


def _describe(settings: Settings, store: Store, as_json: bool) -> str:
    now = utcnow()
    grace = timedelta(seconds=grace_seconds(settings))
    zone, schedule_zone = settings.zone, settings.schedule_zone
    jobs = _stored_jobs(store)
    entries = scan_issues(settings)
    rows = []
    for entry in entries:
        ledger = read_ledger(store, entry.slug)
        state = "error" if entry.error else classify(entry.send_at, ledger, now, grace)
        stored = jobs.get(ISSUE_PREFIX + entry.slug)
        rows.append({
            "slug": entry.slug,
            "date": entry.date.isoformat() if entry.date else None,
            "send_at": entry.send_at.isoformat() if entry.send_at else None,
            "send_at_local": entry.send_at.astimezone(zone).isoformat() if entry.send_at else None,
            "send_at_utc": entry.send_at.astimezone(timezone.utc).isoformat() if entry.send_at else None,
            "ledger": ledger.as_dict(),
            "state": state,
            "due": state == "due",
            "missed": state == "missed",
            "job": bool(stored),
            "error": entry.error,
        })
    cadence = None
    trigger = cadence_trigger(settings)
    stored_cadence = jobs.get(CADENCE_JOB)
    if trigger is not None:
        next_fire = trigger.get_next_fire_time(None, now.astimezone(schedule_zone))
        stored_next = stored_cadence.get("next_run_time") if stored_cadence else None
        overdue = None
        if stored_next is not None and stored_next <= now:
            overdue = "missed" if now - stored_next > grace else "due"
        ready = next_ready_issue(settings, store, now.astimezone(schedule_zone).date(), entries)
        cadence = {
            "cron": settings.schedule_cron, "timezone": schedule_zone.key,
            "next_fire_local": next_fire.isoformat() if next_fire else None,
            "next_fire_utc": next_fire.astimezone(timezone.utc).isoformat() if next_fire else None,
            "stored_run": stored_next.astimezone(timezone.utc).isoformat() if stored_next else None,
            "stored_run_state": overdue,
            "next_issue": ready.slug if ready else None,
        }
    in_flight = []
    for job_id, state in jobs.items():
        if job_id.startswith(MARKER_PREFIX) and state.get("trigger") is not None:
            slug = job_id[len(MARKER_PREFIX):]
            started = state["trigger"].run_date
            in_flight.append({"slug": slug, "started": started.astimezone(timezone.utc).isoformat(),
                              "ledger": read_ledger(store, slug).as_dict(),
                              "resumable": now - started <= grace})
    data = {"now": now.isoformat(), "timezone": zone.key, "grace_seconds": int(grace.total_seconds()),
            "issues": rows, "cadence": cadence, "cadence_in_flight": in_flight}
    if as_json:
        return json.dumps(data, ensure_ascii=False, indent=2)

    lines = [f"now {_fmt(now, zone)}; grace {_span(grace)}"]
    scheduled = [r for r, e in zip(rows, entries) if e.send_at is not None or e.error]
    if not scheduled:
        lines.append("no issue has a send_at")
    for row, entry in zip(rows, entries):
        if entry.send_at is None and not entry.error:
            continue
        if entry.error:
            lines.append(f"{row['slug']}  ERROR: {entry.error}")
            continue
        assert entry.send_at is not None
        state = row["state"]
        if state == "scheduled":
            note = f"scheduled, in {_span(entry.send_at - now)}" + ("" if row["job"] else " (picked up by `schedule run`)")
        elif state == "due":
            note = (f"DUE since {_span(now - entry.send_at)} (within grace for {_span(entry.send_at + grace - now)} more): "
                    "sent by `mailer schedule run`")
        elif state == "missed":
            note = (f"MISSED: due {_span(now - entry.send_at)} ago, beyond the grace of {_span(grace)}; "
                    f"not sent automatically (`mailer send {row['slug']}` to send it anyway)")
        elif state == "paused":
            note = f"PAUSED: resume with `mailer send {row['slug']}`"
        else:
            note = ""
        lines.append(f"{row['slug']}  send_at {_fmt(entry.send_at, zone)}  {row['ledger']['text']}  {note}".rstrip())
    if cadence is None:
        lines.append("cadence: none (set [schedule] cron in mailer.toml, e.g. cron = \"0 7 * * MON\")")
    else:
        next_fire = datetime.fromisoformat(cadence["next_fire_utc"]) if cadence["next_fire_utc"] else None
        lines.append(f"cadence: {cadence['cron']!r} ({cadence['timezone']}), next run {_fmt(next_fire, schedule_zone)}"
                     f" → {cadence['next_issue'] or 'nothing ready yet'}")
        if cadence["stored_run_state"] == "missed":
            lines.append(f"cadence: MISSED the run due {_fmt(datetime.fromisoformat(cadence['stored_run']), schedule_zone)}"
                         " (the scheduler was not running; beyond grace, it will not run)")
        elif cadence["stored_run_state"] == "due":
            lines.append(f"cadence: the run due {_fmt(datetime.fromisoformat(cadence['stored_run']), schedule_zone)}"
                         " has not happened yet (within grace: it runs when `mailer schedule run` starts)")
    for item in in_flight:
        started = datetime.fromisoformat(item["started"])
        what = "resumed at the next start" if item["resumable"] else "MISSED: beyond grace, finish it with `mailer send`"
        lines.append(f"cadence send of {item['slug']} started {_fmt(started, schedule_zone)}: "
                     f"{item['ledger']['text']}, {what}")
    return "\n".join(lines)
