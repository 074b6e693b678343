"""`mailer send --processes N`: N sending processes for one issue, so every core builds requests.

One process spends its CPU claiming, building and recording (the SendGrid path: ~20–25 µs per
recipient); past one core's worth, a send is CPU-bound whatever the requests in flight. The process
that runs `mailer send` (the parent) freezes the edition, then starts N - 1 helper processes
(`multiprocessing`, spawned: nothing of the parent's database connections or threads is inherited)
and sends beside them. They share nothing but the ledger: each claims its own batches of the frozen
recipient set through the ledger's claims, exactly as `mailer worker` processes do, and records
them itself. What they share besides, through shared memory, is what makes them one send:

* the send's gate (`Sender._resume_at`): a 429 or an outage heard by any process holds the threads
  of every process until its Retry-After has passed;
* a stop: the parent alone takes signals (helpers ignore SIGINT and SIGTERM, so a Ctrl-C to the
  terminal's process group or a `systemctl stop` reaches each of them once, through the parent) and
  passes a graceful stop on; a helper whose parent died (SIGKILL) stops gracefully by itself;
* a pause: a helper that pauses the send (`SendAborted`'s reasons) reports it, the parent pauses too;
* the send's requests in flight (`inflight.py`): one semaphore of MAILER_SENDGRID_IN_FLIGHT's requests
  for every thread of every process, so N processes have no more in flight than one;
* on SQLite, the turn to write the ledger (`WriterTurn`): SQLite lets one writer at a time and makes
  the others sleep in steps of milliseconds (its busy handler) even when the lock frees sooner; a
  slot is held while its request is recorded, so that sleep would cost requests in flight. The
  processes take turns on a shared lock instead, woken as soon as it frees;
* the counts the parent's progress and report show.

`mailer worker --processes N` (`work_in_processes`) is the same for workers: N `work_queue` loops, one
stop for all.

Crash window: the processes together have at most MAILER_SENDGRID_IN_FLIGHT recipients in flight, so
a SIGKILL of every process at once may repeat at most that many (as one process); a SIGKILL of the
parent alone repeats at most what it had in flight (the helpers finish and record theirs). A
graceful stop repeats nobody: every process lets what it has in flight finish and be recorded.
(A helper killed on its own while holding slots takes them with it: the send goes on with fewer
requests in flight, never more.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import threading
import time
from typing import Any, Iterator

from ..config import Settings
from ..errors import MailerError

log = logging.getLogger("mailer.dispatch")

JOIN_GRACE = 30.0  # seconds a helper may take to finish what it has in flight after a stop (then killed)


TURN_WAIT = 2.0  # seconds a process waits for the SQLite writer turn before it writes without it


class WriterTurn:
    """The SQLite writer turn of a send's processes: a `multiprocessing` lock every ledger transaction
    of every thread of every process takes (`Sender._tx`), instead of meeting SQLite's busy handler.

    A scheduling aid only: SQLite's own locking keeps the writes correct. So a turn not had within
    TURN_WAIT seconds — a process killed while it held it: its helpers must still record what they
    have in flight — is gone without: this process stops using the shared lock and writes under a
    lock of its own threads, as a single process does."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock  # what helper processes are handed (`WriterTurn(lock)` there)
        self._own = threading.Lock()  # this process's threads, once the shared lock is given up
        self._given_up = False
        self._local = threading.local()

    def __enter__(self) -> "WriterTurn":
        if self._given_up or not self.lock.acquire(True, TURN_WAIT):
            if not self._given_up:
                log.warning("the SQLite writer turn was not free for %.0f s (a sending process died holding it?): "
                            "this process writes without it", TURN_WAIT)
            self._given_up = True
            self._own.acquire()
            self._local.shared = False
        else:
            self._local.shared = True
        return self

    def __exit__(self, *exc: object) -> None:
        (self.lock if self._local.shared else self._own).release()

    @classmethod
    def shared(cls) -> "WriterTurn":
        """A new turn on a lock the send's helper processes (spawned) can share."""
        return cls(multiprocessing.get_context("spawn").Lock())

    @staticmethod
    def of(lock: Any) -> "WriterTurn | None":
        """In a helper process: the turn on the lock it was handed (None: not SQLite)."""
        return WriterTurn(lock) if lock is not None else None


