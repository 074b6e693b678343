"""`mailer send`, `status`, `worker`: the send loop's commands and their output."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import datetime
from typing import Any, Callable, Iterable

import click

from ..errors import MailerError, UnresumableSend
from .main import _settings, _store, handle_errors, main, progress_display

log = logging.getLogger("mailer")


@main.command()
@click.argument("issue_ref", metavar="ISSUE")
@click.option("--test", "test_addresses", default=None, metavar="ADDR[,ADDR]",
              help="Send a test to these addresses only (ADDR or 'Name <ADDR>', comma-separated; quote a name "
                   "holding a comma); the ledger is not touched.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--retry-failed", is_flag=True, help="Queue failed deliveries again.")
@click.option("--include-new", is_flag=True, help="Also send to subscribers who joined after the freeze.")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="SMTP: connections (default 1). SendGrid: requests in flight at once (default: as many as "
                   "MAILER_SENDGRID_IN_FLIGHT recipients allow, 4000 = 4 requests of 1000; more requests "
                   "make them smaller, within that bound).")
@click.option("--processes", default=None, type=click.IntRange(1, 64),
              help="Sending processes sharing the frozen recipients (one core each builds requests). Default "
                   "MAILER_SEND_PROCESSES, automatic: every core (at most 4) for a SendGrid send of 500,000 "
                   "recipients or more, else 1. The requests in flight are bounded for all of them together.")
@click.option("--allow-draft", is_flag=True,
              help="Send it as it is, even though it is a draft or still holds placeholders of `mailer issue new`.")
@click.option("--rebuild", is_flag=True,
              help="Freeze a new edition from the folder for the recipients not reached yet (refused, exit 7, "
                   "while another sender is sending it); those already sent are never sent again.")
@click.option("--now", "send_now", is_flag=True,
              help="A local-time send (send_local): send every wave now, whatever each subscriber's local time "
                   "(without it, `send` before the first wave is refused, exit 8: the scheduler releases the waves).")
@click.option("--release-missed", is_flag=True,
              help="A local-time send: also send the waves missed beyond the grace (MAILER_SCHEDULE_GRACE) now; "
                   "the later waves keep their time.")
@handle_errors
def send(issue_ref: str, test_addresses: str | None, yes: bool, retry_failed: bool, include_new: bool,
         workers: int | None, processes: int | None, allow_draft: bool, rebuild: bool, send_now: bool,
         release_missed: bool) -> None:
    """Send ISSUE to every active subscriber (or a test to --test addresses).

    Every build warning is printed first. An issue whose issue.toml says draft = true, or that still
    holds a placeholder of `mailer issue new` (subject, preheader, intro, brief), is refused with the
    file:line (remove the line or write the text, or pass --allow-draft); --test works on both.

    The first send freezes the issue as it renders then (its edition) with its recipients; resuming,
    retrying and workers send that edition even if the folder changed since (a line says so).
    --rebuild makes a new edition for those not reached yet.

    A local-time send (send_local in issue.toml) goes out in waves, each subscriber at that wall time
    in their own zone, released by `mailer schedule run`. By hand, `send` sends the waves due now
    (within the grace), is refused before the first one (exit 8), and leaves missed waves unless
    --release-missed; --now sends every wave at once.
    """
    release = "all" if send_now else "missed" if release_missed else "due"
    from ..sending import dispatch
    from ..sending.prepare import plan_send, resume_notice, send_warnings
    settings = _settings()
    if test_addresses:
        from ..dkim_signing import dkim_warnings  # the signature the test carries, as a real send warns
        for warning in dkim_warnings(settings):
            click.echo(f"warning: {warning}", err=True)
        results = dispatch.send_test(settings, issue_ref, [test_addresses])
        failed = [r for r in results if r.outcome != "sent"]
        for result in results:
            where = f" ({result.provider_message_id})" if result.provider_message_id else ""
            status = "sent" if result.outcome == "sent" else f"NOT sent: {result.error}"
            click.echo(f"test to {result.message.recipient.email}: {status}{where}")
        sys.exit(1 if failed else 0)

    if not yes and not sys.stdin.isatty():
        raise MailerError("refusing to send without confirmation: add --yes")
    stop = threading.Event()
    if yes:  # unattended: a stop from here on is graceful (asked first, Ctrl-C still leaves the prompt)
        _install_stop_handlers(stop)
    store = _store(settings)
    for warning in send_warnings(settings, store, issue_ref, allow_draft=allow_draft, rebuild=rebuild):
        click.echo(f"warning: {warning}", err=True)
    if not rebuild:
        notice = resume_notice(settings, store, issue_ref)
        if notice:
            click.echo(notice, err=True)
    plan = plan_send(settings, store, issue_ref, include_new=include_new, retry_failed=retry_failed,
                     rebuild=rebuild, release=release)  # a refusal (a local-time send too early) comes first
    if not yes:
        if plan.recipients:  # nobody to send to (finished, empty audience): send_issue says why, unasked
            click.confirm(plan.describe(settings.backend), abort=True)
        _install_stop_handlers(stop)
    if stop.is_set():  # stopped while it rendered and planned: nothing frozen, claimed or sent by this run
        click.echo(f"{plan.slug}: stopped (SIGTERM or Ctrl-C) before "
                   f"sending; this run claimed and sent nothing", err=True)
        sys.exit(5)
    with progress_display("sending", None) as update:
        def on_progress(progress: dispatch.Progress) -> None:
            update(progress.done, f"sent {progress.sent}, failed {progress.failed}, {progress.rate:.0f}/s",
                   total=progress.total or None)

        report = dispatch.send_issue(settings, store, issue_ref, include_new=include_new, retry_failed=retry_failed,
                                     workers=workers, stop=stop, on_progress=on_progress, allow_draft=allow_draft,
                                     rebuild=rebuild, release=release, processes=processes)
    counts = report.counts
    if report.notice and rebuild:
        click.echo(report.notice, err=True)
    if report.already_finished:
        click.echo(f"{report.issue}: already sent ({counts['sent']} sent, {counts['failed']} failed, "
                   f"{counts['skipped']} skipped); nothing to do (--retry-failed, --include-new)")
        return
    click.echo(f"{report.issue}: sent {report.sent_now} now ({counts['sent']} in all), failed {counts['failed']}, "
               f"skipped {counts['skipped']}, left {counts['queued'] + counts['sending']} "
               f"in {report.elapsed:.1f}s via {settings.backend}")
    folder = settings.provider.writes_to(settings) if settings.provider.writes_to else None
    if folder is not None and report.sent_now:  # a provider that files messages (the outbox)
        click.echo(f"messages are in {folder / report.issue}")
    if report.waves:
        from ..sending.waves import wave_table
        click.echo("waves (each subscriber at send_local in their own zone):")
        for line in wave_table(list(report.waves)):
            click.echo(line)
    if report.waiting:
        ahead = next(w for w in report.waves if w.state == "pending")
        click.echo(f"{report.waiting} recipient(s) wait for their wave (next: {ahead.zone} at "
                   f"{ahead.as_dict()['at']}); `mailer schedule run` releases each wave at its time")
    if report.missed:
        click.echo(f"warning: {report.missed} recipient(s) of wave(s) missed beyond the grace were NOT sent; "
                   f"`mailer send {report.issue} --release-missed` sends them now", err=True)
    if counts["queued"] + counts["sending"] - report.waiting - report.missed > 0:
        if report.held_by:
            click.echo(f"{counts['sending']} deliveries are still held by another sender of this issue "
                       f"({', '.join(report.held_by)}); run the same command again to wait for it", err=True)
        elif stop.is_set():  # a graceful stop: what went out is recorded, the rest of every claim is queued again
            click.echo(f"{report.issue}: stopped (SIGTERM or Ctrl-C) after {report.sent_now} sent by this run; "
                       f"{counts['queued'] + counts['sending']} left queued; run the same command again to resume",
                       err=True)
        else:
            click.echo("stopped before the end; run the same command again to resume", err=True)
        sys.exit(5)


@main.command()
@click.argument("issue_ref", metavar="[ISSUE]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (without ISSUE: a list).")
@handle_errors
def status(issue_ref: str | None, as_json: bool) -> None:
    """Ledger counts by status for ISSUE; without ISSUE, one line per issue sent or being sent, newest first.

    \b
    --json prints one object per issue (a list of them without ISSUE):
      issue, subject, status (draft|sending|paused|sent), paused_reason,
      counts {queued, sending, sent, failed, skipped}, total,
      frozen_at, started_at, finished_at, when (ISO 8601 UTC or null; when = the last of them),
      edition {number, created_at, reason (send|rebuild|migrated), subject, template, content_hash,
      segment and language (issue.toml's, frozen with it; null when none), editions (how many)} or null
      before the first freeze,
      send_local (a local-time send's wall time, or null), waves[] {zone, at, at_utc, recipients, sent,
      left, state (pending|due|missed|released|sent)}
    A local-time send's waves are listed, and missed ones said MISSED (without ISSUE too).
    """
    from ..sending.status import issue_status, ledger_overview
    settings = _settings()
    store = _store(settings)
    from ..wallclock import format_moment
    if issue_ref is None:
        def line(item: dict, width: int) -> str:
            counts = item["counts"]
            when = item["when"] and format_moment(datetime.fromisoformat(item["when"]), settings.zone)
            in_flight = f" ({counts['sending']} in flight)" if counts["sending"] else ""
            paused = f" ({item['paused_reason']})" if item["paused_reason"] else ""
            missed = [w for w in item["waves"] if w["state"] == "missed"]
            if missed:
                paused += (f" MISSED {len(missed)} wave(s), {sum(w['left'] for w in missed)} recipient(s): "
                           f"--release-missed")
            return (f"{item['issue']:<{width}}  {item['status']:<7}  sent {counts['sent']}  failed {counts['failed']}  "
                    f"skipped {counts['skipped']}  queued {counts['queued'] + counts['sending']}{in_flight}  "
                    f"of {item['total']}  {when or '-'}{paused}")

        overview = ledger_overview(store, settings)
        _echo_overview(overview, as_json, overview, line, name=lambda item: item["issue"],
                       empty="no issue sent yet (no ledger); `mailer schedule list` shows the issue folders")
        return
    result = issue_status(settings, store, issue_ref)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    counts = result["counts"]
    click.echo(f"{result['issue']}: {result['status']}" + (f" ({result['paused_reason']})" if result["paused_reason"] else ""))
    edition = result["edition"]
    if edition:
        made = format_moment(datetime.fromisoformat(edition["created_at"]), settings.zone)
        click.echo(f"  edition {edition['number']} of {edition['editions']}, frozen {made} ({edition['reason']}; "
                   f"template {edition['template']}; sha256 {edition['content_hash'][:12]})"
                   + (f", segment: {edition['segment']}" if edition["segment"] else ""))
    _echo_figures([*((key, counts[key]) for key in ("sent", "failed", "skipped", "queued", "sending")),
                   ("total", result["total"])], width=8)
    if result["waves"]:
        from ..sending.waves import Wave, wave_table
        click.echo(f"  local-time send: send_local {result['send_local']}, waves:")
        for line in wave_table([Wave(w["zone"], datetime.fromisoformat(w["at_utc"]), w["recipients"], w["sent"],
                                     w["left"], w["state"]) for w in result["waves"]], indent="    "):
            click.echo(line)
        missed = [w for w in result["waves"] if w["state"] == "missed"]
        if missed:
            click.echo(f"  MISSED: {len(missed)} wave(s), {sum(w['left'] for w in missed)} recipient(s) not sent "
                       f"(beyond the grace): `mailer send {result['issue']} --release-missed` sends them now")


@main.command()
@click.argument("issue_ref", metavar="[ISSUE]", required=False)
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON object (without ISSUE: one list of them, newest first).")
@handle_errors
def report(issue_ref: str | None, as_json: bool) -> None:
    """After the send: recipients, sent, failed, bounced, complained, unsubscribed and clicks of ISSUE,
    with the complaint rate against Gmail's and Yahoo's 0.3 % limit; without ISSUE, one line per issue
    sent or being sent, newest first, with its state (finished, sending, paused, waves scheduled,
    missed waves) and when its send started and finished.

    \b
    --json prints {"issue", "recipients", "sent", "failed", "bounced", "complained", "unsubscribed",
      "clicks": {"total", "unique", "links": [{"url", "total", "unique"}]}, "complaint_rate", …}
      (clicks are zeros when click tracking was off; "opens" only with MAILER_TRACK_OPENS),
      "status" (draft|sending|paused|sent), "state" (as above), "paused_reason", "started_at",
      "finished_at" (ISO 8601 UTC or null), "waves" (a local-time send's, as `mailer status` shows them).
    """
    from ..sending.report import issue_report, percent, reports_overview
    settings = _settings()
    store = _store(settings)  # closed on exit
    if issue_ref is None:
        reports = reports_overview(store, settings)
        states = {item.issue: item.send_state().text("en") for item in reports}  # the Reports page's, in English
        state_width = max((len(state) for state in states.values()), default=0)

        def moment(value) -> str:  # noqa: ANN001 - one short column: local time and zone
            return value.astimezone(settings.zone).strftime("%Y-%m-%d %H:%M %Z")

        def line(item, width: int) -> str:  # noqa: ANN001 - an IssueReport
            clicks = (f"clicks {item.clicks_total} ({item.clicks_unique} unique; likely scanners excluded: "
                      f"{item.scanner_clicks})" if item.tracked else "clicks not tracked")
            flag = "  over 0.3 %!" if item.over_limit else ""
            started = moment(item.started_at) if item.started_at else "not started"
            finished = f"finished {moment(item.finished_at)}" if item.finished_at else "not finished"
            return (f"{item.issue:<{width}}  {states[item.issue]:<{state_width}}  started {started}  {finished}  "
                    f"sent {item.sent}/{item.recipients}  failed {item.failed}  "
                    f"bounced {item.bounced}  complained {item.complained} ({percent(item.complaint_rate)}){flag}  "
                    f"unsubscribed {item.unsubscribed}  {clicks}")

        _echo_overview(reports, as_json, [item.as_json() for item in reports], line, name=lambda item: item.issue,
                       empty="no issue sent yet (no ledger)")
        return
    item = issue_report(settings, store, issue_ref)
    if as_json:
        click.echo(json.dumps(item.as_json(), ensure_ascii=False))
        return
    click.echo(f"{item.issue}: {item.status} — {item.subject}")
    figures = [("recipients", item.recipients), ("sent", item.sent), ("failed", item.failed),
               ("skipped", item.skipped), ("queued", item.queued), ("bounced", item.bounced),
               ("soft bounced", item.soft_bounced), ("complained", item.complained),
               ("unsubscribed", item.unsubscribed),
               ("complaints", f"{percent(item.complaint_rate)} of sent (limit 0.30 %)")]
    if item.opens is not None:
        figures.append(("opens", f"{item.opens['total']} ({item.opens['unique']} unique; Apple Mail Privacy "
                                 f"Protection opens every message, so this overcounts)"))
    figures.append(("clicks", "not tracked (MAILER_TRACK_CLICKS or track_clicks = true in issue.toml)" if not item.tracked
                    else f"{item.clicks_total} ({item.clicks_unique} unique, {item.clickers} readers; "
                         f"likely scanners excluded: {item.scanner_clicks})"))
    _echo_figures(figures, width=13)
    if item.tracked:
        for link in item.links:
            click.echo(f"    {link['total']:>6} {link['unique']:>6}  {link['url']}")
    warning = item.warning()
    if warning:
        click.echo(warning, err=True)


def _echo_overview(items: list, as_json: bool, json_value: object, line: Callable[[Any, int], str], *,
                   name: Callable[[Any], str], empty: str) -> None:
    """`status` and `report` without ISSUE: `json_value` as one JSON document, or `empty`, or one
    `line(item, width)` per item (`width`: the longest `name(item)`, so the columns line up)."""
    if as_json:
        click.echo(json.dumps(json_value, ensure_ascii=False))
        return
    if not items:
        click.echo(empty)
        return
    width = max(len(name(item)) for item in items)
    for item in items:
        click.echo(line(item, width))


def _echo_figures(figures: Iterable[tuple[str, object]], *, width: int) -> None:
    """`status ISSUE` and `report ISSUE`: one indented `label value` line each, labels padded to `width`."""
    for label, value in figures:
        click.echo(f"  {label:<{width}} {value}")


@main.command()
@click.option("--once", is_flag=True, help="Drain what is queued now, then exit.")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes started together (one core each); a stop reaches all of them, and their "
                   "requests in flight are bounded together (MAILER_SENDGRID_IN_FLIGHT for all).")
@handle_errors
def worker(once: bool, processes: int) -> None:
    """Claim and send queued deliveries of any issue (run as many as you like on PostgreSQL)."""
    from ..sending.dispatch import work_queue
    settings = _settings()
    stop = threading.Event()
    _install_stop_handlers(stop)
    try:
        if processes > 1:
            from ..providers import require_ready
            from ..sending.processes import work_in_processes
            require_ready(settings)  # the one-line refusal before any process starts
            sent = work_in_processes(settings, processes, stop=stop, once=once)
        else:
            sent = work_queue(settings, _store(settings), stop=stop, once=once)
    except UnresumableSend as exc:  # the count, then the one line and exit 9 (handle_errors)
        click.echo(f"worker stopped: {exc.sent} sent")
        raise
    click.echo(f"worker stopped: {sent} sent")


def _install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT: the message or request in flight finishes and is recorded, then the run stops;
    what is still in flight a few seconds later (a stalled server) is cut and stays queued. A second
    signal stops at once (rows in flight go back to the queue). The previous handlers come back when
    the command ends (whatever way it ends), so a process that runs commands in turn keeps its own."""
    def handler(signum, _frame) -> None:  # noqa: ANN001
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("signal %s: finishing what is in flight, then stopping", signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)

    click.get_current_context().call_on_close(restore)


