"""Local-time delivery (`send_local`): each subscriber gets the issue at that wall time in their own
zone, released in waves, exactly once; missed waves are reported, never sent late by themselves.

The instants are checked against a brute-force oracle (a minute-by-minute walk with zoneinfo over
every zone's DST changes of the year); the waves through the real store (SQLite and PostgreSQL) and
real `mailer schedule run` processes writing to the outbox.
"""

from __future__ import annotations

import json
import re
import time
import zoneinfo
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

import mailer.sending.dispatch as dispatch
from mailer.sending.prepare import plan_send
from mailer.sending.status import issue_status
from mailer.content.issue import load_issue
from mailer.errors import NotDueYet, NotFound, SourceError
from mailer.sending.waves import local_instant, resolve_zone
from mailer.subscribers import import_csv, remove_subscriber
from tests.cli_support import invoke_with
from tests.conftest import write_issue
from tests.test_scheduler import run_env, runs, wait_until  # noqa: F401 - `runs` is a fixture

UTC = timezone.utc
KIRITIMATI, PARIS, LOS_ANGELES = "Pacific/Kiritimati", "Europe/Paris", "America/Los_Angeles"
SLUG = "2027-01-14-heure-locale"
BRIEFS = {"briefs.txt": "--> Une brève, avec un [lien](https://example.org).\n"}
MINUTE = timedelta(minutes=1)


# ----- the instant of a wall time in a zone: oracle ------------------------------------------------
def shown(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def oracle(wall: datetime, zone: ZoneInfo) -> datetime:
    """Walk the minutes from well before until the zone's clocks first show `wall` or later."""
    around = wall.replace(tzinfo=UTC)
    offsets = {(around + timedelta(hours=h)).astimezone(zone).utcoffset() for h in range(-50, 51)}
    instant = min(around - offset for offset in offsets) - 5 * MINUTE
    assert shown(instant, zone) < wall
    while shown(instant, zone) < wall:
        instant += MINUTE
    return instant


def transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    """The instants (UTC, to the minute) at which the zone's offset changes during `year`."""
    found = []
    day = datetime(year, 1, 1, tzinfo=UTC)
    while day.year == year:
        nxt = day + timedelta(days=1)
        if day.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            low, high = day, nxt
            while high - low > MINUTE:
                middle = low + (high - low) / 2
                middle = middle.replace(second=0, microsecond=0)
                if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high)
        day = nxt
    return found


# zones whose changes people get wrong: midnight changes (Cairo, Havana, Santiago, Asuncion), 30-minute
# DST (Lord_Howe), 2-hour DST (Troll), negative DST (Dublin), Southern hemisphere, -01/+00 (Scoresbysund)
TRICKY_ZONES = ("Europe/Paris", "America/New_York", LOS_ANGELES, "America/Havana", "America/Santiago",
                "America/Asuncion", "Africa/Cairo", "Australia/Lord_Howe", "Antarctica/Troll", "Europe/Dublin",
                "Australia/Sydney", "Pacific/Auckland", "Pacific/Chatham", "America/Nuuk", "America/Scoresbysund",
                "Asia/Beirut", "Asia/Gaza", "America/St_Johns", "Atlantic/Azores", KIRITIMATI)


