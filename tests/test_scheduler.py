"""The scheduler: issues go out on time, by themselves, exactly once.

Most tests drive REAL `mailer schedule run` processes (the venv's console script) against a SQLite
file and the outbox backend, and judge them by the ledger, the outbox and the run log. Waits poll
with deadlines; the only fixed waits are "until this wall-clock time has passed".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mailer.scheduling import plan, runtime as scheduler
from mailer.scheduling.cadence import CadenceTrigger
from mailer.store.jobs import stored_jobs
from mailer.cli.schedule import describe_schedule
from mailer.errors import MailerError
from mailer.store import open_store
from mailer.subscribers import import_csv
from tests.conftest import BASE_ENV, write_issue

MAILER = Path(sys.executable).with_name("mailer")
PARIS = ZoneInfo("Europe/Paris")
UTC = timezone.utc
BRIEFS = {"briefs.txt": "--> Une brève, avec un [lien](https://example.org).\n"}


# ----- helpers ----------------------------------------------------------------------------------------
def db_path(project: Path) -> Path:
    return project / "subscribers" / "scheduler-test.db"


def run_env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(BASE_ENV)
    env.update(MAILER_DATABASE_URL=f"sqlite:///{db_path(project)}", MAILER_BACKEND="outbox",
               MAILER_SCHEDULE_RESCAN="0.3", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def sleep_until(moment: datetime) -> None:
    """Let wall-clock time pass (not a guess: the test needs `moment` to be in the past)."""
    delay = (moment - datetime.now(UTC)).total_seconds()
    if delay > 0:
        time.sleep(delay)


class Run:
    """One `mailer schedule run` process, its stderr in a log file."""

    def __init__(self, project: Path, env: dict[str, str], name: str) -> None:
        self.log_path = project / f"{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([str(MAILER), "schedule", "run"], cwd=project, env=env,
                                     stdout=subprocess.DEVNULL, stderr=self._log)

    def text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, needle: str, timeout: float = 15.0) -> None:
        def found() -> bool:
            if self.proc.poll() is not None and needle not in self.text():
                raise AssertionError(f"scheduler exited ({self.proc.returncode}) before logging {needle!r}:\n{self.text()}")
            return needle in self.text()
        try:
            wait_until(found, timeout, f"log line {needle!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- run log ---\n{self.text()}") from None

    def terminate(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)  # reap it: a zombie's pid still looks alive to the next run
        self._log.close()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def runs():
    started: list[Run] = []

    def start(project: Path, env: dict[str, str], name: str) -> Run:
        run = Run(project, env, name)
        started.append(run)
        return run

    yield start
    for run in started:
        run.cleanup()


def ledger(project: Path, slug: str) -> dict:
    """Counts by status, attempts, and the issue's own status, read straight from SQLite."""
    path = db_path(project)
    if not path.exists():
        return {"status": None, "counts": {}, "attempts": 0, "rows": 0, "subscribers": 0}
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute("SELECT id, status FROM issues WHERE slug = ?", (slug,)).fetchone()
        if row is None:
            return {"status": None, "counts": {}, "attempts": 0, "rows": 0, "subscribers": 0}
        counts = dict(conn.execute("SELECT status, count(*) FROM deliveries WHERE issue_id = ? GROUP BY status",
                                   (row[0],)).fetchall())
        attempts, rows, subscribers, max_attempts = conn.execute(
            "SELECT coalesce(sum(attempts), 0), count(*), count(DISTINCT subscriber_id), coalesce(max(attempts), 0) "
            "FROM deliveries WHERE issue_id = ?", (row[0],)).fetchone()
        first_sent = conn.execute("SELECT min(sent_at) FROM deliveries WHERE issue_id = ? AND status = 'sent'",
                                  (row[0],)).fetchone()[0]
        return {"status": row[1], "counts": counts, "attempts": attempts, "rows": rows, "subscribers": subscribers,
                "max_attempts": max_attempts, "first_sent": first_sent}
    finally:
        conn.close()


def job_ids(project: Path) -> set[str]:
    conn = sqlite3.connect(db_path(project), timeout=30)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM scheduler_jobs")}
    finally:
        conn.close()


def outbox_files(project: Path, slug: str) -> list[Path]:
    folder = project / "outbox" / slug
    return sorted(folder.glob("*.eml")) if folder.is_dir() else []


def add_subscribers(project: Path, count: int | None = None) -> int:
    """The example CSV (count=None) or `count` generated addresses; returns the active total."""
    if count is None:
        path = project / "subscribers" / "example.csv"
    else:
        path = project / "generated.csv"
        path.write_text("email,name\n" + "".join(f"lecteur{i:05d}@example.org,Lecteur {i}\n" for i in range(count)),
                        encoding="utf-8")
    store = open_store(f"sqlite:///{db_path(project)}")
    try:
        report = import_csv(store, path)
        assert not report.rejections, report.rejections
        with store.engine.connect() as conn:
            return store.count_subscribers(conn, "active")
    finally:
        store.close()


def issue_toml(send_at: datetime | None, issue_date: str = "2026-11-20") -> str:
    line = f"send_at = {send_at.astimezone(UTC).isoformat(timespec='seconds')}\n" if send_at else ""
    return f'subject = "Le Fil"\ndate = {issue_date}\n{line}'


def whole_seconds_from_now(seconds: float) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0) + timedelta(seconds=1)


@contextmanager
def running(settings):
    """A started (paused) in-process scheduler runtime on the settings' database, shut down after."""
    store = open_store(settings.database_url)
    runtime = scheduler.SchedulerRuntime(settings, store, threading.Event())
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.shutdown()
        store.close()


def schedule_list(project: Path, env: dict[str, str], *args: str) -> str:
    """`mailer schedule list ARGS` in this process (tests/cli_support.py) with `env`'s MAILER_* variables."""
    from .cli_support import checked, invoke

    own = {k: v for k, v in env.items() if k.startswith(("MAILER_", "SENDGRID_"))}
    return checked(invoke(("schedule", "list", *args), project, own, base={}), 0).stdout


