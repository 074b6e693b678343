"""`mailer schedule run`: issues go out on time, by themselves, once per cadence run (the ledger decides who is sent).

(Over 400 lines because the job store's reconciliation, the sends and the stop on a signal share
one runtime object and its locks; what the schedule *is* lives in `mailer.scheduling.plan`, the
cadence's DST rule in `mailer.scheduling.cadence`.)

One long-lived APScheduler 3.11 `BackgroundScheduler` whose jobs live in the project's own database
(`SQLAlchemyJobStore`, table `scheduler_jobs`, sharing the store's engine: same WAL/busy-timeout
settings on SQLite, same schema on PostgreSQL). Every job is stored with a textual reference to a
function of this module, an explicit id, `replace_existing=True`, string arguments only,
`misfire_grace_time = settings.schedule_grace`, `coalesce=True`, `max_instances=1`.

Jobs
- ``issue:<slug>`` — a `DateTrigger` at the issue's `send_at` → `send_due_issue(slug, "send_at", iso)`.
- ``wave:<slug>@<UTC ISO>`` — a local-time send (`send_local`, `waves.py`): one `DateTrigger` per
  distinct release instant (zones sharing an instant share the job) → `send_due_issue(slug, "wave",
  iso)`. The first one due freezes the send (recipients, edition, each row's release instant);
  each sends the rows released by then. A wave missed beyond the grace is logged (WARNING, once),
  shown MISSED by `schedule list` and `status`, and never sent late by itself.
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
- **held** — an issue whose `issue.toml` says `draft = true`, or that still holds a placeholder
  (`issue.holds`: the scaffold's subject, preheader, intro or briefs, "TODO", "[Sujet]"…), is never *started* by the
  scheduler, by its `send_at` or by the cadence: its job is dropped and a WARNING says why (once per
  folder version). Removing the line (or writing the text) makes it schedulable again; a send
  already started (edition frozen) resumes as usual.
- **ready** (the cadence) — the oldest issue folder (by `date`, then folder name) whose `date` is on
  or before today (in the schedule zone), that has no `send_at` of its own, that loads without
  error, is not held, and whose ledger is not complete and not paused. One issue per cadence run;
  none ready → "skipped: nothing ready" is logged, naming the held ones. Keep already-published
  issues that never went through `mailer` out of `issues/` (or the cadence will consider them unsent).

SIGTERM/SIGINT: the stop event handed to every `dispatch.send_issue` is set (the batch in flight
finishes and is recorded; the ledger stays consistent), job processing is paused, running sends
are awaited, the scheduler shuts down and `run_scheduler` returns (exit 0). A second signal exits
at once; rows left in `sending` are put back in the queue by the next run (dead claimant).

DST. Cron fields are wall-clock times in the schedule zone, and `mailer.cadence.CadenceTrigger`
fires each wall time once: `0 7 * * MON` at 07:00 local on either side of a change; a wall time the
autumn change repeats at its first occurrence; one the spring change skips at the instant the clocks
jump (02:30 on 2027-03-28 in Europe/Paris → 03:00 CEST). Plain APScheduler loses whole runs in the
midnight hour around a spring change (apscheduler#606) and fires a repeated wall time twice — a
second cadence run would send the *next* ready issue. The rules and why they are ours: cadence.py.

Longer than ~400 lines because keeping the stored jobs in step with the issue folders
(scheduled sends, cadence markers, catch-up) is one state machine around APScheduler.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.date import DateTrigger

from ..config import Settings
from ..providers import require_ready
from ..errors import MailerError, NotDueYet, SendAborted
from ..content.issue import find_issue_folder, holds, load_issue
from .plan import (CADENCE_JOB, ISSUE_PREFIX, JOBS_TABLE, MARKER_PREFIX, WAVE_PREFIX, IssueEntry, cadence_trigger,
                   classify, folder_fingerprint, grace_seconds, next_ready_issue, scan_issues)
from ..sending import waves
from ..sending.status import read_ledger
from ..wallclock import format_moment as _fmt
from ..wording import format_span as _span, ledger_text
from ..store import Store, as_utc, open_store, utcnow
from ..store.jobs import database_label, job_store

log = logging.getLogger("mailer.scheduler")

RESUME_PREFIX = "cadence-resume:"
# Textual job references resolve through `mailer/scheduler.py` (stable across moves; see there).
SEND_FUNC = "mailer.scheduler:send_due_issue"
CADENCE_FUNC = "mailer.scheduler:run_cadence"
BOUNCE_FUNC = "mailer.scheduler:poll_bounce_mailbox"
BOUNCE_JOB = "bounce-mailbox"
EXECUTOR_THREADS = 4


def rescan_seconds(settings: Settings) -> float:
    """How often issue folders are rescanned ([schedule].rescan / MAILER_SCHEDULE_RESCAN, default 30 s)."""
    return settings.schedule_rescan


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
        self.rerun: dict[str, str] = {}  # slug → a wave that fired while its send was running
        self.scheduler = _Scheduler(
            jobstores={"default": job_store(store, JOBS_TABLE)},
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
        if job_id.startswith(WAVE_PREFIX):
            slug = job_id[len(WAVE_PREFIX):].rpartition("@")[0]
            self.note_once(("missed-wave", slug, when.isoformat() if when else ""),
                           "missed: wave of %s due at %s, %s ago, beyond the grace of %s; NOT sent (`mailer send %s "
                           "--release-missed` sends it now)", slug, _fmt(when, self.settings.zone), _span(late),
                           _span(self.grace), slug, level=logging.WARNING)
        elif job_id.startswith(ISSUE_PREFIX):
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
                return
            # a future run stored by an older version (APScheduler's own trigger lost runs around DST
            # changes) is the first run from now, or it is wrong: put the right one in its place
            expected = trigger.get_next_fire_time(None, datetime.now(zone))
            stored = next_run.astimezone(timezone.utc) if next_run is not None else None
            if expected is not None and stored != expected.astimezone(timezone.utc):
                self.scheduler.modify_job(CADENCE_JOB, next_run_time=expected)
                log.info("scheduled: cadence %r (%s), next run %s (the stored %s was wrong)", self.settings.schedule_cron,
                         zone.key, _fmt(expected, zone), _fmt(next_run, zone))
            else:
                log.info("scheduled: cadence %r (%s), next run %s", self.settings.schedule_cron, zone.key,
                         _fmt(next_run, zone))
            return
        job = self.scheduler.add_job(CADENCE_FUNC, trigger=trigger, id=CADENCE_JOB, name="cadence",
                                     **self._job_options())
        log.info("scheduled: cadence %r (%s), next run %s", self.settings.schedule_cron, zone.key,
                 _fmt(trigger.get_next_fire_time(None, datetime.now(zone)), zone))

    def sync_bounce_poll(self) -> None:
        """An interval job polling MAILER_BOUNCE_MAILBOX every MAILER_BOUNCE_POLL seconds (none when unset)."""
        from apscheduler.triggers.interval import IntervalTrigger
        if not self.settings.bounce_mailbox.strip():
            if self.scheduler.get_job(BOUNCE_JOB) is not None:
                self.remove(BOUNCE_JOB)
            return
        self.scheduler.add_job(BOUNCE_FUNC, trigger=IntervalTrigger(seconds=self.settings.bounce_poll),
                               id=BOUNCE_JOB, name="bounce mailbox", next_run_time=utcnow(),
                               **{**self._job_options(), "misfire_grace_time": None})
        log.info("scheduled: bounce mailbox %s every %gs", self.settings.bounce_mailbox, self.settings.bounce_poll)

    def poll_bounces(self) -> None:
        from ..subscribers.feedback import process_bounce_source
        try:
            summary = process_bounce_source(self.store, self.settings, self.settings.bounce_mailbox)
        except MailerError as exc:
            log.error("bounce mailbox: %s", exc)
            return
        if summary.processed or summary.unparseable:
            log.info("bounce mailbox: %s", summary.line())

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
            if entry.send_local is not None:
                keep.update(self._sync_waves(entry, jobs, now))
                continue
            if entry.send_at is None:
                continue
            keep.add(job_id)
            self._sync_issue(entry, jobs.get(job_id), now, initial)
        for job_id in jobs:
            if job_id.startswith(WAVE_PREFIX) and job_id not in keep:
                if self.remove(job_id):
                    log.info("unscheduled: %s (the wave is no longer planned)", job_id[len(WAVE_PREFIX):])
            if job_id.startswith(ISSUE_PREFIX) and job_id not in keep:
                if self.remove(job_id):
                    log.info("unscheduled: %s (its send_at was removed, or the folder is gone)", job_id[len(ISSUE_PREFIX):])
        for job_id, job in jobs.items():
            if job_id.startswith(MARKER_PREFIX):
                self._sync_marker(job_id[len(MARKER_PREFIX):], job, jobs, now)

    def _sync_waves(self, entry: IssueEntry, jobs: dict, now: datetime) -> set[str]:
        """Reconcile a local-time send's wave jobs (one per distinct instant of a pending or due wave);
        report missed waves once (released ones are the operator's `mailer send`). Returns the job ids to keep."""
        slug = entry.slug
        mine = {job_id for job_id in jobs if job_id.startswith(f"{WAVE_PREFIX}{slug}@")}
        with self.lock:
            if slug in self.running:
                return mine
        ledger = read_ledger(self.store, slug)
        if ledger.done:
            self.note_once(("sent", slug), "skipped: %s already sent (%s)", slug, ledger_text(ledger))
            return set()
        if ledger.held_paused:  # a graceful stop (statuses.STOPPED) keeps its waves: the scheduler resumes it
            self.note_once(("paused", slug, ledger.paused_reason),
                           "skipped: %s is paused (%s); resume it with `mailer send %s`", slug, ledger_text(ledger), slug,
                           level=logging.WARNING)
            return set()
        if entry.hold is not None and not ledger.started:
            self.note_once(("held", slug, entry.fingerprint), "skipped: %s is held, its send_local ignored: %s",
                           slug, entry.hold[1], level=logging.WARNING)
            return set()
        frozen, found = waves.issue_waves(self.store, slug, entry.send_local, entry.list_name, self.settings.zone,
                                          now, self.grace, entry.segment)
        keep: set[str] = set()
        by_instant: dict[datetime, list[waves.Wave]] = {}
        for wave in found:
            if wave.state == "missed":
                self.note_once(("missed-wave", slug, wave.zone, wave.at.isoformat()),
                               "missed: wave %s of %s (%d recipient(s)) was due at %s, %s ago, beyond the grace of %s; "
                               "NOT sent (`mailer send %s --release-missed` sends it now)", wave.zone, slug,
                               wave.left, _fmt(wave.at, wave_zone(wave)), _span(now - wave.at), _span(self.grace),
                               slug, level=logging.WARNING)
            elif wave.state == "released":  # the operator's: `mailer send` released it and resumes it
                self.note_once(("released-wave", slug, wave.zone, wave.at.isoformat()),
                               "skipped: wave %s of %s was released by hand (%d recipient(s) left): `mailer send %s` "
                               "resumes it", wave.zone, slug, wave.left, slug)
            elif wave.state != "sent":
                by_instant.setdefault(wave.at, []).append(wave)
        for at, group in sorted(by_instant.items()):
            job_id = f"{WAVE_PREFIX}{slug}@{at.astimezone(timezone.utc).isoformat()}"
            keep.add(job_id)
            if job_id in jobs:
                continue
            if at <= now:  # a due wave's job leaves the store as it fires: never schedule it twice
                key = ("wave", slug, at.astimezone(timezone.utc).isoformat())
                with self.lock:
                    if key in self.handled:
                        continue
                    self.handled.add(key)
            zones = ", ".join(w.zone for w in group)
            people = sum(w.left for w in group)
            self.scheduler.add_job(SEND_FUNC, trigger=DateTrigger(run_date=at), args=[slug, "wave", at.isoformat()],
                                   id=job_id, name=f"wave of {slug} ({zones})", **self._job_options())
            if at > now:
                log.info("scheduled: wave of %s at %s (%s, %d recipient(s)), in %s%s", slug,
                         _fmt(at, wave_zone(group[0])), zones, people, _span(at - now),
                         "" if frozen else " (planned from today's subscribers until the first wave freezes them)")
            else:
                log.info("due: wave of %s was due at %s (%s), %s ago (within grace of %s): sending now", slug,
                         _fmt(at, wave_zone(group[0])), zones, _span(now - at), _span(self.grace))
        return keep

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
            self.note_once(("sent", slug), "skipped: %s already sent (%s); send_at %s", slug, ledger_text(ledger), when)
            return
        if state == "paused":
            if job is not None:
                self.remove(job.id)
            self.note_once(("paused", slug, ledger.paused_reason),
                           "skipped: %s is paused (%s); resume it with `mailer send %s`", slug, ledger_text(ledger), slug,
                           level=logging.WARNING)
            return
        if entry.hold is not None and not ledger.started:
            if job is not None:
                self.remove(job.id)
            self.note_once(("held", slug, entry.fingerprint), "skipped: %s is held, its send_at %s ignored: %s",
                           slug, when, entry.hold[1], level=logging.WARNING)
            return
        stored_at = getattr(job.trigger, "run_date", None) if job is not None else None
        # compared in UTC: `==` across zones is False for a repeated wall time (PEP 495)
        same = stored_at is not None and stored_at.astimezone(timezone.utc) == send_at.astimezone(timezone.utc)
        key = ("send_at", slug, send_at.isoformat(), entry.fingerprint)
        if state == "missed":
            if job is not None:
                self.remove(job.id)
            partly = f" (interrupted at {ledger_text(ledger)})" if ledger.started else ""
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
        what = f"resuming ({ledger_text(ledger)})" if ledger.started else "sending now"
        log.info("due: %s was due at %s, %s ago (within grace of %s): %s", slug, when, _span(now - send_at),
                 _span(self.grace), what)

    def _sync_marker(self, slug: str, job, jobs: dict, now: datetime) -> None:  # noqa: ANN001
        with self.lock:
            if slug in self.running:
                return
        ledger = read_ledger(self.store, slug)
        if ledger.done or ledger.held_paused:
            self.remove(job.id)
            if ledger.held_paused:
                self.note_once(("paused", slug, ledger.paused_reason),
                               "skipped: %s is paused (%s); resume it with `mailer send %s`", slug, ledger_text(ledger), slug,
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
                         _fmt(started, self.settings.schedule_zone), ledger_text(ledger))
        else:
            self.note_once(("missed-cadence", slug, started.isoformat()),
                           "missed: cadence send of %s started at %s was interrupted (%s) and the grace of %s is over; "
                           "NOT resumed (finish it with `mailer send %s`)", slug, _fmt(started, self.settings.schedule_zone),
                           ledger_text(ledger), _span(self.grace), slug, level=logging.WARNING)

    # ----- sending --------------------------------------------------------------------------------
    def send(self, slug: str, origin: str, planned: str) -> None:
        """Send (or resume) `slug` for a job; a wave that fires while the same issue is being sent runs
        right after that send (its rows may have been released just after the running one looked)."""
        with self.lock:
            if slug in self.running:
                if origin == "wave":
                    self.rerun[slug] = planned
                    log.info("wave of %s due at %s: sent as soon as the send in progress ends", slug, planned)
                else:
                    log.info("skipped: %s is already being sent by this scheduler", slug)
                return
            self.running.add(slug)
        try:
            while True:
                self._send(slug, origin, planned)
                with self.lock:
                    if slug not in self.rerun or self.stop.is_set():
                        break
                    origin, planned = "wave", self.rerun.pop(slug)
        finally:
            with self.lock:
                self.running.discard(slug)
                self.rerun.pop(slug, None)

    def _send(self, slug: str, origin: str, planned: str) -> None:
        from ..sending import dispatch
        from ..sending.prepare import resume_notice, resumes_stored_edition

        try:
            if self.stop.is_set():
                log.info("skipped: %s: the scheduler is stopping (it is picked up again at the next start)", slug)
                return
            now = utcnow()
            ledger = read_ledger(self.store, slug)
            if ledger.done:
                log.info("skipped: %s already sent (%s)", slug, ledger_text(ledger))
                self.remove(MARKER_PREFIX + slug)
                return
            if ledger.held_paused:
                log.warning("skipped: %s is paused (%s); resume it with `mailer send %s`", slug, ledger_text(ledger), slug)
                return
            # a started send resumes its stored edition, as `mailer send` does: its folder is not read
            # (it may have changed, stopped parsing or be gone)
            resuming = resumes_stored_edition(self.store, slug)
            folder = issue = None
            if not resuming:
                folder = find_issue_folder(slug, self.settings.issues_dir)
                issue = load_issue(folder, self.settings.issues_dir, self.settings.zone)
                held = holds(issue)
                if held and not ledger.started:
                    log.warning("skipped: %s is held: %s", slug, held[0][1])
                    return
            if origin == "wave":
                at = datetime.fromisoformat(planned)
                if issue is not None and issue.send_local is None and not ledger.started:
                    log.info("skipped: %s no longer has a send_local", slug)
                    return
                if now - at > self.grace:
                    self.note_once(("missed-wave", slug, at.astimezone(timezone.utc).isoformat()),
                                   "missed: wave of %s due at %s, beyond the grace of %s; NOT sent (`mailer send %s "
                                   "--release-missed` sends it now)", slug, _fmt(at, self.settings.zone),
                                   _span(self.grace), slug, level=logging.WARNING)
                    return
                with self.lock:
                    self.handled.add(("wave", slug, at.astimezone(timezone.utc).isoformat()))
                reason = f"wave due at {_fmt(at, self.settings.zone)}"
            elif origin == "send_at" and resuming:  # started: it finishes, whatever send_at says now
                reason = f"send_at {planned}, started"
            elif origin == "send_at":
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
                     f"resuming, {ledger_text(ledger)}" if ledger.started else "first run")
            notice = resume_notice(self.settings, self.store, slug) if ledger.started else None
            if notice:  # a resume sends the stored edition, whatever the folder says now
                log.warning("%s", notice)
            try:
                report = dispatch.send_issue(self.settings, self.store, slug, stop=self.stop)
            except SendAborted as exc:
                log.error("paused: %s", exc)
                self.remove(MARKER_PREFIX + slug)
                return
            except NotDueYet as exc:
                log.info("skipped: %s", exc)
                return
            counts = report.counts
            summary = (f"{report.sent_now} sent now; ledger: {counts['sent']} sent, {counts['failed']} failed, "
                       f"{counts['skipped']} skipped, {counts['queued'] + counts['sending']} left, "
                       f"of {sum(counts.values())}; {report.elapsed:.1f}s")
            unfinished = counts["queued"] + counts["sending"] - report.waiting - report.missed
            if report.waves and not report.complete and not unfinished and not self.stop.is_set():
                ahead = [w for w in report.waves if w.state == "pending"]
                nxt = (f"; next wave {ahead[0].zone} at {_fmt(ahead[0].at, wave_zone(ahead[0]))}" if ahead else "")
                log.info("wave sent: %s: %s; %d recipient(s) wait for their wave%s%s", slug, summary, report.waiting, nxt,
                         f"; {report.missed} of missed waves NOT sent (`mailer send {slug} --release-missed`)"
                         if report.missed else "")
            elif report.complete:
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
            entries = scan_issues(self.settings)
            entry = next_ready_issue(self.settings, self.store, now.date(), entries)
            # held issues the run would have picked otherwise: say why they were passed over
            held = [e for e in entries
                    if e.hold is not None and e.send_at is None and e.send_local is None and e.date is not None and e.date <= now.date()
                    and (entry is None or (e.date, e.slug) < (entry.date, entry.slug))
                    and not read_ledger(self.store, e.slug).done]
        except Exception:  # noqa: BLE001
            log.exception("failed: cadence run: cannot list the issues")
            return
        for item in held:
            log.warning("cadence: passed over %s (held): %s", item.slug, item.hold[1])
        if entry is None:
            log.info("skipped: cadence run at %s: nothing ready (no issue dated on or before %s without its own "
                     "send_at, not held, that is not sent yet)", _fmt(now, zone), now.date().isoformat())
            return
        log.info("cadence: run at %s picked %s (dated %s, the oldest ready issue)", _fmt(now, zone), entry.slug,
                 entry.date)
        self.send(entry.slug, "cadence", now.isoformat())