@pytest.mark.parametrize("sweep", ["tricky zones", pytest.param("every zone", marks=pytest.mark.slow)])
def test_the_wave_instant_of_a_wall_time_is_the_oracle_s_on_every_dst_change_of_the_year(sweep: str) -> None:
    kinds = {"gap": 0, "fold": 0, "plain": 0}
    zones = TRICKY_ZONES if sweep == "tricky zones" else sorted(
        name for name in zoneinfo.available_timezones() if not name.startswith(("posix/", "right/")))
    for name in zones:
        zone = ZoneInfo(name)
        for change in transitions(zone, 2027):
            # every quarter hour of the local hours around the change, on the clocks of before and after
            for local_change in {shown(change - MINUTE, zone), shown(change, zone)}:
                start = local_change.replace(minute=0) - timedelta(hours=3)
                for step in range(0, 6 * 4 + 1):
                    wall = start + step * timedelta(minutes=15)
                    got = local_instant(wall, zone).astimezone(UTC)  # (== across zones is False in a fold: PEP 495)
                    expected = oracle(wall, zone)
                    assert got == expected, (name, wall, got, expected)
                    readings = {wall.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1)}
                    if shown(expected, zone) != wall:
                        kinds["gap"] += 1  # the first instant after the gap: the jump itself
                        assert shown(expected - timedelta(seconds=1), zone) < wall
                    elif len({shown(r, zone) for r in readings} | {wall}) == 1 and len(readings) == 2:
                        kinds["fold"] += 1  # repeated: the first occurrence, i.e. fold=0
                        assert got == wall.replace(tzinfo=zone, fold=0).astimezone(UTC) == min(readings)
                    else:
                        kinds["plain"] += 1
                        assert got == wall.replace(tzinfo=zone).astimezone(UTC)
    floor = 10 if sweep == "tricky zones" else 300
    assert kinds["gap"] > floor and kinds["fold"] > floor and kinds["plain"] > 10 * floor, kinds


def test_examples_people_check_by_hand() -> None:
    paris = ZoneInfo(PARIS)
    assert local_instant(datetime(2027, 3, 28, 2, 30), paris).isoformat() == "2027-03-28T03:00:00+02:00"  # gap
    assert local_instant(datetime(2027, 10, 31, 2, 30), paris).isoformat() == "2027-10-31T02:30:00+02:00"  # fold
    assert local_instant(datetime(2027, 1, 14, 7, 0), ZoneInfo(KIRITIMATI)).isoformat() == "2027-01-14T07:00:00+14:00"
    assert resolve_zone("America/New_York") == ZoneInfo("America/New_York")
    assert resolve_zone("Mars/Olympus") is None and resolve_zone("") is None and resolve_zone("../etc/passwd") is None


# ----- issue.toml ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, message", [
    ('send_local = "2027-01-14T07:00+01:00"', "send_local takes no offset or zone"),
    ("send_local = 2027-01-14T07:00:00Z", "send_local takes no offset or zone"),
    ('send_local = "2027-01-14T07:00 Europe/Paris"', "send_local must be a wall time without offset or zone"),
    ("send_local = 2027-01-14", "send_local must be a date and time, not 2027-01-14:"),
    ('send_local = "2027-01-14"', "send_local needs a time, not only a date"),
    ("send_local = 07:00:00", "send_local must be a date and time, not 07:00:00:"),
    ('send_local = "2027-01-14T07:00"\nsend_at = 2027-01-14T07:00:00+01:00', "send_local and send_at together"),
])
def test_a_bad_send_local_is_one_line_naming_issue_toml_and_its_line(project: Path, settings, line, message) -> None:
    write_issue(project, SLUG, BRIEFS, f'subject = "Le Fil"\ndate = 2027-01-14\n{line}\n')
    with pytest.raises(SourceError) as caught:
        load_issue(SLUG, settings.issues_dir, settings.zone)
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert re.search(rf"{SLUG}/issue.toml:3\b", text), text


def test_send_local_reads_a_toml_local_date_time_or_a_string(project: Path, settings) -> None:
    for value in ("2027-01-14T07:00:00", '"2027-01-14T07:00"'):
        write_issue(project, SLUG, BRIEFS, f'subject = "Le Fil"\ndate = 2027-01-14\nsend_local = {value}\n')
        assert load_issue(SLUG, settings.issues_dir, settings.zone).send_local == datetime(2027, 1, 14, 7, 0)


# ----- waves through the store (SQLite, PostgreSQL) ---------------------------------------------------
def wall_for(zone: str, instant: datetime) -> str:
    """The send_local that makes `zone`'s wave fall at `instant` (whole seconds)."""
    return shown(instant, ZoneInfo(zone)).isoformat(timespec="seconds")