def console_schedule_list(project: Path, env: dict[str, str], *args: str) -> str:
    """`mailer schedule list ARGS` through the installed console script, in a real process."""
    result = subprocess.run([str(MAILER), "schedule", "list", *args], cwd=project, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ----- real processes (wall-clock waits: marked slow, left out of `make test-fast`) ------------------------
@pytest.mark.slow
def test_send_at_goes_out_on_time_is_picked_up_live_and_never_twice_after_sigkill(project: Path, runs) -> None:
    active = add_subscribers(project)
    env = run_env(project)
    first = runs(project, env, "run1")
    first.wait_log("running:")

    # folders written while the scheduler runs are picked up without a restart
    later = write_issue(project, "2026-11-21-plus-tard", BRIEFS, issue_toml(datetime.now(UTC) + timedelta(hours=2)))
    first.wait_log("scheduled: 2026-11-21-plus-tard")
    (later / "issue.toml").write_text(issue_toml(None), encoding="utf-8")  # the editor drops send_at
    first.wait_log("unscheduled: 2026-11-21-plus-tard")

    slug = "2026-11-20-a-l-heure"
    send_at = whole_seconds_from_now(2)
    write_issue(project, slug, BRIEFS, issue_toml(send_at))
    first.wait_log(f"scheduled: {slug}")
    wait_until(lambda: ledger(project, slug)["status"] == "sent", 20, "the issue to be sent")
    state = ledger(project, slug)
    assert state["counts"] == {"sent": active} and state["attempts"] == active
    assert datetime.fromisoformat(state["first_sent"]).replace(tzinfo=UTC) >= send_at  # not early
    assert len(outbox_files(project, slug)) == active
    first.wait_log(f"finished: {slug}")
    assert first.text().count(f"started: {slug}") == 1
    assert "maximum number of running instances" not in first.text()  # a firing job is never re-added
    assert ledger(project, "2026-11-21-plus-tard")["status"] is None

    files = {p: p.stat().st_mtime_ns for p in outbox_files(project, slug)}
    first.kill()

    second = runs(project, env, "run2")
    second.wait_log(f"skipped: {slug} already sent")
    second.wait_log("running:")
    time.sleep(1.0)  # several rescans (0.3 s) happen here: none may send
    assert second.terminate() == 0
    state = ledger(project, slug)
    assert state["counts"] == {"sent": active} and state["attempts"] == active
    assert {p: p.stat().st_mtime_ns for p in outbox_files(project, slug)} == files  # not even rewritten
    assert f"started: {slug}" not in second.text()
    assert "stopped" in second.text()


@pytest.mark.slow
def test_downtime_within_grace_is_caught_up_beyond_grace_is_reported_not_sent(project: Path, runs) -> None:
    active = add_subscribers(project)
    grace = 6
    env = run_env(project, MAILER_SCHEDULE_GRACE=str(grace))
    write_issue(project, "2026-11-10-oublie", BRIEFS, issue_toml(datetime.now(UTC) - timedelta(hours=1)))
    first = runs(project, env, "run1")
    first.wait_log("running:")
    # both fall due while no scheduler runs; the restart comes `grace` + 0.3 s after the first one:
    # that one is beyond grace by then, the other 0.3 s + start-up late (within grace)
    early = whole_seconds_from_now(3)
    late = early + timedelta(seconds=grace)
    restart = late + timedelta(seconds=0.3)
    write_issue(project, "2026-11-18-trop-tard", BRIEFS, issue_toml(early))
    write_issue(project, "2026-11-19-rattrape", BRIEFS, issue_toml(late))
    first.wait_log("scheduled: 2026-11-18-trop-tard")
    first.wait_log("scheduled: 2026-11-19-rattrape")
    assert first.terminate() == 0
    assert datetime.now(UTC) < early, "the first run took too long to stop: the test's premise failed"
    assert {"issue:2026-11-18-trop-tard", "issue:2026-11-19-rattrape"} <= job_ids(project)  # persisted

    sleep_until(restart)
    second = runs(project, env, "run2")
    wait_until(lambda: ledger(project, "2026-11-19-rattrape")["status"] == "sent", 20, "the catch-up send")
    second.wait_log("missed: 2026-11-18-trop-tard")
    second.wait_log("missed: 2026-11-10-oublie")
    second.wait_log("finished: 2026-11-19-rattrape")
    time.sleep(0.7)  # a couple of rescans: a missed issue stays unsent
    assert second.terminate() == 0

    assert ledger(project, "2026-11-19-rattrape")["counts"] == {"sent": active}
    assert len(outbox_files(project, "2026-11-19-rattrape")) == active
    for slug in ("2026-11-18-trop-tard", "2026-11-10-oublie"):
        assert ledger(project, slug)["status"] is None
        assert outbox_files(project, slug) == []
        assert f"started: {slug}" not in second.text()
        assert second.text().count(f"missed: {slug}") == 1  # reported once, not at every rescan
    assert "issue:2026-11-18-trop-tard" not in job_ids(project)

    text = schedule_list(project, env)
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("2026-")}
    assert "MISSED" in lines["2026-11-18-trop-tard"] and "not sent" in lines["2026-11-18-trop-tard"]
    assert "MISSED" in lines["2026-11-10-oublie"]
    assert f"sent {active}/{active}" in lines["2026-11-19-rattrape"]
    assert "CET" in lines["2026-11-19-rattrape"] and "UTC" in lines["2026-11-19-rattrape"]
    data = {row["slug"]: row for row in json.loads(schedule_list(project, env, "--json"))["issues"]}
    assert data["2026-11-18-trop-tard"]["missed"] is True and data["2026-11-18-trop-tard"]["due"] is False
    assert data["2026-11-19-rattrape"]["state"] == "sent"
    assert data["2026-11-19-rattrape"]["send_at_utc"] == late.isoformat()
    assert data["2026-11-19-rattrape"]["send_at_local"] == late.astimezone(PARIS).isoformat()


