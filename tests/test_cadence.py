"""The cadence trigger against a brute-force oracle: every UTC minute, what do the clocks show?

The oracle knows nothing of `mailer.cadence` nor of APScheduler: it parses the crontab expression
itself, walks every UTC minute of a period, converts it to the zone's wall time with `zoneinfo`, and
fires each wall minute the expression names at the first UTC minute whose wall time reaches it (a
wall minute the clocks jump over is reached at the jump; one they show again after an autumn change
was already reached). That is the rule the README states; the trigger must agree with it exactly,
for generated expressions, in zones with every kind of change: midnight gaps (Havana, Santiago,
Tehran, old St John's), 30-minute DST (Lord Howe), Ramadan's negative DST (Casablanca), a whole
skipped day (Apia, 2011-12-30), half-hour standard offsets (St John's, Tehran), and UTC.
"""

from __future__ import annotations

import calendar
import pickle
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from mailer.scheduling import cadence
from mailer.errors import ConfigError

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
MINUTE = timedelta(minutes=1)

# zone → years to cover: years with changes of each kind (Tehran dropped DST after 2022, Apia after
# 2021 and skipped 2011-12-30; St John's changed at 00:01 local until 2011)
ZONES = {
    "Europe/Paris": (2026, 2027, 2028),
    "America/New_York": (2026, 2027),
    "America/Santiago": (2022, 2026, 2027),
    "Australia/Lord_Howe": (2026, 2027),
    "Asia/Tehran": (2021, 2022, 2023),
    "America/Havana": (2026, 2027),
    "Africa/Casablanca": (2026, 2027),
    "Pacific/Apia": (2011, 2021),
    "America/St_Johns": (2010, 2027),
    "UTC": (2027, 2028),
}

HAND_PICKED = (
    "0 0 * * *", "30 0 * * *", "30 1 * * *", "0 2 * * *", "30 2 * * *", "0 3 * * *", "59 23 * * *",
    "0 23 * * *", "30 23 * * SAT", "0 0 * * MON", "0 0 * * SUN", "0 7 * * MON", "15 2 * * 0", "0 0 * * 1-5",
    "0 0 1 * *", "0 2 last * *", "0 0 1st mon * *", "30 2 last sun * *", "0 3 2nd sun * *", "45 1 */2 * *", "0 0,12 * * *", "*/30 * * * *", "0 2,3 * * *",
    "0 0 29 2 *", "1 0 * * *", "0 1 * * *", "30 3 * * *", "0 0 * 3,4,9,10 SAT,SUN",
)