def people(project: Path, store, counts: dict[str, int]) -> dict[str, str]:
    """Import `counts[zone]` subscribers per zone (zone "" → no zone, "Mars/Base" → unknown); email → zone."""
    rows, zone_of = [], {}
    for zone, count in counts.items():
        tag = re.sub(r"[^a-z]", "", zone.lower()) or "aucune"
        for i in range(count):
            email = f"{tag}{i}@example.org"
            rows.append(f"{email},{zone}")
            zone_of[email] = zone
    path = project / "zones.csv"
    path.write_text("email,timezone\n" + "\n".join(rows) + "\n", encoding="utf-8")
    report = import_csv(store, path)
    assert not report.rejections
    return zone_of


def sent_to(settings, slug: str = SLUG) -> list[str]:
    folder = settings.outbox_dir / slug
    return sorted(re.sub(r"^\d+-|\.eml$", "", p.name) for p in folder.glob("*.eml")) if folder.is_dir() else []


def due_rows(store, slug: str = SLUG) -> dict[str, tuple[str, datetime]]:
    import sqlalchemy as sa
    from mailer.store import as_utc
    from mailer.store.schema import deliveries, issues, subscribers
    with store.engine.connect() as conn:
        return {email: (zone, as_utc(at)) for email, zone, at in conn.execute(
            sa.select(subscribers.c.email, deliveries.c.due_zone, deliveries.c.due_at)
            .join(deliveries, deliveries.c.subscriber_id == subscribers.c.id)
            .join(issues, issues.c.id == deliveries.c.issue_id).where(issues.c.slug == slug))}


def test_only_the_due_wave_goes_out_each_row_carries_its_zone_s_instant_and_late_joiners_wait(
        store, db_url, project, make_settings) -> None:
    settings = make_settings(database_url=db_url, timezone="Europe/Berlin")
    zone_of = people(project, store, {KIRITIMATI: 3, PARIS: 2, LOS_ANGELES: 2, "": 1, "Mars/Base": 1})
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)  # Kiritimati's wave: due
    wall = wall_for(KIRITIMATI, first)
    write_issue(project, SLUG, BRIEFS, f'subject = "Le Fil"\ndate = 2027-01-14\nsend_local = "{wall}"\n')

    report = dispatch.send_issue(settings, store, SLUG)
    kiritimati = sorted(e for e, z in zone_of.items() if z == KIRITIMATI)
    assert sent_to(settings) == kiritimati  # the others are not sent early
    assert report.counts["sent"] == 3 and report.counts["queued"] == 6 and report.waiting == 6 and not report.missed
    naive = datetime.fromisoformat(wall)
    for email, (zone, at) in due_rows(store).items():  # every frozen row: its zone, its instant (oracle)
        expected_zone = zone_of[email] if resolve_zone(zone_of[email]) else "Europe/Berlin"  # fallback
        assert zone == expected_zone and at == oracle(naive, ZoneInfo(expected_zone)), (email, zone, at)
    assert {w.zone: w.state for w in report.waves} == {KIRITIMATI: "sent", PARIS: "pending", "Europe/Berlin": "pending",
                                                       LOS_ANGELES: "pending"}

    again = dispatch.send_issue(settings, store, SLUG)  # a resume between waves sends nobody
    assert again.sent_now == 0 and sent_to(settings) == kiritimati
    assert "in their own local time" in plan_send(settings, store, SLUG).describe("outbox")
    # a newcomer added with --include-new waits for their own zone's wave
    late = people(project, store, {"Asia/Tokyo": 1})
    joined = dispatch.send_issue(settings, store, SLUG, include_new=True)
    assert joined.frozen == 1
    assert joined.sent_now == 0 and sent_to(settings) == kiritimati
    assert due_rows(store)[next(iter(late))] == ("Asia/Tokyo", oracle(naive, ZoneInfo("Asia/Tokyo")))
    zone_of.update(late)
    assert dispatch.work_queue(settings, store, once=True, poll_seconds=0) == 0  # nor does a `mailer worker`
    status = issue_status(settings, store, SLUG)
    assert status["send_local"] == datetime.fromisoformat(wall).isoformat()
    assert [(w["zone"], w["recipients"], w["state"]) for w in status["waves"]] == [
        (KIRITIMATI, 3, "sent"), ("Asia/Tokyo", 1, "pending"), ("Europe/Berlin", 2, "pending"), (PARIS, 2, "pending"),
        (LOS_ANGELES, 2, "pending")]

    # someone who unsubscribes between the freeze and their wave is skipped when it is released
    remove_subscriber(store, "europeparis0@example.org")
    final = dispatch.send_issue(settings, store, SLUG, release="all")
    assert final.complete and final.counts["skipped"] == 1 and final.counts["sent"] == 9
    assert sent_to(settings) == sorted(e for e in zone_of if e != "europeparis0@example.org")