@pytest.mark.slow
def test_sigterm_during_a_send_exits_0_with_a_consistent_ledger_and_a_restart_finishes(project: Path, runs) -> None:
    total = add_subscribers(project, 1500)
    slug = "2026-11-20-grande-liste"
    write_issue(project, slug, BRIEFS, issue_toml(datetime.now(UTC) - timedelta(seconds=1)))
    env = run_env(project, MAILER_RATE_LIMIT="300", MAILER_BATCH_SIZE="50")

    first = runs(project, env, "run1")
    wait_until(lambda: ledger(project, slug)["counts"].get("sent", 0) >= 200, 20, "the send to be under way")
    assert first.terminate() == 0
    assert "interrupted: " + slug in first.text()
    state = ledger(project, slug)
    assert state["status"] == "paused"  # a graceful stop: paused "stopped", resumed at the next start
    assert state["counts"].get("sending", 0) == 0  # the batch in flight was finished and recorded
    assert 200 <= state["counts"]["sent"] < total
    assert state["counts"]["sent"] + state["counts"]["queued"] == total
    assert state["max_attempts"] == 1
    line = next(l for l in schedule_list(project, env).splitlines() if l.startswith(slug))
    assert f"paused {state['counts']['sent']}/{total}: stopped" in line and "DUE" in line

    second = runs(project, env, "run2")
    wait_until(lambda: ledger(project, slug)["status"] == "sent", 30, "the restart to finish the send")
    second.wait_log(f"finished: {slug}")
    assert second.terminate() == 0
    assert "resuming" in second.text()
    for run in (first, second):
        assert run.text().count(f"started: {slug}") == 1
        assert "maximum number of running instances" not in run.text()
    state = ledger(project, slug)
    assert state["counts"] == {"sent": total}
    assert state["rows"] == state["subscribers"] == total and state["attempts"] == total  # each exactly once
    assert len(outbox_files(project, slug)) == total


@pytest.mark.slow
def test_sigkill_during_a_send_then_restart_resends_at_most_the_batch_in_flight(project: Path, runs) -> None:
    total = add_subscribers(project, 600)
    slug = "2026-11-20-coupure"
    write_issue(project, slug, BRIEFS, issue_toml(datetime.now(UTC) - timedelta(seconds=1)))
    env = run_env(project, MAILER_RATE_LIMIT="300", MAILER_BATCH_SIZE="50")

    first = runs(project, env, "run1")
    wait_until(lambda: ledger(project, slug)["counts"].get("sent", 0) >= 100, 20, "the send to be under way")
    first.kill()
    assert ledger(project, slug)["counts"]["sent"] < total

    second = runs(project, env, "run2")
    wait_until(lambda: ledger(project, slug)["status"] == "sent", 30, "the restart to finish the send")
    assert second.terminate() == 0
    state = ledger(project, slug)
    assert state["counts"] == {"sent": total}
    assert state["rows"] == state["subscribers"] == total
    assert state["attempts"] - total <= 50  # only the batch the kill interrupted can go out twice
    assert len(outbox_files(project, slug)) == total  # outbox files are per recipient: no second copy


# ----- the cadence, in process -----------------------------------------------------------------------
def fires(trigger, start: datetime, count: int) -> list[datetime]:
    """Successive fire times as the scheduler asks for them (previous fire, now = that fire)."""
    out, previous, now = [], None, start
    for _ in range(count):
        nxt = trigger.get_next_fire_time(previous, now)
        out.append(nxt)
        previous = now = nxt
    return out


def test_cadence_keeps_its_local_hour_across_both_dst_changes(make_settings) -> None:
    daily = plan.cadence_trigger(make_settings(MAILER_SCHEDULE_CRON="0 7 * * *"))
    autumn = fires(daily, datetime(2026, 10, 23, 12, tzinfo=PARIS), 3)   # 24, 25 (change), 26
    spring = fires(daily, datetime(2027, 3, 26, 12, tzinfo=PARIS), 3)    # 27, 28 (change), 29
    for moment in autumn + spring:
        local = moment.astimezone(PARIS)
        assert (local.hour, local.minute) == (7, 0)
    assert [m.astimezone(UTC).hour for m in autumn] == [5, 6, 6]
    assert [m.astimezone(UTC).hour for m in spring] == [6, 5, 5]

    # weekday names; both change days are Sundays
    sunday = plan.cadence_trigger(make_settings(MAILER_SCHEDULE_CRON="0 7 * * SUN"))
    assert sunday.get_next_fire_time(None, datetime(2026, 10, 20, tzinfo=PARIS)) == \
        datetime(2026, 10, 25, 6, 0, tzinfo=UTC)
    assert sunday.get_next_fire_time(None, datetime(2027, 3, 22, tzinfo=PARIS)) == \
        datetime(2027, 3, 28, 5, 0, tzinfo=UTC)
    monday = plan.cadence_trigger(make_settings(MAILER_SCHEDULE_CRON="0 7 * * MON"))
    weekly = fires(monday, datetime(2026, 10, 15, tzinfo=PARIS), 3)
    assert [(m.astimezone(PARIS).date().isoformat(), m.astimezone(PARIS).hour) for m in weekly] == \
        [("2026-10-19", 7), ("2026-10-26", 7), ("2026-11-02", 7)]
    # the zone comes from [schedule] timezone, else MAILER_TIMEZONE
    assert str(monday.timezone) == "Europe/Paris"


@pytest.fixture
def cadence_project(project: Path, make_settings):
    """Issues dated relative to today (the clock is real); the shipped example issue removed."""
    import shutil
    shutil.rmtree(project / "issues")
    today = datetime.now(PARIS).date()
    made = {}
    for name, days, send_at in (("ancien", -10, None), ("recent", -3, None), ("futur", 5, None),
                                ("programme", -20, datetime.now(UTC) + timedelta(days=1))):
        day = today + timedelta(days=days)
        slug = f"{day.isoformat()}-{name}"
        write_issue(project, slug, BRIEFS, issue_toml(send_at, day.isoformat()))
        made[name] = slug
    settings = make_settings(MAILER_SCHEDULE_CRON="0 7 * * MON", database_url=f"sqlite:///{db_path(project)}")
    add_subscribers(project)
    return settings, made


