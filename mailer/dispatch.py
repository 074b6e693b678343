"""The send loop: freeze recipients, claim batches, build, send, record, retry, resume.

A pipeline with an honest checkpoint (as listmonk's campaign manager), except that the checkpoint —
a ledger row going from `sending` to `sent` — moves only after the provider accepted the message:

1. `prepare_send` renders the issue once and freezes the recipient set: one `queued` delivery row
   per active subscriber, unique on (issue, subscriber), so re-running never adds a second row.
2. Workers claim batches (`queued` → `sending`, tagged with the worker's id) in one statement
   (`FOR UPDATE SKIP LOCKED` on PostgreSQL), build the messages from pre-serialised bytes, hand
   them to the backend, and record each outcome in bulk.
3. A crash leaves rows in `sending`. A later run puts back rows whose worker is gone (same host
   and dead pid, or a claim older than the lease) and sends them. The one ambiguous case is a batch
   interrupted inside the provider call: it is sent again (at most one batch per worker; the stable
   Message-ID lets receivers that deduplicate drop the copy).

Subscribers who unsubscribe after the freeze are skipped at claim time, never sent.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import formatdate
from typing import Callable, Sequence

from sqlalchemy.engine import Connection

from . import tokens
from .backends import Backend, Batch, OutgoingMessage, PermanentError, RecipientResult, TransientError, make_backend
from .config import Settings, secret_key_for
from .errors import MailerError, NotFound, SendAborted
from .issue import Issue, draft_refusal, load_issue, placeholder_warning
from .message import MessageFactory
from .render import Recipient, RenderedIssue, render_issue
from .store import Store, utcnow

log = logging.getLogger("mailer.dispatch")

MAX_ATTEMPTS = 5            # per recipient, across runs, for transient failures
MAX_BATCH_RETRIES = 6       # a whole batch failing transiently, within one run
MAX_CONSECUTIVE_FAILURES = 5  # steps (requests, batches) in a row where nothing was accepted…
MAX_CONSECUTIVE_FAILED = 50     # …covering at least this many messages → pause the send
CLAIM_LEASE = timedelta(minutes=15)  # a claim older than this, from another host, is presumed dead
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0


@dataclass
class Progress:
    """What a progress bar or a log line shows."""

    issue: str
    total: int
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


@dataclass
class SendReport:
    issue: str
    counts: dict[str, int]
    sent_now: int
    failed_now: int
    skipped_now: int
    elapsed: float
    requeued_stale: int = 0
    frozen: int = 0

    @property
    def complete(self) -> bool:
        return self.counts.get("queued", 0) == 0 and self.counts.get("sending", 0) == 0


def worker_id(suffix: str = "") -> str:
    """host:pid:random — the pid lets a later run on the same host tell a dead worker from a live one."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}{suffix}"


def _worker_is_dead(claimant: str | None, claimed_at, now) -> bool:
    if not claimant:
        return True
    host, _, rest = claimant.partition(":")
    pid_text = rest.partition(":")[0]
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return claimed_at is not None and now - claimed_at > CLAIM_LEASE


def requeue_dead_claims(store: Store, conn: Connection, issue_id: int) -> int:
    """Rows left `sending` by workers that are gone go back to the queue (a crash's leftovers)."""
    now = utcnow()
    stale = [w for w, claimed_at in store.claimants(conn, issue_id) if _worker_is_dead(w, claimed_at, now)]
    return store.requeue(conn, issue_id, statuses=("sending",), claimed_by=stale) if stale else 0


def settle_issue(store: Store, issue_id: int, abort_reason: str | None) -> dict[str, int]:
    """After a run: the issue is paused (with why), sent (nothing left), or still sending; returns the counts."""
    with store.begin() as conn:
        counts = store.delivery_counts(conn, issue_id)
        if abort_reason:
            store.update_issue(conn, issue_id, status="paused", paused_reason=abort_reason)
        elif counts["queued"] == 0 and counts["sending"] == 0:
            store.update_issue(conn, issue_id, status="sent", finished_at=utcnow())
    return counts


