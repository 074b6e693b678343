"""`mailer schedule run` and `schedule list`, and the schedule's presentation for people."""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta, timezone

import click

from ..config import Settings
from .main import _settings, handle_errors, main

log = logging.getLogger("mailer")
from ..wallclock import format_moment
from ..wording import format_span, ledger_text
# The planning, the ledger and their libraries (SQLAlchemy, APScheduler's trigger, Jinja) are imported
# by the functions that use them: `mailer --help` and the other commands start without them.


@main.group()
def schedule() -> None:
    """Sending at the right time, by itself."""


@schedule.command("run")
@handle_errors
def schedule_run() -> None:
    """Long-lived scheduler: sends each issue at its send_at and on the cadence; stops cleanly on SIGTERM."""
    from ..scheduling.runtime import run_scheduler
    run_scheduler(_settings())


@schedule.command("list")
@click.option("--now", "now_text", default=None, metavar="ISO",
              help="Show the schedule as of this moment (ISO 8601, e.g. 2027-03-29T00:00:00+02:00; "
                   "without an offset, in MAILER_TIMEZONE) instead of the current time.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (shape above).")
@handle_errors
def schedule_list(now_text: str | None, as_json: bool) -> None:
    """What is due, ready, held or missed, when (local zone and UTC), and the cadence's next 5 runs.

    \b
    --json prints one object:
      now, now_local        the moment shown (ISO 8601, UTC and MAILER_TIMEZONE)
      timezone, grace_seconds
      issues[]              slug, date, send_at, send_at_local, send_at_utc,
                            state (sent|paused|draft|placeholder|unbuildable|error|scheduled|
                                   due|missed|unscheduled),
                            due, missed, draft, ready, not_ready, cadence_run, warnings[],
                            ledger {status, sent, total, left, counts, paused_reason, text}, job, error,
                            send_local, waves[] {zone, at, at_utc, recipients, sent, left,
                                                 state (pending|due|missed|released|sent)}
      cadence               null, or cron, timezone, next_runs[] {at, at_utc, issue},
                            next_fire_local, next_fire_utc, next_issue, stored_run, stored_run_state
      cadence_in_flight[]   slug, started, ledger, resumable
    Times with an offset are ISO 8601 with the zone's offset (2027-03-29T00:00:00+02:00).
    """
    from ..scheduling.plan import parse_moment
    settings = _settings()
    now = parse_moment(now_text, settings.zone) if now_text is not None else None
    click.echo(describe_schedule(settings, as_json=as_json, now=now))




def describe_schedule(settings: Settings, as_json: bool = False, now: datetime | None = None) -> str:
    """`mailer schedule list [--now ISO] [--json]`: every issue's state as of `now` (default: the
    current time), its send_at (local and UTC) and ledger; the cadence's next runs and what each sends."""
    from ..scheduling.plan import schedule_data
    from ..sending.status import LedgerView
    from ..store import open_store, utcnow
    store = open_store(settings.database_url)
    try:
        data = schedule_data(settings, store, now or utcnow())
    finally:
        store.close()
    for item in (*data["issues"], *data["cadence_in_flight"]):  # each ledger said as the scheduler's log says it
        ledger = item["ledger"]
        ledger["text"] = ledger_text(LedgerView(ledger["status"], ledger["counts"], ledger["paused_reason"]))
    return json.dumps(data, ensure_ascii=False, indent=2) if as_json else schedule_text(data, settings)


