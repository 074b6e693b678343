"""The send loop: claim batches, build, send, record, retry, pause, resume (preparing and freezing
a send is `prepare`'s, its status `status`'s: import those names from there).

Longer than ~400 lines because the loop's states (claims, held refusals, streaks, pause, graceful
stop) share one `Sender` and its invariants read best in one place.

A pipeline with an honest checkpoint (as listmonk's campaign manager), except that the checkpoint —
a ledger row going from `sending` to `sent` — moves only after the provider accepted the message:

1. `prepare_send` checks everything that can fail (settings, the issue, its rendering, one sample
   message) BEFORE it touches the ledger, then freezes the recipient set under a lock on the issue's
   row: one `queued` delivery row per active subscriber, unique on (issue, subscriber) — and the
   content, as the issue's stored edition (`edition.py`), which every later claim sends; only
   `--rebuild` makes another, for those not reached yet. An empty
   audience is refused (`EmptyAudience`) and leaves the issue as it was; a finished issue stays
   finished; a second first send racing the first waits for its freeze and joins it.
2. Workers claim batches (`queued` → `sending`, tagged with a claimant id, see `claimant.py`) in one
   statement (`FOR UPDATE SKIP LOCKED` on PostgreSQL), re-check suppression right before each
   message or request leaves (someone who unsubscribed a second ago is `skipped`), hand the messages
   to the backend, and record each outcome.
3. Failures are classified by whose failure it is (providers/base.py). A recipient's refusal counts
   against that recipient (`attempts`; `failed` after MAX_ATTEMPTS or at once when permanent). A
   failure of the whole path (connection refused, DNS, timeouts, 5xx/429 for every request, disk
   full) counts against nobody: it is retried with exponential backoff honouring Retry-After, and
   after `MAILER_PAUSE_AFTER` seconds without anything accepted the send pauses (`SendAborted`);
   the same command resumes it. A refusal is final (attempt spent, `failed`, subscriber `bounced`)
   only once the path has shown it works: something of this send accepted in the same step or
   after it. Until then it is provisional (the row stays `sending`); STREAK_LIMIT refusals in a row
   with nothing accepted — or everyone left, when fewer remain and nobody was delivered yet — are the
   path's: they go back to the queue untouched and the send pauses.
4. A graceful stop (SIGTERM, Ctrl-C) lets the message or request in flight finish and be recorded,
   hands the rest back and repeats nobody; what a stalled server still holds after STOP_GRACE
   seconds is cut and stays queued (the one case where a stop can repeat a message: a server that
   withholds its answer to a message it accepted). A crash (SIGKILL, power loss) may repeat exactly
   what was in flight and unrecorded: over SMTP at most one commit group per connection (group
   commit: ≤ MAILER_SMTP_COMMIT_EVERY = 10 messages by default, see `_process`), over SendGrid the
   recipients of the requests in flight (≤ MAILER_SENDGRID_IN_FLIGHT = 4,000 by default for the
   whole send, all its processes together: `inflight.py`). Nobody is ever skipped.
5. The pipeline: over SendGrid the send's requests in flight are slots (`inflight.py`) that threads
   take right before a request leaves and give back once it is recorded, with one thread more than
   the slots (`lanes`): while requests wait for SendGrid's answer another thread claims and builds
   the next one, and the others record; they share the rate limit
   (in the issue's row) and one gate (`_path_failed`): a 429 or an outage heard by one thread holds
   every thread until its Retry-After has passed. A later run puts
   back rows whose claimant is dead (`claimant.is_alive`); the stable Message-ID lets receivers that
   deduplicate drop a repeated copy.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field, replace as replace_fields
from email.utils import formatdate
from typing import Any, Callable, Iterator, Sequence

from . import claimant
from .prepare import by_language, live_claimants, load_edition, prepare_send, requeue_dead_claims
from .inflight import InFlightSlots, lanes, sending_processes, slots_for
from .ratelimit import SendRateLimiter
from .. import links, tokens
from ..links import TEST_SUBSCRIBER_ID
from ..providers import Backend, Batch, OutgoingMessage, PermanentError, RecipientResult, TransientError, make_backend, require_ready
from ..config import Settings, secret_key_for
from ..errors import MailerError, SendAborted, UnresumableSend
from ..content.issue import load_issue
from ..mime import MessageFactory
from ..redact import strip_credentials
from ..content.render import Recipient, render_issue
from ..store import Connection, Store, utcnow
from .edition import Edition
from . import waves
from ..statuses import STOPPED

log = logging.getLogger("mailer.dispatch")

MAX_ATTEMPTS = 5                # recipient-specific refusals of one recipient before it is `failed`
STREAK_LIMIT = 10               # recipients refused in a row with nothing accepted: the path's fault (see _hold)
STOP_GRACE = 3.0                # seconds a stop lets in-flight work finish before it is cut
DATE_FRESH = 10.0               # seconds a claimed batch's Date stays good for its messages (see _process)
SUPPRESSION_FRESH = 0.2         # seconds a suppression check stays good: re-read before a message leaves after that
BACKOFF_BASE = 1.0              # seconds: first wait after a whole-path failure, doubled each time…
BACKOFF_CAP = 60.0              # …up to this (a provider's Retry-After may ask for longer)
CLAIM_LEASE = claimant.LEASE    # a claim not renewed for this long is presumed dead (any host)
RATE_STEP_SECONDS = 0.1         # under MAILER_RATE_LIMIT, a step (file run, request) carries at most this much of a second's share


def rate_step(per_second: float) -> int:
    """The most messages one step may hand over at once under a rate limit of `per_second` messages
    per second: RATE_STEP_SECONDS' worth, at least 1. A step goes out at the start of the slot it
    booked (`SendRateLimiter.acquire`), so any one second sees at most `per_second` + this many."""
    return max(1, int(per_second * RATE_STEP_SECONDS))


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
    already_finished: bool = False  # the issue was sent before this run; nothing was done
    held_by: tuple[str, ...] = ()   # live claimants still holding rows (another sender of the same issue)
    edition: int = 0                # the number of the edition sent
    notice: str | None = None       # what this run did to the edition (`PreparedSend.notice`)
    waves: tuple = ()               # a local-time send: its waves after this run (sending.waves.Wave)

    @property
    def complete(self) -> bool:
        return self.counts.get("queued", 0) == 0 and self.counts.get("sending", 0) == 0

    @property
    def waiting(self) -> int:
        """Recipients of waves still ahead (a local-time send): queued, not released yet."""
        return sum(w.left for w in self.waves if w.state == "pending")

    @property
    def missed(self) -> int:
        """Recipients of waves missed beyond the grace, not released: never sent late by themselves."""
        return sum(w.left for w in self.waves if w.state == "missed")


def worker_id(suffix: str = "") -> str:
    """A claimant id for one worker of this process (see claimant.py)."""
    return claimant.new_id(suffix)


def settle_issue(store: Store, issue_id: int, abort_reason: str | None,
                 stopped: bool = False) -> tuple[dict[str, int], str | None]:
    """After a run: the issue is paused (with why), sent (nothing left, someone reached), or still
    sending. A finished issue is never un-finished, and an issue that reached nobody is never `sent`:
    it is paused with the reason. Returns the counts and the pause reason (None when not paused)."""
    with store.begin() as conn:
        counts = store.delivery_counts(conn, issue_id)
        if abort_reason:
            store.update_issue(conn, issue_id, status="paused", paused_reason=strip_credentials(abort_reason))
            return counts, abort_reason
        if counts["queued"] == 0 and counts["sending"] == 0:
            if counts["sent"] == 0:
                reason = (f"it reached nobody: of {sum(counts.values())} frozen recipients {counts['skipped']} were "
                          f"skipped (no longer active) and {counts['failed']} failed; "
                          f"`--include-new` adds today's subscribers, `--retry-failed` retries failures")
                store.update_issue(conn, issue_id, status="paused", paused_reason=reason)
                return counts, reason
            store.update_issue(conn, issue_id, status="sent", finished_at=utcnow(), paused_reason=None)
        elif stopped:  # a graceful stop (SIGTERM, Ctrl-C) with deliveries left: paused, the same command resumes
            store.update_issue(conn, issue_id, status="paused", paused_reason=STOPPED)
    return counts, None


class Sender:
    """One issue's send machinery for one stored edition, shared by every worker thread of this process.

    Each claim first reads the issue's current edition in the claim's own transaction: when a
    `--rebuild` made a newer one, nothing is claimed, `edition_changed` is set and the workers return,
    so the caller can load the new edition (see `current_edition`)."""

    def __init__(self, settings: Settings, store: Store, rendered: Edition, issue_id: int,
                 backend_factory: Callable[[], Backend], *, rate_limiter: SendRateLimiter | None = None,
                 stop: threading.Event | None = None, progress: Progress | None = None,
                 on_progress: ProgressCallback | None = None, factory: MessageFactory | None = None,
                 factories: dict[str, MessageFactory] | None = None, shared_gate: Any = None,
                 in_flight: InFlightSlots | None = None, writer_turn: Any = None) -> None:
        self.settings = settings
        self.store = store
        self.rendered = rendered
        self.issue_id = issue_id
        # one factory per language of fixed strings of the edition (`Edition.by_language`), the default
        # first; each recipient gets their `language`'s (`Edition.language_for`)
        self.factories = factories or {
            language: MessageFactory(variant) for language, variant in by_language(rendered).items()}
        self.factory = factory or next(iter(self.factories.values()))
        self.backend_factory = backend_factory
        self.key = secret_key_for(settings)
        # the Message-ID's domain is the edition's frozen From domain: a copy re-sent after a crash
        # carries the same Message-ID whatever MAILER_FROM says now
        self.base_url, self.slug, self.domain = settings.base_url, rendered.key, rendered.settings.sender_domain
        # per recipient: prepared once (the same tokens and Message-IDs as `outgoing_message`)
        self._unsubscribe_prefix = links.unsubscribe_prefix(self.base_url)  # links.unsubscribe_url's
        self._token = tokens.TokenMaker(self.key, "unsubscribe", issue_id)
        self._message_id = tokens.MessageIds(self.key, self.slug, self.domain)
        self._languages: dict[str | None, str] = {}  # subscriber's stored language -> key in `factories`
        self.rate_limiter = rate_limiter or SendRateLimiter(settings.rate_limit, store, issue_id)
        self.stop = stop or threading.Event()
        self.progress = progress or Progress(rendered.key, 0)
        self.edition_changed = False
        self.on_progress = on_progress
        self.pause_after = settings.pause_after
        self._lock = threading.RLock()  # _record holds it while calling _abort
        self.abort_reason: str | None = None
        self._backends: set[Backend] = set()
        self._local = threading.local()  # per worker thread: its connection and claimant id (heartbeat)
        # a whole-path outage: since when nothing went through, and how many tries so far
        self._outage_since: float | None = None
        self._outage_tries = 0
        # the whole send's gate: after a whole-path failure (a 429, a 5xx, a refused connection) no worker
        # of this send hands anything over before this moment (time.monotonic()), so a rate limit slows
        # the send, not the one thread that happened to hear about it
        self._resume_at = 0.0
        # the same gate shared with the other processes of the send (`processes.Helpers.gate`), or None
        self._shared_gate = shared_gate
        # the send's requests in flight (request-based providers, `inflight.py`): a slot is taken right
        # before a request leaves and given back once its outcome is recorded; None: the backend hands
        # over message by message (SMTP: its crash window is the commit group) or has no requests
        self.in_flight = in_flight if in_flight is not None else slots_for(settings)
        # SQLite: one writer at a time, in turns this process's threads take (and, for a send of
        # several processes, `processes.WriterTurn`: all of them), instead of SQLite's busy handler
        self._serial = writer_turn or (_sqlite_writer_lock(store) if store.is_sqlite else None)
        # this process's threads claim one at a time: two claims scanning the queue at once under SKIP
        # LOCKED (PostgreSQL) each skip the rows the other has just locked, and split what would have been
        # two full requests into smaller ones (SQLite's claims are already one at a time: `_serial`)
        self._claiming: Any = threading.Lock() if self._serial is None else contextlib.nullcontext()
        # SMTP group commit: accepted messages recorded together, at most this many / this old (seconds)
        self.commit_every = max(1, settings.smtp_commit_every)
        self.commit_seconds = max(0.0, settings.smtp_commit_ms / 1000.0)
        # recipients refused since the last acceptance (see _hold), and how many steps were accepted so far
        self._streak = _Streak()
        self._accepted = 0
        # a local-time send: claims take only released rows (sending/waves.py), late by at most this
        with store.connect() as conn:
            row = store.issue_row(conn, rendered.key)
        self.claim_grace = float(settings.schedule_grace) if row is not None and row.send_local else None

    @contextlib.contextmanager
    def _tx(self, conn: Connection) -> Iterator[None]:
        """One ledger transaction of a worker thread. On SQLite the threads of this process take turns
        in Python first: SQLite's own busy handler, when a writer meets another's lock, sleeps in
        steps of milliseconds even if the lock frees sooner — measured, that halved SMTP's group
        commit throughput at 4 connections. The processes of one send take the same turns
        (`processes.WriterTurn`); other processes still meet SQLite's lock (busy_timeout)."""
        if self._serial is None:
            with conn.begin():
                yield
            return
        with self._serial, conn.begin():
            yield

    # ----- per recipient --------------------------------------------------------------------------
    def recipient_for(self, subscriber_id: int, email: str, name: str, delivery_id: int | None = None,
                      first_name: str | None = None) -> OutgoingMessage:
        recipient = Recipient(email=email, name=name, subscriber_id=subscriber_id, first_name=str(first_name or ""),
                              unsubscribe_url=self._unsubscribe_prefix + self._token(subscriber_id))
        return OutgoingMessage(recipient=recipient, delivery_id=delivery_id, message_id=self._message_id(subscriber_id))

    # ----- the worker loop ------------------------------------------------------------------------
    def run_worker(self, name: str, batch_size: int) -> None:
        """Claim and send batches until the queue is empty, a stop is asked, or the send pauses."""
        backend = self.backend_factory()
        with self._lock:
            self._backends.add(backend)
        # One connection for this worker's whole run: a transaction per ledger write without a pool
        # round trip each time (per message over SMTP, that is a third of the ledger's cost).
        with self.store.connect() as conn:
            self._local.conn, self._local.worker, self._local.renewed = conn, name, time.monotonic()
            try:
                if not self._open(backend):
                    return
                size = min(batch_size or backend.max_batch, backend.max_batch)
                while not self.halted:
                    claim = None
                    with self._claiming, self._tx(conn):
                        if self.store.current_edition_id(conn, self.issue_id) != self.rendered.id:
                            self.edition_changed = True  # a --rebuild made a newer edition: claim nothing
                        else:
                            claim = self.store.claim_batch(conn, self.issue_id, name, size, self.claim_grace)
                    # read once committed: on SQLite without holding the send's one writer (`claim_batch`)
                    try:
                        rows = claim.rows(conn) if claim is not None else []
                    except BaseException:
                        self._hand_back(conn, name)  # the claim committed: an error reading it leaves no row held
                        raise
                    if self.edition_changed:
                        if self._held():
                            self._hand_back(conn, name)
                        return
                    if not rows:
                        self._settle_held(conn, name, {}, queue_empty=True)
                        return
                    self._local.renewed = time.monotonic()
                    self._process(conn, backend, name, rows)
                if self._held():  # halted: provisional refusals go back untouched
                    self._hand_back(conn, name)
            except PermanentError as exc:
                self._abort(f"{backend.name}: {exc}")
            except BaseException:  # a second Ctrl-C, a bug: no polite QUIT to a server that may be stalled
                backend.abort()
                raise
            finally:
                self._give_back_slot()  # never left held when this thread's run ends
                self._local.conn = None
                claimant.release(name)
                with self._lock:
                    self._backends.discard(backend)
                backend.close()

    def abort_in_flight(self) -> list[str]:
        """Cut what every backend of this sender has in flight (a stop that must take effect now);
        returns what each cut does (`Backend.cut`), one entry per kind of backend."""
        with self._lock:
            backends = list(self._backends)
        for backend in backends:
            backend.abort()
        return sorted({backend.cut for backend in backends})

    def _open(self, backend: Backend) -> bool:
        """Connect, retrying a whole-path failure with backoff; False when halted or paused."""
        while not self.halted:
            try:
                backend.open()
                return True
            except TransientError as exc:
                if not self._path_failed(f"{backend.name}: {exc}", exc.retry_after):
                    return False
        return False

    def _process(self, conn: Connection, backend: Backend, worker: str, rows: Sequence) -> None:
        # A claim's rows are read by position, a column at a time (`claim_deliveries`: delivery_id,
        # attempts, subscriber_id, email_given, name, subscriber_status, language, first_name): reading a
        # database row's field by name costs ~0.3 µs, and the build read ten per recipient (issue 12).
        columns = tuple(zip(*rows)) or ((),) * 8
        attempts = dict(zip(columns[0], columns[1]))
        # the claim read each subscriber's status: those suppressed since the freeze are skipped for free
        skipped = [] if columns[5].count("active") == len(rows) else [
            {"id": row[0], "status": "skipped", "last_error": f"subscriber is {row[5]}"}
            for row in rows if row[5] != "active"]
        if skipped:
            columns = tuple(zip(*[row for row in rows if row[5] == "active"])) or ((),) * 8
        delivery_ids, _, subscriber_ids, emails, names, _, languages, first_names = columns
        # by language of fixed strings: one factory per request; the same messages as `recipient_for`,
        # the batch's tokens and Message-IDs made at once (`TokenMaker.many`, `MessageIds.many`)
        groups: dict[str, list[OutgoingMessage]] = {}
        known, language_of = self._languages, self._language_of
        keys = [known.get(language) or language_of(language) for language in languages]
        prefix = self._unsubscribe_prefix
        for key, delivery_id, subscriber_id, email, name, first_name, token, message_id in zip(
                keys, delivery_ids, subscriber_ids, emails, names, first_names,
                self._token.many(subscriber_ids), self._message_id.many(subscriber_ids)):
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            group.append(OutgoingMessage(Recipient(email, prefix + token, name, subscriber_id, str(first_name or "")),
                                         message_id, delivery_id))
        messages = [message for group in groups.values() for message in group]
        if skipped:
            with self._tx(conn):
                self.store.finish_deliveries(conn, worker, skipped)
            self._count(skipped=len(skipped))
        if not messages:  # the whole batch unsubscribed since the freeze
            return
        self._local.batch_ids, self._local.checked = [m.delivery_id for m in messages], time.monotonic()
        self._local.skipped = set()
        # steps never mix languages: each goes out with its language's factory (one request, one language)
        # under a rate limit a step is at most `rate_step` messages: the limit holds message by message
        # (a whole claim handed over at the start of its slot would be a burst), and a stop is heard
        # between two steps
        size = backend.ledger_step or len(messages)
        if self.rate_limiter.per_second > 0:
            size = min(size, rate_step(self.rate_limiter.per_second))
        steps = [(self.factories[language], group[start:start + size])
                 for language, group in groups.items() for start in range(0, len(group), size)]
        # Group commit (backends that hand over message by message, i.e. SMTP): accepted results wait in
        # `pending` and are recorded in one transaction once `commit_every` of them are waiting or the
        # oldest is `commit_seconds` old, and always before anything goes back to the queue or this
        # batch ends. Before each message leaves, at most commit_every - 1 are unrecorded: a crash can
        # repeat at most one group (those plus the message in flight) per connection.
        group = self.commit_every if backend.ledger_step else 1
        pending: list[RecipientResult] = []
        oldest = 0.0
        # One Date for the claimed batch, so that signing processes (DKIM, more than one core) can make
        # the signatures of its messages ahead while earlier ones are on the wire (MessageFactory.prepare);
        # a step that leaves more than DATE_FRESH seconds later is dated (and signed) when it leaves.
        date, dated = formatdate(usegmt=True), time.monotonic()
        if backend.ledger_step:
            for language, members in groups.items():
                self.factories[language].prepare([(m.recipient, m.message_id) for m in members], date)

        def flush() -> bool:
            if not pending:
                self._give_back_slot()
                return False
            results = pending[:]
            pending.clear()
            try:
                return self._record(conn, worker, results, attempts)
            finally:
                self._give_back_slot()  # recorded: no longer what a crash may repeat

        for factory, step_messages in steps:
            if pending and (self.rate_limiter.per_second > 0 or self.halted
                            or time.monotonic() - oldest >= self.commit_seconds):
                if flush():  # about to wait, stopping, or the group is old enough
                    return
            self._heartbeat()
            if not self.halted:
                self.rate_limiter.acquire(len(step_messages), self._sleep)
            if self.halted:  # stop asked before this step went out: the rest goes back
                flush()
                self._hand_back(conn, worker)
                return
            handed_over = time.monotonic()
            try:
                results = self._send_with_retries(conn, backend, worker, step_messages, factory,
                                                  date if time.monotonic() - dated < DATE_FRESH else None)
            except BaseException:
                try:
                    flush()  # what was accepted is recorded, so going back to the queue repeats nobody
                finally:
                    self._hand_back(conn, worker)  # an unexpected error: what is not recorded goes back
                raise
            if results is None:  # stopped or paused while retrying: hand the rest back untouched
                flush()
                self._hand_back(conn, worker)
                return
            if not pending:
                oldest = handed_over  # a group's age counts from when its first message started to leave
            pending.extend(results)
            if len(pending) >= group or time.monotonic() - oldest >= self.commit_seconds \
                    or any(r.outcome != "sent" for r in results):
                if flush():
                    return  # a streak of refusals handed this worker's claims back
        flush()

    def _language_of(self, subscriber_language: str | None) -> str:
        """The key in `factories` of a subscriber's language (`Edition.language_for`; the default
        for a rendering without variants), remembered per stored value (a list holds a handful)."""
        known = self._languages.get(subscriber_language)
        if known is None:
            language_for = getattr(self.rendered, "language_for", None)
            known = language_for(subscriber_language) if language_for else next(iter(self.factories))
            if len(self._languages) < 1000:
                self._languages[subscriber_language] = known
        return known

    def _hand_back(self, conn: Connection, worker: str) -> None:
        """Put this worker's claimed rows back in the queue (no attempt is counted: nobody refused them, or
        their refusals were provisional)."""
        self._held().clear()
        if conn.in_transaction():  # interrupted inside a ledger write: that write did not happen
            conn.rollback()
        with self._tx(conn):
            self.store.requeue(conn, self.issue_id, statuses=("sending",), claimed_by=[worker])
        self._give_back_slot()

    def _drop_suppressed(self, conn: Connection, worker: str,
                         messages: list[OutgoingMessage]) -> list[OutgoingMessage]:
        """Right before messages leave: skip those whose subscriber is no longer active.

        The claim read every status; after SUPPRESSION_FRESH seconds (a rate-limit wait, a retry, or
        simply time passing) one indexed read covers what this worker still holds of its batch, so a
        message never leaves on a status older than that, at one query per SUPPRESSION_FRESH seconds
        instead of one per message."""
        local = self._local
        now = time.monotonic()
        if now - local.checked < SUPPRESSION_FRESH:
            return [m for m in messages if m.delivery_id not in local.skipped] if local.skipped else messages
        with self._tx(conn):
            suppressed = self.store.suppressed_among(conn, worker, local.batch_ids)
            if suppressed:
                self.store.finish_deliveries(conn, worker, [
                    {"id": delivery_id, "status": "skipped", "last_error": f"subscriber is {status}"}
                    for delivery_id, status in suppressed.items()])
        local.checked = now
        if suppressed:
            local.skipped.update(suppressed)
            local.batch_ids = [i for i in local.batch_ids if i not in suppressed]
            log.info("%s: %d recipient(s) unsubscribed or suppressed since the claim: skipped", self.slug,
                     len(suppressed))
            self._count(skipped=len(suppressed))
        return [m for m in messages if m.delivery_id not in local.skipped] if local.skipped else messages

    def _send_with_retries(self, conn: Connection, backend: Backend, worker: str, messages: list[OutgoingMessage],
                           factory: MessageFactory | None = None, date: str | None = None) -> list[RecipientResult] | None:
        """Send one step (dated `date`, or now); a whole-path failure is retried (same messages, dated
        anew) until it passes or the send pauses. None when halted."""
        batch_date = date or formatdate(usegmt=True)
        while True:
            if self._wait_gate():
                return None
            messages = self._drop_suppressed(conn, worker, messages)
            if not messages:
                return []
            try:
                return backend.send_batch(Batch(factory or self.factory, tuple(messages), self.issue_id, batch_date,
                                                before_request=self._before_request))
            except PermanentError as exc:  # nothing will be accepted: pause, hand the batch back untouched
                self._abort(f"{backend.name}: {exc}")
                return None
            except TransientError as exc:
                if self.halted or not self._path_failed(f"{backend.name}: {exc}", exc.retry_after):
                    return None
                batch_date = formatdate(usegmt=True)

    def _record(self, conn: Connection, worker: str, results: list[RecipientResult], attempts: dict[int, int]) -> bool:
        """Record one step's outcomes. Accepted and deferred rows are written at once; refusals only
        once they are final — when something of this send was accepted in the same step or after them
        (see `_settle_held`). Until then they stay `sending`, held by this worker (`_hold`). True when a
        streak of refusals handed this worker's claims back (the rest of its batch must not be sent)."""
        sent: dict[str | None, list[int]] = {}  # delivery ids by provider message id (a SendGrid request: one)
        deferred, refusals = [], []
        for r in results:
            outcome = r.outcome
            if outcome == "sent":
                ids = sent.get(r.provider_message_id)
                if ids is None:
                    ids = sent[r.provider_message_id] = []
                ids.append(r.message.delivery_id)
            elif outcome == "deferred":
                deferred.append((r.message.delivery_id, strip_credentials(r.error or "")))
            elif outcome in ("transient", "permanent"):
                refusals.append((r, attempts.get(r.message.delivery_id, 0)))
        accepted = sum(map(len, sent.values()))
        with self._tx(conn):
            self.store.record_sent(conn, worker, sent)
            self.store.requeue_ids(conn, worker, deferred, count_attempt=False)
        self._count(sent=accepted)
        log.debug("%s: %s recorded %d sent, %d deferred, %d refused (held until the path shows it works)", self.slug,
                  worker, accepted, len(deferred), len(refusals))
        held = self._held()
        if accepted:
            with self._lock:
                self._outage_since, self._outage_tries = None, 0
                self._accepted += 1
                self._streak = _Streak()
            held.extend((result, spent, -1) for result, spent in refusals)
            self._settle_held(conn, worker, attempts)
            return False
        if refusals:
            return self._hold(conn, worker, refusals, attempts)
        if deferred and not self.halted:
            self._path_failed(f"nothing accepted ({deferred[0][1]})", None)
        return False

    def _held(self) -> list:
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = []
        return held

    def _hold(self, conn: Connection, worker: str, refusals: list[tuple[RecipientResult, int]],
              attempts: dict[int, int]) -> bool:
        """Refusals with nothing of this send accepted since the last acceptance: provisional. They stay
        `sending` (no attempt spent, nobody marked bounced) until an acceptance makes them final. When
        STREAK_LIMIT recipients in a row were refused with nothing accepted, the path is refusing,
        not the people: what this worker holds goes back to the queue untouched and the send pauses
        (permanent refusals) or is waited out like an outage (all transient: 4xx). True when handed back."""
        self._settle_held(conn, worker, attempts)  # what another worker's acceptance made final meanwhile
        held = self._held()
        with self._lock:
            epoch = self._accepted
            streak = self._streak
            for result, spent in refusals:
                streak.count += 1
                streak.transient_only = streak.transient_only and result.outcome == "transient"
                streak.last_error = result.error or streak.last_error
            count, limit_reached = streak.count, streak.count >= STREAK_LIMIT
        held.extend((result, spent, epoch) for result, spent in refusals)
        if limit_reached:
            self._path_refused(conn, worker, count, streak)
        return limit_reached

    def _path_refused(self, conn: Connection, worker: str, count: int, streak: "_Streak") -> None:
        """A streak of refusals judged the path's: hand back what this worker holds, then pause or wait."""
        with self._lock:
            if self._streak is streak:
                self._streak = _Streak()
        self._hand_back(conn, worker)
        who = self.settings.provider.refusing_path()  # "the relay" (smtp), "the provider (sendgrid)"
        reason = (f"{who} refused all of the last {count} recipients ({streak.last_error}): this looks like "
                  f"{who}, not the addresses; nothing was marked bounced and nobody's attempts were spent")
        if streak.transient_only:
            if not self.halted:
                self._path_failed(reason, None)
        else:
            self._abort(reason)

    def _settle_held(self, conn: Connection, worker: str, attempts: dict[int, int], *, queue_empty: bool = False) -> None:
        """Make final the refusals this worker holds that an acceptance followed (in any worker of this
        send). At the end of the queue, refusals nothing followed are final too when this send has
        delivered to someone before (the path was shown to work); when it has not, everyone left was
        refused — the path's fault, as for a streak of STREAK_LIMIT."""
        held = self._held()
        if not held:
            return
        with self._lock:
            epoch = self._accepted
        final = [(r, spent) for r, spent, at in held if at < epoch]
        pending = [(r, spent, at) for r, spent, at in held if at >= epoch]
        if pending and queue_empty:
            with self._tx(conn):
                delivered = self.store.delivery_counts(conn, self.issue_id)["sent"]
            if delivered:
                final += [(r, spent) for r, spent, _ in pending]
                pending = []
        held[:] = pending
        if final:
            self._finalize(conn, worker, final, attempts)
        if pending and queue_empty:
            with self._lock:
                streak = self._streak
            if not streak.count:
                streak = _Streak(len(pending), all(r.outcome == "transient" for r, _, _ in pending),
                                 pending[-1][0].error or "")
            self._path_refused(conn, worker, len(pending), streak)

    def _finalize(self, conn: Connection, worker: str, refusals: list[tuple[RecipientResult, int]],
                  attempts: dict[int, int]) -> None:
        """Final refusals: permanent ones (and a transient one reaching MAX_ATTEMPTS) fail, a hard bounce
        marks its subscriber `bounced`; other transient ones go back to the queue, one attempt spent."""
        finished, refused, bounced = [], [], []
        for result, spent in refusals:
            delivery_id = result.message.delivery_id
            error = strip_credentials(result.error or "")
            if result.outcome == "permanent" or spent + 1 >= MAX_ATTEMPTS:
                finished.append({"id": delivery_id, "status": "failed", "last_error": error[:2000]})
                if result.hard_bounce and result.message.recipient.subscriber_id is not None:
                    bounced.append((result.message.recipient.subscriber_id, result.error or "hard bounce"))
            else:
                refused.append((delivery_id, error))
        with self._tx(conn):
            self.store.finish_deliveries(conn, worker, finished)
            self.store.requeue_ids(conn, worker, refused, count_attempt=True)
            for subscriber_id, reason in bounced:
                self.store.set_status(conn, subscriber_id, "bounced", source="send", reason=reason[:500],
                                      issue_id=self.issue_id)
        for delivery_id, _ in refused:
            attempts[delivery_id] = attempts.get(delivery_id, 0) + 1
        self._count(failed=len(finished))
        if refused and not self.halted:
            # transient per-recipient refusals: give the provider a moment before they are claimed again
            self._sleep(backoff(min(attempts.get(refused[0][0], 1), 6), None))

    # ----- whole-path failures, stops, heartbeat ---------------------------------------------------
    def _path_failed(self, reason: str, retry_after: float | None) -> bool:
        """A failure of the whole path: wait (exponential backoff with jitter, at least the provider's
        Retry-After), or pause the send once nothing has gone through for `pause_after` seconds.
        True to try again; False when halted or paused."""
        reason = strip_credentials(reason)
        with self._lock:
            now = time.monotonic()
            if self._shared_gate is not None:  # another process of the send may have closed it
                self._resume_at = max(self._resume_at, self._shared_gate.value)
            if self._outage_since is None:
                self._outage_since, self._outage_tries = now, 0
            # several workers hear about one outage (their requests were in flight together): only the
            # first failure after the gate opened is a new try; the others wait for the same gate
            joined = self._resume_at > now
            if not joined:
                self._outage_tries += 1
            tries, since = self._outage_tries, self._outage_since
        elapsed = now - since
        left = self.pause_after - elapsed
        if retry_after is not None and retry_after > left:
            self._abort(f"{reason}; the provider asks to wait {retry_after:.0f} s, longer than the "
                        f"{left:.0f} s MAILER_PAUSE_AFTER leaves; nobody's attempts were spent")
            return False
        if left <= 0:
            self._abort(f"{reason} (nothing went through for {elapsed:.0f} s, {tries} tries; "
                        f"nobody's attempts were spent)")
            return False
        with self._lock:
            if joined and self._resume_at > now:
                delay = max(self._resume_at - now, min(retry_after or 0.0, left))
            else:
                delay = min(backoff(tries, retry_after), left)
                log.warning("%s: %s; try %d again in %.1f s (the send pauses after %.0f s more)", self.slug,
                            reason, tries + 1, delay, left)
            self._resume_at = max(self._resume_at, now + delay)
            if self._shared_gate is not None:
                with self._shared_gate.get_lock():
                    self._shared_gate.value = max(self._shared_gate.value, self._resume_at)
        return not self._sleep(delay)

    def _before_request(self) -> None:
        """A request is built and about to leave: take a slot of the send's requests in flight (waiting
        while every slot is held: `inflight.py`), then wait for the send's gate (the build took time, and
        another thread may have heard a 429 meanwhile); TransientError when the send stopped."""
        if self.in_flight is not None and not self.in_flight.take(self._waiting_for_slot):
            raise TransientError("the send stopped before the request left")
        if self._wait_gate():
            raise TransientError("the send stopped before the request left")

    def _waiting_for_slot(self) -> bool:
        """While a built request waits for a slot: renew this worker's claims; True when halted."""
        self._heartbeat()
        return self.halted

    def _give_back_slot(self) -> None:
        """This thread's request is recorded or its rows went back: its slot frees for another."""
        if self.in_flight is not None:
            self.in_flight.give_back()

    def _wait_gate(self) -> bool:
        """Before anything is handed over: wait while the send's gate is closed (another worker's 429 or
        outage, see `_path_failed`). True when halted meanwhile."""
        resume_at = self._resume_at
        if self._shared_gate is not None:
            resume_at = max(resume_at, self._shared_gate.value)
        wait = resume_at - time.monotonic()
        return self._sleep(wait) if wait > 0 else self.halted

    @property
    def halted(self) -> bool:
        return self.stop.is_set() or self.abort_reason is not None or self.edition_changed

    def _sleep(self, seconds: float) -> bool:
        """Wait, waking early on a stop or a pause (renewing this worker's claims meanwhile); True when halted."""
        deadline = time.monotonic() + seconds
        while not self.halted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.stop.wait(min(remaining, 0.2))
            self._heartbeat()
        return True

    def _heartbeat(self) -> None:
        """Renew this worker's claims every HEARTBEAT, so the lease never expires under a live worker."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or time.monotonic() - local.renewed < claimant.HEARTBEAT.total_seconds():
            return
        if conn.in_transaction():
            return
        with self._tx(conn):
            self.store.renew_claims(conn, local.worker)
        local.renewed = time.monotonic()

    def _abort(self, reason: str) -> None:
        with self._lock:
            if self.abort_reason is None:
                self.abort_reason = strip_credentials(reason)

    def _count(self, sent: int = 0, failed: int = 0, skipped: int = 0) -> None:
        with self._lock:
            self.progress.sent += sent
            self.progress.failed += failed
            self.progress.skipped += skipped
        if self.on_progress:
            self.on_progress(self.progress)


_SQLITE_WRITERS: dict[str, threading.Lock] = {}
_SQLITE_WRITERS_LOCK = threading.Lock()


def _sqlite_writer_lock(store: Store) -> threading.Lock:
    """The one lock this process's senders take around their SQLite ledger transactions (per database)."""
    with _SQLITE_WRITERS_LOCK:
        return _SQLITE_WRITERS.setdefault(str(store.engine.url), threading.Lock())