def test_before_the_first_wave_a_send_is_refused_missed_waves_need_release_missed(store, db_url, project,
                                                                                    make_settings) -> None:
    settings = make_settings(database_url=db_url, MAILER_SCHEDULE_GRACE="60")
    people(project, store, {KIRITIMATI: 2, PARIS: 1, LOS_ANGELES: 1})
    ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    write_issue(project, SLUG, BRIEFS, f'subject = "Le Fil"\ndate = 2027-01-14\nsend_local = "{wall_for(KIRITIMATI, ahead)}"\n')
    with pytest.raises(NotDueYet, match=r"first wave \(Pacific/Kiritimati, 2 recipient\(s\)\) is due at .*--now"):
        dispatch.send_issue(settings, store, SLUG)
    with pytest.raises(NotDueYet):  # the confirmation prompt is never reached either
        plan_send(settings, store, SLUG)
    with pytest.raises(NotFound):  # nothing frozen: no ledger
        issue_status(settings, store, SLUG)
    assert sent_to(settings) == []

    # Kiritimati's wave was 10 minutes ago, beyond the grace of 60 s; the others are ahead
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    write_issue(project, SLUG, BRIEFS, f'subject = "Le Fil"\ndate = 2027-01-14\nsend_local = "{wall_for(KIRITIMATI, past)}"\n')
    with pytest.raises(NotDueYet, match=r"1 wave\(s\) passed more than the grace \(MAILER_SCHEDULE_GRACE, 60 s\) ago \(Pacific/Kiritimati\)"
                                        r".*--release-missed"):
        dispatch.send_issue(settings, store, SLUG)
    report = dispatch.send_issue(settings, store, SLUG, release="missed")
    assert report.sent_now == 2 and report.waiting == 2 and sent_to(settings) == ["pacifickiritimati0@example.org",
                                                                                  "pacifickiritimati1@example.org"]


# ----- the CLI --------------------------------------------------------------------------------------------
def _three_zones_first_wave_in_two_hours(project: Path) -> tuple[dict, datetime]:
    """One person in each of Kiritimati, Paris and Los Angeles, and a local-time issue whose first wave
    (Kiritimati's) is due two hours from now: the run environment and that instant."""
    from mailer.store import open_store
    env = run_env(project, MAILER_TIMEZONE=PARIS)
    store = open_store(env["MAILER_DATABASE_URL"])
    try:
        people(project, store, {KIRITIMATI: 1, PARIS: 1, LOS_ANGELES: 1})
    finally:
        store.close()
    ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    write_issue(project, SLUG, BRIEFS, f'subject = "Le Fil"\ndate = 2027-01-14\nsend_local = "{wall_for(KIRITIMATI, ahead)}"\n')
    return env, ahead


@pytest.mark.slow
def test_mailer_send_by_hand_points_to_the_scheduler_and_now_sends_everyone(project: Path, monkeypatch) -> None:
    env, ahead = _three_zones_first_wave_in_two_hours(project)

    refused = invoke_with(env, ("send", SLUG, "--yes"), project)
    assert refused.returncode == 8 and refused.stderr.count("\n") == 1, refused.stderr
    assert "mailer schedule run" in refused.stderr and "--now" in refused.stderr and "issue.toml:3" in refused.stderr
    listed = json.loads(in_process(project, env, monkeypatch, "schedule", "list", "--json"))
    waves = next(i for i in listed["issues"] if i["slug"] == SLUG)["waves"]
    assert [(w["zone"], w["recipients"], w["state"]) for w in waves] == [
        (KIRITIMATI, 1, "pending"), (PARIS, 1, "pending"), (LOS_ANGELES, 1, "pending")]
    assert waves[0]["at"] == ahead.astimezone(ZoneInfo(KIRITIMATI)).isoformat()
    assert re.search(r"Pacific/Kiritimati\s+\S+\+14:00\s", in_process(project, env, monkeypatch, "schedule", "list"))
    in_process(project, env, monkeypatch, "send", SLUG, "--yes", "--now")
    assert len(list((project / "outbox" / SLUG).glob("*.eml"))) == 3


