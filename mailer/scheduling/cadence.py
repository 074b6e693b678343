"""The cadence's trigger: a crontab expression read as wall-clock time in one zone, DST-safe.

Why our own search, not APScheduler's: APScheduler 3.11's `CronTrigger` walks its fields in local
time and loses whole runs around a spring change (a cadence in the midnight hour skips a day or a
week: apscheduler#606; `0 0 * * MON` in Europe/Paris has no run in the week of 2027-03-29), fires a
repeated autumn wall time twice, and silently drops a wall time that the spring change skips.
When the cadence fires is the product, so the rule lives in one function (`mailer.wallclock`):

    a wall time W fires at the first instant at which the zone's clocks show W or later.

That one rule gives every case (each checked against a minute-by-minute oracle in the tests):
- an ordinary wall time fires when the clocks show it;
- a wall time that occurs twice (the autumn change repeats 02:00-02:59 in Europe/Paris; Santiago
  repeats Saturday 23:00-23:59) fires ONCE, at its first occurrence (02:30 CEST, not 02:30 CET);
- a wall time the spring change skips fires once, at the first instant after the gap, i.e. the
  moment the clocks jump (02:30 on 2027-03-28 in Europe/Paris fires at 03:00 CEST = 01:00 UTC;
  00:00 in America/Havana or America/Santiago on their change day fires at 01:00 that same day).
  Several skipped wall times of one gap fire together, once, at that instant; so does a skipped
  wall time whose instant is also the next ordinary one (`0 2,3 * * *`: one run at 03:00 that day);
- a day that does not exist at all (Pacific/Apia skipped 2011-12-30) fires its runs once, at the
  first instant after it (00:00 on 2011-12-31), together with that instant's own run if any.

Matching wall times (which dates, hours and minutes the expression names) is left to APScheduler's
own field code, run on a copy of the trigger in UTC, where no clock ever jumps: that part is not
affected by DST. The expression is crontab's: `minute hour day month day-of-week`; day-of-week
numbers follow crontab (0 and 7 = Sunday, 1 = Monday…), unlike APScheduler 3's `from_crontab`
(0 = Monday); names (MON…SUN) are safest. An expression restricting both day-of-month and
day-of-week is refused (crontab ORs them, APScheduler ANDs them: the same text would run on other
days than its author may expect); APScheduler's day extensions say "a weekday of the month"
explicitly (`last`, `last fri`, `1st mon`, `2nd mon`, written in the day field, space included).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from apscheduler.util import datetime_ceil

from ..errors import ConfigError
from ..wallclock import wall_time, wall_time_instant

UTC = timezone.utc
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 = Sunday
_SECOND = timedelta(seconds=1)


class CadenceTrigger(CronTrigger):
    """A `CronTrigger` whose fire times follow the wall-clock rule of this module (see its docstring).

    Pickles like a `CronTrigger` (the job store keeps it); `repr` names the fields and the zone.
    """

    def _wall_clock(self) -> CronTrigger:
        """The same fields in UTC: APScheduler's matching of wall times, with no clock that jumps."""
        twin = self.__dict__.get("_twin")
        if twin is None:
            twin = CronTrigger.__new__(CronTrigger)
            twin.__setstate__({**CronTrigger.__getstate__(self), "timezone": UTC, "start_date": None,
                               "end_date": None, "jitter": None})
            self.__dict__["_twin"] = twin
        return twin

    def next_wall_time(self, wall: datetime) -> datetime | None:
        """The first wall time (naive) at or after `wall` that the expression names; None if none."""
        found = CronTrigger.get_next_fire_time(self._wall_clock(), None, wall.replace(tzinfo=UTC))
        return found.replace(tzinfo=None) if found is not None else None

    def first_fire_at_or_after(self, start: datetime) -> datetime | None:
        """The earliest fire instant (aware, in the trigger's zone) at or after `start` (aware)."""
        start = datetime_ceil(start.astimezone(UTC))
        zone = self.timezone
        # A wall time firing at `start` or later is later than anything the clocks showed before
        # `start`, in particular than what they showed a second earlier. Candidates from there on
        # whose first instant came before `start` are the repeated ones of an autumn change: skipped.
        wall = wall_time(start - _SECOND, zone) + _SECOND
        while True:
            wall = self.next_wall_time(wall)
            if wall is None:
                return None
            instant = wall_time_instant(wall, zone)
            if instant >= start:
                return instant.astimezone(zone)
            wall += _SECOND

    def get_next_fire_time(self, previous_fire_time, now):  # noqa: ANN001 - APScheduler's signature
        """APScheduler's contract: the first fire time after `previous_fire_time` (or at/after `now`)."""
        if previous_fire_time is not None:
            # as APScheduler: strictly after the previous fire, unless `now` is earlier still. In UTC:
            # `==` between zones is always False for a repeated wall time (PEP 495).
            previous = previous_fire_time.astimezone(UTC)
            start = min(now.astimezone(UTC), previous + timedelta(microseconds=1))
            if start == previous:
                start += timedelta(microseconds=1)
        elif self.start_date is not None:
            start = max(now.astimezone(UTC), self.start_date.astimezone(UTC))
        else:
            start = now
        fire = self.first_fire_at_or_after(start)
        if fire is None or (self.end_date is not None and fire > self.end_date):
            return None
        fire = self._apply_jitter(fire, self.jitter, now)
        return min(fire, self.end_date) if self.end_date else fire

    def next_fire_times(self, start: datetime, count: int) -> list[datetime]:
        """The first `count` fire times at or after `start` (aware), each after the one before, as
        the scheduler runs them (fewer if the trigger ends)."""
        fires: list[datetime] = []
        fire = self.get_next_fire_time(None, start)
        while fire is not None and len(fires) < count:
            fires.append(fire)
            fire = self.get_next_fire_time(fire, fire)
        return fires


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


