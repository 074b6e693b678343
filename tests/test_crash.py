"""The promise under real failure: a `mailer send` killed with SIGKILL mid-send, then resumed, and
concurrent workers — every subscriber receives exactly one message, counted at a real SMTP server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mailer import dispatch
from mailer.config import load_settings
from mailer.subscribers import import_csv

from .conftest import BASE_ENV, EXAMPLE_ISSUE
from .smtp_server import ScriptedHandler, start_server

SUBSCRIBERS = 600


class SlowHandler(ScriptedHandler):
    """A receiving server that takes a few milliseconds per message, so a kill lands mid-batch."""

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
        await asyncio.sleep(0.004)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def smtp_sink():
    server = start_server(SlowHandler())
    yield server
    server.stop()


def _env(db_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILER_", "SENDGRID_"))}
    env.update(BASE_ENV)
    env.update({"MAILER_DATABASE_URL": db_url, "MAILER_BACKEND": "smtp", "MAILER_SMTP_HOST": "127.0.0.1",
                "MAILER_SMTP_PORT": str(port), "MAILER_SMTP_TLS": "none", "MAILER_BATCH_SIZE": "50"})
    env.update(extra)
    return env


def _populate(store, project: Path) -> list[str]:
    addresses = [f"abonne{i:04d}@example.org" for i in range(SUBSCRIBERS)]
    path = project / "liste.csv"
    path.write_text("email,name\n" + "".join(f"{a},Abonné {i}\n" for i, a in enumerate(addresses)), encoding="utf-8")
    assert import_csv(store, path).added == SUBSCRIBERS
    return addresses


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _counts(store):
    with store.engine.connect() as conn:
        return store.delivery_counts(conn, store.issue_row(conn, EXAMPLE_ISSUE).id)


@pytest.mark.slow
def test_sigkill_mid_send_then_resume_delivers_each_exactly_once(store, db_url, project, smtp_sink):
    addresses = _populate(store, project)
    env = _env(db_url, smtp_sink.port)
    command = [sys.executable, "-m", "mailer.cli", "send", EXAMPLE_ISSUE, "--yes"]
    victim = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: len(smtp_sink.handler.messages) >= SUBSCRIBERS // 3, 60, "a third of the messages")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    received_before = len(smtp_sink.handler.messages)
    assert received_before < SUBSCRIBERS, "the send finished before it could be killed"
    interrupted = _counts(store)
    assert interrupted["sent"] >= received_before - 1  # at most the one message in flight is unrecorded
    assert interrupted["queued"] + interrupted["sending"] > 0

    resumed = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    per_recipient = smtp_sink.handler.per_recipient()
    assert set(per_recipient) == set(addresses), "someone was skipped"
    duplicates = {a: n for a, n in per_recipient.items() if n > 1}
    # The one ambiguous window: the message the server accepted while the process died, before
    # the ledger recorded it. At most that one, resent with the same Message-ID.
    assert sum(n - 1 for n in duplicates.values()) <= 1, f"sent twice: {duplicates}"
    for address in duplicates:
        copies = [m.parse()["Message-ID"] for m in smtp_sink.handler.messages if address in m.rcpt_tos]
        assert len(set(copies)) == 1, copies
    final = _counts(store)
    assert final["sent"] == SUBSCRIBERS and final["queued"] == final["sending"] == 0


@pytest.mark.slow
def test_two_worker_processes_share_the_queue_without_duplicates(store, db_url, project, smtp_sink):
    addresses = _populate(store, project)
    settings = load_settings(project, env=_env(db_url, smtp_sink.port))
    dispatch.prepare_send(settings, store, EXAMPLE_ISSUE)  # freeze; the workers do the sending
    command = [sys.executable, "-m", "mailer.cli", "worker", "--once"]
    env = _env(db_url, smtp_sink.port, MAILER_BATCH_SIZE="20")
    workers = [subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    sent_by = [int(out.strip().split()[-2]) for out, _ in outputs]  # "worker stopped: N sent"
    assert sum(sent_by) == SUBSCRIBERS
    if store.engine.dialect.name == "postgresql":
        assert all(n > 0 for n in sent_by), f"one worker did everything: {sent_by}"
    assert smtp_sink.handler.per_recipient() == Counter(addresses)
    assert _counts(store)["sent"] == SUBSCRIBERS