# ----- a real scheduler process ---------------------------------------------------------------------------
def outbox(project: Path) -> list[str]:
    folder = project / "outbox" / SLUG
    return sorted(re.sub(r"^\d+-|\.eml$", "", p.name) for p in folder.glob("*.eml")) if folder.is_dir() else []


def seed(project: Path, env: dict, counts: dict[str, int]) -> dict[str, str]:
    from mailer.store import open_store
    store = open_store(env["MAILER_DATABASE_URL"])
    try:
        return people(project, store, counts)
    finally:
        store.close()


def cli_json(project: Path, env: dict, *args: str) -> dict:
    """`mailer ARGS --json` in this process (tests/cli_support.py), beside the scheduler process."""
    result = invoke_with(env, (*args, "--json"), project)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_a_real_scheduler_sends_the_first_wave_at_its_instant_and_not_the_others(project: Path, runs, db_url) -> None:
    env = run_env(project, MAILER_DATABASE_URL=db_url)
    zone_of = seed(project, env, {KIRITIMATI: 3, PARIS: 2, LOS_ANGELES: 2})
    run = runs(project, env, "waves")
    run.wait_log("running:")  # the issue appears while it runs (picked up by a rescan)
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    wall = wall_for(KIRITIMATI, first)
    write_issue(project, SLUG, BRIEFS, f'subject = "Le Fil"\ndate = 2027-01-14\nsend_local = "{wall}"\n')
    run.wait_log(f"scheduled: wave of {SLUG} at")
    run.wait_log(f"wave sent: {SLUG}", timeout=15)
    kiritimati = sorted(e for e, z in zone_of.items() if z == KIRITIMATI)
    assert outbox(project) == kiritimati  # the wave is complete, and nobody else got it early
    from mailer.store import as_utc, open_store
    store = open_store(db_url)
    try:
        with store.engine.connect() as conn:
            first_sent = conn.execute(sa.text("SELECT min(sent_at) FROM deliveries WHERE status = 'sent'")).scalar()
        frozen = due_rows(store)
    finally:
        store.close()
    if isinstance(first_sent, str):  # SQLite keeps text
        first_sent = datetime.fromisoformat(first_sent)
    assert as_utc(first_sent) >= first  # not early
    naive = datetime.fromisoformat(wall)
    assert frozen == {e: (z, oracle(naive, ZoneInfo(z))) for e, z in zone_of.items()}  # every row: its instant
    waves = next(i for i in cli_json(project, env, "schedule", "list")["issues"] if i["slug"] == SLUG)["waves"]
    assert [(w["zone"], w["recipients"], w["state"]) for w in waves] == [
        (KIRITIMATI, 3, "sent"), (PARIS, 2, "pending"), (LOS_ANGELES, 2, "pending")]
    assert waves[1]["at"] == oracle(naive, ZoneInfo(PARIS)).astimezone(ZoneInfo(PARIS)).isoformat()
    time.sleep(0.7)  # rescans (0.3 s) happen meanwhile: none sends a later wave
    assert outbox(project) == kiritimati
    assert run.terminate() == 0