class StopFlag:
    """A stop asked of a send's (or a worker's) processes: one shared byte without a lock, which each
    helper reads every 0.2 s (`_follow_parent`).

    Not a `multiprocessing.Event`: a process killed (SIGKILL) while it waits on an Event leaves the
    Event's condition counting it as a sleeper to wake, and the next `set()` waits for it forever — a
    stop that never ends, seen with a helper killed mid-send."""

    def __init__(self, context: Any) -> None:
        self._flag = context.RawValue("b", 0)

    def set(self) -> None:
        self._flag.value = 1

    def is_set(self) -> bool:
        return bool(self._flag.value)


@contextlib.contextmanager
def _signals_ignored_while_starting() -> Iterator[None]:
    """Start helper processes with SIGINT and SIGTERM ignored from their first instruction: an ignored
    signal stays ignored across exec, and Python installs its KeyboardInterrupt handler only over the
    default one. Otherwise a Ctrl-C to the terminal's process group during their ≈ 1 s of imports
    (before `_follow_parent` ignores it) would print their tracebacks. This process blocks both
    meanwhile, so a signal sent to it in that instant is delivered right after, not lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = {signal.SIGINT, signal.SIGTERM}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    saved = {number: signal.signal(number, signal.SIG_IGN) for number in wanted}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class Helpers:
    """The `processes` - 1 helper processes of one send of `processes`, started at once; `stop`, `join`,
    and shared state (`in_flight`: the send's shared slots, `InFlightSlots.shared`, or None for a
    provider without requests in flight; `writer`: its shared SQLite `WriterTurn`, or None)."""

    def __init__(self, settings: Settings, issue_id: int, slug: str, processes: int, workers: int | None,
                 in_flight: Any = None, writer: WriterTurn | None = None) -> None:
        count = processes - 1
        context = multiprocessing.get_context("spawn")
        self.stop_event = StopFlag(context)
        self.gate = context.Value("d", 0.0)  # the send's gate: time.monotonic() before which nothing leaves
        # sent, failed, skipped per helper; no lock: each helper writes its own three, and a helper killed
        # holding a lock would hang every reader
        self.counts = context.RawArray("q", 3 * count)
        self._pauses = context.SimpleQueue()
        self.processes = [
            context.Process(target=_helper_main, name=f"mailer-send-{index + 1}",
                            args=(_picklable(settings), issue_id, slug, workers, index, self.stop_event, self.gate, self.counts,
                                  self._pauses, in_flight.semaphore if in_flight is not None else None, processes,
                                  writer.lock if writer is not None else None), daemon=False)
            for index in range(count)]
        self._reported: set[str] = set()
        with _signals_ignored_while_starting():
            for process in self.processes:
                process.start()

    def killed(self) -> list[str]:
        """Helpers that died of a signal since the last call (reaped here: their claims then go back to
        the queue at the parent's next look, `requeue_dead_claims`), as "name (signal N)"."""
        lost = []
        for process in self.processes:
            if not process.is_alive() and (process.exitcode or 0) < 0 and process.name not in self._reported:
                self._reported.add(process.name)
                lost.append(f"{process.name} (signal {-process.exitcode})")
        return lost

    def totals(self) -> tuple[int, int, int]:
        """(sent, failed, skipped) by every helper so far."""
        values = self.counts[:]
        return sum(values[0::3]), sum(values[1::3]), sum(values[2::3])

    def pause_reason(self) -> str | None:
        """Why a helper paused the send, if one did."""
        return None if self._pauses.empty() else self._pauses.get()

    def stop(self) -> None:
        """A graceful stop of every helper (what is in flight finishes and is recorded)."""
        self.stop_event.set()

    def join(self, grace: float = JOIN_GRACE) -> None:
        """Wait for every helper to end; a helper still running `grace` seconds after a stop is killed
        (what it had in flight stays `sending` under a dead claimant: the next run puts it back)."""
        deadline = None
        for process in self.processes:
            while process.is_alive():
                if self.stop_event.is_set() and deadline is None:
                    deadline = time.monotonic() + grace
                process.join(0.2)
                if deadline is not None and time.monotonic() > deadline and process.is_alive():
                    log.warning("%s did not stop within %.0f s: killed", process.name, grace)
                    process.kill()
                    process.join(5)


def _picklable(settings: Settings) -> Settings:
    """The same settings without what its cached properties hold (the provider's registry entry, with
    its validators: functions, not data); the helper process computes those again."""
    return dataclasses.replace(settings)


def _follow_parent(stop_event: StopFlag) -> threading.Event:
    """In a helper process: ignore SIGINT/SIGTERM (the parent takes the signals and passes a stop on
    through `stop_event`) and return an Event set when the parent asks to stop or is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop = threading.Event()
    parent = multiprocessing.parent_process()

    def watch() -> None:
        while not stop.is_set():
            if stop_event.is_set() or (parent is not None and not parent.is_alive()):
                stop.set()
            else:
                stop.wait(0.2)

    threading.Thread(target=watch, name="mailer-helper-watch", daemon=True).start()
    return stop


def _helper_main(settings: Settings, issue_id: int, slug: str, workers: int | None, index: int,
                 stop_event: Any, gate: Any, counts: Any, pauses: Any, semaphore: Any, processes: int,
                 writer: Any) -> None:
    """One helper process: send the issue's stored edition beside the parent until nothing is left to
    claim, a stop, or a pause."""
    stop = _follow_parent(stop_event)
    from ..providers import make_backend
    from ..store import open_store
    from . import dispatch
    from .prepare import load_edition
    from .inflight import slots_for
    in_flight = slots_for(settings, workers, semaphore)

    def on_progress(progress: "dispatch.Progress") -> None:
        counts[3 * index:3 * index + 3] = [progress.sent, progress.failed, progress.skipped]

    store = open_store(settings.database_url)
    try:
        progress = dispatch.Progress(slug, 0)
        while not stop.is_set():
            edition, factories = load_edition(settings, store, issue_id, slug)
            sender = dispatch.Sender(settings, store, edition, issue_id, lambda: make_backend(settings), stop=stop,
                                     progress=progress, on_progress=on_progress, factories=factories,
                                     shared_gate=gate, in_flight=in_flight, writer_turn=WriterTurn.of(writer))
            dispatch.run_workers(sender, workers, processes=processes)
            if sender.abort_reason is not None:
                pauses.put(sender.abort_reason)
                break
            if not sender.edition_changed:
                break  # nothing left to claim
    finally:
        stop.set()
        store.close()


def work_in_processes(settings: Settings, count: int, *, stop: threading.Event, once: bool) -> int:
    """`mailer worker --processes N`: `work_queue` in this process and in `count` - 1 helper processes
    (spawned; they ignore signals: a stop here stops them gracefully; a helper whose parent died stops
    by itself), sharing one bound on the requests in flight. Returns the messages all of them sent."""
    from ..store import open_store
    from .dispatch import work_queue
    from .inflight import slots_for

    context = multiprocessing.get_context("spawn")
    stop_event = StopFlag(context)
    sent = context.RawArray("q", count)  # each process writes its own (no lock a killed one could hold)
    in_flight = slots_for(settings)
    in_flight = in_flight.shared() if in_flight is not None else None
    store = open_store(settings.database_url)
    writer = WriterTurn.shared() if store.is_sqlite else None
    helpers = [context.Process(target=_worker_main, name=f"mailer-worker-{index}",
                               args=(_picklable(settings), once, stop_event, sent, index,
                                     in_flight.semaphore if in_flight is not None else None, count,
                                     writer.lock if writer is not None else None))
               for index in range(1, count)]
    done = threading.Event()

    def bridge() -> None:
        while not done.wait(0.2):
            if stop.is_set():
                stop_event.set()

    try:
        with _signals_ignored_while_starting():
            for process in helpers:
                process.start()
        threading.Thread(target=bridge, name="mailer-workers-bridge", daemon=True).start()
        sent[0] = work_queue(settings, store, stop=stop, once=once, processes=count, in_flight=in_flight,
                             writer_turn=writer)
    finally:
        store.close()
        if stop.is_set():
            stop_event.set()
        for process in helpers:
            while process.is_alive():  # never one long wait: the main thread must run the stop handler
                process.join(0.2)      # (dispatch._supervise says why)
        done.set()
    return sum(sent[:])


def _worker_main(settings: Settings, once: bool, stop_event: Any, sent: Any, index: int, semaphore: Any,
                 processes: int, writer: Any) -> None:
    stop = _follow_parent(stop_event)
    from ..store import open_store
    from .dispatch import work_queue
    from .inflight import slots_for
    store = open_store(settings.database_url)
    try:
        sent[index] = work_queue(settings, store, stop=stop, once=once, processes=processes,
                                 in_flight=slots_for(settings, semaphore=semaphore), writer_turn=WriterTurn.of(writer))
    except MailerError as exc:  # the parent meets the same and says it; here only the count
        sent[index] = getattr(exc, "sent", 0)
    finally:
        stop.set()
        store.close()