@dataclass
class _Streak:
    """Recipients refused since the last accepted message, in every worker of the send (see Sender._hold)."""

    count: int = 0
    transient_only: bool = True  # every refusal was a 4xx: waited out like an outage rather than a pause
    last_error: str = ""


def backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter (between half and all of BACKOFF_BASE·2^(attempt-1), capped at
    BACKOFF_CAP); a provider's Retry-After wins when it asks for longer."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def send_issue(settings: Settings, store: Store, issue_ref: str, *, include_new: bool = False,
               retry_failed: bool = False, workers: int | None = None, stop: threading.Event | None = None,
               on_progress: ProgressCallback | None = None,
               backend_factory: Callable[[], Backend] | None = None, allow_draft: bool = False,
               rebuild: bool = False, release: str = "due", processes: int | None = None) -> SendReport:
    """Send an issue to its frozen recipient set, resuming whatever a previous run left, until every
    delivery is settled (also those another live sender of the same issue holds), a stop, or a pause.
    What goes out is the issue's stored edition (`prepare_send`; `rebuild` makes a new one first); when
    another process's `--rebuild` makes a newer one meanwhile, this run continues with that one.

    Raises what `prepare_send` raises (drafts: see there), and SendAborted when the send paused (the
    ledger is consistent; the same call resumes it).

    A local-time send (`release`: see `prepare_send`) sends the waves released now and returns with
    the others queued (`SendReport.waves`: pending ones wait for their time, missed ones for
    `--release-missed`); a wave released while it runs is sent in the same run.

    `processes` (`--processes N`; default automatic, `inflight.sending_processes`: every core for a
    large SendGrid send) > 1 sends from N processes: this one and N - 1 helpers started once the
    edition is frozen (`processes.py`: one gate, one stop, one pause, and one bound on the requests in
    flight for all of them, `inflight.py`)."""
    started = time.monotonic()
    stop = stop or threading.Event()
    prepared = prepare_send(settings, store, issue_ref, include_new=include_new, retry_failed=retry_failed,
                            allow_draft=allow_draft, rebuild=rebuild, release=release)
    slug = prepared.slug
    grace = float(settings.schedule_grace) if prepared.local else None

    def ready(conn: Connection, counts: dict[str, int]) -> int:  # what claims may take now
        return store.claimable(conn, prepared.issue_id, grace) if grace is not None else counts["queued"]

    with store.connect() as conn:
        counts = store.delivery_counts(conn, prepared.issue_id)
        claimable = ready(conn, counts)
    if prepared.already_finished:
        return SendReport(slug, counts, 0, 0, 0, time.monotonic() - started, already_finished=True,
                          edition=prepared.edition.number, notice=prepared.notice)
    progress = Progress(slug, total=claimable + counts["sending"])
    backend_factory = backend_factory or (lambda: make_backend(settings))
    count = sending_processes(settings, claimable, processes, workers) if claimable else 1
    in_flight = slots_for(settings, workers)  # one bound for every thread of every process of this send
    writer_turn = None
    if count > 1:
        from .processes import Helpers, WriterTurn
        in_flight = in_flight.shared() if in_flight is not None else None
        writer_turn = WriterTurn.shared() if store.is_sqlite else None
    sender = Sender(settings, store, prepared.edition, prepared.issue_id, backend_factory,
                    stop=stop, progress=progress, on_progress=on_progress, factory=prepared.factory,
                    factories=prepared.factories, in_flight=in_flight, writer_turn=writer_turn)
    helpers = gate = None
    held: list[str] = []
    bridge_done = threading.Event()
    try:
        if count > 1:
            helpers = Helpers(settings, prepared.issue_id, slug, count, workers, in_flight, writer_turn)
            gate = sender._shared_gate = helpers.gate
            if on_progress:
                on_progress = sender.on_progress = _with_helpers(on_progress, helpers)
            threading.Thread(target=_bridge, args=(helpers, stop, lambda: sender, bridge_done),
                             name="mailer-helpers-bridge", daemon=True).start()
        while True:
            if claimable:
                run_workers(sender, workers, processes=count)
            if sender.edition_changed and not stop.is_set() and sender.abort_reason is None:
                edition, factories = load_edition(settings, store, prepared.issue_id, slug)
                log.warning("%s: edition %d was made meanwhile (--rebuild): the rest goes out with it",
                            slug, edition.number)
                sender = Sender(settings, store, edition, prepared.issue_id, backend_factory, stop=stop,
                                progress=progress, on_progress=on_progress, factories=factories, shared_gate=gate,
                                in_flight=in_flight, writer_turn=writer_turn)
            with store.begin() as conn:
                requeue_dead_claims(store, conn, prepared.issue_id)
                counts = store.delivery_counts(conn, prepared.issue_id)
                claimable = ready(conn, counts)
                _, held = live_claimants(store, conn, prepared.issue_id)
            if sender.halted or (not claimable and not counts["sending"]):
                break
            if not claimable:
                # another live sender of this issue holds the rest (two sends at once): wait for it,
                # and take over its rows if it dies
                sender._sleep(0.2)
    except KeyboardInterrupt:
        _end_helpers(helpers, bridge_done, stop=True, grace=STOP_GRACE)
        settle_issue(store, prepared.issue_id, None, stopped=True)
        raise
    except BaseException as exc:
        _end_helpers(helpers, bridge_done, stop=True, grace=STOP_GRACE)
        settle_issue(store, prepared.issue_id, f"interrupted by an unexpected error: {type(exc).__name__}: {exc}")
        raise
    _end_helpers(helpers, bridge_done, stop=sender.halted)
    if helpers and sender.abort_reason is None:
        reason = helpers.pause_reason()
        if reason:
            sender._abort(reason)
    counts, paused = settle_issue(store, prepared.issue_id, sender.abort_reason, stopped=stop.is_set())
    extra = helpers.totals() if helpers else (0, 0, 0)
    report = SendReport(slug, counts, progress.sent + extra[0], progress.failed + extra[1], progress.skipped + extra[2],
                        time.monotonic() - started, prepared.requeued_stale, prepared.frozen,
                        held_by=tuple(held) if counts["sending"] else (), edition=sender.rendered.number,
                        notice=prepared.notice,
                        waves=tuple(waves.ledger_waves(settings, store, slug)) if prepared.local else ())
    if paused:
        left = counts["queued"] + counts["sending"]
        if left:
            raise SendAborted(f"{slug}: send paused: {paused}; fix the cause and run the same command "
                              f"(`mailer send {slug}`) again to resume "
                              f"({counts['sent']} sent, {left} left)")
        raise SendAborted(f"{slug}: send paused: {paused}")
    return report


