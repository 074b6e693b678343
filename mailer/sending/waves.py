"""Local-time delivery: `send_local = "2027-01-14T07:00"` in issue.toml sends the issue to each
subscriber when the clocks of *their* zone show that wall time, in waves (one per zone and instant).

Whose zone: the subscriber's `timezone` attribute (an IANA name, imported from a `timezone` CSV
column or Mailchimp's `TIMEZONE`), else MAILER_TIMEZONE (also for a stored name this machine's tz
database does not know).

Which instant (`local_instant`), the rule of the cadence (`wallclock.wall_time_instant`), checked in the
tests against a minute-by-minute walk over every zone's DST changes of the year:
- a wall time the spring change skips in a zone (02:30 in Europe/Paris on 2027-03-28) → the first
  instant after the gap (03:00 CEST, the moment the clocks jump);
- a wall time the autumn change repeats (02:30 on 2027-10-31 in Europe/Paris) → its first
  occurrence (02:30 CEST, `fold=0`), never both.

Here in `sending` because the freeze stamps the rows and claims honour them; the scheduler
(`scheduling/runtime.py`) and `schedule list` (`scheduling/plan.py`) read the same waves.

Lifecycle. Before the freeze the waves are *planned* from the current audience (`planned_waves`);
the freeze happens at the earliest wave due (the scheduler's job at that instant, or `mailer send`
once a wave is due) and stamps every frozen row with its release instant and zone (`assign_due`);
from then on the waves are the ledger's (`frozen_waves`) and a claim takes only rows released
(`Store.claim_deliveries`). Wave states: `pending` (its instant is ahead), `due` (passed, within the
grace MAILER_SCHEDULE_GRACE, recipients left), `missed` (passed beyond the grace with recipients
left: never sent late by itself), `released` (missed, then released by `mailer send --release-missed`
or `--now`), `sent` (nobody left).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import NotDueYet
from ..wallclock import format_moment, wall_time_instant

UTC = timezone.utc
WAVE_STATES = ("pending", "due", "missed", "released", "sent")


@lru_cache(maxsize=4096)
def resolve_zone(name: str | None) -> ZoneInfo | None:
    """The zone a `timezone` attribute names (IANA, e.g. `America/New_York`); None when empty or unknown
    to this machine's tz database (the subscriber then falls back to MAILER_TIMEZONE)."""
    if not name or not isinstance(name, str) or name != name.strip() or name.startswith(("/", ".")):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def local_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """When the clocks of `zone` show `wall` (naive), aware in `zone`: in a spring-forward gap, the first
    instant after it; a repeated (fall-back) wall time, its first occurrence (fold=0)."""
    return wall_time_instant(wall, zone).astimezone(zone)


@dataclass(frozen=True)
class Wave:
    """One zone's share of a local-time send."""

    zone: str
    at: datetime         # aware (UTC): the release instant
    recipients: int
    sent: int = 0        # rows settled (sent, failed or skipped)
    left: int = 0        # rows queued or being sent
    state: str = "pending"

    def as_dict(self) -> dict[str, Any]:
        """`{"zone", "at" (ISO 8601 with the zone's offset), "at_utc", "recipients", "sent", "left", "state"}`."""
        return {"zone": self.zone, "at": self.at.astimezone(ZoneInfo(self.zone)).isoformat(),
                "at_utc": self.at.astimezone(UTC).isoformat(), "recipients": self.recipients, "sent": self.sent,
                "left": self.left, "state": self.state}


def _state(at: datetime, left: int, now: datetime, grace: timedelta, released_before: datetime | None) -> str:
    if left == 0:
        return "sent"
    if at > now:
        return "pending"
    if now - at <= grace:
        return "due"
    if released_before is not None and at <= released_before:
        return "released"
    return "missed"


def planned_waves(zones: dict[str | None, int], wall: datetime, default_zone: ZoneInfo, now: datetime,
                  grace: timedelta) -> list[Wave]:
    """The waves a freeze now would make: `zones` is `Store.audience_zones` ({attribute: subscribers});
    unknown or missing zones count in `default_zone`'s wave. Sorted by instant, then zone."""
    counts: dict[str, int] = {}
    for value, count in zones.items():
        zone = resolve_zone(value) or default_zone
        counts[zone.key] = counts.get(zone.key, 0) + count
    waves = []
    for name, count in counts.items():
        at = wall_time_instant(wall, ZoneInfo(name))
        waves.append(Wave(name, at, count, 0, count, _state(at, count, now, grace, None)))
    return sorted(waves, key=lambda w: (w.at, w.zone))