class RateLimiter:
    """The send's rate limit (messages per second; 0 = unlimited), shared by every worker of the
    issue in every process and on every machine: the schedule lives in the issue's row.

    Each caller books `count` messages by moving `issues.rate_next_at` forward in one atomic UPDATE
    (PostgreSQL serialises it on the row, SQLite on its single writer) and sleeps until the start of
    its slot. Clocks are wall clocks, so machines should keep them in sync (NTP).
    """

    def __init__(self, per_second: float, store: Store | None = None, issue_id: int | None = None) -> None:
        self.per_second = per_second
        self.store = store
        self.issue_id = issue_id
        self._lock = threading.Lock()
        self._next = time.time()

    def acquire(self, count: int = 1, wait: Callable[[float], object] = time.sleep) -> None:
        if self.per_second <= 0:
            return
        cost = count / self.per_second
        now = time.time()
        if self.store is None or self.issue_id is None:
            with self._lock:
                start = max(now, self._next)
                self._next = start + cost
        else:
            with self.store.begin() as conn:
                start = self.store.book_rate_slot(conn, self.issue_id, now, cost) - cost
        if start > now:
            wait(start - now)


class Sender:
    """One issue's send machinery: rendered once, shared by every worker thread of this process."""

    def __init__(self, settings: Settings, store: Store, rendered: RenderedIssue, issue_id: int,
                 backend_factory: Callable[[], Backend], *, rate_limiter: RateLimiter | None = None,
                 stop: threading.Event | None = None, progress: Progress | None = None,
                 on_progress: ProgressCallback | None = None) -> None:
        self.settings = settings
        self.store = store
        self.rendered = rendered
        self.issue_id = issue_id
        self.factory = MessageFactory(rendered)
        self.backend_factory = backend_factory
        self.key = secret_key_for(settings)
        self.base_url, self.slug, self.domain = settings.base_url, rendered.issue.slug, settings.sender_domain
        self.rate_limiter = rate_limiter or RateLimiter(settings.rate_limit, store, issue_id)
        self.stop = stop or threading.Event()
        self.progress = progress or Progress(rendered.issue.slug, 0)
        self.on_progress = on_progress
        self._lock = threading.RLock()  # _record holds it while calling _abort
        self.consecutive_failures = 0
        self.consecutive_failed_messages = 0
        self.abort_reason: str | None = None

    # ----- per recipient --------------------------------------------------------------------------
    def recipient_for(self, subscriber_id: int, email: str, name: str, delivery_id: int | None = None) -> OutgoingMessage:
        token = tokens.make_token(self.key, "unsubscribe", subscriber_id)
        recipient = Recipient(email=email, name=name, subscriber_id=subscriber_id,
                              unsubscribe_url=f"{self.base_url}/u/{token}")
        return OutgoingMessage(recipient=recipient, delivery_id=delivery_id,
                               message_id=tokens.message_id(self.key, self.slug, subscriber_id, self.domain))

    # ----- the worker loop ------------------------------------------------------------------------
    def run_worker(self, name: str, batch_size: int) -> None:
        """Claim and send batches until the queue is empty, a stop is asked, or the send aborts."""
        backend = self.backend_factory()
        # One connection for this worker's whole run: a transaction per ledger write without a pool
        # round trip each time (per message over SMTP, that is a third of the ledger's cost).
        with self.store.engine.connect() as conn:
            try:
                if not self._open(backend):
                    return
                size = min(batch_size or backend.max_batch, backend.max_batch)
                while not self.halted:
                    with conn.begin():
                        rows = self.store.claim_deliveries(conn, self.issue_id, name, size)
                    if not rows:
                        return
                    self._process(conn, backend, name, rows)
            except PermanentError as exc:
                self._abort(f"{backend.name}: {exc}")
            finally:
                backend.close()

    def _open(self, backend: Backend) -> bool:
        """Connect, retrying transient failures with backoff; False when halted or given up."""
        for attempt in range(1, MAX_BATCH_RETRIES + 1):
            try:
                backend.open()
                return True
            except TransientError as exc:
                if attempt == MAX_BATCH_RETRIES:
                    self._abort(f"{backend.name}: cannot connect: {exc}")
                    return False
                log.warning("%s: cannot connect (%s); retry %d/%d", backend.name, exc, attempt, MAX_BATCH_RETRIES)
                if self._sleep(backoff(attempt, exc.retry_after)):
                    return False
        return False

    def _process(self, conn: Connection, backend: Backend, worker: str, rows: Sequence) -> None:
        skipped = [{"id": r.delivery_id, "status": "skipped", "last_error": f"subscriber is {r.subscriber_status}"}
                   for r in rows if r.subscriber_status != "active"]
        messages = [self.recipient_for(row.subscriber_id, row.email_given, row.name, row.delivery_id)
                    for row in rows if row.subscriber_status == "active"]
        attempts = {r.delivery_id: r.attempts for r in rows}
        if skipped:
            with conn.begin():
                self.store.finish_deliveries(conn, worker, skipped)
            self._count(skipped=len(skipped))
        step = backend.ledger_step or len(messages)
        for start in range(0, len(messages), step):
            step_messages = messages[start:start + step]
            if not self.halted:
                self.rate_limiter.acquire(len(step_messages), self._sleep)
            if self.halted:  # stop asked before this step went out: the rest goes back, not counted as tried
                self._hand_back(conn, worker, untried=True)
                return
            try:
                results = self._send_with_retries(backend, worker, step_messages)
            except BaseException:
                self._hand_back(conn, worker)  # an unexpected error: what is not recorded as sent goes back
                raise
            if results is None:  # stopped or aborted while retrying: hand the rest back untouched
                self._hand_back(conn, worker)
                return
            self._record(conn, worker, results, attempts)

    def _hand_back(self, conn: Connection, worker: str, untried: bool = False) -> None:
        """Put this worker's claimed rows back in the queue (`untried`: they never reached the provider,
        so their claim does not count as an attempt)."""
        if conn.in_transaction():  # interrupted inside a ledger write: that write did not happen
            conn.rollback()
        with conn.begin():
            self.store.requeue(conn, self.issue_id, statuses=("sending",), claimed_by=[worker], untried=untried)

    def _send_with_retries(self, backend: Backend, worker: str,
                           messages: list[OutgoingMessage]) -> list[RecipientResult] | None:
        batch_date = formatdate(usegmt=True)
        for attempt in range(1, MAX_BATCH_RETRIES + 1):
            try:
                results = backend.send_batch(Batch(self.factory, tuple(messages), self.issue_id, batch_date))
            except PermanentError as exc:  # nothing will be accepted: pause, hand the batch back untouched
                self._abort(f"{backend.name}: {exc}")
                return None
            except TransientError as exc:
                delay = backoff(attempt, exc.retry_after)
                log.warning("%s: batch of %d not accepted (%s); retry %d/%d in %.1fs", self.rendered.issue.slug,
                            len(messages), exc, attempt, MAX_BATCH_RETRIES, delay)
                if attempt == MAX_BATCH_RETRIES:
                    return [RecipientResult(m, "transient", error=str(exc)) for m in messages]
                if self._sleep(delay):
                    return None
                continue
            return results
        return None

    def _record(self, conn: Connection, worker: str, results: list[RecipientResult], attempts: dict[int, int]) -> None:
        finished, requeue_ids, bounced = [], [], []
        for result in results:
            delivery_id = result.message.delivery_id
            if result.outcome == "sent":
                finished.append({"id": delivery_id, "status": "sent", "provider_message_id": result.provider_message_id})
            elif result.outcome == "permanent" or attempts.get(delivery_id, 0) >= MAX_ATTEMPTS:
                finished.append({"id": delivery_id, "status": "failed", "last_error": (result.error or "")[:2000]})
                if result.hard_bounce and result.message.recipient.subscriber_id is not None:
                    bounced.append((result.message.recipient.subscriber_id, result.error or "hard bounce"))
            else:
                requeue_ids.append((delivery_id, result.error))
        with conn.begin():
            self.store.finish_deliveries(conn, worker, finished)
            if requeue_ids:
                self.store.requeue_ids(conn, worker, requeue_ids)
            for subscriber_id, reason in bounced:
                self.store.set_status(conn, subscriber_id, "bounced", source="send", reason=reason[:500])
        sent = sum(1 for f in finished if f["status"] == "sent")
        failed = len(finished) - sent
        self._count(sent=sent, failed=failed)
        with self._lock:
            if sent == 0 and results:
                self.consecutive_failures += 1
                self.consecutive_failed_messages += len(results)
                if (self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES
                        and self.consecutive_failed_messages >= MAX_CONSECUTIVE_FAILED):
                    example = next((r.error for r in results if r.error), "unknown error")
                    self._abort(f"{self.consecutive_failed_messages} messages in a row were not accepted "
                                f"(last: {example})")
            else:
                self.consecutive_failures = self.consecutive_failed_messages = 0
        if requeue_ids:
            # transient per-recipient refusals: give the provider a moment before they are claimed again
            self._sleep(backoff(min(attempts.get(requeue_ids[0][0], 1), 6), None))

    @property
    def halted(self) -> bool:
        return self.stop.is_set() or self.abort_reason is not None

    def _sleep(self, seconds: float) -> bool:
        """Wait, waking early on a stop or an abort; True when halted."""
        deadline = time.monotonic() + seconds
        while not self.halted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.stop.wait(min(remaining, 0.2))
        return True

    def _abort(self, reason: str) -> None:
        with self._lock:
            if self.abort_reason is None:
                self.abort_reason = reason

    def _count(self, sent: int = 0, failed: int = 0, skipped: int = 0) -> None:
        with self._lock:
            self.progress.sent += sent
            self.progress.failed += failed
            self.progress.skipped += skipped
        if self.on_progress:
            self.on_progress(self.progress)


def backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; a provider's Retry-After wins when it asks for longer."""
    delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, BACKOFF_CAP * 4))
    return delay


def web_version_html(rendered: RenderedIssue) -> str:
    """The archive's copy: no personal values (a neutral greeting, the subscribe page instead of an unsubscribe link)."""
    html, _ = rendered.personalise(Recipient(email="", name="", unsubscribe_url=f"{rendered.settings.base_url}/subscribe"))
    return html


@dataclass
class PreparedSend:
    issue: Issue
    rendered: RenderedIssue
    issue_id: int
    frozen: int
    requeued_stale: int


def prepare_send(settings: Settings, store: Store, issue_ref: str, *, include_new: bool = False,
                 retry_failed: bool = False, allow_draft: bool = False) -> PreparedSend:
    """Everything that must hold before the first message goes: config, issue, render, freeze.

    Raises DraftIssue for an issue marked `draft = true` whose edition is not frozen yet (a send
    already started resumes), unless `allow_draft`.
    """
    settings.require_for_send()
    issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
    if issue.draft and not allow_draft:
        with store.engine.connect() as conn:
            existing = store.issue_row(conn, issue.slug)
        if existing is None or existing.frozen_at is None:
            raise draft_refusal(issue)
    warning = placeholder_warning(issue)
    if warning:
        log.warning("%s", warning)
    rendered = render_issue(issue, settings)
    make_backend(settings)  # constructing checks the backend's own settings
    secret_key_for(settings)
    now = utcnow()
    with store.begin() as conn:
        row = store.ensure_issue(conn, slug=issue.slug, subject=issue.subject, list_name=issue.list_name,
                                 web_html=web_version_html(rendered), issue_date=issue.date.isoformat())
        frozen = 0
        if row.frozen_at is None or include_new:
            frozen = store.freeze_recipients(conn, row.id, issue.list_name)
            max_id = store.max_subscriber_id(conn)
            store.update_issue(conn, row.id, frozen_at=row.frozen_at or now, max_subscriber_id=max_id)
        if retry_failed:
            store.requeue(conn, row.id, statuses=("failed",))
            store.reset_attempts(conn, row.id)
        requeued = requeue_dead_claims(store, conn, row.id)
        store.update_issue(conn, row.id, status="sending", started_at=row.started_at or now, paused_reason=None)
    if requeued:
        log.info("%s: %d deliveries left in flight by a stopped run are queued again", issue.slug, requeued)
    return PreparedSend(issue, rendered, row.id, frozen, requeued)