def _with_helpers(on_progress: ProgressCallback, helpers) -> ProgressCallback:  # noqa: ANN001
    """`on_progress` shown with the helper processes' counts added."""
    def combined(progress: Progress) -> None:
        sent, failed, skipped = helpers.totals()
        on_progress(Progress(progress.issue, progress.total, progress.sent + sent, progress.failed + failed,
                             progress.skipped + skipped, progress.started))
    return combined


def _bridge(helpers, stop: threading.Event, current: Callable[[], "Sender"], done: threading.Event) -> None:  # noqa: ANN001
    """Between this process and its helpers: a stop or a pause here stops them (gracefully); a pause
    reported by one of them pauses this process's sender."""
    while not done.wait(0.2):
        sender = current()
        for lost in helpers.killed():
            log.warning("%s: sending process %s was killed: what it had claimed goes back to the queue and the "
                        "others send it (what it had in flight may be repeated)", sender.slug, lost)
        if stop.is_set() or sender.abort_reason is not None:
            helpers.stop()
        reason = helpers.pause_reason()
        if reason:
            sender._abort(reason)
            helpers.stop()


def _end_helpers(helpers, done: threading.Event, *, stop: bool, grace: float | None = None) -> None:  # noqa: ANN001
    """Wait for the helper processes to end (after a graceful stop when `stop`)."""
    if helpers is None:
        return
    if stop:
        helpers.stop()
    if grace is None:
        helpers.join()
    else:
        helpers.join(grace)
    done.set()


