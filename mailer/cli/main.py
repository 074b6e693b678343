"""The `mailer` command: a thin layer over the library.

Each command calls one library function and turns library errors into one line on stderr and a
non-zero exit code (MailerError.exit_code). Long work shows a progress bar on a terminal and plain
lines otherwise.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import date, datetime
from functools import wraps
from pathlib import Path
from typing import Callable, Iterator

import click

from ..config import LANGUAGES, Settings, load_settings
from ..errors import MailerError
from ..statuses import SUBSCRIBER_STATUSES

log = logging.getLogger("mailer")


def _settings() -> Settings:
    return load_settings()


def _store(settings: Settings):
    from ..store import open_store
    return open_store(settings.database_url)


def handle_errors(func: Callable) -> Callable:
    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MailerError as exc:
            from ..redact import strip_credentials
            click.echo(f"error: {strip_credentials(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


def _is_tty() -> bool:
    return sys.stdout.isatty()


@contextmanager
def progress_display(label: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yields update(done, detail, total=None). A rich bar on a terminal; otherwise a plain line every 2 s
    on stderr (stdout is the command's result, for scripts)."""
    if _is_tty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[detail]}"), TimeRemainingColumn(), transient=False) as bar:
            task = bar.add_task(label, total=total, detail="")
            yield lambda done, detail="", total=None: bar.update(task, completed=done, detail=detail,
                                                                  **({"total": total} if total else {}))
        return
    last = [0.0]
    known_total = [total]

    def update(done: int, detail: str = "", total: int | None = None) -> None:
        known_total[0] = total or known_total[0]
        now = time.monotonic()
        if now - last[0] >= 2.0:
            last[0] = now
            of = f"/{known_total[0]}" if known_total[0] else ""
            click.echo(f"{label}: {done}{of} {detail}".rstrip(), err=True)  # stdout stays the result

    yield update


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every decision.")
@click.version_option(package_name="mailer")
def main(verbose: bool) -> None:
    """mailer: newsletters from brief files to a managed list; nobody skipped, each person's message
    recorded once accepted (see the README for what a crash may repeat)."""
    from ..redact import RedactingFilter, quiet_http_loggers

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "sqlalchemy", "apscheduler.executors", "apscheduler.scheduler", "uvicorn.access",
                  "markdown_it"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # HTTP clients log credentials and whole payloads (every address) at DEBUG: never, even with -v
    quiet_http_loggers()
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())


# ----- issues ------------------------------------------------------------------------------------
@main.group()
def issue() -> None:
    """Issue folders."""


@issue.command("new")
@click.argument("slug")
@click.option("--date", "issue_date", default=None, help="Issue date (YYYY-MM-DD), default today.")
@handle_errors
def issue_new(slug: str, issue_date: str | None) -> None:
    """Scaffold issues/<date>-<slug>/ with issue.toml and briefs.txt."""
    from ..content.issue import scaffold_issue
    settings = _settings()
    folder = scaffold_issue(settings, slug, date.fromisoformat(issue_date) if issue_date else date.today())
    click.echo(f"created {folder}")


@main.command()
@click.argument("issue_ref", metavar="ISSUE")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default build/<issue>).")
@click.option("--spam-check", is_flag=True,
              help="Score email.eml with SpamAssassin's local rules (spamassassin -L -t) and list the rules that fired.")
@handle_errors
def build(issue_ref: str, out_dir: Path | None, spam_check: bool) -> None:
    """Write email.html, email.txt and email.eml (to a sample recipient)."""
    from ..web.preview import build_issue
    settings = _settings()
    result = build_issue(settings, issue_ref, out_dir)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"built {result.slug}: {len(result.html_bytes) / 1024:.1f} KB HTML, {len(result.briefs)} briefs "
               f"-> {result.out_dir}")
    if spam_check:
        from ..content.spamcheck import SpamCheckUnavailable, spam_check as check
        try:
            report = check(result.eml)
        except SpamCheckUnavailable as exc:
            click.echo(f"spam check skipped: {exc}")
            return
        for line in report.lines():
            click.echo(line)