def test_cadence_sends_the_oldest_ready_issue_once_per_run(cadence_project, caplog) -> None:
    settings, made = cadence_project
    caplog.set_level(logging.INFO, logger="mailer.scheduler")
    store = open_store(settings.database_url)
    runtime = scheduler.SchedulerRuntime(settings, store, threading.Event())
    runtime.start()
    try:
        runtime.sync_cadence()
        assert runtime.scheduler.get_job("cadence").trigger.__class__ is CadenceTrigger
        runtime.cadence()
        assert ledger(settings.root, made["ancien"])["status"] == "sent"
        assert ledger(settings.root, made["recent"])["status"] is None
        assert runtime.scheduler.get_job(scheduler.MARKER_PREFIX + made["ancien"]) is None  # marker cleared
        runtime.cadence()
        assert ledger(settings.root, made["recent"])["status"] == "sent"
        runtime.cadence()  # the future one and the one with its own send_at are not "ready"
        assert "nothing ready" in caplog.text
        assert ledger(settings.root, made["futur"])["status"] is None
        assert ledger(settings.root, made["programme"])["status"] is None
    finally:
        runtime.shutdown()
        store.close()
    text = describe_schedule(settings)
    assert "cadence: '0 7 * * MON' (Europe/Paris), next run" in text and ("07:00 CET" in text or "07:00 CEST" in text)
    assert "nothing ready yet" in text
    assert f"{made['programme']}  send_at" in text and "scheduled" in text


def crashed_cadence_send(settings, slug: str) -> None:
    """A cadence run that froze its recipients (and its edition) and then died: marker written, nothing sent."""
    from mailer.sending.prepare import prepare_send

    store = open_store(settings.database_url)
    crashed = scheduler.SchedulerRuntime(settings, store, threading.Event())
    crashed.start()
    crashed.ensure_marker(slug, datetime.now(UTC) - timedelta(minutes=5))
    prepare_send(settings, store, slug)
    crashed.scheduler.shutdown(wait=False)


def resume_until_sent(settings, slug: str) -> None:
    """A scheduler started afresh: it picks the interrupted cadence send up and finishes it."""
    store = open_store(settings.database_url)
    runtime = scheduler.SchedulerRuntime(settings, store, threading.Event())
    runtime.start()
    try:
        runtime.sync(initial=True)
        runtime.resume()
        wait_until(lambda: ledger(settings.root, slug)["status"] == "sent", 15, "the resumed cadence send")
        wait_until(lambda: runtime.scheduler.get_job(scheduler.MARKER_PREFIX + slug) is None, 5, "the marker to go")
    finally:
        runtime.shutdown()
        store.close()


def test_an_interrupted_cadence_send_is_resumed_at_the_next_start(cadence_project, caplog) -> None:
    settings, made = cadence_project
    caplog.set_level(logging.INFO, logger="mailer.scheduler")
    slug = made["ancien"]
    crashed_cadence_send(settings, slug)
    assert ledger(settings.root, slug)["counts"] == {"queued": 5}

    info = json.loads(describe_schedule(settings, as_json=True))
    assert [item["slug"] for item in info["cadence_in_flight"]] == [slug]
    assert info["cadence_in_flight"][0]["resumable"] is True

    resume_until_sent(settings, slug)
    assert ledger(settings.root, slug)["counts"] == {"sent": 5}
    assert f"due: cadence send of {slug}" in caplog.text
    assert ledger(settings.root, made["recent"])["status"] is None  # resuming is not a new cadence run


def test_a_cadence_run_missed_while_down_is_reported_beyond_grace_and_run_within(cadence_project, caplog) -> None:
    settings, made = cadence_project
    # a weekly cron whose last real run is days ago: with the fixture's Monday 07:00, a Monday morning
    # run of this test had that real run inside the 7 hours, within grace, and APScheduler (coalesce)
    # rightly ran it instead of reporting the older one missed
    day = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")[(datetime.now(PARIS) + timedelta(days=3)).weekday()]
    settings = dataclasses.replace(settings, schedule_cron=f"0 7 * * {day}")
    caplog.set_level(logging.INFO, logger="mailer.scheduler")
    now = datetime.now(UTC)
    store = open_store(settings.database_url)
    before = scheduler.SchedulerRuntime(settings, store, threading.Event())
    before.start()
    before.sync_cadence()
    before.scheduler.modify_job("cadence", next_run_time=now - timedelta(hours=7))  # then it went down
    before.shutdown()
    assert "cadence: MISSED the run due" in describe_schedule(settings)

    store = open_store(settings.database_url)
    after = scheduler.SchedulerRuntime(settings, store, threading.Event())
    after.start()
    try:
        after.sync_cadence()  # same cron: the stored job (and its overdue run) is kept, not reset
        assert after.scheduler.get_job("cadence").next_run_time == now - timedelta(hours=7)
        after.resume()
        wait_until(lambda: "missed: cadence run due at" in caplog.text, 10, "the missed cadence run to be reported")
        assert ledger(settings.root, made["ancien"])["status"] is None  # beyond grace: nothing sent
        assert after.scheduler.get_job("cadence").next_run_time > now  # rescheduled for its next time
        # a run overdue by less than the grace runs at once (what happens at a start-up within grace)
        after.scheduler.modify_job("cadence", next_run_time=datetime.now(UTC) - timedelta(minutes=10))
        wait_until(lambda: ledger(settings.root, made["ancien"])["status"] == "sent", 15, "the catch-up cadence run")
    finally:
        after.shutdown()
        store.close()


