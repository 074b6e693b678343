"""`mailer subscribers …`: the list's commands and their output."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from ..config import LANGUAGES
from ..errors import InvalidOption, MailerError
from ..statuses import SUBSCRIBER_STATUSES
from .main import _is_tty, _settings, _store, handle_errors, main, progress_display

log = logging.getLogger("mailer")


# ----- subscribers ----------------------------------------------------------------------------
@main.group()
def subscribers() -> None:
    """The managed subscriber list."""


_STATUS_CHOICE = click.Choice(SUBSCRIBER_STATUSES, case_sensitive=False)


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="", help="The person's name (greetings use it).")
@click.option("--language", default=None, type=click.Choice(LANGUAGES, case_sensitive=False),
              help="The person's language.")
@click.option("--timezone", "zone", default=None, metavar="ZONE",
              help="The person's time zone, an IANA name such as Europe/Paris (local-time sends deliver at "
                   "send_local in it; without one, MAILER_TIMEZONE).")
@click.option("--list", "lists", multiple=True, help="Add to this named list (repeatable).")
@handle_errors
def subscribers_add(email: str, name: str, language: str | None, zone: str | None, lists: tuple[str, ...]) -> None:
    """Add an active subscriber (the operator vouches for them)."""
    from ..subscribers.importer.values import normalise_timezone
    from ..subscribers.service import add_subscriber
    attributes = None
    if zone is not None:
        found = normalise_timezone(zone)
        if not found:
            raise InvalidOption(f"--timezone {zone!r} is not an IANA time zone name such as Europe/Paris or "
                              f"America/New_York (nothing was added)")
        attributes = {"timezone": found}
    settings = _settings()
    _, created = add_subscriber(_store(settings), email, name=name, language=(language or "").lower(), lists=lists,
                                source="cli", attributes=attributes)
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
@click.option("--max-errors", default=50, show_default=True, type=click.IntRange(min=0), help="Rejected rows to print.")
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
@click.option("--format", "fmt", type=click.Choice(["plain", "csv", "json"]), default="plain", show_default=True,
              help="plain: one address a line; csv: the export's columns; json: one object a line.")
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
@click.option("--json", "as_json", is_flag=True, help="One JSON object: profile, events, deliveries.")
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