def frozen_waves(rows: list[dict[str, Any]], now: datetime, grace: timedelta,
                 released_before: datetime | None) -> list[Wave]:
    """The ledger's waves: `rows` is `Store.wave_rows` (rows grouped by zone and release instant)."""
    waves = []
    for row in rows:
        if row["due_at"] is None or row["zone"] is None:
            continue
        left = int(row["queued"] or 0) + int(row["sending"] or 0)
        settled = sum(int(row[key] or 0) for key in ("sent", "failed", "skipped"))
        waves.append(Wave(row["zone"], row["due_at"], left + settled, settled, left,
                          _state(row["due_at"], left, now, grace, released_before)))
    return sorted(waves, key=lambda w: (w.at, w.zone))


def assign_due(store, conn, issue_id: int, wall: datetime, default_zone: ZoneInfo) -> None:  # noqa: ANN001
    """Stamp the issue's frozen rows that have no release instant yet with theirs (the freeze, and
    `--include-new`): two UPDATEs whatever the number of zones; MAILER_TIMEZONE (`default_zone`) for
    rows without a zone this machine knows."""
    instants = {}
    for value in store.stamp_zones(conn, issue_id):
        zone = resolve_zone(value)
        if zone is not None:
            instants[value] = wall_time_instant(wall, zone)
    store.assign_due(conn, issue_id, instants, (default_zone.key, wall_time_instant(wall, default_zone)))


def issue_waves(store, slug: str, wall: datetime | None, list_name: str | None, default_zone: ZoneInfo,  # noqa: ANN001
                now: datetime, grace: timedelta, segment=None) -> tuple[bool, list[Wave]]:  # noqa: ANN001
    """(frozen, waves) of a local-time send: the ledger's once frozen, else planned from the audience
    (`wall` from issue.toml; `list_name` and `segment` narrow it as the freeze will); (False, []) for
    an issue that is not one."""
    with store.connect() as conn:
        row = store.issue_row(conn, slug)
        if row is not None and row.frozen_at is not None and row.send_local:
            from ..store import as_utc
            return True, frozen_waves(store.wave_rows(conn, row.id), now, grace, as_utc(row.released_before))
        if row is not None and row.frozen_at is not None:
            return True, []  # frozen as an ordinary send
        if wall is None:
            return False, []
        return False, planned_waves(store.audience_zones(conn, list_name, segment), wall, default_zone, now, grace)


def ledger_waves(settings, store, slug: str) -> list[Wave]:  # noqa: ANN001
    """The waves of a frozen local-time send as of now; [] for any other issue."""
    from ..store import utcnow
    frozen, found = issue_waves(store, slug, None, None, settings.zone, utcnow(),
                                timedelta(seconds=settings.schedule_grace))
    return found if frozen else []


def first_wave_check(settings, store, conn, issue, list_name: str | None, now: datetime,  # noqa: ANN001
                     release: str) -> None:
    """Before a local-time send (`issue.send_local`) is frozen: some wave must be due (`release` "due"),
    or passed ("missed": `--release-missed`); "all" (`--now`) always goes. Raises NotDueYet naming
    issue.toml's line and what to do otherwise (the caller has touched nothing)."""
    from ..content.issue import where
    grace = timedelta(seconds=settings.schedule_grace)
    planned = planned_waves(store.audience_zones(conn, list_name, issue.segment), issue.send_local, settings.zone,
                            now, grace)
    if not planned or release == "all" or any(w.state == "due" for w in planned):
        return
    first = planned[0]
    what = (f"{issue.slug} is a local-time send ({where(issue, 'send_local')}: send_local = "
            f"{issue.send_local.isoformat(timespec='minutes')})")
    if first.state == "pending":
        raise NotDueYet(f"refusing to send now: {what}; its first wave ({first.zone}, {first.recipients} "
                        f"recipient(s)) is due at {format_moment(first.at, ZoneInfo(first.zone))}: `mailer schedule "
                        f"run` releases each wave at its time, `mailer send {issue.slug} --now` sends to everyone "
                        f"now; nothing was sent")
    if release == "missed":
        return
    missed = [w for w in planned if w.state == "missed"]
    raise NotDueYet(f"refusing to send: {what}; {len(missed)} wave(s) passed more than the grace "
                    f"(MAILER_SCHEDULE_GRACE, {int(grace.total_seconds())} s) ago ({', '.join(w.zone for w in missed[:5])}"
                    f"{', …' if len(missed) > 5 else ''}) and none is due now: `--release-missed` sends the missed "
                    f"waves now (the later ones keep their time), `--now` sends to everyone now; nothing was sent")


def wave_table(waves: list[Wave], indent: str = "  ") -> list[str]:
    """The waves as aligned text lines: zone, local time with offset, UTC, recipients, state."""
    if not waves:
        return []
    rows = [("zone", "at (local)", "at (UTC)", "recipients", "state")]
    for wave in waves:
        data = wave.as_dict()
        state = wave.state.upper() if wave.state in ("missed", "due") else wave.state
        if wave.sent and wave.left:
            state += f" ({wave.sent} done, {wave.left} left)"
        rows.append((wave.zone, data["at"], wave.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                     str(wave.recipients), state))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return [indent + "  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(r)).rstrip()
            for r in rows]