def in_process(project: Path, env: dict, monkeypatch, *args: str) -> str:
    """`mailer ARGS` through click's CliRunner in this process (the same CLI, without a start-up)."""
    from click.testing import CliRunner
    from mailer.cli.main import main
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, list(args), env={k: v for k, v in env.items() if k.startswith("MAILER_")},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_a_wave_interrupted_past_its_grace_is_reported_missed_and_released_only_by_hand(project: Path, runs,
                                                                                       monkeypatch) -> None:
    env = run_env(project, MAILER_SCHEDULE_GRACE="2", MAILER_RATE_LIMIT="5", MAILER_BATCH_SIZE="1")
    zone_of = seed(project, env, {KIRITIMATI: 12, PARIS: 1, LOS_ANGELES: 1})
    run = runs(project, env, "first")
    run.wait_log("running:")
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    write_issue(project, SLUG, BRIEFS,
                f'subject = "Le Fil"\ndate = 2027-01-14\nsend_local = "{wall_for(KIRITIMATI, first)}"\n')
    run.wait_log(f"started: {SLUG}", timeout=10)
    wait_until(lambda: len(outbox(project)) >= 2, 10, "the wave to start")
    assert run.terminate() == 0  # graceful: what is in flight is recorded
    interrupted = outbox(project)
    assert 2 <= len(interrupted) < 12
    wait_until(lambda: datetime.now(UTC) > first + timedelta(seconds=2.5), 5, "the grace to pass")

    second = runs(project, env, "second")
    second.wait_log(f"missed: wave {KIRITIMATI} of {SLUG} ({12 - len(interrupted)} recipient(s))")
    second.wait_log("running:")
    time.sleep(0.7)
    assert second.terminate() == 0
    assert outbox(project) == interrupted  # never sent late by itself
    listed = json.loads(in_process(project, env, monkeypatch, "schedule", "list", "--json"))
    listed = next(i for i in listed["issues"] if i["slug"] == SLUG)
    assert listed["state"] == "missed" and listed["waves"][0]["state"] == "missed"
    status = json.loads(in_process(project, env, monkeypatch, "status", SLUG, "--json"))
    assert [(w["zone"], w["state"], w["left"]) for w in status["waves"]][0] == (KIRITIMATI, "missed", 12 - len(interrupted))
    text = in_process(project, env, monkeypatch, "status", SLUG)
    assert "MISSED: 1 wave(s)" in text and "--release-missed" in text
    assert "MISSED 1 wave(s)" in in_process(project, env, monkeypatch, "status")  # the overview says it too

    released = in_process(project, {**env, "MAILER_RATE_LIMIT": "0"}, monkeypatch, "send", SLUG, "--yes",
                          "--release-missed")
    kiritimati = sorted(e for e, z in zone_of.items() if z == KIRITIMATI)
    assert outbox(project) == kiritimati  # each exactly once (one file per delivery), the later waves not early
    assert "2 recipient(s) wait for their wave" in released


def test_the_segment_narrows_the_planned_waves_as_it_narrows_the_freeze(store, db_url, project, make_settings,
                                                                        monkeypatch) -> None:
    """A segment that leaves out every subscriber of one zone: that zone has no wave before the freeze
    either (not a due wave that would start a send nobody in the segment is due for), `schedule list`
    counts each wave's recipients within the segment, and the freeze sends exactly those."""
    from tests.conftest import BASE_ENV
    settings = make_settings(database_url=db_url)
    rows = [f"kiri{i}@example.org,{KIRITIMATI},Tarawa" for i in range(3)]
    rows += [f"paris{i}@example.org,{PARIS},{'Lyon' if i < 2 else 'Tarawa'}" for i in range(3)]
    rows += [f"la{i}@example.org,{LOS_ANGELES},Lyon" for i in range(2)]
    path = project / "zones.csv"
    path.write_text("email,timezone,city\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert not import_csv(store, path).rejections
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)  # Kiritimati's wall time: due now
    write_issue(project, SLUG, BRIEFS, f'subject = "Le Fil"\ndate = 2027-01-14\nsend_local = "{wall_for(KIRITIMATI, due)}"\n'
                                       'segment = \'city = "Lyon"\'\n')
    env = {**BASE_ENV, "MAILER_DATABASE_URL": db_url}
    listed = json.loads(in_process(project, env, monkeypatch, "schedule", "list", "--json"))
    waves = next(i for i in listed["issues"] if i["slug"] == SLUG)["waves"]
    assert [(w["zone"], w["recipients"], w["state"]) for w in waves] == [(PARIS, 2, "pending"), (LOS_ANGELES, 2, "pending")]
    with pytest.raises(NotDueYet, match=r"first wave \(Europe/Paris, 2 recipient\(s\)\)"):
        dispatch.send_issue(settings, store, SLUG)  # no wave is due: nothing frozen, nothing sent
    assert sent_to(settings) == [] and plan_send(settings, store, SLUG, release="all").recipients == 4
    report = dispatch.send_issue(settings, store, SLUG, release="all")
    assert report.complete and sent_to(settings) == ["la0@example.org", "la1@example.org", "paris0@example.org",
                                                     "paris1@example.org"]