GC_THRESHOLD = 100_000  # allocations between two young-generation collections while a send runs (Python: 700)
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits, while a send runs (Python: 0.005)
_tuning_lock = threading.Lock()
_tuning_users = 0
_saved: tuple = ()


@contextlib.contextmanager
def sending_mode() -> Iterator[None]:
    """While sends run in this process: fewer garbage collections and prompter thread switches; both
    come back to what they were when the last send of the process ends.

    * The cyclic garbage collector's first threshold is GC_THRESHOLD. A request of 1000 recipients
      allocates ~10,000 container objects that live until it is recorded (messages, personalizations,
      results); at Python's default (700) they set off a dozen collections per request, each walking
      the young objects and, every few requests, every object of the process: measured, a third of the
      CPU spent building personalizations (issue 12). The send loop makes no reference cycles of its
      own; reference counting frees its objects, and the collector still runs, less often.
    * The interpreter's switch interval is SWITCH_INTERVAL (`sys.setswitchinterval`). A thread whose
      answer came back holds one of the send's requests in flight (`inflight.py`) until it has
      recorded it; each time it needs the GIL while another thread builds the next request it waits
      up to the interval, several times per request (the answer, each ledger statement). At Python's
      5 ms that kept a slot busy ~10–30 ms longer than its request (measured on 200,000 recipients at
      100 ms: recording 36–46 ms against 16–36 ms at 1 ms)."""
    global _tuning_users, _saved
    with _tuning_lock:
        if _tuning_users == 0:
            _saved = (gc.get_threshold(), sys.getswitchinterval())
            gc.set_threshold(max(GC_THRESHOLD, _saved[0][0]), *_saved[0][1:])
            sys.setswitchinterval(min(SWITCH_INTERVAL, _saved[1]))
        _tuning_users += 1
    try:
        yield
    finally:
        with _tuning_lock:
            _tuning_users -= 1
            if _tuning_users == 0:
                gc.set_threshold(*_saved[0])
                sys.setswitchinterval(_saved[1])