def test_jobs_persist_in_the_same_database(db_url: str, make_settings) -> None:
    """SQLite and PostgreSQL alike: the job store is a table next to the ledger."""
    settings = make_settings(database_url=db_url, MAILER_SCHEDULE_CRON="0 7 * * MON")
    send_at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    write_issue(settings.root, "2026-11-27-plus-tard", BRIEFS, issue_toml(send_at))
    store = open_store(db_url)
    runtime = scheduler.SchedulerRuntime(settings, store, threading.Event())
    runtime.start()
    try:
        runtime.sync_cadence()
        runtime.sync(initial=True)
    finally:
        runtime.shutdown()
        store.close()
    store = open_store(db_url)
    try:
        jobs = stored_jobs(store, plan.JOBS_TABLE)
    finally:
        store.close()
    assert set(jobs) == {"cadence", "issue:2026-11-27-plus-tard"}
    job = jobs["issue:2026-11-27-plus-tard"]
    assert job["func"] == scheduler.SEND_FUNC and job["args"] == ("2026-11-27-plus-tard", "send_at", send_at.isoformat())
    assert job["trigger"].run_date == send_at
    assert (job["misfire_grace_time"], job["coalesce"], job["max_instances"]) == (6 * 3600, True, 1)
    assert jobs["cadence"]["func"] == scheduler.CADENCE_FUNC
    info = json.loads(describe_schedule(settings, as_json=True))
    row = next(r for r in info["issues"] if r["slug"] == "2026-11-27-plus-tard")
    assert row["state"] == "scheduled" and row["job"] is True
    assert info["cadence"]["next_fire_local"].endswith("T07:00:00+01:00")


def test_a_wrong_future_run_stored_by_an_older_version_is_corrected_at_start(cadence_project, caplog) -> None:
    """Job stores written with APScheduler's own trigger hold runs a week late after a spring change."""
    settings, _ = cadence_project
    caplog.set_level(logging.INFO, logger="mailer.scheduler")
    with running(settings) as before:
        before.sync_cadence()
        right = before.scheduler.get_job("cadence").next_run_time
        before.scheduler.modify_job("cadence", next_run_time=right + timedelta(days=7))  # the lost week
    with running(settings) as after:
        after.sync_cadence()
        assert after.scheduler.get_job("cadence").next_run_time == right
        assert "was wrong" in caplog.text


# ----- held issues: drafts, placeholder subjects, the shipped example ------------------------------------
def shipped_example(project: Path) -> str:
    """The example issue exactly as the repository ships it (the `project` fixture's copy is undrafted)."""
    import shutil
    from tests.conftest import EXAMPLE_ISSUE, REPO
    target = project / "issues" / EXAMPLE_ISSUE
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(REPO / "issues" / EXAMPLE_ISSUE, target)
    return EXAMPLE_ISSUE


def test_placeholder_subjects_are_recognised_in_any_spelling_and_real_subjects_are_not(make_settings) -> None:
    from mailer.content.issue import PLACEHOLDER_SUBJECTS, is_placeholder_subject, load_issue, scaffold_issue

    spellings = [lambda s: s, str.upper, str.lower, lambda s: f"[{s}]", lambda s: f"  {s} :", lambda s: f"« {s} »",
                 lambda s: s.replace(" ", "\u00a0"), lambda s: s.replace("é", "e").replace("À", "A"),
                 lambda s: f"{s}…", lambda s: f"<{s}>"]
    for subject in PLACEHOLDER_SUBJECTS:
        for spell in spellings:
            assert is_placeholder_subject(spell(subject)), spell(subject)
    for prefix in ("TODO", "todo:", "FIXME -", "TBD", "XXX", "Lorem ipsum"):
        assert is_placeholder_subject(f"{prefix} la lettre de mars")
    # what `mailer issue new` writes, in both languages, is a placeholder
    for language in ("fr", "en"):
        settings = make_settings(MAILER_LANGUAGE=language)
        folder = scaffold_issue(settings, f"brouillon-{language}", date(2027, 3, 1))
        assert is_placeholder_subject(load_issue(folder, settings.issues_dir, settings.zone).subject)
    real = ["Données ouvertes, trains de nuit et « petits » modèles", "Sujet du jour : la sobriété numérique",
            "Test de vélos électriques", "Todos los días", "Objets trouvés", "Titres-restaurant : ce qui change",
            "Le Fil du jeudi n° 12", "Subject to change: our new schedule", "XXL : les trains de nuit reviennent",
            "Tbilissi en train", "Sans titre, l'expo qui fait parler", "Untitled Goose Game, enfin sur mobile",
            "Sujet de la lettre d'aujourd'hui : le rail", "Titre de la lettre : une affaire de style",
            "Objet du mail : pourquoi personne ne le lit", "Nouvelle lettre de Bruxelles : le DMA",
            "New issue of Rail Europe, new trains", "Untitled issues in the tracker, a guide",
            "Newsletter #12 : le train de nuit revient", "Lettre n°42 : les vélos", "Lettre n° 7",
            "Subject line tips that actually work", "Your subject here? No, ours: the night train",
            "Newsletter de décembre", "Nouvelle lettre, nouveau format", "Test X : les trottinettes"]
    assert [s for s in real if is_placeholder_subject(s)] == []
    # numbers still to write stand in too: "Newsletter #XX", "Lettre n° N"
    for stand_in in ("Newsletter #XX", "Newsletter #N", "Lettre n° X", "Lettre n°N", "LETTRE N°XXX", "newsletter"):
        assert is_placeholder_subject(stand_in), stand_in