# ----- a public local-time issue reaches the web when its last wave is due ------------------------------
def test_a_public_local_time_issue_is_public_on_the_web_only_once_its_last_wave_is_due(
        store, db_url, project, make_settings) -> None:
    import feedparser
    from tests.test_web import make_web
    from mailer.store.schema import deliveries, issues
    settings = make_settings(database_url=db_url)
    people(project, store, {KIRITIMATI: 1, PARIS: 1, LOS_ANGELES: 1})
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    write_issue(project, SLUG, BRIEFS, f'subject = "Le Fil"\ndate = 2027-01-14\n'
                                       f'send_local = "{wall_for(KIRITIMATI, first)}"\n')
    assert dispatch.send_issue(settings, store, SLUG).counts["sent"] == 1  # the first wave only
    web = make_web(settings, store)
    key_link = re.search(rf'https://[^"\s]*/issues/{SLUG}\?k=[\w-]+', (settings.outbox_dir / SLUG).glob("*.eml")
                         .__next__().read_text(encoding="utf-8").replace("=\n", "").replace("=3D", "="))

    def web_state() -> tuple[bool, int, list]:
        archive = web.client.get("/archive").text
        feed = feedparser.parse(web.client.get("/feed.xml").content)
        return (f"/issues/{SLUG}" in archive, web.client.get(f"/issues/{SLUG}").status_code,
                [(e.link, e.published) for e in feed.entries])

    with web.client:
        assert web_state() == (False, 404, [])  # after the first wave: nobody else has it yet
        assert key_link and web.client.get(key_link.group(0).split("lettre.example.org", 1)[-1]).status_code == 200

        def later(hours: int) -> None:  # the clock moves on: every stored instant moves back
            with store.engine.begin() as conn:
                for table, column in ((deliveries, deliveries.c.due_at), (issues, issues.c.started_at)):
                    for row_id, at in conn.execute(sa.select(table.c.id, column)).all():
                        conn.execute(table.update().where(table.c.id == row_id)
                                     .values({column.name: at - timedelta(hours=hours)}))
        later(14)  # Paris's wave is due, Los Angeles's is not
        assert sorted(at < datetime.now(UTC) for _, at in due_rows(store).values()) == [False, True, True]
        assert web_state() == (False, 404, [])
        # the last wave's instant passes (its row waits for the scheduler): now it is public, dated then
        later(10)
        last = max(at for _, at in due_rows(store).values())
        assert last < datetime.now(UTC)
        archived, status, entries = web_state()
        assert archived and status == 200
        assert [published for _, published in entries] == [last.isoformat()]


# ----- the confirmation says what the flags make the run do -------------------------------------------
def test_the_prompt_of_a_local_time_send_says_what_its_flags_make_it_do() -> None:
    from mailer.sending.prepare import SendPlan
    said = {release: SendPlan(SLUG, "Le Fil", None, "none", 3, 0, local=True, release=release).describe("outbox")
            for release in ("due", "missed", "all")}
    assert "at once, whatever their local time" in said["all"] and "wait" not in said["all"].replace("none waits", "")
    assert "only the waves due now go out now" in said["due"] and "at once" not in said["due"].split("(--now")[0]
    assert "missed ones go out now" in said["missed"] and "at once" not in said["missed"]
    assert len(set(said.values())) == 3


@pytest.mark.slow  # a real `mailer` process on a pseudo-terminal
def test_send_now_on_a_terminal_asks_about_sending_everyone_at_once(project: Path) -> None:
    from tests.test_cli import _send_on_a_terminal
    env, _ = _three_zones_first_wave_in_two_hours(project)
    prompt, code = _send_on_a_terminal(project, SLUG, "--now", env=env)
    assert "to 3 subscriber(s) at once, whatever their local time" in prompt, prompt
    assert "only the waves due now" not in prompt and "unless --now" not in prompt
    assert code != 0 and not (project / "outbox").exists()