@main.command()
@click.argument("issue_ref", metavar="ISSUE")
@click.option("--port", default=8025, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@handle_errors
def preview(issue_ref: str, port: int, host: str) -> None:
    """Local preview: 600 px and 375 px, text part, headers, warnings; reloads on file change."""
    from ..web.preview import serve_preview
    settings = _settings()
    click.echo(f"preview of {issue_ref} on http://{host}:{port}/ (Ctrl-C to stop)")
    serve_preview(settings, issue_ref, host=host, port=port)


@main.command()
@click.argument("issue_ref", metavar="ISSUE")
@click.option("--test", "test_addresses", default=None, metavar="ADDR[,ADDR]",
              help="Send a test to these addresses only; the ledger is not touched.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--retry-failed", is_flag=True, help="Queue failed deliveries again.")
@click.option("--include-new", is_flag=True, help="Also send to subscribers who joined after the freeze.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--allow-draft", is_flag=True,
              help="Send it as it is, even though it is a draft or still holds placeholders of `mailer issue new`.")
@click.option("--rebuild", is_flag=True,
              help="Freeze a new edition from the folder for the recipients not reached yet (refused, exit 7, "
                   "while another sender is sending it); those already sent are never sent again.")
@handle_errors
def send(issue_ref: str, test_addresses: str | None, yes: bool, retry_failed: bool, include_new: bool,
         workers: int, allow_draft: bool, rebuild: bool) -> None:
    """Send ISSUE to every active subscriber (or a test to --test addresses).

    Every build warning is printed first. An issue whose issue.toml says draft = true, or that still
    holds a placeholder of `mailer issue new` (subject, preheader, intro, brief), is refused with the
    file:line (remove the line or write the text, or pass --allow-draft); --test works on both.

    The first send freezes the issue as it renders then (its edition) with its recipients; resuming,
    retrying and workers send that edition even if the folder changed since (a line says so).
    --rebuild makes a new edition for those not reached yet.
    """
    from ..sending import dispatch
    settings = _settings()
    if test_addresses:
        results = dispatch.send_test(settings, issue_ref, test_addresses.split(","))
        failed = [r for r in results if r.outcome != "sent"]
        for result in results:
            where = f" ({result.provider_message_id})" if result.provider_message_id else ""
            status = "sent" if result.outcome == "sent" else f"NOT sent: {result.error}"
            click.echo(f"test to {result.message.recipient.email}: {status}{where}")
        sys.exit(1 if failed else 0)

    store = _store(settings)
    if not yes and not sys.stdin.isatty():
        raise MailerError("refusing to send without confirmation: add --yes")
    for warning in dispatch.send_warnings(settings, store, issue_ref, allow_draft=allow_draft, rebuild=rebuild):
        click.echo(f"warning: {warning}", err=True)
    if not rebuild:
        notice = dispatch.resume_notice(settings, store, issue_ref)
        if notice:
            click.echo(notice, err=True)
    if not yes:
        plan = dispatch.plan_send(settings, store, issue_ref, include_new=include_new, retry_failed=retry_failed,
                                  rebuild=rebuild)
        if plan.recipients:  # nobody to send to (finished, empty audience): send_issue says why, unasked
            click.confirm(plan.describe(settings.backend), abort=True)
    stop = threading.Event()
    _install_stop_handlers(stop)
    with progress_display("sending", None) as update:
        def on_progress(progress: dispatch.Progress) -> None:
            update(progress.done, f"sent {progress.sent}, failed {progress.failed}, {progress.rate:.0f}/s",
                   total=progress.total or None)

        report = dispatch.send_issue(settings, store, issue_ref, include_new=include_new, retry_failed=retry_failed,
                                     workers=workers, stop=stop, on_progress=on_progress, allow_draft=allow_draft,
                                     rebuild=rebuild)
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
    if settings.backend == "outbox" and report.sent_now:
        click.echo(f"messages are in {settings.outbox_dir / report.issue}")
    if not report.complete:
        if report.held_by:
            click.echo(f"{counts['sending']} deliveries are still held by another sender of this issue "
                       f"({', '.join(report.held_by)}); run the same command again to wait for it", err=True)
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
      editions (how many)} or null before the first freeze
    """
    from ..sending.dispatch import issue_status, ledger_overview
    settings = _settings()
    store = _store(settings)
    if issue_ref is None:
        overview = ledger_overview(store)
        if as_json:
            click.echo(json.dumps(overview, ensure_ascii=False))
            return
        if not overview:
            click.echo("no issue sent yet (no ledger); `mailer schedule list` shows the issue folders")
            return
        from ..scheduling.plan import format_moment
        width = max(len(item["issue"]) for item in overview)
        for item in overview:
            counts = item["counts"]
            when = item["when"] and format_moment(datetime.fromisoformat(item["when"]), settings.zone)
            in_flight = f" ({counts['sending']} in flight)" if counts["sending"] else ""
            paused = f" ({item['paused_reason']})" if item["paused_reason"] else ""
            click.echo(f"{item['issue']:<{width}}  {item['status']:<7}  sent {counts['sent']}  failed {counts['failed']}  "
                       f"skipped {counts['skipped']}  queued {counts['queued'] + counts['sending']}{in_flight}  "
                       f"of {item['total']}  {when or '-'}{paused}")
        return
    result = issue_status(settings, store, issue_ref)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    counts = result["counts"]
    click.echo(f"{result['issue']}: {result['status']}" + (f" ({result['paused_reason']})" if result["paused_reason"] else ""))
    edition = result["edition"]
    if edition:
        from ..scheduling.plan import format_moment
        made = format_moment(datetime.fromisoformat(edition["created_at"]), settings.zone)
        click.echo(f"  edition {edition['number']} of {edition['editions']}, frozen {made} ({edition['reason']}; "
                   f"template {edition['template']}; sha256 {edition['content_hash'][:12]})")
    for key in ("sent", "failed", "skipped", "queued", "sending"):
        click.echo(f"  {key:<8} {counts[key]}")
    click.echo(f"  {'total':<8} {result['total']}")


@main.command()
@click.option("--once", is_flag=True, help="Drain what is queued now, then exit.")
@handle_errors
def worker(once: bool) -> None:
    """Claim and send queued deliveries of any issue (run as many as you like on PostgreSQL)."""
    from ..sending.dispatch import work_queue
    settings = _settings()
    stop = threading.Event()
    _install_stop_handlers(stop)
    sent = work_queue(settings, _store(settings), stop=stop, once=once)
    click.echo(f"worker stopped: {sent} sent")


def _install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT: the message or request in flight finishes and is recorded, then the run stops;
    what is still in flight a few seconds later (a stalled server) is cut and stays queued. A second
    signal stops at once (rows in flight go back to the queue)."""
    def handler(signum, _frame) -> None:  # noqa: ANN001
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("signal %s: finishing what is in flight, then stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# ----- web and scheduler -----------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@handle_errors
def serve(host: str, port: int) -> None:
    """Run the web app: unsubscribe, subscribe + confirm, webhooks, archive."""
    from ..web.app import serve as serve_web
    serve_web(_settings(), host=host, port=port)


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
                            ledger {status, sent, total, left, counts, paused_reason, text}, job, error
      cadence               null, or cron, timezone, next_runs[] {at, at_utc, issue},
                            next_fire_local, next_fire_utc, next_issue, stored_run, stored_run_state
      cadence_in_flight[]   slug, started, ledger, resumable
    Times with an offset are ISO 8601 with the zone's offset (2027-03-29T00:00:00+02:00).
    """
    from ..scheduling.plan import describe_schedule, parse_moment
    settings = _settings()
    now = parse_moment(now_text, settings.zone) if now_text is not None else None
    click.echo(describe_schedule(settings, as_json=as_json, now=now))


# ----- subscribers ----------------------------------------------------------------------------
@main.group()
def subscribers() -> None:
    """The managed subscriber list."""


_STATUS_CHOICE = click.Choice(SUBSCRIBER_STATUSES, case_sensitive=False)


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="")
@click.option("--language", default=None, type=click.Choice(LANGUAGES, case_sensitive=False),
              help="The person's language.")
@click.option("--list", "lists", multiple=True, help="Add to this named list (repeatable).")
@handle_errors
def subscribers_add(email: str, name: str, language: str | None, lists: tuple[str, ...]) -> None:
    """Add an active subscriber (the operator vouches for them)."""
    from ..subscribers.service import add_subscriber
    settings = _settings()
    _, created = add_subscriber(_store(settings), email, name=name, language=(language or "").lower(), lists=lists,
                                source="cli")
    click.echo(f"{'added' if created else 'already subscribed, updated'}: {email.strip()}")


@subscribers.command("remove")
@click.argument("email")
@click.option("--purge", is_flag=True,
              help="Erase the person's data everywhere mailer keeps it (database, webhook events, outbox files); "
                   "an anonymous tombstone blocks re-import.")
@handle_errors
def subscribers_remove(email: str, purge: bool) -> None:
    """Unsubscribe EMAIL (record and history stay, so no import can resurrect it)."""
    from ..subscribers.service import remove_subscriber
    settings = _settings()
    report = remove_subscriber(_store(settings), email, purge=purge, outbox_dir=settings.outbox_dir)
    click.echo(report.summary() if report is not None else f"unsubscribed: {email.strip()}")


@subscribers.command("restore")
@click.argument("emails", metavar="EMAIL...", nargs=-1, required=True)
@click.option("--reason", required=True, help="Why (recorded in each person's history).")
@click.option("--force", is_flag=True,
              help="Also restore people who unsubscribed themselves, or who were suppressed from the start.")
@handle_errors
def subscribers_restore(emails: tuple[str, ...], reason: str, force: bool) -> None:
    """Undo a wrong suppression: each EMAIL gets back the status it had before its last bounce,
    complaint or unsubscribe (e.g. after forged webhook events)."""
    from ..subscribers.service import restore_subscriber
    settings = _settings()
    store = _store(settings)
    exit_code = 0
    for email in emails:  # each one decided on its own: one refusal does not stop the others
        try:
            click.echo(restore_subscriber(store, email, reason=reason, force=force).summary())
        except MailerError as exc:
            click.echo(f"error: {exc}", err=True)
            exit_code = max(exit_code, exc.exit_code)
    if exit_code:
        sys.exit(exit_code)


@subscribers.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option("--resubscribe", is_flag=True, help="Re-activate unsubscribed addresses present in the file (never bounced or complained ones).")
@click.option("--list", "lists", multiple=True, help="Also add every row to this named list.")
@click.option("--encoding", default=None, metavar="CODEC",
              help="The file's encoding (utf-8, cp1252, latin-1, mac_roman, utf-16…); default: detected.")
@click.option("--map", "column_map", multiple=True, metavar="COLUMN=FIELD",
              help="Read COLUMN as FIELD (email, name, first_name, last_name, language, lists, status, created_at, "
                   "timezone) or as the attribute FIELD; COLUMN= ignores it. Repeatable.")
@click.option("--max-errors", default=50, show_default=True, help="Rejected rows to print.")
@handle_errors
def subscribers_import(path: Path, dry_run: bool, resubscribe: bool, lists: tuple[str, ...], encoding: str | None,
                       column_map: tuple[str, ...], max_errors: int) -> None:
    """Import a CSV: any header names (case and accents ignored), , ; | or TAB, any common encoding;
    Mailchimp, Substack, Buttondown, listmonk and Ghost exports keep their statuses."""
    from ..subscribers.importer import import_csv
    settings = _settings()
    with progress_display("importing", None) as update:
        report = import_csv(_store(settings), path, dry_run=dry_run, resubscribe=resubscribe, lists=lists,
                            encoding=encoding, column_map=column_map, progress=lambda rows: update(rows, ""))
    for rejection in report.rejections[:max_errors]:
        click.echo(f"{path}:{rejection.line}: rejected {rejection.value!r}: {rejection.reason}", err=True)
    if report.rejected > max_errors:
        click.echo(f"… and {report.rejected - max_errors} more rejected rows", err=True)
    click.echo(report.summary())


@subscribers.command("export")
@click.argument("path", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--status", default=None, type=_STATUS_CHOICE, help="Only people with this status.")
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
@handle_errors
def subscribers_export(path: Path | None, status: str | None, force: bool) -> None:
    """Export the list as CSV to PATH (or stdout); an existing PATH is kept unless --force (or you confirm)."""
    from ..subscribers.importer import export_csv
    settings = _settings()
    store = _store(settings)
    if path is None:
        export_csv(store, sys.stdout, status and status.lower())
        return
    if path.exists() and not force:
        if not (sys.stdin.isatty() and _is_tty()):
            raise MailerError(f"{path} exists: add --force to replace it")
        click.confirm(f"{path} exists. Replace it?", abort=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            count = export_csv(store, out, status and status.lower())
        partial.replace(path)  # the old file stays whole until the new one is
    finally:
        partial.unlink(missing_ok=True)
    click.echo(f"exported {count} subscribers to {path}", err=True)


@subscribers.command("list")
@click.option("--status", default=None, type=_STATUS_CHOICE, help="Only people with this status.")
@click.option("--format", "fmt", type=click.Choice(["plain", "csv", "json"]), default="plain", show_default=True)
@handle_errors
def subscribers_list(status: str | None, fmt: str) -> None:
    """One address a line (or CSV / JSON lines); the same people `count` counts."""
    from ..subscribers.importer import export_csv
    from ..subscribers.service import iter_subscribers
    settings = _settings()
    store = _store(settings)
    status = status and status.lower()
    if fmt == "csv":
        export_csv(store, sys.stdout, status)
        return
    for row, lists in iter_subscribers(store, status):
        if fmt == "json":
            click.echo(json.dumps({"email": row.email_given, "name": row.name, "language": row.language,
                                   "status": row.status, "lists": lists, "attributes": row.attributes or {}},
                                  ensure_ascii=False))
        else:
            click.echo(row.email_given)


@subscribers.command("count")
@click.option("--status", default=None, type=_STATUS_CHOICE, help="Only people with this status.")
@handle_errors
def subscribers_count(status: str | None) -> None:
    """Print one integer: the people `list` lists (erased people are not counted)."""
    from ..subscribers.service import count_subscribers
    settings = _settings()
    click.echo(str(count_subscribers(_store(settings), status and status.lower())))


@subscribers.command("show")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def subscribers_show(email: str, as_json: bool) -> None:
    """Status, history of events and of deliveries."""
    from ..subscribers.service import show_subscriber
    settings = _settings()
    view = show_subscriber(_store(settings), email)
    if as_json:
        click.echo(json.dumps(view.__dict__, default=str, ensure_ascii=False))
        return
    click.echo(f"{view.email}  {view.status}" + (f"  ({view.name})" if view.name else ""))
    click.echo(f"  language: {view.language or '-'}  source: {view.source or '-'}  lists: {', '.join(view.lists) or '-'}")
    if view.attributes:
        click.echo("  attributes: " + json.dumps(view.attributes, ensure_ascii=False))
    click.echo("  history:")
    for event in view.events:
        change = f"{event['old_status'] or '∅'} → {event['new_status']}" if event["new_status"] else ""
        click.echo(f"    {event['at']:%Y-%m-%d %H:%M:%S}  {event['kind']:<8} {change}  {event['source']}  {event['reason']}".rstrip())
    click.echo("  deliveries:" + ("" if view.deliveries else " none"))
    for delivery in view.deliveries:
        when = f"{delivery['sent_at']:%Y-%m-%d %H:%M}" if delivery["sent_at"] else ""
        error = f"  {delivery['last_error']}" if delivery["last_error"] else ""
        click.echo(f"    {delivery['slug']}  {delivery['status']}  {when}{error}".rstrip())


# ----- bounce and complaint mailboxes ------------------------------------------------------------
@main.group()
def bounces() -> None:
    """Bounce and complaint mailboxes (DSNs, ARF feedback reports)."""


@bounces.command("process")
@click.argument("source", metavar="SOURCE")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the counts (shape above).")
@handle_errors
def bounces_process(source: str, as_json: bool) -> None:
    """Read the bounces and complaints in SOURCE and suppress who they name.

    \b
    SOURCE is a Maildir folder, an mbox file, or imap://user@host[:port]/FOLDER
    (IMAPS; imap+starttls:// or imap+plain:// on request; ?move=FOLDER moves
    processed messages there; password in MAILER_IMAP_PASSWORD).
    Hard bounces (5.x.x) make the subscriber bounced, complaints complained;
    soft bounces (4.x.x) count, MAILER_SOFT_BOUNCE_LIMIT of the last
    MAILER_SOFT_BOUNCE_SENDS sends make them bounced. Processed messages are
    moved (Maildir: .Processed) or flagged (IMAP) and never processed twice;
    unparseable ones stay where they are.
    \b
    --json prints one object: source, processed, hard_bounces, soft_bounces,
    complaints, unmatched, unparseable, other, already_processed, suppressed,
    problems[] (why each unparseable message is)
    """
    from ..providers.bounces.process import process_source
    settings = _settings()
    store = _store(settings)
    try:
        summary = process_source(store, settings, source)
    finally:
        store.close()
    click.echo(json.dumps(summary.as_dict(), ensure_ascii=False) if as_json else summary.line())


# ----- database --------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """The database."""


@db.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Apply pending migrations (also done automatically on first use)."""
    from ..store import HEAD_REVISION, make_engine, upgrade
    settings = _settings()
    before = upgrade(make_engine(settings.database_url))
    click.echo(f"database at revision {HEAD_REVISION}" + ("" if before == HEAD_REVISION else f" (was {before or 'empty'})"))


from .deliverability import dkim, doctor  # noqa: E402  (commands of their own module)

main.add_command(dkim)
main.add_command(doctor)
