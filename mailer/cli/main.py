"""The `mailer` command: a thin layer over the library.

Each command calls one library function and turns library errors into one line on stderr and a
non-zero exit code (MailerError.exit_code); a store a command opens is closed when it ends. Long
work shows a progress bar on a terminal and plain lines otherwise.

This module: the group, shared helpers, and the editor's and operator's small commands (issue new,
build, preview, serve, db upgrade). The others: `sending` (send, status, worker), `people`
(subscribers …), `schedule` (schedule run/list and its presentation).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from datetime import date
from functools import wraps
from pathlib import Path
from typing import Callable, Iterator

import click

from ..config import Settings, load_settings
from ..errors import MailerError

log = logging.getLogger("mailer")


def _settings() -> Settings:
    return load_settings()


def _store(settings: Settings):
    """The store, closed when the command ends (whatever way it ends)."""
    from ..store import open_store
    store = open_store(settings.database_url)
    click.get_current_context().call_on_close(store.close)
    return store


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
    recorded once accepted. A graceful stop (SIGTERM, Ctrl-C) repeats nobody; a crash (SIGKILL, power
    loss) may repeat exactly what was in flight and unrecorded: over SMTP at most one commit group
    (≤ 10 messages by default) per connection, over SendGrid the recipients of the requests in flight
    (≤ 4,000 by default)."""
    from ..redact import RedactingFilter, quiet_http_loggers

    # one handler on stderr for this command, removed (and the root level restored) when it ends, so a
    # process that runs commands in turn (tests, a host application) keeps its own logging as it was
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)

    def restore() -> None:
        root.removeHandler(handler)
        root.setLevel(level)

    click.get_current_context().call_on_close(restore)
    for noisy in ("alembic", "sqlalchemy", "apscheduler.executors", "apscheduler.scheduler", "uvicorn.access",
                  "markdown_it"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # flufl.bounce logs every detector it runs at INFO (17 lines a message): only with -v
    logging.getLogger("flufl.bounce").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # HTTP clients log credentials and whole payloads (every address) at DEBUG: never, even with -v
    quiet_http_loggers()


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
    store = _store(settings)
    try:
        result = build_issue(settings, issue_ref, out_dir, store=store)
    finally:
        store.close()
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"built {result.slug}: {len(result.html_bytes) / 1024:.1f} KB HTML, {len(result.briefs)} brief{'' if len(result.briefs) == 1 else 's'} "
               f"-> {result.out_dir}")
    click.echo(f"audience: {result.audience_text}")
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
@click.option("--port", default=8025, show_default=True, help="Port of the preview server.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep it local).")
@handle_errors
def preview(issue_ref: str, port: int, host: str) -> None:
    """Local preview: 600 px and 375 px, text part, headers, warnings; reloads on file change."""
    from ..web.preview import serve_preview
    settings = _settings()
    click.echo(f"preview of {issue_ref} on http://{host}:{port}/ (Ctrl-C to stop)")
    serve_preview(settings, issue_ref, host=host, port=port)


# ----- web -----------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (behind a reverse proxy).")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@handle_errors
def serve(host: str, port: int) -> None:
    """Run the web app: unsubscribe, subscribe + confirm, webhooks, archive."""
    from ..web.app import serve as serve_web
    serve_web(_settings(), host=host, port=port)


# ----- database --------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """The database."""


@db.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Apply pending migrations (also done automatically on first use)."""
    from ..store import HEAD_REVISION, open_store, upgrade
    settings = _settings()
    store = open_store(settings.database_url, migrate=False)
    click.get_current_context().call_on_close(store.close)
    before = upgrade(store.engine)
    click.echo(f"database at revision {HEAD_REVISION}" + ("" if before == HEAD_REVISION else f" (was {before or 'empty'})"))

