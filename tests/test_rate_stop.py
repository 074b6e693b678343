"""MAILER_RATE_LIMIT under a graceful stop, for every provider, through a real `mailer send` stopped
with SIGTERM and resumed: the rate holds for every message (measured where the messages land: the
outbox files' times, the SMTP sink's, SendGrid's requests), the stop ends within a few seconds and
records what went out, the rest goes back to the queue, the last lines say what happened, and the
resume reaches everyone left exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from mailer.sending import dispatch

from .conftest import EXAMPLE_ISSUE
from .sendgrid_server import SendGridServer
from .smtp_server import start_server
from .test_crash import SEND, SlowHandler, _counts, _env, _populate, _sendgrid_env, _wait_for

RATE = 20          # messages per second
PEOPLE = 120       # six seconds of sending at RATE
STOP_AT = 30       # SIGTERM once this many have landed (mid-claim: every provider claims more at once)


def busiest_second(stamps: list[float]) -> int:
    """The most messages in any window of one second (stamps in seconds, any order)."""
    stamps = sorted(stamps)
    most, start = 0, 0
    for end, at in enumerate(stamps):
        while at - stamps[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def assert_within_rate(stamps: list[float]) -> None:
    # tolerance: one step of the limiter (dispatch.rate_step) plus two for timestamp jitter under load
    allowed = RATE + dispatch.rate_step(RATE) + 2
    assert busiest_second(stamps) <= allowed, (
        f"{busiest_second(stamps)} messages within one second; MAILER_RATE_LIMIT={RATE} allows {allowed}")


def test_busiest_second_counts_a_sliding_window():
    assert busiest_second([]) == 0
    assert busiest_second([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert busiest_second([3.0] * 7 + [10.0]) == 7


def stop_and_check(project: Path, env: dict[str, str], landed) -> tuple[subprocess.CompletedProcess, int]:  # noqa: ANN001
    """Start `mailer send`, SIGTERM it once STOP_AT messages landed (`landed()` counts them); the stop
    ends within a few seconds, exit 5, no traceback, and nothing is said to have been cut."""
    victim = subprocess.Popen(SEND, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: landed() >= STOP_AT, 60, f"{STOP_AT} messages")
    except BaseException:
        victim.kill()
        raise
    assert victim.poll() is None, "the send ended before the stop"
    signalled = time.monotonic()
    victim.send_signal(signal.SIGTERM)
    stdout, stderr = victim.communicate(timeout=30)
    took = time.monotonic() - signalled
    assert victim.returncode == 5 and "Traceback" not in stderr, stderr
    assert took < 2.0, f"the stop took {took:.1f} s"
    assert "cutting" not in stderr, stderr  # nothing was cut: the stop came between two messages
    return subprocess.CompletedProcess(SEND, victim.returncode, stdout, stderr), landed()


def assert_says_what_happened(result: subprocess.CompletedProcess, counts: dict[str, int], landed: int) -> None:
    """The summary line gives what went out and what is left, as the ledger and the receiver have it."""
    assert counts["sent"] == landed and counts["sending"] == 0, counts
    assert counts["queued"] == PEOPLE - landed > 0, counts
    summary = result.stdout.strip().splitlines()[0]
    assert f"sent {landed} now ({landed} in all)" in summary and f"left {PEOPLE - landed} " in summary, result.stdout
    assert "stopped (SIGTERM or Ctrl-C)" in result.stderr and "run the same command" in result.stderr, result.stderr


@pytest.mark.slow
def test_outbox_keeps_the_rate_and_a_graceful_stop_hands_the_rest_of_the_claim_back(store, db_url, project):
    addresses = _populate(store, project, PEOPLE)
    outbox = project / "outbox"
    env = _env(db_url, 0, MAILER_BACKEND="outbox", MAILER_OUTBOX_DIR=str(outbox), MAILER_RATE_LIMIT=str(RATE))
    del env["MAILER_BATCH_SIZE"]  # the outbox's own claim: 1000 rows, all of this list at once

    def files() -> list[os.stat_result]:
        folder = outbox / EXAMPLE_ISSUE
        return [entry.stat() for entry in os.scandir(folder) if entry.name.endswith(".eml")] if folder.is_dir() else []

    result, landed = stop_and_check(project, env, lambda: len(files()))
    written = {(s.st_ino, s.st_mtime_ns) for s in files()}
    assert_says_what_happened(result, _counts(store), landed)
    resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    after = files()
    assert len(after) == len(addresses)  # one file per subscriber (a file is named by its subscriber)
    assert written <= {(s.st_ino, s.st_mtime_ns) for s in after}  # what the stopped run wrote was not rewritten
    assert _counts(store)["sent"] == len(addresses)
    assert_within_rate([s.st_mtime_ns / 1e9 for s in after])


@pytest.mark.slow
def test_smtp_keeps_the_rate_and_a_graceful_stop_hands_the_rest_of_the_claim_back(store, db_url, project):
    addresses = _populate(store, project, PEOPLE)
    sink = start_server(SlowHandler())
    try:
        env = _env(db_url, sink.port, MAILER_RATE_LIMIT=str(RATE))
        result, landed = stop_and_check(project, env, lambda: len(sink.handler.messages))
        assert_says_what_happened(result, _counts(store), landed)
        resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert sink.handler.per_recipient() == Counter(addresses)
        assert_within_rate([m.at for m in sink.handler.messages])
    finally:
        sink.stop()


@pytest.mark.slow
def test_sendgrid_keeps_the_rate_and_a_graceful_stop_hands_the_rest_of_the_claim_back(store, db_url, project):
    addresses = _populate(store, project, PEOPLE)
    with SendGridServer() as server:
        env = _sendgrid_env(db_url, server.url, MAILER_RATE_LIMIT=str(RATE))
        result, landed = stop_and_check(project, env, lambda: server.accepted_recipients)
        assert_says_what_happened(result, _counts(store), landed)
        resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert server.count_by_recipient() == Counter(addresses)
        assert_within_rate([r.at for r in server.accepted for _ in r.personalizations])
