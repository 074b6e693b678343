"""Per-recipient CPU of click tracking, shared by bench_smtp.py and bench_sendgrid.py (not a test).

The example issue is frozen twice as the send freezes it (`edition.from_rendered`): tracking off (the
floor) and on (MAILER_TRACK_CLICKS + MAILER_TRACK_OPENS: every link a `click.N` slot, the open pixel).
`measure(project, env, step, count, repeat)` times `step(edition, factory, message)` — what a backend
does per recipient — over `count` recipients, best of `repeat` (process CPU), and prints µs per
recipient off and on, the difference and the number of tracked links: the figure next to its floor.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

ISSUE = "2026-11-26-donnees-ouvertes"


def editions(project: Path, env: dict[str, str]) -> tuple[object, object, list]:  # noqa: ANN401
    """(untracked edition, tracked edition, sample OutgoingMessages) for the example issue in `project`."""
    from mailer.config import load_settings, secret_key_for
    from mailer.content.issue import load_issue
    from mailer.content.render import render_issue
    from mailer.sending.prepare import outgoing_message
    from mailer.sending.edition import from_rendered

    made = []
    for tracked in (False, True):
        flags = {name: "1" if tracked else "0" for name in ("MAILER_TRACK_CLICKS", "MAILER_TRACK_OPENS")}
        settings = load_settings(project, env={**env, **flags})
        rendered = render_issue(load_issue(ISSUE, settings.issues_dir, settings.zone), settings)
        made.append(replace(from_rendered(rendered), id=1))  # as stored: tokens name edition 1
    assert made[0].tracking is None and made[1].tracking is not None
    key = secret_key_for(made[0].settings)
    messages = [outgoing_message(key, made[0].settings.base_url, ISSUE, "example.org", i, f"r{i}@example.net",
                                 f"R {i}", i, None, 1) for i in range(1, 2001)]
    return made[0], made[1], messages


def measure(project: Path, env: dict[str, str], label: str, step: Callable, count: int = 2000,
            repeat: int = 3, setup: Callable | None = None) -> None:
    """Print `label`'s CPU per recipient with tracking off (floor) and on. `step(factory, message)` is
    one recipient's work; `setup(factory)` runs once per edition before timing."""
    from mailer.mime import MessageFactory

    plain, tracked, messages = editions(project, env)
    messages = (messages * (count // len(messages) + 1))[:count]
    figures = []
    for edition in (plain, tracked):
        factory = MessageFactory(edition)
        if setup:
            setup(factory)
        best = float("inf")
        for _ in range(repeat):
            started = time.process_time()
            for message in messages:
                step(factory, message)
            best = min(best, time.process_time() - started)
        figures.append(best / len(messages) * 1e6)
    off, on = figures
    links = len(tracked.tracking.positions)
    print(f"click tracking, {label}, CPU per recipient ({count}, best of {repeat}): off (floor) {off:,.1f} µs; "
          f"on ({links} links + open pixel) {on:,.1f} µs: +{on - off:,.1f} µs ({(on / off - 1) * 100:+.0f} %)",
          flush=True)
