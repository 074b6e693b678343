"""Wall-clock time in a zone, by one rule (the cadence's, `scheduling.cadence`, and `send_at`'s):

    a wall time W happens at the first instant at which the zone's clocks show W or later.

A repeated wall time (autumn) is its first occurrence; a skipped one (spring) is the instant the
clocks jump over it. Top level because both content (`issue.toml`'s `send_at` without an offset)
and scheduling read wall times. `format_moment` writes an instant for people (CLI, logs, notices).
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

UTC = timezone.utc


def wall_time(moment: datetime, zone: ZoneInfo) -> datetime:
    """What the clocks of `zone` show at `moment` (aware), as a naive datetime."""
    return moment.astimezone(zone).replace(tzinfo=None)


def wall_time_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant (aware, UTC) at which the clocks of `zone` show `wall` (naive) or later.

    Repeated wall time (autumn): its first occurrence. Skipped wall time (spring): the instant the
    clocks jump over it. Whole seconds: every zone's transitions fall on whole seconds.
    """
    readings = [wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)]
    shown = [instant for instant in readings if wall_time(instant, zone) == wall]
    if shown:
        return min(shown)
    # In a gap the two readings straddle the jump: the clocks show less than `wall` at the earlier
    # one and more at the later one. Bisect (on whole seconds) for the first instant showing >= wall.
    low, high = (int(instant.timestamp()) for instant in sorted(readings))
    while high - low > 1:
        middle = (low + high) // 2
        if wall_time(datetime.fromtimestamp(middle, UTC), zone) >= wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def localize(wall: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall time read in `zone` (send_at or --now without an offset), aware, by the same rule:
    a time the spring change skips → the instant of the jump; a repeated one → its first occurrence."""
    return wall_time_instant(wall, zone).astimezone(zone)


def format_moment(moment: datetime | None, zone: ZoneInfo) -> str:
    """`2026-12-01 07:00 CET (2026-12-01 06:00 UTC)`, for people; "-" for None."""
    if moment is None:
        return "-"
    local = moment.astimezone(zone)
    utc = moment.astimezone(timezone.utc)
    clock = "%Y-%m-%d %H:%M:%S" if local.second or local.microsecond else "%Y-%m-%d %H:%M"
    return f"{local.strftime(clock)} {local.tzname()} ({utc.strftime(clock)} UTC)"
