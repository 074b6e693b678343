"""Per-client throttling of the public web app's forms (POST /subscribe): in memory, per process."""

from __future__ import annotations

import threading
import time
from collections import deque


class ClientThrottle:
    """A sliding-window counter per key (the client address), in memory, thread-safe."""

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        """Count one request; 0 when allowed, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            queue = self._hits.get(key)
            if queue is None:
                if len(self._hits) >= self.max_keys:
                    self._prune(now)
                queue = self._hits[key] = deque()
            while queue and queue[0] <= now - self.window:
                queue.popleft()
            if len(queue) >= self.limit:
                return max(queue[0] + self.window - now, 0.001)
            queue.append(now)
            return 0.0

    def _prune(self, now: float) -> None:
        for key in [k for k, q in self._hits.items() if not q or q[-1] <= now - self.window]:
            del self._hits[key]
        if len(self._hits) >= self.max_keys:  # a flood of distinct addresses: forget rather than grow
            self._hits.clear()