def generated_expressions(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        minute = rng.choice(["0", "1", "15", "30", "45", "59", str(rng.randrange(60)), "0,30", "*/20"])
        hour = rng.choice(["0", "1", "2", "3", "4", "22", "23", str(rng.randrange(24)), "0,12", "*/6", "1-3"])
        day = rng.choice(["*"] * 6 + ["1", "15", "last", "1-7", "*/10", "28-31", "8-14"])
        month = rng.choice(["*"] * 5 + ["3,4,9,10", "1-6", "*/2"])
        weekday = rng.choice(["*"] * 4 + ["MON", "SUN", "SAT", "1-5", "0", "7", "FRI,SAT", "sun-tue"])
        if day != "*" and weekday != "*":  # refused (crontab ORs them, APScheduler ANDs): say it explicitly
            day, weekday = f"{rng.choice(['1st', '2nd', '3rd', '4th', '5th', 'last'])} {rng.choice(('sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'))}", "*"
        out.append(f"{minute} {hour} {day} {month} {weekday}")
    return out


EXPRESSIONS = HAND_PICKED + tuple(generated_expressions(30, seed=20270329))


# ----- the oracle -------------------------------------------------------------------------------------
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _values(text: str, low: int, high: int, names: tuple[str, ...] = (), first: int = 0) -> set[int]:
    def number(word: str) -> int:
        word = word.lower()
        return names.index(word[:3]) + first if word[:3] in names else int(word)

    values: set[int] = set()
    for part in text.split(","):
        span, slash, step = part.partition("/")
        if span == "*":
            start, end = low, high
        elif "-" in span:
            start, end = (number(w) for w in span.split("-"))
        else:
            start = number(span)
            end = high if slash else start
        values.update(range(start, end + 1, int(step) if slash else 1))
    return values


@dataclass
class Expression:
    """crontab, read independently: fields AND-ed (the README's rule), 0/7 = Sunday, `last` day."""

    text: str

    def __post_init__(self) -> None:
        minute, hour, *day_words, month, weekday = self.text.split()
        day = " ".join(day_words)
        self.minutes = _values(minute, 0, 59)
        self.hours = _values(hour, 0, 23)
        self.last_day = day == "last"
        self.months = _values(month, 1, 12, _MONTHS, first=1)
        self.weekdays = {d % 7 for d in _values(weekday, 0, 6, _DAYS)}
        self.nth = None  # "2nd sun": the 8th to the 14th of the month, a Sunday; "last sun": the last 7 days
        if len(day_words) == 2:
            self.nth = day_words[0].lower()
            self.weekdays = {_DAYS.index(day_words[1].lower()[:3])}
            self.days = set()
        else:
            self.days = set() if self.last_day else _values(day, 1, 31)

    def names_date(self, day: date) -> bool:
        if day.month not in self.months or day.isoweekday() % 7 not in self.weekdays:
            return False
        length = calendar.monthrange(day.year, day.month)[1]
        if self.nth == "last":
            return day.day > length - 7
        if self.nth:
            return (day.day - 1) // 7 + 1 == int(self.nth[0])
        if self.last_day:
            return day.day == length
        return day.day in self.days


def oracle(texts: list[str], zone: ZoneInfo, start: datetime, end: datetime) -> dict[str, list[datetime]]:
    """Fire instants (UTC) in [start, end) of each expression, by walking every UTC minute."""
    expressions = [Expression(t) for t in texts]
    at_clock: dict[tuple[int, int], list[Expression]] = defaultdict(list)
    for expression in expressions:
        for hour in expression.hours:
            for minute in expression.minutes:
                at_clock[(hour, minute)].append(expression)
    fires: dict[str, list[datetime]] = {t: [] for t in texts}
    moment = int(start.timestamp())
    assert moment % 60 == 0
    reached = datetime.fromtimestamp(moment - 60, zone).replace(tzinfo=None)
    for moment in range(moment, int(end.timestamp()), 60):
        shown = datetime.fromtimestamp(moment, zone).replace(tzinfo=None)
        if shown <= reached:
            continue  # the clocks show again what they showed before (an autumn change)
        wall = reached + MINUTE
        while wall <= shown:  # one minute, or every minute the clocks just jumped over
            for expression in at_clock.get((wall.hour, wall.minute), ()):
                if expression.names_date(wall.date()):
                    instant = datetime.fromtimestamp(moment, UTC)
                    if not fires[expression.text] or fires[expression.text][-1] != instant:
                        fires[expression.text].append(instant)
            wall += MINUTE
        reached = shown
    return fires


def trigger_fires(trigger, start: datetime, end: datetime, late: timedelta = timedelta(0)) -> list[datetime]:
    """What the scheduler runs: ask for the first fire, then the next after each (processed `late`)."""
    out: list[datetime] = []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire < end:
        out.append(fire.astimezone(UTC))
        fire = trigger.get_next_fire_time(fire, fire + late)
        assert fire is None or fire.astimezone(UTC) > out[-1], f"{trigger}: {fire} again"  # no loop
    return out


def transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    """Instants (to the hour) after which the zone's UTC offset differs."""
    moment, end = datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    offset = moment.astimezone(zone).utcoffset()
    found = []
    while moment < end:
        moment += timedelta(hours=1)
        if moment.astimezone(zone).utcoffset() != offset:
            offset = moment.astimezone(zone).utcoffset()
            found.append(moment)
    return found


def windows(zone: ZoneInfo, years: tuple[int, ...], days: int) -> list[tuple[datetime, datetime]]:
    """[start, end) spans of whole UTC days around each change (merged when they overlap);
    for a zone without changes, a few spans across the year (month ends, a leap day)."""
    centres = [t for year in years for t in transitions(zone, year)]
    if not centres:
        centres = [datetime(year, month, 28, tzinfo=UTC) for year in years for month in (2, 6, 12)]
    spans: list[tuple[datetime, datetime]] = []
    for centre in centres:
        midnight = centre.replace(hour=0, minute=0, second=0, microsecond=0)
        start, end = midnight - timedelta(days=days), midnight + timedelta(days=days + 1)
        if spans and start <= spans[-1][1] + timedelta(days=1):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def compare(zone_name: str, texts, start: datetime, end: datetime, late_too=HAND_PICKED) -> int:
    zone = ZoneInfo(zone_name)
    expected = oracle(list(texts), zone, start, end)
    for text in texts:
        trigger = cadence.build_cadence_trigger(text, zone)
        got = trigger_fires(trigger, start, end)
        assert got == expected[text], _difference(zone_name, text, expected[text], got, zone)
        if text in late_too:  # the scheduler processes a run a little after its time: the next run is the same
            assert trigger_fires(trigger, start, end, late=timedelta(seconds=2)) == got, (zone_name, text)
    return sum(len(v) for v in expected.values())


def _difference(zone_name: str, text: str, expected: list[datetime], got: list[datetime], zone: ZoneInfo) -> str:
    missing = sorted(set(expected) - set(got))[:3]
    extra = sorted(set(got) - set(expected))[:3]
    show = lambda items: [i.astimezone(zone).isoformat() for i in items]  # noqa: E731
    return f"{text!r} in {zone_name}: missing {show(missing)}, extra {show(extra)}"


# ----- against the oracle -----------------------------------------------------------------------------
@pytest.mark.parametrize("zone_name", sorted(ZONES))
def test_every_expression_fires_as_the_oracle_says_around_the_changes_of_a_year(zone_name: str) -> None:
    """±3 days around each change of the zone's first covered year (a weekly run on the Monday after
    a Sunday change, apscheduler#606, falls inside), every expression, every UTC minute."""
    total = 0
    for start, end in windows(ZoneInfo(zone_name), ZONES[zone_name][:1], days=3):
        total += compare(zone_name, EXPRESSIONS, start, end, late_too=HAND_PICKED[:12])
    assert total > 200  # the comparison compared something


@pytest.mark.slow
@pytest.mark.parametrize("zone_name", sorted(ZONES))
def test_every_expression_fires_as_the_oracle_says_around_every_change_of_every_year(zone_name: str) -> None:
    """±8 days around each change of each covered year: a whole week on either side."""
    for start, end in windows(ZoneInfo(zone_name), ZONES[zone_name], days=8):
        compare(zone_name, EXPRESSIONS, start, end)


@pytest.mark.slow
@pytest.mark.parametrize("zone_name", sorted(ZONES))
def test_every_expression_fires_as_the_oracle_says_over_a_whole_year(zone_name: str) -> None:
    """Every UTC minute of the zone's last covered year: monthly and yearly periods included (the
    expressions firing more than once an hour are left to the tests around the changes)."""
    year = ZONES[zone_name][-1]
    texts = [t for t in EXPRESSIONS if not set(t.split()[0]) & set("*,/")]
    compare(zone_name, texts, datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 8, tzinfo=UTC), late_too=())


