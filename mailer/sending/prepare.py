"""Preparing a send: everything that can fail is checked (settings, the issue, its rendering, one
sample message) BEFORE the ledger is touched; then the recipient set is frozen under a lock on the
issue's row (see `dispatch`'s docstring, step 1). Also the ledger's views for `status`."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from email.utils import formatdate

from .. import links, tokens
from ..config import Settings, secret_key_for
from ..content.issue import Issue, hold_refusal, load_issue
from ..content.render import Recipient, RenderedIssue, render_issue, render_web_edition
from ..errors import EmptyAudience, MailerError, NotFound, RenderError
from ..links import TEST_SUBSCRIBER_ID
from ..mime import MessageFactory
from ..providers import OutgoingMessage, make_backend, require_ready
from ..store import Connection, Store, as_utc, utcnow
from . import claimant

log = logging.getLogger("mailer.dispatch")


def live_claimants(store: Store, conn: Connection, issue_id: int) -> tuple[list[str], list[str]]:
    """(dead, alive): the claimants holding `sending` rows of the issue, judged by `claimant.is_alive`."""
    now = utcnow()
    dead, alive = [], []
    for worker, claimed_at in store.claimants(conn, issue_id):
        (alive if claimant.is_alive(worker, claimed_at, now) else dead).append(worker)
    return dead, alive


def requeue_dead_claims(store: Store, conn: Connection, issue_id: int) -> int:
    """Rows left `sending` by claimants that are gone go back to the queue (a crash's leftovers)."""
    dead, _ = live_claimants(store, conn, issue_id)
    return store.requeue(conn, issue_id, statuses=("sending",), claimed_by=dead) if dead else 0



def outgoing_message(key: bytes, base_url: str, slug: str, domain: str, subscriber_id: int, email: str, name: str,
                     delivery_id: int | None = None, first_name: str | None = None) -> OutgoingMessage:
    """One recipient's message: their unsubscribe link and the stable per-delivery Message-ID;
    `first_name` (the subscriber's attribute, if any) is what the greeting uses."""
    recipient = Recipient(email=email, name=name, subscriber_id=subscriber_id, first_name=str(first_name or ""),
                          unsubscribe_url=links.unsubscribe_url(base_url, key, subscriber_id))
    return OutgoingMessage(recipient=recipient, delivery_id=delivery_id,
                           message_id=tokens.message_id(key, slug, subscriber_id, domain))


def web_version_html(rendered: RenderedIssue) -> str:
    """The archive's copy: the web edition, without the email's personal parts (`render.render_web_edition`)."""
    return render_web_edition(rendered)


@dataclass
class PreparedSend:
    issue: Issue
    rendered: RenderedIssue
    issue_id: int
    frozen: int
    requeued_stale: int
    factory: MessageFactory | None = None
    already_finished: bool = False


def check_buildable(settings: Settings, rendered: RenderedIssue) -> MessageFactory:
    """Build one real message (a sample recipient, the real Message-ID and unsubscribe link) before the
    ledger is touched, so a problem in the content or the settings stops the send with one line and
    leaves the issue as it was. Raises RenderError."""
    try:
        factory = MessageFactory(rendered)
        sample = outgoing_message(secret_key_for(settings), settings.base_url, rendered.issue.slug,
                                  settings.sender_domain, TEST_SUBSCRIBER_ID, "lecteur@example.org", "Lecteur")
        factory.build(sample.recipient, sample.message_id, formatdate(usegmt=True))
    except MailerError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever it is, it would fail every message
        raise RenderError(f"{rendered.issue.slug}: cannot build a message ({type(exc).__name__}: {exc}); "
                          f"nothing was sent and the issue is unchanged") from None
    return factory


def empty_audience_reason(store: Store, conn: Connection, issue: Issue) -> str:
    """Why a freeze found nobody, in the editor's terms (list name, statuses, a near miss)."""
    by_status = store.audience(conn, issue.list_name)
    where = f"{issue.folder / 'issue.toml'}"
    breakdown = ", ".join(f"{count} {status}" for status, count in sorted(by_status.items()))
    if issue.list_name:
        if not by_status:
            names = store.list_names(conn)
            near = difflib.get_close_matches(issue.list_name, names, n=1)
            hint = (f"did you mean {near[0]!r}? " if near else "") + (
                f"lists with members: {', '.join(names)}" if names else "no list has members yet")
            return f"list {issue.list_name!r} ({where}) has no members; {hint}"
        return f"list {issue.list_name!r} ({where}) has no active subscriber ({breakdown})"
    if not by_status:
        return "there are no subscribers yet (`mailer subscribers add` or `import`)"
    return f"there is no active subscriber ({breakdown})"


def refuse_held(store: Store, issue: Issue, allow_draft: bool = False) -> None:
    """Raise DraftIssue (one line naming file:line, see `issue.hold_refusal`) when `issue.holds` holds
    the issue (`draft = true`, a placeholder `mailer issue new` wrote) and its edition is not frozen
    yet; a send already started resumes, and `allow_draft` sends it as it is."""
    refusal = None if allow_draft else hold_refusal(issue)
    if refusal is None:
        return
    with store.connect() as conn:
        existing = store.issue_row(conn, issue.slug)
    if existing is None or existing.frozen_at is None:
        raise refusal


def send_warnings(settings: Settings, store: Store, issue_ref: str, *, allow_draft: bool = False) -> tuple[str, ...]:
    """What `mailer send` prints before its confirmation prompt: every build warning (`render.build_warnings`:
    Gmail clipping, missing alt text, placeholders…), after the checks that refuse the send (read-only:
    nothing is frozen). Raises what `prepare_send` raises before it touches the ledger."""
    require_ready(settings)
    issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
    refuse_held(store, issue, allow_draft)
    return render_issue(issue, settings).warnings


def prepare_send(settings: Settings, store: Store, issue_ref: str, *, include_new: bool = False,
                 retry_failed: bool = False, allow_draft: bool = False) -> PreparedSend:
    """Everything that must hold before the first message goes: config, issue, render, one sample
    message — then, in one transaction holding the issue's row, the freeze.

    Raises ConfigError / SourceError / RenderError (nothing touched), EmptyAudience (nobody to send to:
    nothing touched either), DraftIssue for an issue `issue.holds` holds (`draft = true`, a scaffold
    placeholder) whose edition is not frozen yet (a send already started resumes), unless `allow_draft`. A finished issue is left as it is
    (`already_finished`) unless `retry_failed` or `include_new` find someone to send to.
    """
    require_ready(settings)
    issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
    refuse_held(store, issue, allow_draft)
    rendered = render_issue(issue, settings)
    make_backend(settings)  # constructing checks the backend's own settings
    factory = check_buildable(settings, rendered)
    web_html = web_version_html(rendered)
    now = utcnow()
    with store.begin() as conn:
        row = store.ensure_issue(conn, slug=issue.slug, subject=rendered.subject, list_name=issue.list_name,
                                 web_html=web_html, issue_date=issue.date.isoformat(), public=issue.public)
        frozen = 0
        if row.frozen_at is None or include_new:
            frozen = store.freeze_recipients(conn, row.id, issue.list_name)
            if row.frozen_at is None and frozen == 0:
                raise EmptyAudience(f"refusing to send {issue.slug}: {empty_audience_reason(store, conn, issue)}; "
                                    f"nothing was sent and the issue is unchanged")
            max_id = store.max_subscriber_id(conn)
            store.update_issue(conn, row.id, frozen_at=row.frozen_at or now, max_subscriber_id=max_id)
        if retry_failed:
            store.requeue(conn, row.id, statuses=("failed",))
            store.reset_attempts(conn, row.id)
        requeued = requeue_dead_claims(store, conn, row.id)
        counts = store.delivery_counts(conn, row.id)
        finished = row.status == "sent" and counts["queued"] == 0 and counts["sending"] == 0
        if not finished:
            store.update_issue(conn, row.id, status="sending", started_at=row.started_at or now, paused_reason=None)
    if requeued:
        log.info("%s: %d deliveries left in flight by a stopped run are queued again", issue.slug, requeued)
    return PreparedSend(issue, rendered, row.id, frozen, requeued, factory, finished)


@dataclass(frozen=True)
class SendPlan:
    """What `mailer send ISSUE` is about to do, for the confirmation prompt."""

    slug: str
    subject: str
    list_name: str | None
    status: str          # none (never sent) | draft | sending | paused | sent
    recipients: int      # deliveries this run would send (new freeze, queue, failures retried, newcomers)
    total: int           # ledger rows so far (0 before the first freeze)

    def describe(self, backend: str) -> str:
        audience = f"{self.recipients} subscriber(s)" + (f" of list {self.list_name!r}" if self.list_name else "")
        if self.status in ("none", "draft"):
            return f"Send {self.slug} \u201c{self.subject}\u201d through {backend} to {audience}?"
        return (f"Resume {self.slug} \u201c{self.subject}\u201d ({self.status}) through {backend}: "
                f"{audience} left of {self.total}?")


def plan_send(settings: Settings, store: Store, issue_ref: str, *, include_new: bool = False,
              retry_failed: bool = False) -> SendPlan:
    """Read-only: who a send of `issue_ref` would reach now (nothing is frozen or sent)."""
    issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
    with store.connect() as conn:
        row = store.issue_row(conn, issue.slug)
        if row is None or row.frozen_at is None:
            recipients = store.count_unfrozen(conn, None, issue.list_name)
            return SendPlan(issue.slug, issue.subject, issue.list_name, row.status if row else "none", recipients, 0)
        counts = store.delivery_counts(conn, row.id)
        recipients = counts["queued"] + counts["sending"]
        if retry_failed:
            recipients += counts["failed"]
        if include_new:
            recipients += store.count_unfrozen(conn, row.id, issue.list_name)
        return SendPlan(issue.slug, row.subject, row.list_name, row.status, recipients, sum(counts.values()))


def _ledger_summary(row, counts: dict[str, int]) -> dict:  # noqa: ANN001 - an `issues` row
    """One issue's ledger as `mailer status` shows it (`--json`): issue (slug), subject, status
    (draft | sending | paused | sent), paused_reason, counts (queued, sending, sent, failed, skipped),
    total, frozen_at, started_at, finished_at (ISO 8601 UTC or null), when (the last of those)."""
    times = {key: as_utc(getattr(row, key)) for key in ("frozen_at", "started_at", "finished_at")}
    when = times["finished_at"] or times["started_at"] or times["frozen_at"]
    return {"issue": row.slug, "subject": row.subject, "status": row.status, "paused_reason": row.paused_reason,
            "counts": counts, "total": sum(counts.values()),
            **{key: value.isoformat() if value else None for key, value in times.items()},
            "when": when.isoformat() if when else None}


def issue_status(settings: Settings, store: Store, issue_ref: str) -> dict:
    """Ledger counts by status, plus the issue's own state (`_ledger_summary`'s shape). NotFound when
    the issue has no ledger yet."""
    slug = issue_ref
    try:
        from ..content.issue import find_issue_folder
        slug = find_issue_folder(issue_ref, settings.issues_dir).name
    except NotFound:
        pass
    with store.connect() as conn:
        row = store.issue_row(conn, slug)
        if row is None:
            raise NotFound(f"issue {issue_ref!r} has never been sent (no ledger yet)")
        counts = store.delivery_counts(conn, row.id)
    return _ledger_summary(row, counts)


def ledger_overview(store: Store) -> list[dict]:
    """`mailer status` without ISSUE: every issue with a ledger, newest first (its last activity:
    finished, else started, else frozen), each in `_ledger_summary`'s shape; [] before the first send."""
    with store.connect() as conn:
        return [_ledger_summary(row, counts) for row, counts in store.ledger_overview(conn)]
