"""The scheduler: issues go out on time, by themselves, exactly once.

Most tests drive REAL `mailer schedule run` processes (the venv's console script) against a SQLite
file and the outbox backend, and judge them by the ledger, the outbox and the run log. Waits poll
with deadlines; the only fixed waits are "until this wall-clock time has passed".
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from mailer import scheduler
from mailer.errors import ConfigError
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


def schedule_list(project: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run([str(MAILER), "schedule", "list", *args], cwd=project, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ----- real processes ----------------------------------------------------------------------------------
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
    assert state["status"] == "sending"
    assert state["counts"].get("sending", 0) == 0  # the batch in flight was finished and recorded
    assert 200 <= state["counts"]["sent"] < total
    assert state["counts"]["sent"] + state["counts"]["queued"] == total
    assert state["max_attempts"] == 1
    line = next(l for l in schedule_list(project, env).splitlines() if l.startswith(slug))
    assert f"sending {state['counts']['sent']}/{total}" in line and "DUE" in line

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
    daily = scheduler.cadence_trigger(make_settings(MAILER_SCHEDULE_CRON="0 7 * * *"))
    autumn = fires(daily, datetime(2026, 10, 23, 12, tzinfo=PARIS), 3)   # 24, 25 (change), 26
    spring = fires(daily, datetime(2027, 3, 26, 12, tzinfo=PARIS), 3)    # 27, 28 (change), 29
    for moment in autumn + spring:
        local = moment.astimezone(PARIS)
        assert (local.hour, local.minute) == (7, 0)
    assert [m.astimezone(UTC).hour for m in autumn] == [5, 6, 6]
    assert [m.astimezone(UTC).hour for m in spring] == [6, 5, 5]

    # weekday names; both change days are Sundays
    sunday = scheduler.cadence_trigger(make_settings(MAILER_SCHEDULE_CRON="0 7 * * SUN"))
    assert sunday.get_next_fire_time(None, datetime(2026, 10, 20, tzinfo=PARIS)) == \
        datetime(2026, 10, 25, 6, 0, tzinfo=UTC)
    assert sunday.get_next_fire_time(None, datetime(2027, 3, 22, tzinfo=PARIS)) == \
        datetime(2027, 3, 28, 5, 0, tzinfo=UTC)
    monday = scheduler.cadence_trigger(make_settings(MAILER_SCHEDULE_CRON="0 7 * * MON"))
    weekly = fires(monday, datetime(2026, 10, 15, tzinfo=PARIS), 3)
    assert [(m.astimezone(PARIS).date().isoformat(), m.astimezone(PARIS).hour) for m in weekly] == \
        [("2026-10-19", 7), ("2026-10-26", 7), ("2026-11-02", 7)]
    # the zone comes from [schedule] timezone, else MAILER_TIMEZONE
    assert str(monday.timezone) == "Europe/Paris"


def test_a_0230_cadence_fires_once_on_the_autumn_day_and_once_on_the_spring_day(make_settings) -> None:
    trigger = scheduler.cadence_trigger(make_settings(MAILER_SCHEDULE_CRON="30 2 * * *"))
    autumn = fires(trigger, datetime(2026, 10, 24, 0, 0, tzinfo=PARIS), 3)
    assert [m.astimezone(UTC) for m in autumn] == [
        datetime(2026, 10, 24, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),   # 02:30 CEST, the first 02:30; not again at 02:30 CET
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),
    ]
    # plain APScheduler fires it twice that day (the pitfall this trigger exists for)
    plain = fires(CronTrigger.from_crontab("30 2 * * *", timezone=PARIS), datetime(2026, 10, 24, 0, 0, tzinfo=PARIS), 3)
    assert sum(m.astimezone(PARIS).date() == date(2026, 10, 25) for m in plain) == 2
    # spring: 02:30 does not exist on 2027-03-28; it fires once, at 03:30 CEST (01:30 UTC)
    spring = fires(trigger, datetime(2027, 3, 27, 0, 0, tzinfo=PARIS), 3)
    assert [m.astimezone(UTC) for m in spring] == [
        datetime(2027, 3, 27, 1, 30, tzinfo=UTC),
        datetime(2027, 3, 28, 1, 30, tzinfo=UTC),
        datetime(2027, 3, 29, 0, 30, tzinfo=UTC),
    ]
    # the stored trigger survives the job store's pickling with its behaviour
    again = pickle.loads(pickle.dumps(trigger))
    assert type(again) is scheduler.CadenceTrigger and repr(again) == repr(trigger)
    assert fires(again, datetime(2026, 10, 24, 0, 0, tzinfo=PARIS), 3) == autumn


def test_cron_weekday_numbers_follow_crontab_not_apscheduler() -> None:
    assert scheduler.crontab_weekdays("1") == "mon"
    assert scheduler.crontab_weekdays("0") == scheduler.crontab_weekdays("7") == scheduler.crontab_weekdays("SUN") == "sun"
    assert scheduler.crontab_weekdays("1-5") == scheduler.crontab_weekdays("mon-fri") == "mon,tue,wed,thu,fri"
    assert scheduler.crontab_weekdays("*/2") == "tue,thu,sat,sun"
    assert scheduler.crontab_weekdays("sat,0") == "sat,sun"
    assert scheduler.crontab_weekdays("*") == "*"
    trigger = scheduler.build_cadence_trigger("0 7 * * 1", PARIS)
    assert trigger.get_next_fire_time(None, datetime(2026, 11, 26, tzinfo=PARIS)).weekday() == 0  # a Monday
    for bad in ("0 7 * *", "0 7 * * funday", "0 25 * * MON", "0 7 * * 5-1"):
        with pytest.raises(ConfigError):
            scheduler.build_cadence_trigger(bad, PARIS)


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
        assert runtime.scheduler.get_job("cadence").trigger.__class__ is scheduler.CadenceTrigger
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
    text = scheduler.describe_schedule(settings)
    assert "cadence: '0 7 * * MON' (Europe/Paris), next run" in text and "07:00 CET" in text
    assert "nothing ready yet" in text
    assert f"{made['programme']}  send_at" in text and "scheduled" in text


def test_an_interrupted_cadence_send_is_resumed_at_the_next_start(cadence_project, caplog) -> None:
    from mailer.dispatch import prepare_send

    settings, made = cadence_project
    caplog.set_level(logging.INFO, logger="mailer.scheduler")
    slug = made["ancien"]
    store = open_store(settings.database_url)
    # a cadence run that froze its recipients and then died: marker written, nothing sent
    crashed = scheduler.SchedulerRuntime(settings, store, threading.Event())
    crashed.start()
    crashed.ensure_marker(slug, datetime.now(UTC) - timedelta(minutes=5))
    prepare_send(settings, store, slug)
    crashed.scheduler.shutdown(wait=False)
    assert ledger(settings.root, slug)["counts"] == {"queued": 5}

    info = json.loads(scheduler.describe_schedule(settings, as_json=True))
    assert [item["slug"] for item in info["cadence_in_flight"]] == [slug]
    assert info["cadence_in_flight"][0]["resumable"] is True

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
    assert ledger(settings.root, slug)["counts"] == {"sent": 5}
    assert f"due: cadence send of {slug}" in caplog.text
    assert ledger(settings.root, made["recent"])["status"] is None  # resuming is not a new cadence run


def test_a_cadence_run_missed_while_down_is_reported_beyond_grace_and_run_within(cadence_project, caplog) -> None:
    settings, made = cadence_project
    caplog.set_level(logging.INFO, logger="mailer.scheduler")
    now = datetime.now(UTC)
    store = open_store(settings.database_url)
    before = scheduler.SchedulerRuntime(settings, store, threading.Event())
    before.start()
    before.sync_cadence()
    before.scheduler.modify_job("cadence", next_run_time=now - timedelta(hours=7))  # then it went down
    before.shutdown()
    assert "cadence: MISSED the run due" in scheduler.describe_schedule(settings)

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
        jobs = scheduler._stored_jobs(store)
    finally:
        store.close()
    assert set(jobs) == {"cadence", "issue:2026-11-27-plus-tard"}
    job = jobs["issue:2026-11-27-plus-tard"]
    assert job["func"] == scheduler.SEND_FUNC and job["args"] == ("2026-11-27-plus-tard", "send_at", send_at.isoformat())
    assert job["trigger"].run_date == send_at
    assert (job["misfire_grace_time"], job["coalesce"], job["max_instances"]) == (6 * 3600, True, 1)
    assert jobs["cadence"]["func"] == scheduler.CADENCE_FUNC
    info = json.loads(scheduler.describe_schedule(settings, as_json=True))
    row = next(r for r in info["issues"] if r["slug"] == "2026-11-27-plus-tard")
    assert row["state"] == "scheduled" and row["job"] is True
    assert info["cadence"]["next_fire_local"].endswith("T07:00:00+01:00")