def wave_zone(wave: "waves.Wave"):  # noqa: ANN201
    """The wave's own zone, for its times in log lines."""
    from zoneinfo import ZoneInfo
    return ZoneInfo(wave.zone)


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


def poll_bounce_mailbox() -> None:
    """Job target: process MAILER_BOUNCE_MAILBOX once (providers/bounces)."""
    runtime = _RUNTIME
    if runtime is None:
        log.error("failed: bounce mailbox poll: no scheduler runtime in this process")
        return
    runtime.poll_bounces()


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
    require_ready(settings)  # a scheduler that cannot send says so at start, not at 07:00
    cadence_trigger(settings)  # so does a bad cron
    if settings.bounce_mailbox.strip():  # and a bounce mailbox that cannot be named or logged in to
        from ..providers.bounces.sources import open_source
        open_source(settings.bounce_mailbox, imap_password=settings.imap_password).check()
    store = open_store(settings.database_url)
    runtime = SchedulerRuntime(settings, store, stop)
    previous = _install_signal_handlers(stop)
    try:
        runtime.start()
        try:
            runtime.sync_cadence()
            runtime.sync_bounce_poll()
            runtime.sync(initial=True)
            runtime.resume()
            log.info("running: job store %s.%s, issues in %s, rescan every %gs, grace %s, times in %s; "
                     "SIGTERM stops cleanly", database_label(store), JOBS_TABLE,
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


