"""Preparing a send: everything that can fail is checked (settings, the issue, its rendering, one
sample message) BEFORE the ledger is touched; then the recipient set is frozen under a lock on the
issue's row, with the content as the issue's stored edition (`edition`), which every later claim
sends (see `dispatch`'s docstring, step 1). The ledger's views for `status` are in `status`.

Longer than ~400 lines because the freeze — recipients, edition and, for a local-time send, each
row's release instant (`waves`) — is one transaction on the issue's locked row, which reads best
in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import formatdate
from pathlib import Path

from .. import links, tokens
from ..config import Settings, secret_key_for
from ..content.issue import Issue, ambiguous_issue, find_issue_folder, hold_refusal, load_issue, matching_issue_names
from ..content.render import Recipient, RenderedIssue, render_issue, render_variants, render_web_edition
from ..errors import (AmbiguousIssue, EmptyAudience, MailerError, NotFound, RebuildRefused, RenderError,
                      UnresumableSend)
from ..links import TEST_SUBSCRIBER_ID
from ..mime import MessageFactory
from ..providers import OutgoingMessage, make_backend, require_ready
from ..store import Connection, Store, as_utc, utcnow
from ..wallclock import format_moment
from . import claimant
from . import edition as editions
from .audience import check_segment, empty_audience_reason
from .edition import Edition
from . import waves

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
                     delivery_id: int | None = None, first_name: str | None = None,
                     issue_id: int | None = None) -> OutgoingMessage:
    """One recipient's message: their unsubscribe link (naming `issue_id`, so `mailer report` can say
    which issue an unsubscribe came from) and the stable per-delivery Message-ID; `first_name` (the
    subscriber's attribute, if any) is what the greeting uses."""
    recipient = Recipient(email=email, name=name, subscriber_id=subscriber_id, first_name=str(first_name or ""),
                          unsubscribe_url=links.unsubscribe_url(base_url, key, subscriber_id, issue_id))
    return OutgoingMessage(recipient=recipient, delivery_id=delivery_id,
                           message_id=tokens.message_id(key, slug, subscriber_id, domain))


def web_version_html(rendered: RenderedIssue) -> str:
    """The archive's copy: the web edition, without the email's personal parts (`render.render_web_edition`)."""
    return render_web_edition(rendered)


@dataclass
class PreparedSend:
    issue_id: int
    edition: Edition      # what every claim of this send delivers (stored in the ledger)
    frozen: int           # recipients added to the ledger by this call
    requeued_stale: int
    factory: MessageFactory | None = None
    already_finished: bool = False
    notice: str | None = None  # one line on the edition when this call made one other than the first
    factories: dict[str, MessageFactory] | None = None  # per language of fixed strings, the default first
    local: bool = False   # a local-time send (send_local): claims take released waves only

    @property
    def slug(self) -> str:
        return self.edition.key


def check_buildable(settings: Settings, email: RenderedIssue | Edition) -> MessageFactory:
    """Build one real message (a sample recipient, the real Message-ID and unsubscribe link) before the
    ledger is touched, so a problem in the content or the settings stops the send with one line and
    leaves the issue as it was. Raises RenderError."""
    try:
        factory = MessageFactory(email)
        sample = outgoing_message(secret_key_for(settings), settings.base_url, email.key,
                                  email.settings.sender_domain, TEST_SUBSCRIBER_ID, "lecteur@example.org", "Lecteur")
        factory.build(sample.recipient, sample.message_id, formatdate(usegmt=True))
    except MailerError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever it is, it would fail every message
        raise RenderError(f"{email.key}: cannot build a message ({type(exc).__name__}: {exc}); "
                          f"nothing was sent and the issue is unchanged") from None
    return factory


def by_language(email: RenderedIssue | Edition) -> dict[str, RenderedIssue | Edition]:
    """An edition's variants by language of fixed strings (`Edition.by_language`), the default first;
    a single rendering as the one variant of its language."""
    variants = getattr(email, "by_language", None)
    return variants() if variants else {getattr(email, "language", ""): email}


def check_editions(settings: Settings, email: RenderedIssue | Edition) -> dict[str, MessageFactory]:
    """`check_buildable` for every language variant of an edition (`by_language`): their factories,
    the default first. Raises RenderError."""
    return {language: check_buildable(settings, variant) for language, variant in by_language(email).items()}


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


def issue_slug(settings: Settings, store: Store, issue_ref: str) -> str:
    """The slug ISSUE names: its folder's name; once the folder is gone (a send in progress resumes
    from its stored edition without it), the ledger's issue it names by the folder rule
    (`content.issue.matching_issue_names`: the slug, or the unique one ending in `-ISSUE`), or ISSUE's
    last path segment when the ledger has none (what is done with it then names it). NotFound (exit
    4) when several issues of the ledger end in `-ISSUE`."""
    try:
        return find_issue_folder(issue_ref, settings.issues_dir).name
    except AmbiguousIssue:
        raise
    except NotFound:
        pass
    ref = Path(issue_ref.rstrip("/")).name
    with store.connect() as conn:
        matches = matching_issue_names(store.issue_slugs(conn), ref)
    if len(matches) > 1:
        raise ambiguous_issue(ref, matches)
    return matches[0] if matches else ref


def _stored_edition(store: Store, slug: str) -> tuple[object | None, object | None]:
    """(issues row, its current `editions` row) — either None when missing."""
    with store.connect() as conn:
        row = store.issue_row(conn, slug)
        return row, (store.current_edition(conn, row.id) if row is not None else None)


def refuse_unresumable(settings: Settings, store: Store, slug: str, issue_ref: str) -> None:
    """UnresumableSend (exit 9, one line naming the missing folder; nothing read further, nothing
    requeued) when `slug`'s send started before editions were stored — frozen recipients, no stored
    edition, so its content can only come from its folder — and that folder is gone. Read-only."""
    row, stored = _stored_edition(store, slug)
    if row is None or row.frozen_at is None or stored is not None:
        return
    try:
        find_issue_folder(issue_ref, settings.issues_dir)
        return
    except AmbiguousIssue:
        raise
    except NotFound:
        pass
    with store.connect() as conn:
        counts = store.delivery_counts(conn, row.id)
    left = counts["queued"] + counts["sending"]
    raise UnresumableSend(
        f"{slug}: cannot resume: this send started before editions were stored, so its content comes from its "
        f"folder, and {settings.issues_dir / slug} is gone; restore that folder and run `mailer send {slug}` "
        f"again ({left} recipient(s) left, {counts['sent']} sent; nothing was requeued)")


def resumes_stored_edition(store: Store, slug: str) -> bool:
    """Whether a send of `slug` resumes its stored edition: one is frozen and deliveries are left
    (queued or sending). Such a send renders nothing and never reads the folder (`prepare_send`),
    which may have changed, stopped parsing or be gone. Read-only."""
    row, stored = _stored_edition(store, slug)
    if row is None or row.frozen_at is None or stored is None:
        return False
    with store.connect() as conn:
        counts = store.delivery_counts(conn, row.id)
    return bool(counts["queued"] + counts["sending"])


def send_warnings(settings: Settings, store: Store, issue_ref: str, *, allow_draft: bool = False,
                  rebuild: bool = False) -> tuple[str, ...]:
    """What `mailer send` prints before its confirmation prompt: every build warning (`render.build_warnings`:
    Gmail clipping, missing alt text, placeholders…) of what this send would freeze and the DKIM warnings
    (`dkim_signing.dkim_warnings`), after the checks
    that refuse the send (read-only: nothing is frozen). A send that resumes a stored edition renders
    nothing: its warnings were shown when it started (`resume_notice` says whether the folder changed).
    Raises what `prepare_send` raises before it touches the ledger."""
    require_ready(settings)
    slug = issue_slug(settings, store, issue_ref)
    _, stored = _stored_edition(store, slug)
    if stored is not None and not rebuild:
        return ()
    refuse_unresumable(settings, store, slug, issue_ref)
    issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
    refuse_held(store, issue, allow_draft)
    if stored is None:
        check_segment(store, issue)
    warnings = render_issue(issue, settings).warnings
    from ..dkim_signing import dkim_warnings  # short RSA key, unaligned domain, key readable by others
    return (*warnings, *dkim_warnings(settings))


def resume_notice(settings: Settings, store: Store, issue_ref: str) -> str | None:
    """One line for a send that resumes a stored edition while its folder renders differently now (or
    not at all), or that started before editions were stored; None otherwise (also for a finished
    send: editing an issue after it went out is normal). Read-only."""
    slug = issue_slug(settings, store, issue_ref)
    row, stored = _stored_edition(store, slug)
    if row is None or row.frozen_at is None:
        return None
    with store.connect() as conn:
        counts = store.delivery_counts(conn, row.id)
    left = counts["queued"] + counts["sending"]
    if not left:
        return None
    if stored is None:
        return (f"{slug}: this send started before editions were stored: the folder as it is now is frozen as its "
                f"edition and sent to the {left} recipients left ({counts['sent']} already sent)")
    when = format_moment(as_utc(stored.created_at), settings.zone)
    try:
        current = editions.from_rendered(render_variants(load_issue(issue_ref, settings.issues_dir, settings.zone),
                                                         settings))
    except MailerError as exc:
        return f"{slug}: the folder does not render any more ({exc}); the edition from {when} is sent as it was"
    lines = []
    if not editions.same_content(current, stored):
        lines.append(f"{slug}: the folder changed since the send started: the edition from {when} is used; "
                     f"`mailer send {slug} --rebuild` sends the edited text to the {left} recipients left")
    if current.segment != stored.segment:
        lines.append(f"{slug}: issue.toml's segment changed since the send started: the audience frozen then "
                     f"(segment: {stored.segment or 'none'}) stays, also for --include-new and --rebuild")
    return "\n".join(lines) or None


def _from_folder(settings: Settings, store: Store, issue_ref: str, allow_draft: bool,
                 check_audience: bool = True) -> tuple[Issue, Edition, str]:
    """(issue, the edition its folder renders to now — every language variant —, its web version),
    checked buildable (and its segment checked against the attributes in use unless not
    `check_audience`); nothing stored."""
    issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
    refuse_held(store, issue, allow_draft)
    if check_audience:
        check_segment(store, issue)
    variants = render_variants(issue, settings)
    for rendered in variants.values():
        check_buildable(settings, rendered)
    default = next(iter(variants.values()))
    return issue, editions.from_rendered(variants), web_version_html(default)


RELEASES = ("due", "missed", "all")  # which waves of a local-time send claims may take (prepare_send)


def prepare_send(settings: Settings, store: Store, issue_ref: str, *, include_new: bool = False,
                 retry_failed: bool = False, allow_draft: bool = False, rebuild: bool = False,
                 release: str = "due") -> PreparedSend:
    """Everything that must hold before the first message goes: config, issue, render, one sample
    message — then, in one transaction holding the issue's row, the freeze: the recipient set AND the
    edition (`edition.py`: subject, HTML and text with their slots, fixed headers, template, version,
    content hash). A send already started renders nothing: it resumes its stored edition, even when
    the folder changed or is gone (`resume_notice` tells).

    `rebuild`: a new edition from the folder for the recipients not reached yet (queued, plus the
    failed with `retry_failed`, newcomers with `include_new`); those already sent keep theirs and are
    never sent again. An unchanged folder makes no new edition. A send started before editions were
    stored freezes the folder as it is at its first resume (reason `migrated`, said in `notice`).

    Raises ConfigError / SourceError / RenderError (nothing touched), EmptyAudience (nobody to send to:
    nothing touched either), DraftIssue for an issue `issue.holds` holds (`draft = true`, a scaffold
    placeholder) whose edition is not frozen yet (a send already started resumes), unless `allow_draft`;
    RebuildRefused (nothing touched) when a live sender holds deliveries of the issue or nobody is
    left for a new edition. A finished issue is left as it is (`already_finished`) unless
    `retry_failed` or `include_new` find someone to send to.

    A local-time send (`send_local`, sending/waves.py) is frozen only once a wave is due, and its
    rows are stamped with their release instant; `release` says which waves its claims may take:
    "due" (those due within MAILER_SCHEDULE_GRACE: the scheduler, a resume), "missed" (also those
    passed beyond it: `--release-missed`), "all" (every wave now: `--now`). NotDueYet (nothing touched)
    when no wave is due and `release` does not allow what there is.
    """
    if release not in RELEASES:
        raise ValueError(f"release must be one of {RELEASES}, not {release!r}")
    require_ready(settings)
    make_backend(settings)  # constructing checks the backend's own settings
    slug = issue_slug(settings, store, issue_ref)
    row, stored = _stored_edition(store, slug)
    issue = fresh = web_html = None
    if stored is None:
        refuse_unresumable(settings, store, slug, issue_ref)
    if stored is None or rebuild:
        issue, fresh, web_html = _from_folder(settings, store, issue_ref, allow_draft, check_audience=stored is None)
    else:
        try:  # only for what issue.toml says about publication (`public`) and the list of newcomers
            issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
        except MailerError:
            issue = None
    now = utcnow()
    notice = None
    with store.begin() as conn:
        if issue is not None:
            row = store.ensure_issue(conn, slug=slug, subject=fresh.subject if fresh else stored.subject,
                                     list_name=issue.list_name, web_html=web_html,
                                     issue_date=issue.date.isoformat(), public=issue.public)
        else:
            row = store.lock_issue(conn, slug)
        was_frozen = row.frozen_at is not None
        stored = store.current_edition(conn, row.id) if was_frozen else None  # again, under the lock
        if stored is not None and not rebuild:
            editions.from_row(stored, slug, settings)  # a corrupt edition stops here: nothing requeued or sent
        requeued = requeue_dead_claims(store, conn, row.id)
        if rebuild and stored is not None:
            _, alive = live_claimants(store, conn, row.id)
            if alive:
                raise RebuildRefused(
                    f"{slug}: refusing to rebuild while deliveries are being sent (held by {', '.join(alive)}); "
                    f"stop that sender (Ctrl-C or SIGTERM pauses it cleanly), then run `mailer send {slug} "
                    f"--rebuild` again; nothing was changed")
        if stored is not None and fresh is not None:  # --rebuild: new content, the same audience
            fresh = replace(fresh, segment=stored.segment, segment_zone=stored.segment_zone)
        frozen = 0
        # a local-time send: the wall time frozen with the recipients (issue.toml's, at the first freeze)
        local = row.send_local if was_frozen else (
            issue.send_local.isoformat() if issue is not None and issue.send_local is not None else None)
        if not was_frozen and local:
            waves.first_wave_check(settings, store, conn, issue, row.list_name, now, release)
        if not was_frozen or include_new:
            # the audience: the first freeze draws it from the folder's segment; newcomers come from
            # the segment frozen with the edition (a send from before editions: the folder's)
            segment = (editions.from_row(stored, slug, settings).frozen_segment() if stored is not None
                       else issue.segment if issue is not None else None)
            frozen = store.freeze_recipients(conn, row.id, row.list_name, segment)
            if not was_frozen and frozen == 0:
                raise EmptyAudience(f"refusing to send {slug}: {empty_audience_reason(store, conn, issue)}; "
                                    f"nothing was sent and the issue is unchanged")
            max_id = store.max_subscriber_id(conn)
            store.update_issue(conn, row.id, frozen_at=row.frozen_at or now, max_subscriber_id=max_id,
                               **({} if was_frozen else {"send_local": local}))
            if local:
                waves.assign_due(store, conn, row.id, datetime.fromisoformat(local), settings.zone)
        if local and release != "due":
            store.release_waves(conn, row.id, None if release == "all" else now)
        if retry_failed:
            store.requeue(conn, row.id, statuses=("failed",))
            store.reset_attempts(conn, row.id)
        counts = store.delivery_counts(conn, row.id)
        left, sent = counts["queued"] + counts["sending"], counts["sent"]
        if stored is None:
            reason = "migrated" if was_frozen else "send"
            stored = store.insert_edition(conn, row.id, reason=reason, values=fresh.values(), links=fresh.links)
            if was_frozen:
                notice = (f"{slug}: this send started before editions were stored: the folder as it is now is "
                          f"frozen as edition 1 for the {left} recipients left ({sent} already sent)")
        elif rebuild:
            if not left:
                raise RebuildRefused(f"{slug}: nobody is left to send a new edition to ({sent} sent, "
                                     f"{counts['failed']} failed, {counts['skipped']} skipped; --retry-failed, "
                                     f"--include-new); nothing was changed")
            if editions.same_content(fresh, stored):
                notice = f"{slug}: the folder is unchanged since edition {stored.number}: nothing rebuilt"
            else:
                stored = store.insert_edition(conn, row.id, reason="rebuild", values=fresh.values(), links=fresh.links)
                store.update_issue(conn, row.id, subject=fresh.subject, web_html=web_html)
                notice = (f"{slug}: edition {stored.number} made from the folder: it goes to the {left} recipients "
                          f"left; the {sent} already sent keep edition {stored.number - 1} and are never sent again")
        finished = row.status == "sent" and counts["queued"] == 0 and counts["sending"] == 0
        if not finished:
            store.update_issue(conn, row.id, status="sending", started_at=row.started_at or now, paused_reason=None)
    if requeued:
        log.info("%s: %d deliveries left in flight by a stopped run are queued again", slug, requeued)
    if notice:
        log.warning("%s", notice)
    edition = editions.from_row(stored, slug, settings)
    factories = check_editions(settings, edition)
    return PreparedSend(row.id, edition, frozen, requeued, next(iter(factories.values())), finished, notice, factories,
                        local=bool(local))


def load_edition(settings: Settings, store: Store, issue_id: int,
                 slug: str) -> tuple[Edition, dict[str, MessageFactory]]:
    """The issue's current stored edition, ready to send (a `mailer worker`, a sender after a
    `--rebuild`), with one message factory per language (the default first); a send started before
    editions were stored gets its folder frozen now (`prepare_send`)."""
    with store.connect() as conn:
        row = store.current_edition(conn, issue_id)
    if row is None:
        prepared = prepare_send(settings, store, slug)
        return prepared.edition, prepared.factories
    edition = editions.from_row(row, slug, settings)
    return edition, check_editions(settings, edition)



# what a local-time send's run does with its waves, by `release` (the prompt says it as the flags make it)
_LOCAL_TIME_PLAN = {
    "due": (" in their own local time (send_local): only the waves due now go out now, the others wait for "
            "their time (--now would send everyone at once)"),
    "missed": (" in their own local time (send_local): the waves due now and the missed ones go out now "
               "(--release-missed), the later ones wait for their time"),
    "all": (" at once, whatever their local time (--now: every wave of send_local released now, none waits)"),
}


@dataclass(frozen=True)
class SendPlan:
    """What `mailer send ISSUE` is about to do, for the confirmation prompt."""

    slug: str
    subject: str
    list_name: str | None
    status: str          # none (never sent) | draft | sending | paused | sent
    recipients: int      # deliveries this run would send (new freeze, queue, failures retried, newcomers)
    total: int           # ledger rows so far (0 before the first freeze)
    rebuild: bool = False  # a new edition from the folder for those not reached yet
    segment: str | None = None  # the segment (issue.toml's before the freeze, the frozen one after)
    local: bool = False    # a local-time send: only the waves released now go out now
    release: str = "due"   # a local-time send's waves released by this run: due | missed (--release-missed) | all (--now)

    def describe(self, backend: str) -> str:
        """The confirmation prompt: what this run does given its flags (`release`)."""
        audience = f"{self.recipients} subscriber(s)" + (f" of list {self.list_name!r}" if self.list_name else "")
        if self.segment:
            audience += f" in segment {self.segment!r}"
        if self.local:
            audience += _LOCAL_TIME_PLAN[self.release]
        if self.status in ("none", "draft"):
            return f"Send {self.slug} \u201c{self.subject}\u201d through {backend} to {audience}?"
        if self.rebuild:
            return (f"Rebuild {self.slug} from its folder (\u201c{self.subject}\u201d) and send that edition through "
                    f"{backend} to the {audience} left of {self.total} (those already sent get nothing more)?")
        return (f"Resume {self.slug} \u201c{self.subject}\u201d ({self.status}) through {backend}: "
                f"{audience} left of {self.total}?")


def plan_send(settings: Settings, store: Store, issue_ref: str, *, include_new: bool = False,
              retry_failed: bool = False, rebuild: bool = False, release: str = "due") -> SendPlan:
    """Read-only: who a send of `issue_ref` would reach now (nothing is frozen or sent). A resume reads
    only the ledger (its folder may have changed or be gone); a first send and `rebuild` read the folder.
    A local-time send that `prepare_send` would refuse (NotDueYet) is refused here, before any prompt."""
    slug = issue_slug(settings, store, issue_ref)
    with store.connect() as conn:
        row = store.issue_row(conn, slug)
    issue = None
    if row is None or row.frozen_at is None:  # checked on its own connection: SQLite takes its write lock at BEGIN
        issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
        check_segment(store, issue)
    with store.connect() as conn:
        row = store.issue_row(conn, slug)
        if row is None or row.frozen_at is None:
            issue = issue or load_issue(issue_ref, settings.issues_dir, settings.zone)
            recipients = store.count_unfrozen(conn, None, issue.list_name, issue.segment)
            if issue.send_local is not None:
                waves.first_wave_check(settings, store, conn, issue, issue.list_name, utcnow(), release)
            return SendPlan(issue.slug, issue.subject, issue.list_name, row.status if row else "none", recipients, 0,
                            segment=issue.segment.text if issue.segment else None, local=issue.send_local is not None,
                            release=release)
        subject = load_issue(issue_ref, settings.issues_dir, settings.zone).subject if rebuild else row.subject
        stored = store.current_edition(conn, row.id)
        frozen = editions.from_row(stored, slug, settings) if stored is not None else None
        counts = store.delivery_counts(conn, row.id)
        recipients = counts["queued"] + counts["sending"]
        if retry_failed:
            recipients += counts["failed"]
        if include_new:
            recipients += store.count_unfrozen(conn, row.id, row.list_name, frozen.frozen_segment() if frozen else None)
        return SendPlan(slug, subject, row.list_name, row.status, recipients, sum(counts.values()), rebuild,
                        segment=frozen.segment if frozen else None, local=bool(row.send_local), release=release)
