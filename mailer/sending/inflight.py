"""How many requests of one send may be in flight at once, and how many processes send it.

**In flight** means handed to a request-based provider (`Provider.in_flight`: SendGrid) and not yet
recorded in the ledger: exactly what a crash (SIGKILL, power loss) may repeat. The bound is the
send's, not a thread's or a process's: `MAILER_SENDGRID_IN_FLIGHT` recipients (4000 = 4 requests of
1000) for every thread of every process of one `mailer send` (or one `mailer worker --processes N`)
together — `InFlightSlots`, a semaphore of so many requests, shared with the helper processes as the
send's gate is (`processes.py`).

A sender thread takes a slot right before its request leaves — after it claimed the batch and built
the request, when the send's gate is open (`Sender._before_request`) — and gives it back once the
request's outcome is recorded, or its rows went back to the queue (`Sender._process`,
`Sender._hand_back`). There is one thread more than the slots a process can use (`lanes`), so while
the requests are in flight another thread claims and builds the next one and takes the first slot
that frees: the provider always has as many requests as the bound allows (a pipeline, not
request-after-request), and the crash window stays the bound.

Written here rather than taken from a library: it is the send pipeline's own invariant (what the
README's crash guarantee says), a few lines over the standard library's semaphores.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from typing import Any, Callable

from ..config import Settings

MAX_LANES = 8  # sender threads per process at most (each holds one database connection for its run)
WAIT_TICK = 0.2  # seconds a thread waits for a slot at a time (then: stopped? claims renewed)
# a request-based send of at least this many recipients uses every core (up to MAX_AUTO_PROCESSES).
# Measured (bench_sendgrid, 2 cores, 2026-11-30): at 200,000 recipients a second process made the send
# slower (its start-up ≈ 0.85 s before its first request; 8.1–8.7 s against 7.1–7.2 s at 100 ms, 7.0
# against 5.6 s with no delay); at 1,000,000 it gained ≈ 1 s (36.1 against 37.2 s at 100 ms)
AUTO_PROCESSES_FROM = 500_000
MAX_AUTO_PROCESSES = 4


def in_flight_bound(settings: Settings, workers: int | None = None) -> tuple[int, int] | None:
    """(requests, recipients per request) in flight at once for the whole send, or None for a provider
    whose requests do not overlap (SMTP, the outbox: see `Provider.in_flight`).

    From `MAILER_SENDGRID_IN_FLIGHT` (cap, recipients) and the provider's request size, shrunk by
    `MAILER_BATCH_SIZE`: 4000 → 4 requests of 1000. `workers` (`--workers N`) asks for N requests in
    flight; the request shrinks so that N requests stay within the cap. requests × recipients ≤ cap."""
    in_flight = settings.provider.in_flight
    if in_flight is None:
        return None
    cap, per_request = in_flight(settings)
    batch = max(1, min(settings.batch_size or per_request, per_request, cap))
    requests = max(1, cap // batch)
    if workers:
        requests = max(1, min(workers, cap))
        batch = max(1, min(batch, cap // requests))
    return requests, batch


def slots_for(settings: Settings, workers: int | None = None, semaphore: Any = None) -> "InFlightSlots | None":
    """The send's slots (`in_flight_bound`), or None for a provider whose requests do not overlap;
    `semaphore`: the one a send's parent shares with its helper processes (`InFlightSlots.shared`)."""
    bound = in_flight_bound(settings, workers)
    return InFlightSlots(bound[0], semaphore) if bound else None


def lanes(settings: Settings, workers: int | None = None, processes: int = 1) -> tuple[int, int]:
    """(threads, batch size) of one of the send's `processes`.

    Request-based providers: as many threads as the slots this process can expect (the send's requests
    in flight shared by its processes), plus one that claims and builds the next request meanwhile;
    at most MAX_LANES. Other providers: `workers` threads (default 1: SMTP connections), batches of
    MAILER_BATCH_SIZE (0: the backend's own)."""
    bound = in_flight_bound(settings, workers)
    if bound is None:
        return max(1, workers or 1), settings.batch_size
    requests, batch = bound
    return min(MAX_LANES, -(-requests // max(1, processes)) + 1), batch


def sending_processes(settings: Settings, queued: int, asked: int | None = None, workers: int | None = None) -> int:
    """How many processes send: `asked` (`--processes N`) when given, else `MAILER_SEND_PROCESSES`
    when not 0, else automatic: a request-based provider's send of at least AUTO_PROCESSES_FROM
    queued recipients takes every core this process may run on (`os.sched_getaffinity`), at most
    MAX_AUTO_PROCESSES and at most one per request in flight (a process without a slot adds nothing);
    otherwise 1 (`workers`: `--workers N`, the requests in flight it asks for). One process builds ≈ 40,000 SendGrid recipients a second on one core: past that a
    send is CPU-bound, whatever its requests in flight (at the default 4,000 in flight and 100 ms
    answers the bound allows ≈ 38,000 a second: one core nearly keeps up, a second one gives room)."""
    if asked:
        return asked
    if settings.send_processes:
        return settings.send_processes
    bound = in_flight_bound(settings, workers)
    if bound is None or queued < AUTO_PROCESSES_FROM:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_PROCESSES, bound[0]))


class InFlightSlots:
    """The send's requests in flight: `count` slots, held one per sender thread from right before its
    request leaves until the outcome is recorded (or handed back). `semaphore`: a
    `multiprocessing` BoundedSemaphore shared with the send's helper processes; default a thread one.
    A thread holds at most one slot (`take` again while holding is a no-op), so a step retried after
    a whole-path failure keeps its slot."""

    def __init__(self, count: int, semaphore: Any = None) -> None:
        self.count = count
        self.semaphore = semaphore if semaphore is not None else threading.BoundedSemaphore(count)
        self._local = threading.local()

    def shared(self) -> "InFlightSlots":
        """The same bound on a `multiprocessing` semaphore that the send's helper processes (spawned)
        can share: hand them `.semaphore` (`slots_for(…, semaphore=)`)."""
        return InFlightSlots(self.count, multiprocessing.get_context("spawn").BoundedSemaphore(self.count))

    @property
    def held(self) -> bool:
        """Whether the calling thread holds a slot."""
        return getattr(self._local, "held", False)

    def take(self, waiting: Callable[[], bool]) -> bool:
        """Take a slot for the calling thread, waiting while every slot is held; `waiting()` is called
        every WAIT_TICK seconds meanwhile and returns True to give up (the send stopped). True once held."""
        if self.held:
            return True
        while not self.semaphore.acquire(True, WAIT_TICK):
            if waiting():
                return False
        self._local.held = True
        return True

    def give_back(self) -> None:
        """Give the calling thread's slot back (nothing when it holds none)."""
        if self.held:
            self._local.held = False
            self.semaphore.release()