@pytest.mark.parametrize("zone_name", sorted(ZONES))
def test_a_scheduler_starting_at_any_moment_finds_the_next_run_the_oracle_finds(zone_name: str) -> None:
    """Start-up, restart, `schedule list --now`: the next run from an arbitrary instant, including
    instants inside a gap or inside a repeated hour."""
    zone = ZoneInfo(zone_name)
    rng = random.Random(zone_name)
    texts = list(HAND_PICKED[:12]) + generated_expressions(6, seed=len(zone_name))
    for start, end in windows(zone, ZONES[zone_name][:1], days=2):
        expected = oracle(texts, zone, start, end + timedelta(days=3))
        centre = start + (end - start) / 2
        probes = [start + timedelta(seconds=rng.randrange(int((end - start).total_seconds()))) for _ in range(20)]
        probes += [centre + timedelta(minutes=m) for m in range(-90, 91, 7)]  # through the change itself
        for text in texts:
            trigger = cadence.build_cadence_trigger(text, zone)
            for probe in probes:
                want = next((f for f in expected[text] if f >= probe), None)
                if want is None:
                    continue
                got = trigger.get_next_fire_time(None, probe.astimezone(zone))
                assert got is not None and got.astimezone(UTC) == want, \
                    f"{text!r} in {zone_name} from {probe.astimezone(zone).isoformat()}: {got} != {want.astimezone(zone)}"


# ----- the rules, stated on examples ------------------------------------------------------------------
def local_runs(trigger, start: datetime, end: datetime, zone: ZoneInfo) -> list[str]:
    return [f.astimezone(zone).isoformat() for f in trigger_fires(trigger, start, end)]


def test_a_monday_midnight_cadence_runs_every_week_of_the_year_at_midnight() -> None:
    """The issue's example: `0 0 * * MON` in Europe/Paris had no run in the week of 2027-03-29."""
    trigger = cadence.build_cadence_trigger("0 0 * * MON", PARIS)
    runs = local_runs(trigger, datetime(2027, 3, 20, tzinfo=PARIS), datetime(2027, 4, 6, tzinfo=PARIS), PARIS)
    assert runs == ["2027-03-22T00:00:00+01:00", "2027-03-29T00:00:00+02:00", "2027-04-05T00:00:00+02:00"]
    whole_year = trigger_fires(trigger, datetime(2027, 1, 1, tzinfo=PARIS), datetime(2028, 1, 1, tzinfo=PARIS))
    assert len(whole_year) == 52
    assert {f.astimezone(PARIS).isocalendar()[1] for f in whole_year} == set(range(1, 53))  # one a week
    assert {(f.astimezone(PARIS).weekday(), f.astimezone(PARIS).time().isoformat()) for f in whole_year} == \
        {(0, "00:00:00")}


