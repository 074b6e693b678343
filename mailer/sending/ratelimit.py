"""The send rate (MAILER_RATE_LIMIT, messages per second) shared by every worker of an issue."""

from __future__ import annotations

import threading
import time
from typing import Callable

from ..store import Store


class SendRateLimiter:
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