def send_issue(settings: Settings, store: Store, issue_ref: str, *, include_new: bool = False,
               retry_failed: bool = False, workers: int = 1, stop: threading.Event | None = None,
               on_progress: ProgressCallback | None = None,
               backend_factory: Callable[[], Backend] | None = None, allow_draft: bool = False) -> SendReport:
    """Send an issue to its frozen recipient set, resuming whatever a previous run left (drafts: see prepare_send)."""
    started = time.monotonic()
    prepared = prepare_send(settings, store, issue_ref, include_new=include_new, retry_failed=retry_failed,
                            allow_draft=allow_draft)
    with store.engine.connect() as conn:
        counts = store.delivery_counts(conn, prepared.issue_id)
    progress = Progress(prepared.issue.slug, total=counts["queued"] + counts["sending"])
    sender = Sender(settings, store, prepared.rendered, prepared.issue_id,
                    backend_factory or (lambda: make_backend(settings)),
                    stop=stop, progress=progress, on_progress=on_progress)
    run_workers(sender, workers, settings.batch_size)
    counts = settle_issue(store, prepared.issue_id, sender.abort_reason)
    report = SendReport(prepared.issue.slug, counts, progress.sent, progress.failed, progress.skipped,
                        time.monotonic() - started, prepared.requeued_stale, prepared.frozen)
    if sender.abort_reason:
        raise SendAborted(f"{prepared.issue.slug}: send paused: {sender.abort_reason}; "
                          f"fix the cause and run `mailer send {prepared.issue.slug}` again to resume "
                          f"({counts['sent']} sent, {counts['queued'] + counts['sending']} left)")
    return report