def run_workers(sender: Sender, workers: int | None, batch_size: int | None = None, *, processes: int = 1) -> None:
    """Threads claiming batches of the same issue (I/O-bound: threads overlap network waits, and one
    thread claims, builds or records while the others' requests are in flight): `lanes()` decides how
    many and how big unless given (`processes`: how many processes send this issue together). A stop
    cuts what is still in flight STOP_GRACE seconds after it was asked."""
    with sending_mode():
        _run_workers(sender, workers, batch_size, processes)


def _run_workers(sender: Sender, workers: int | None, batch_size: int | None = None, processes: int = 1) -> None:
    threads, batch = lanes(sender.settings, workers, processes)
    workers, batch_size = threads, batch if batch_size is None else batch_size
    done = threading.Event()
    watcher = threading.Thread(target=_cut_after_grace, args=(sender, done), name="mailer-stop-watch", daemon=True)
    watcher.start()
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            sender.run_worker(worker_id(f"-{index}" if workers > 1 else ""), batch_size)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
            if not isinstance(exc, KeyboardInterrupt):
                sender._abort(f"worker {index} crashed: {exc}")

    # Even one lane runs in a thread: the main thread only waits, never for long at a time (see _supervise)
    lanes_ = [threading.Thread(target=target, args=(i,), name=f"mailer-worker-{i}") for i in range(workers)]
    try:
        for thread in lanes_:
            thread.start()
        _supervise(sender, lanes_)
        if errors:
            raise errors[0]
    finally:
        done.set()