def test_a_skipped_wall_time_fires_once_when_the_clocks_jump_and_a_repeated_one_once_at_its_first() -> None:
    trigger = cadence.build_cadence_trigger("30 2 * * *", PARIS)
    spring = local_runs(trigger, datetime(2027, 3, 27, tzinfo=PARIS), datetime(2027, 3, 30, tzinfo=PARIS), PARIS)
    # 02:30 does not exist on 2027-03-28: the run goes at 03:00 CEST, the instant the clocks jump
    assert spring == ["2027-03-27T02:30:00+01:00", "2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"]
    autumn = local_runs(trigger, datetime(2026, 10, 24, tzinfo=PARIS), datetime(2026, 10, 27, tzinfo=PARIS), PARIS)
    # 02:30 occurs twice on 2026-10-25: once, the first time (CEST)
    assert autumn == ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    # several skipped wall times of one gap fire together, once, when the clocks jump
    both = cadence.build_cadence_trigger("0,30 2 * * *", PARIS)
    assert local_runs(both, datetime(2027, 3, 28, tzinfo=PARIS), datetime(2027, 3, 29, tzinfo=PARIS), PARIS) == \
        ["2027-03-28T03:00:00+02:00"]
    # plain APScheduler fires it twice that day (the pitfall this trigger exists for)
    plain_trigger, plain, now = CronTrigger.from_crontab("30 2 * * *", timezone=PARIS), [], datetime(2026, 10, 24, tzinfo=PARIS)
    for _ in range(3):
        now = plain_trigger.get_next_fire_time(plain[-1] if plain else None, now)
        plain.append(now)
    assert sum(f.astimezone(PARIS).date() == date(2026, 10, 25) for f in plain) == 2


@pytest.mark.parametrize("zone_name, expression, start, expected", [
    # midnight does not exist on the spring day: the run goes at 01:00 that same day
    ("America/Havana", "0 0 * * *", "2027-03-13", ["2027-03-13T00:00:00-05:00", "2027-03-14T01:00:00-04:00",
                                                   "2027-03-15T00:00:00-04:00"]),
    ("America/Santiago", "0 0 * * SUN", "2026-08-29", ["2026-08-30T00:00:00-04:00", "2026-09-06T01:00:00-03:00",
                                                      "2026-09-13T00:00:00-03:00"]),
    # Santiago's autumn change repeats Saturday 23:00-23:59: one run, the first
    ("America/Santiago", "30 23 * * SAT", "2027-03-27", ["2027-03-27T23:30:00-03:00", "2027-04-03T23:30:00-03:00",
                                                        "2027-04-10T23:30:00-04:00"]),
    # Lord Howe jumps 30 minutes (02:00 → 02:30): 02:15 goes at 02:30
    ("Australia/Lord_Howe", "15 2 * * *", "2026-10-03", ["2026-10-03T02:15:00+10:30", "2026-10-04T02:30:00+11:00",
                                                         "2026-10-05T02:15:00+11:00"]),
    # Apia skipped the whole of Friday 2011-12-30: its run goes at the first instant after it
    ("Pacific/Apia", "0 7 * * FRI", "2011-12-20", ["2011-12-23T07:00:00-10:00", "2011-12-31T00:00:00+14:00",
                                                   "2012-01-06T07:00:00+14:00"]),
    # the last day of the month in Tehran, whose old spring change was at midnight
    ("Asia/Tehran", "0 0 22 3 *", "2021-03-01", ["2021-03-22T01:00:00+04:30"]),
])
def test_changes_at_midnight_of_half_an_hour_and_of_a_whole_day(zone_name, expression, start, expected) -> None:
    zone = ZoneInfo(zone_name)
    begin = datetime.fromisoformat(start).replace(tzinfo=zone)
    runs = local_runs(cadence.build_cadence_trigger(expression, zone), begin, begin + timedelta(days=22), zone)
    assert runs[:len(expected)] == expected