def run_workers(sender: Sender, workers: int, batch_size: int) -> None:
    """`workers` threads claiming batches of the same issue (I/O-bound: threads overlap network waits)."""
    if workers <= 1:
        sender.run_worker(worker_id(), batch_size)
        return
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            sender.run_worker(worker_id(f"-{index}"), batch_size)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
            sender._abort(f"worker {index} crashed: {exc}")

    threads = [threading.Thread(target=target, args=(i,), name=f"mailer-worker-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def work_queue(settings: Settings, store: Store, *, stop: threading.Event | None = None, once: bool = False,
               poll_seconds: float = 5.0, on_progress: ProgressCallback | None = None) -> int:
    """`mailer worker`: claim and send queued deliveries of any issue being sent, until stopped.

    Any number of workers on any machines can run this against PostgreSQL; SKIP LOCKED hands each
    a disjoint batch. Returns the number of messages this worker sent.
    """
    stop = stop or threading.Event()
    sent = 0
    senders: dict[str, Sender] = {}
    while not stop.is_set():
        with store.engine.connect() as conn:
            active = store.issues_with_queue(conn)
        for slug, issue_id in active:
            if stop.is_set():
                break
            sender = senders.get(slug)
            if sender is None:
                try:
                    rendered = render_issue(load_issue(slug, settings.issues_dir, settings.zone), settings)
                except MailerError as exc:
                    log.error("%s: cannot render here (%s); leaving it to another worker", slug, exc)
                    continue
                sender = Sender(settings, store, rendered, issue_id, lambda: make_backend(settings), stop=stop,
                                progress=Progress(slug, 0), on_progress=on_progress)
                senders[slug] = sender
            with store.begin() as conn:
                requeue_dead_claims(store, conn, issue_id)
            before = sender.progress.sent
            sender.run_worker(worker_id(), settings.batch_size)
            sent += sender.progress.sent - before
            counts = settle_issue(store, issue_id, sender.abort_reason)
            if sender.abort_reason:
                log.error("%s: paused: %s", slug, sender.abort_reason)
                senders.pop(slug)
            elif counts["queued"] == 0 and counts["sending"] == 0:
                log.info("%s: finished (%d sent, %d failed, %d skipped)", slug, counts["sent"], counts["failed"],
                         counts["skipped"])
        if once:
            break
        stop.wait(poll_seconds)
    return sent


def send_test(settings: Settings, issue_ref: str, addresses: Sequence[str]) -> list[RecipientResult]:
    """Send the issue to a few addresses, `[TEST]` in the subject; the ledger is never touched."""
    from .addresses import parse_address

    settings.require_for_send()
    parsed = [parse_address(a) for a in addresses if a.strip()]
    if not parsed:
        raise MailerError("--test needs at least one address")
    issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
    rendered = render_issue(issue, settings)
    factory = MessageFactory(rendered, subject_prefix="[TEST] ")
    key = secret_key_for(settings)
    messages = tuple(
        OutgoingMessage(Recipient(email=a.given, unsubscribe_url=f"{settings.base_url}/u/{tokens.make_token(key, 'unsubscribe', 0)}"),
                        message_id=f"<test.{os.urandom(8).hex()}@{settings.sender_domain}>")
        for a in parsed)
    with make_backend(settings) as backend:
        results = backend.send_batch(Batch(factory, messages, None, formatdate(usegmt=True)))
    return results


def issue_status(settings: Settings, store: Store, issue_ref: str) -> dict:
    """Ledger counts by status, plus the issue's own state."""
    slug = issue_ref
    try:
        from .issue import find_issue_folder
        slug = find_issue_folder(issue_ref, settings.issues_dir).name
    except NotFound:
        pass
    with store.engine.connect() as conn:
        row = store.issue_row(conn, slug)
        if row is None:
            raise NotFound(f"issue {issue_ref!r} has never been sent (no ledger yet)")
        counts = store.delivery_counts(conn, row.id)
    return {"issue": slug, "status": row.status, "paused_reason": row.paused_reason, "counts": counts,
            "total": sum(counts.values())}