def test_the_cadence_passes_over_drafts_scaffolds_and_the_shipped_example(cadence_project, caplog) -> None:
    from mailer.content.issue import scaffold_issue

    settings, made = cadence_project
    caplog.set_level(logging.INFO, logger="mailer.scheduler")
    today = datetime.now(PARIS).date()
    untouched = scaffold_issue(settings, "pas-encore", today - timedelta(days=30)).name  # as `mailer issue new` makes it
    draft_day = today - timedelta(days=25)
    draft = f"{draft_day.isoformat()}-brouillon"
    folder = write_issue(settings.root, draft, BRIEFS, issue_toml(None, draft_day.isoformat()) + "draft = true\n")
    example = shipped_example(settings.root)

    info = json.loads(describe_schedule(settings, as_json=True))
    rows = {row["slug"]: row for row in info["issues"]}
    assert rows[draft]["state"] == "draft" and rows[draft]["draft"] is True and rows[draft]["ready"] is False
    assert rows[draft]["warnings"] == [f"{folder / 'issue.toml'}:3: draft = true: the scheduler holds it and "
                                       "`mailer send` refuses it; remove the line when the issue is ready"]
    assert rows[example]["state"] == "draft" and rows[example]["not_ready"] == "draft"
    assert rows[untouched]["ready"] is False and rows[untouched]["state"] in ("draft", "placeholder")
    assert rows[made["ancien"]]["ready"] is True
    text = describe_schedule(settings)
    line = next(l for l in text.splitlines() if l.startswith(draft))
    assert "DRAFT: not sent by the scheduler" in line and "issue.toml:3" in line
    assert "not sent by the scheduler" in next(l for l in text.splitlines() if l.startswith(untouched))

    with running(settings) as runtime:
        runtime.cadence()  # the two held ones are older, and passed over
        assert ledger(settings.root, made["ancien"])["status"] == "sent"
        for held in (untouched, draft):
            assert ledger(settings.root, held)["status"] is None
            assert f"cadence: passed over {held} (held)" in caplog.text
        (folder / "issue.toml").write_text(issue_toml(None, draft_day.isoformat()), encoding="utf-8")  # ready now
        runtime.cadence()
        assert ledger(settings.root, draft)["status"] == "sent"  # the oldest ready one
        assert ledger(settings.root, made["recent"])["status"] is None
        runtime.cadence()
        assert ledger(settings.root, made["recent"])["status"] == "sent"
        caplog.clear()
        runtime.cadence()  # nothing ready is left: the held ones dated today or before are named
        assert "nothing ready" in caplog.text
        assert f"cadence: passed over {untouched} (held)" in caplog.text
        assert f"cadence: passed over {example} (held)" in caplog.text
    assert outbox_files(settings.root, untouched) == [] and outbox_files(settings.root, example) == []


def test_a_draft_with_a_due_send_at_is_held_until_its_line_is_removed(project: Path, make_settings, caplog) -> None:
    settings = make_settings(database_url=f"sqlite:///{db_path(project)}")
    active = add_subscribers(project)
    caplog.set_level(logging.INFO, logger="mailer.scheduler")
    slug = "2026-11-20-en-attente"
    send_at = datetime.now(UTC) - timedelta(minutes=1)
    folder = write_issue(project, slug, BRIEFS, issue_toml(send_at) + "draft = true\n")
    placeholder = write_issue(project, "2026-11-21-sans-objet", BRIEFS,
                              issue_toml(send_at).replace('"Le Fil"', '"Objet de la lettre"'))
    with running(settings) as runtime:
        runtime.sync(initial=True)
        runtime.resume()
        runtime.sync()  # a rescan: reported once per folder version, not at every scan
        assert caplog.text.count(f"skipped: {slug} is held") == 1
        assert caplog.text.count("skipped: 2026-11-21-sans-objet is held") == 1
        assert "'Objet de la lettre' is a placeholder" in caplog.text
        assert scheduler.ISSUE_PREFIX + slug not in {job.id for job in runtime.scheduler.get_jobs()}
        runtime.send(slug, "send_at", send_at.isoformat())  # a job that fires anyway (edited since) is refused
        assert ledger(project, slug)["status"] is None
        info = json.loads(describe_schedule(settings, as_json=True))
        states = {row["slug"]: row["state"] for row in info["issues"]}
        assert states[slug] == "draft" and states[placeholder.name] == "placeholder"

        (folder / "issue.toml").write_text(issue_toml(send_at), encoding="utf-8")  # the editor removes the line
        runtime.sync()
        wait_until(lambda: ledger(project, slug)["status"] == "sent", 15, "the send once the draft line is gone")
    assert ledger(project, slug)["counts"] == {"sent": active}
    assert ledger(project, placeholder.name)["status"] is None


# ----- explicit sends of drafts --------------------------------------------------------------------------
@pytest.fixture
def cli(project: Path):
    """`mailer …` in this process (tests/cli_support.py), in the project folder, on this module's database."""
    from .cli_support import checked, invoke

    def run(*args: str, exit_code: int = 0):
        return checked(invoke(args, project, {"MAILER_DATABASE_URL": f"sqlite:///{db_path(project)}"}), exit_code)
    return run


def test_mailer_send_refuses_a_draft_freezes_nothing_and_sends_it_with_allow_draft(project: Path, cli) -> None:
    active = add_subscribers(project)
    slug = shipped_example(project)
    refused = cli("send", slug, "--yes", exit_code=3)
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "draft = true" in lines[0]
    assert f"{slug}/issue.toml:5:" in lines[0] and "--allow-draft" in lines[0]
    assert ledger(project, slug)["status"] is None and outbox_files(project, slug) == []  # nothing frozen or sent

    tested = cli("send", slug, "--test", "moi@example.org")  # test sends work on drafts
    assert "test to moi@example.org: sent" in tested.output
    assert ledger(project, slug)["status"] is None

    sent = cli("send", slug, "--yes", "--allow-draft")
    assert f"sent {active} now" in sent.output
    assert ledger(project, slug)["counts"] == {"sent": active}


def test_a_scheduler_resume_sends_the_stored_edition_not_the_edited_folder(cadence_project, caplog) -> None:
    """Content frozen at send, on the scheduler's path: a cadence send frozen, then a brief added and
    the subject rewritten; the scheduler's resume sends the issue as it was and says so."""
    from email import message_from_bytes, policy

    settings, made = cadence_project
    caplog.set_level(logging.INFO, logger="mailer")
    slug = made["ancien"]
    crashed_cadence_send(settings, slug)
    folder = settings.issues_dir / slug
    (folder / "briefs.txt").write_text("--> Ajoutée après le départ.\n", encoding="utf-8")
    toml = folder / "issue.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('subject = "', 'subject = "Réécrit '), encoding="utf-8")

    resume_until_sent(settings, slug)
    files = sorted((settings.outbox_dir / slug).glob("*.eml"))
    assert len(files) == 5
    for path in files:
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert not str(message["Subject"]).startswith("Réécrit")
        assert "Ajoutée après le départ" not in message.get_body(("plain",)).get_content()
        assert "Une brève" in message.get_body(("plain",)).get_content()
    assert f"{slug}: the folder changed since the send started: the edition from" in caplog.text