SUPERVISE_TICK = 0.2  # seconds the main thread waits at a time while sender threads run


def _supervise(sender: Sender, threads: list[threading.Thread]) -> None:
    """Wait for the sender threads, waking every SUPERVISE_TICK seconds.

    A SIGTERM sent to the process is taken by whichever of its threads the kernel picks (the main
    thread when it can, another when it cannot at that instant: for example while it creates a thread,
    when glibc blocks every signal for a moment), but Python runs the handler in the main thread only,
    the next time that thread runs Python code. A main thread blocked in `join()` without a timeout
    while a request hangs would never run it: the stop would wait for the request's timeout (30 s) and
    its retries. Waking every tick, the handler runs within SUPERVISE_TICK of the signal, whichever
    thread took it. A second signal (KeyboardInterrupt, raised here) cuts what is in flight now and
    waits STOP_GRACE at most for the threads to hand their rows back."""
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(SUPERVISE_TICK)
    except BaseException:
        sender.stop.set()
        sender.abort_in_flight()
        deadline = time.monotonic() + STOP_GRACE
        for thread in threads:
            while thread.is_alive() and time.monotonic() < deadline:
                try:
                    thread.join(SUPERVISE_TICK)
                except KeyboardInterrupt:  # a third signal: already stopping at once
                    continue
        raise


