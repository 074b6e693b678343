"""`mailer bounces process`: bounce and complaint mailboxes, and the command's output."""

from __future__ import annotations

import json

import click

from .main import _settings, _store, handle_errors, main


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
    from ..subscribers.feedback import process_bounce_source
    settings = _settings()
    summary = process_bounce_source(_store(settings), settings, source)
    click.echo(json.dumps(summary.as_dict(), ensure_ascii=False) if as_json else summary.line())