def test_a_send_started_before_the_draft_line_was_added_resumes(project: Path, make_settings) -> None:
    from mailer.sending import dispatch
    from mailer.sending.prepare import prepare_send
    from mailer.errors import DraftIssue
    from tests.conftest import EXAMPLE_ISSUE

    settings = make_settings(database_url=f"sqlite:///{db_path(project)}")
    active = add_subscribers(project)
    store = open_store(settings.database_url)
    try:
        prepare_send(settings, store, EXAMPLE_ISSUE)  # frozen, nothing sent yet
        toml = project / "issues" / EXAMPLE_ISSUE / "issue.toml"
        toml.write_text(toml.read_text(encoding="utf-8") + "draft = true\n", encoding="utf-8")
        report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)  # the frozen edition goes on
        assert report.complete and report.counts["sent"] == active
        other = write_issue(project, "2026-11-27-autre", BRIEFS, issue_toml(None) + "draft = false\ndraft = true\n")
        with pytest.raises(MailerError) as caught:  # a malformed draft key names its line
            dispatch.send_issue(settings, store, other.name)
        assert "issue.toml" in str(caught.value)
        other.joinpath("issue.toml").write_text(issue_toml(None) + 'draft = "oui"\n', encoding="utf-8")
        with pytest.raises(MailerError) as caught:
            dispatch.send_issue(settings, store, other.name)
        assert "issue.toml:3: draft must be true or false" in str(caught.value)
        other.joinpath("issue.toml").write_text(issue_toml(None) + "draft = true\n", encoding="utf-8")
        with pytest.raises(DraftIssue):
            dispatch.send_issue(settings, store, other.name)
    finally:
        store.close()


# ----- schedule list --now ---------------------------------------------------------------------------------
def _schedule_list_folders(project: Path) -> None:
    """A weekly cadence and five issues: ready ones, one dated later, a draft, one with a send_at."""
    import shutil
    shutil.rmtree(project / "issues")
    (project / "mailer.toml").write_text('[schedule]\ncron = "0 0 * * MON"\ntimezone = "Europe/Paris"\n', encoding="utf-8")
    for slug, extra in (("2027-03-20-a", ""), ("2027-03-26-b", ""), ("2027-04-01-c", ""), ("2027-03-21-d", "draft = true\n"),
                        ("2027-03-27-s", "send_at = 2027-03-28T09:00:00+02:00\n")):
        write_issue(project, slug, BRIEFS, f'subject = "Le Fil"\ndate = {slug[:10]}\n{extra}')


def test_schedule_list_now_shows_what_is_due_ready_held_and_missed_then(project: Path, cli) -> None:
    _schedule_list_folders(project)
    states = {}
    for moment in ("2027-03-28T08:00", "2027-03-28T10:00", "2027-03-28T16:00"):  # grace: 6 h
        data = json.loads(cli("schedule", "list", "--now", moment, "--json").output)
        states[moment] = {row["slug"]: row for row in data["issues"]}["2027-03-27-s"]["state"]
    assert states == {"2027-03-28T08:00": "scheduled", "2027-03-28T10:00": "due", "2027-03-28T16:00": "missed"}

    data = json.loads(cli("schedule", "list", "--now", "2027-03-28T10:00", "--json").output)
    assert (data["now"], data["now_local"]) == ("2027-03-28T08:00:00+00:00", "2027-03-28T10:00:00+02:00")
    assert data["cadence"]["next_runs"] == [
        {"at": "2027-03-29T00:00:00+02:00", "at_utc": "2027-03-28T22:00:00+00:00", "issue": "2027-03-20-a"},
        {"at": "2027-04-05T00:00:00+02:00", "at_utc": "2027-04-04T22:00:00+00:00", "issue": "2027-03-26-b"},
        {"at": "2027-04-12T00:00:00+02:00", "at_utc": "2027-04-11T22:00:00+00:00", "issue": "2027-04-01-c"},
        {"at": "2027-04-19T00:00:00+02:00", "at_utc": "2027-04-18T22:00:00+00:00", "issue": None},
        {"at": "2027-04-26T00:00:00+02:00", "at_utc": "2027-04-25T22:00:00+00:00", "issue": None},
    ]
    rows = {row["slug"]: row for row in data["issues"]}
    assert (rows["2027-03-20-a"]["ready"], rows["2027-03-20-a"]["cadence_run"]) == (True, "2027-03-29T00:00:00+02:00")
    assert rows["2027-04-01-c"]["ready"] is False and rows["2027-04-01-c"]["not_ready"] == "dated after today"
    assert rows["2027-03-21-d"]["state"] == "draft" and rows["2027-03-21-d"]["cadence_run"] is None
    assert rows["2027-03-27-s"]["due"] is True and rows["2027-03-27-s"]["send_at_utc"] == "2027-03-28T07:00:00+00:00"

    text = cli("schedule", "list", "--now", "2027-03-28T10:00").output
    lines = text.splitlines()
    assert lines[0].startswith("now 2027-03-28 10:00 CEST (2027-03-28 08:00 UTC)")
    assert "  2027-03-29T00:00:00+02:00  → 2027-03-20-a" in lines and "  2027-04-19T00:00:00+02:00  → nothing ready yet" in lines
    line = {l.split()[0]: l for l in lines if l.startswith("2027-")}
    assert "DUE" in line["2027-03-27-s"] and "DRAFT" in line["2027-03-21-d"]
    assert "READY: sent by the cadence run of 2027-04-05T00:00:00+02:00" in line["2027-03-26-b"]

    # a wall time the spring change skips is read by the cadence's rule; an offset is taken as given
    assert json.loads(cli("schedule", "list", "--now", "2027-03-28T02:30", "--json").output)["now_local"] == \
        "2027-03-28T03:00:00+02:00"
    assert json.loads(cli("schedule", "list", "--now", "2027-03-28T00:30:00Z", "--json").output)["now_local"] == \
        "2027-03-28T01:30:00+01:00"
    bad = cli("schedule", "list", "--now", "demain", exit_code=1)
    assert bad.output.strip() == "error: --now 'demain': not an ISO 8601 date-time (e.g. 2027-03-29T00:00:00+02:00)"


