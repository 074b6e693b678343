"""Link scanners are not readers: what keeps their fetches out of the click counts.

Corporate mail filters (Microsoft Defender Safe Links, Proofpoint URL Defense, Mimecast, Barracuda…)
fetch every link of a message when it arrives, before anyone reads it. Two well-known signs, both
used here (the tracked link always answers 302 whatever they say; only the counting changes):

* the User-Agent is a known crawler, bot, scanner or HTTP library (`is_scanner`: the maintained
  `crawlerdetect` patterns, a port of JayBizzle's CrawlerDetect), or there is none (every browser
  sends one): the fetch is recorded as a scanner hit, never as a click;
* the fetches look like a scan (`scan_burst`): every link of the message (two or more) followed for
  the first time within one second — no reader clicks that fast; scanners that borrow a browser's
  User-Agent do. One follow per link of such a burst is counted as a scanner's, not a reader's.

Shapes: `is_scanner(user_agent)` → bool; `scan_burst(first_fetches, links_in_message)` → bool.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

BURST = timedelta(seconds=1)  # every link of a message first followed within this: a scanner
_local = threading.local()  # CrawlerDetect keeps per-call state: one instance per thread


def is_scanner(user_agent: str | None) -> bool:
    """Whether a request with this User-Agent is a known scanner, bot or HTTP library (or has none)."""
    text = (user_agent or "").strip()
    if not text:
        return True
    detector = getattr(_local, "detector", None)
    if detector is None:
        from crawlerdetect import CrawlerDetect
        detector = _local.detector = CrawlerDetect()
    return bool(detector.isCrawler(text))


def scan_burst(first_fetches: list[datetime], links_in_message: int) -> bool:
    """Whether one recipient's first follows of their message's links (one time per link) are a scan:
    all `links_in_message` links (at least two) first followed within `BURST` of each other."""
    return (links_in_message >= 2 and len(first_fetches) >= links_in_message
            and max(first_fetches) - min(first_fetches) <= BURST)