def _cut_after_grace(sender: Sender, done: threading.Event) -> None:
    while not done.is_set():
        if sender.stop.wait(0.2):
            break
    if done.is_set() or done.wait(STOP_GRACE):
        return
    cut = sender.abort_in_flight()
    if cut:
        log.warning("%s: still busy %.0f s after the stop: %s", sender.slug, STOP_GRACE, "; ".join(cut))


def work_queue(settings: Settings, store: Store, *, stop: threading.Event | None = None, once: bool = False,
               poll_seconds: float = 5.0, on_progress: ProgressCallback | None = None,
               in_flight: InFlightSlots | None = None, processes: int = 1, writer_turn: Any = None) -> int:
    """`mailer worker`: claim and send queued deliveries of any issue being sent, until stopped.

    Any number of workers on any machines can run this against PostgreSQL; SKIP LOCKED hands each
    a disjoint batch. Returns the number of messages this worker sent. A send started before
    editions were stored whose folder is gone cannot be resumed: it is said once (which issue, which
    folder), skipped (nothing requeued), and the run ends with UnresumableSend (exit 9, `sent` set)
    unless its folder came back meanwhile.

    `in_flight`: the bound on requests in flight this worker shares (`mailer worker --processes N`:
    one for its N processes; default this worker's own), `processes`: how many share it;
    `writer_turn`: their SQLite writer turn (`processes.WriterTurn`).
    """
    require_ready(settings)  # the same checks as `send`: a worker never sends half-configured
    stop = stop or threading.Event()
    if in_flight is None:
        in_flight = slots_for(settings)
    sent = 0
    senders: dict[str, Sender] = {}
    unresumable: dict[str, str] = {}  # slug -> why (a send from before editions whose folder is gone)
    while not stop.is_set():
        with store.connect() as conn:
            active = store.issues_with_queue(conn)
        for slug, issue_id in active:
            if stop.is_set():
                break
            sender = senders.get(slug)
            if sender is None:
                try:  # the stored edition: the folder is never read (but a send from before editions)
                    edition, factories = load_edition(settings, store, issue_id, slug)
                    unresumable.pop(slug, None)
                except UnresumableSend as exc:  # no other worker can do better: said once, exit 9 at the end
                    if slug not in unresumable and not once:  # (with `once` the end says it)
                        log.error("%s", exc)
                    unresumable[slug] = str(exc)
                    continue
                except MailerError as exc:
                    log.error("%s: cannot build its messages here (%s); leaving it to another worker", slug, exc)
                    continue
                sender = Sender(settings, store, edition, issue_id, lambda: make_backend(settings), stop=stop,
                                progress=Progress(slug, 0), on_progress=on_progress, factories=factories,
                                in_flight=in_flight, writer_turn=writer_turn)
                senders[slug] = sender
            with store.begin() as conn:
                requeue_dead_claims(store, conn, issue_id)
            before = sender.progress.sent
            run_workers(sender, None, processes=processes)
            sent += sender.progress.sent - before
            counts, paused = settle_issue(store, issue_id, sender.abort_reason)
            if sender.edition_changed:
                senders.pop(slug)  # a --rebuild made a newer edition: the next round loads it
            if paused:
                log.error("%s: paused: %s", slug, paused)
                senders.pop(slug, None)
            elif counts["queued"] == 0 and counts["sending"] == 0:
                log.info("%s: finished (%d sent, %d failed, %d skipped)", slug, counts["sent"], counts["failed"],
                         counts["skipped"])
        if once:
            break
        stop.wait(poll_seconds)
    if unresumable:
        raise UnresumableSend("; ".join(unresumable.values()), sent=sent)
    return sent