@pytest.mark.slow  # a real process: the installed console script (start-up and entry point are what it checks)
def test_the_console_script_lists_the_schedule_the_command_lists_in_process(project: Path, cli) -> None:
    _schedule_list_folders(project)
    data = json.loads(cli("schedule", "list", "--now", "2027-03-28T10:00", "--json").stdout)
    assert json.loads(console_schedule_list(project, run_env(project), "--now", "2027-03-28T10:00", "--json")) == data


@pytest.mark.parametrize("case", [*range(4), *(pytest.param(case, marks=pytest.mark.slow) for case in range(4, 16))])
def test_the_next_five_runs_listed_are_the_oracle_s_with_the_zone_s_offset(case: int, make_settings, tmp_path) -> None:
    """Generated: a zone, a cadence of at most weekly period, a moment near one of its changes."""
    import random
    from tests.test_cadence import HAND_PICKED, ZONES, oracle, transitions

    rng = random.Random(case)
    zone_name = rng.choice(sorted(ZONES))
    expression = rng.choice([e for e in HAND_PICKED if e.split()[2:4] == ["*", "*"]])
    zone = ZoneInfo(zone_name)
    changes = [t for year in ZONES[zone_name] for t in transitions(zone, year)] or [datetime(2027, 6, 1, tzinfo=UTC)]
    now = rng.choice(changes) + timedelta(minutes=rng.randrange(-3 * 1440, 3 * 1440))
    settings = make_settings(MAILER_SCHEDULE_CRON=expression, MAILER_SCHEDULE_TIMEZONE=zone_name,
                             database_url=f"sqlite:///{tmp_path / 'list.db'}")
    store = open_store(settings.database_url)
    try:
        runs = plan.schedule_data(settings, store, now)["cadence"]["next_runs"]
    finally:
        store.close()
    start = now.replace(second=0, microsecond=0) + (timedelta(minutes=1) if now.second or now.microsecond else timedelta(0))
    expected = oracle([expression], zone, start, start + timedelta(days=40))[expression][:5]
    assert [r["at"] for r in runs] == [f.astimezone(zone).isoformat() for f in expected], (zone_name, expression, now)
    assert [r["at_utc"] for r in runs] == [f.isoformat() for f in expected]


def test_a_send_at_on_a_repeated_wall_time_is_scheduled_once_not_at_every_scan(project, make_settings, caplog) -> None:
    settings = make_settings(database_url=f"sqlite:///{db_path(project)}")
    caplog.set_level(logging.INFO, logger="mailer.scheduler")
    write_issue(project, "2027-10-30-double", BRIEFS, 'subject = "Le Fil"\nsend_at = 2027-10-31T02:30:00\n')
    with running(settings) as runtime:
        runtime.sync(initial=True)
        runtime.sync()
        runtime.sync()
        job = runtime.scheduler.get_job(scheduler.ISSUE_PREFIX + "2027-10-30-double")
        assert job.next_run_time.astimezone(UTC) == datetime(2027, 10, 31, 0, 30, tzinfo=UTC)  # 02:30 CEST, the first
        assert caplog.text.count("scheduled: 2027-10-30-double") == 1


def test_build_warns_and_send_refuses_a_placeholder_subject_unless_allow_draft(project, make_settings) -> None:
    """Issue 10.12: a placeholder subject used to be a mere warning for an explicit send; it now holds
    the send like a draft (refused, nothing frozen) until written, or sent as it is with allow_draft."""
    from mailer.sending import dispatch
    from mailer.errors import DraftIssue
    from mailer.web.preview import build_issue

    settings = make_settings(database_url=f"sqlite:///{db_path(project)}")
    active = add_subscribers(project)
    slug = shipped_example(project)
    draft_warnings = [w for w in build_issue(settings, slug, project / "build").warnings if "draft = true" in w]
    assert len(draft_warnings) == 1 and f"{slug}/issue.toml:5: draft = true" in draft_warnings[0]
    folder = write_issue(project, "2026-11-27-sans-objet", BRIEFS, 'subject = "[Sujet]"\ndate = 2026-11-27\n')
    expected = f"{folder / 'issue.toml'}:1: the subject '[Sujet]' is a placeholder: write the real one"
    assert expected in build_issue(settings, folder.name, project / "build2").warnings
    store = open_store(settings.database_url)
    try:
        with pytest.raises(DraftIssue) as refused:
            dispatch.send_issue(settings, store, folder.name)
        assert str(refused.value).startswith(expected) and "--allow-draft" in str(refused.value)
        assert ledger(project, folder.name)["status"] is None
        report = dispatch.send_issue(settings, store, folder.name, allow_draft=True)
        assert report.complete and report.counts["sent"] == active
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["unparseable", "removed"])
def test_an_interrupted_cadence_send_resumes_its_edition_without_its_folder(cadence_project, caplog, damage) -> None:
    """A started send goes on with its stored edition: the folder is not read (as `mailer send`)."""
    import shutil
    settings, made = cadence_project
    caplog.set_level(logging.INFO, logger="mailer.scheduler")
    slug = made["ancien"]
    crashed_cadence_send(settings, slug)
    assert ledger(settings.root, slug)["counts"] == {"queued": 5}
    folder = settings.root / "issues" / slug
    if damage == "removed":
        shutil.rmtree(folder)
    else:
        (folder / "briefs.txt").write_text("--> Une brève\x01 cassée.\n", encoding="utf-8")
    resume_until_sent(settings, slug)
    assert ledger(settings.root, slug)["counts"] == {"sent": 5}
    assert "failed:" not in caplog.text