def schedule_text(data: dict, settings: Settings) -> str:
    """`schedule_data` for people: one line per issue that matters now, then the cadence's runs."""
    from ..scheduling.plan import RECENT
    from ..sending.waves import Wave, wave_table
    zone, schedule_zone = settings.zone, settings.schedule_zone
    now = datetime.fromisoformat(data["now"])
    grace = timedelta(seconds=data["grace_seconds"])
    cadence = data["cadence"]
    lines = [f"now {format_moment(now, zone)}; grace {format_span(grace)}"]
    older_sent = 0
    for row in data["issues"]:
        slug, state = row["slug"], row["state"]
        send_at = datetime.fromisoformat(row["send_at_utc"]) if row["send_at_utc"] else None
        if state == "sent":
            when = send_at or datetime.combine(date.fromisoformat(row["date"]), datetime.min.time(), timezone.utc)
            if now - when > RECENT:
                older_sent += 1
                continue
        if row["waves"]:
            lines.append(f"{slug}  send_local {row['send_local']} (each subscriber's zone)  {row['ledger']['text']}  "
                         f"{_local_note(row, grace)}".rstrip())
            lines.extend(wave_table([Wave(w["zone"], datetime.fromisoformat(w["at_utc"]), w["recipients"], w["sent"],
                                          w["left"], w["state"]) for w in row["waves"]], indent="    "))
            continue
        where = f"send_at {format_moment(send_at, zone)}" if send_at else f"dated {row['date'] or '?'}"
        lines.append(f"{slug}  {where}  {row['ledger']['text']}  {_note(row, send_at, now, grace, cadence)}".rstrip())
    if older_sent:
        lines.append(f"({older_sent} issue{'s' if older_sent > 1 else ''} sent more than {RECENT.days} days ago "
                     f"not shown; --json lists every issue)")
    if not data["issues"]:
        lines.append(f"no issue folder in {settings.issues_dir}")
    if cadence is None:
        lines.append("cadence: none (set [schedule] cron in mailer.toml, e.g. cron = \"0 7 * * MON\")")
    else:
        first = datetime.fromisoformat(cadence["next_fire_utc"]) if cadence["next_fire_utc"] else None
        lines.append(f"cadence: {cadence['cron']!r} ({cadence['timezone']}), next run "
                     f"{format_moment(first, schedule_zone)} → {cadence['next_issue'] or 'nothing ready yet'}")
        lines.append(f"next {len(cadence['next_runs'])} runs:")
        for run in cadence["next_runs"]:
            lines.append(f"  {run['at']}  → {run['issue'] or 'nothing ready yet'}")
        stored = datetime.fromisoformat(cadence["stored_run"]) if cadence["stored_run"] else None
        if cadence["stored_run_state"] == "missed":
            lines.append(f"cadence: MISSED the run due {format_moment(stored, schedule_zone)}"
                         " (the scheduler was not running; beyond grace, it will not run)")
        elif cadence["stored_run_state"] == "due":
            lines.append(f"cadence: the run due {format_moment(stored, schedule_zone)}"
                         " has not happened yet (within grace: it runs when `mailer schedule run` starts)")
    for item in data["cadence_in_flight"]:
        started = datetime.fromisoformat(item["started"])
        what = "resumed at the next start" if item["resumable"] else "MISSED: beyond grace, finish it with `mailer send`"
        lines.append(f"cadence send of {item['slug']} started {format_moment(started, schedule_zone)}: "
                     f"{item['ledger']['text']}, {what}")
    return "\n".join(lines)


def _local_note(row: dict, grace: timedelta) -> str:
    slug, state = row["slug"], row["state"]
    if state in ("error", "draft", "placeholder", "unbuildable", "paused"):
        return _note(row, None, datetime.now(timezone.utc), grace, None)
    missed = [w for w in row["waves"] if w["state"] == "missed"]
    if missed:
        people = sum(w["left"] for w in missed)
        return (f"MISSED: {len(missed)} wave(s), {people} recipient(s), beyond the grace of {format_span(grace)}: "
                f"not sent automatically (`mailer send {slug} --release-missed` sends them now)")
    if state == "due":
        return "DUE: a wave is being released by `mailer schedule run`"
    if state == "scheduled":
        return "waves released by `mailer schedule run`" + ("" if row["job"] else " (picked up at its next scan)")
    return ""


def _note(row: dict, send_at: datetime | None, now: datetime, grace: timedelta, cadence: dict | None) -> str:
    slug, state = row["slug"], row["state"]
    if state == "error":
        return f"ERROR: {row['error']}"
    if state in ("draft", "placeholder", "unbuildable"):
        more = len(row["warnings"]) - 1
        return (f"{state.upper()}: not sent by the scheduler: {row['warnings'][0]}"
                + (f" (and {more} more: `mailer build {slug}` lists them)" if more else ""))
    if state == "paused":
        return f"PAUSED: resume with `mailer send {slug}`"
    if state == "scheduled" and send_at is not None:
        return f"scheduled, in {format_span(send_at - now)}" + ("" if row["job"] else " (picked up by `schedule run`)")
    if state == "due" and send_at is not None:
        return (f"DUE since {format_span(now - send_at)} (within grace for {format_span(send_at + grace - now)} "
                "more): sent by `mailer schedule run`")
    if state == "missed" and send_at is not None:
        return (f"MISSED: due {format_span(now - send_at)} ago, beyond the grace of {format_span(grace)}; "
                f"not sent automatically (`mailer send {slug}` to send it anyway)")
    if state != "unscheduled":
        return ""
    if cadence is None:
        return f"no send_at and no cadence: send it with `mailer send {slug}`"
    if row["cadence_run"]:
        return f"READY: sent by the cadence run of {row['cadence_run']}"
    if row["ready"]:
        return f"READY: waits its turn (after the next {len(cadence['next_runs'])} cadence runs)"
    return f"not ready for the cadence: {row['not_ready']}"