def send_test(settings: Settings, issue_ref: str, addresses: Sequence[str]) -> list[RecipientResult]:
    """Send the issue to a few addresses, `[TEST]` in the subject; the ledger is never touched, so the
    copy is untracked whatever the tracking settings (links as written, no tracking notice). Each
    entry is one or more comma-separated mailboxes, `ADDR` or `Name <ADDR>` (RFC 5322 name-addr; a
    non-ASCII name is written as RFC 2047 encoded words by `headers`). InvalidAddress for a bad one."""
    from ..addresses import parse_address, split_mailboxes

    require_ready(settings)
    parsed = [(name, parse_address(address)) for entry in addresses if entry.strip()
              for name, address in split_mailboxes(entry)]
    if not parsed:
        raise MailerError("--test needs at least one address")
    issue = load_issue(issue_ref, settings.issues_dir, settings.zone)
    # a test copy is untracked throughout (no ledger: no edition for click tokens to name): links as
    # written, no pixel, no tracking notice, the text part wrapped for the written URLs
    rendered = render_issue(replace_fields(issue, track_clicks=False),
                            replace_fields(settings, track_opens=False))
    factory = MessageFactory(rendered, subject_prefix="[TEST] ")
    key = secret_key_for(settings)
    messages = tuple(
        OutgoingMessage(Recipient(email=a.given, name=name,
                                  unsubscribe_url=links.unsubscribe_url(settings.base_url, key, TEST_SUBSCRIBER_ID)),
                        message_id=f"<test.{os.urandom(8).hex()}@{settings.sender_domain}>")
        for name, a in parsed)
    with make_backend(settings) as backend:
        results = backend.send_batch(Batch(factory, messages, None, formatdate(usegmt=True)))
    return results