_NTH_WEEKDAY = re.compile(r"(?i)\b(1st|2nd|3rd|4th|5th|last)\s+(mon|tue|wed|thu|fri|sat|sun)\b")


def build_cadence_trigger(cron: str, zone: ZoneInfo) -> CadenceTrigger:
    """`minute hour day month day-of-week`, read as crontab reads it, in `zone`.

    Raises ConfigError naming the expression for a wrong field count, a bad field, an expression
    that names no date at all (`0 7 31 2 *`), or one that restricts both the day of the month and
    the day of the week (`0 7 1 * MON`): crontab ORs those two fields (POSIX crontab, Vixie cron) and
    APScheduler ANDs them, so such an expression means different days to different readers; the
    error shows the unambiguous spellings (`1st mon`, `last fri` in the day field; one field alone).
    """
    # APScheduler's "xth weekday" / "last weekday" day expressions hold a space: one field
    parts = _NTH_WEEKDAY.sub(lambda m: f"{m.group(1)}\0{m.group(2)}", cron.strip()).split()
    parts = [part.replace("\0", " ") for part in parts]
    if len(parts) != 5:
        raise ConfigError(f"schedule cron {cron!r}: expected 5 fields (minute hour day month weekday), "
                          f"e.g. '0 7 * * MON'")
    minute, hour, day, month, weekday = parts
    weekdays = crontab_weekdays(weekday, cron)
    if day not in ("*", "?") and weekdays != "*":
        raise ConfigError(
            f"schedule cron {cron!r} restricts both the day of the month ({day}) and the day of the week "
            f"({weekday}): crontab runs on days matching either, mailer (APScheduler) only on days matching both; "
            f"say which you mean: a weekday of the month in the day field ('{minute} {hour} 1st mon {month} *', "
            f"'last fri'), or one of the two ('{minute} {hour} {day} {month} *', '{minute} {hour} * {month} {weekday}')")
    try:
        trigger = CadenceTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=weekdays,
                                 timezone=zone)
    except ValueError as exc:
        raise ConfigError(f"schedule cron {cron!r}: {exc}") from None
    if trigger.next_wall_time(datetime(2000, 1, 1)) is None:
        raise ConfigError(f"schedule cron {cron!r}: names no date that exists (it would never run)")
    return trigger