def test_cron_weekday_numbers_follow_crontab_not_apscheduler() -> None:
    assert cadence.crontab_weekdays("1") == "mon"
    assert cadence.crontab_weekdays("0") == cadence.crontab_weekdays("7") == cadence.crontab_weekdays("SUN") == "sun"
    assert cadence.crontab_weekdays("1-5") == cadence.crontab_weekdays("mon-fri") == "mon,tue,wed,thu,fri"
    assert cadence.crontab_weekdays("*/2") == "tue,thu,sat,sun"
    assert cadence.crontab_weekdays("sat,0") == "sat,sun"
    assert cadence.crontab_weekdays("*") == "*"
    trigger = cadence.build_cadence_trigger("0 7 * * 1", PARIS)
    assert trigger.get_next_fire_time(None, datetime(2026, 11, 26, tzinfo=PARIS)).weekday() == 0  # a Monday


@pytest.mark.parametrize("bad, says", [
    ("0 7 * *", "expected 5 fields"), ("0 7 * * funday", "'funday' is not a day of the week"),
    ("0 25 * * MON", "0 25 * * MON"), ("0 7 * * 5-1", "runs backwards"), ("0 7 31 2 *", "never run"),
    ("0 7 30 2 *", "never run"), ("61 7 * * *", "61 7 * * *"), ("0 7 * 13 *", "0 7 * 13 *"),
])
def test_a_bad_expression_is_a_one_line_error_naming_it(bad: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        cadence.build_cadence_trigger(bad, PARIS)
    assert says in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("expression", ["0 7 1 * MON", "0 0 1-7 * MON", "0 7 1,15 * 1-5", "0 7 last * FRI",
                                        "0 7 */10 * sun-tue", "0 7 2nd mon * MON"])
def test_a_day_of_month_and_a_day_of_week_together_are_refused_with_the_explicit_spellings(expression) -> None:
    """crontab (POSIX, Vixie) runs on days matching EITHER field, APScheduler on days matching BOTH:
    the same text means other days to its author; mailer refuses it and says how to write each intent."""
    minute, hour, *day, month, weekday = expression.split()
    with pytest.raises(ConfigError) as caught:
        cadence.build_cadence_trigger(expression, PARIS)
    message = str(caught.value)
    assert "\n" not in message and f"schedule cron {expression!r} restricts both" in message
    assert f"'{minute} {hour} 1st mon {month} *'" in message
    assert f"'{minute} {hour} {' '.join(day)} {month} *'" in message and f"'{minute} {hour} * {month} {weekday}'" in message
    for alone in (f"{minute} {hour} {' '.join(day)} {month} *", f"{minute} {hour} * {month} {weekday}"):
        cadence.build_cadence_trigger(alone, PARIS)  # each suggestion is accepted


def test_the_trigger_survives_the_job_store_with_its_behaviour() -> None:
    trigger = cadence.build_cadence_trigger("0 0 * * MON", PARIS)
    start, end = datetime(2027, 3, 1, tzinfo=PARIS), datetime(2027, 5, 1, tzinfo=PARIS)
    expected = trigger_fires(trigger, start, end)
    again = pickle.loads(pickle.dumps(trigger))
    assert type(again) is cadence.CadenceTrigger and repr(again) == repr(trigger)
    assert trigger_fires(again, start, end) == expected
    assert "_twin" not in pickle.loads(pickle.dumps(again)).__dict__  # the UTC helper is not stored


# ----- the same rule for wall times written without an offset ----------------------------------------
@pytest.mark.parametrize("written, resolved", [
    ("2027-03-28T02:30:00", "2027-03-28T03:00:00+02:00"),  # skipped by the spring change: the jump
    ("2027-10-31T02:30:00", "2027-10-31T02:30:00+02:00"),  # repeated by the autumn change: the first
    ("2027-10-31T03:00:00", "2027-10-31T03:00:00+01:00"),
    ("2027-01-05T07:00:00", "2027-01-05T07:00:00+01:00"),
])
@pytest.mark.parametrize("quoted", [True, False])  # an ISO string, or a TOML local date-time
def test_a_send_at_without_an_offset_is_read_by_the_cadence_s_rule(make_settings, written, resolved, quoted) -> None:
    from mailer.content.issue import load_issue
    from tests.conftest import write_issue

    settings = make_settings()
    value = f'"{written}"' if quoted else written
    write_issue(settings.root, "2027-03-01-heure", {"briefs.txt": "--> Une brève.\n"},
                f'subject = "Le Fil"\nsend_at = {value}\n')
    issue = load_issue("2027-03-01-heure", settings.issues_dir, settings.zone)
    assert issue.send_at.isoformat() == resolved
