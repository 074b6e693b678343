"""The promise under real failure: a `mailer send` killed with SIGKILL mid-send, then resumed, and
concurrent workers — every subscriber receives exactly one message, counted at a real SMTP server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

import dkim

from mailer.sending import dispatch, inflight
from mailer.sending.prepare import prepare_send
from mailer.config import load_settings
from mailer.dkim_signing import generate_key
from mailer.store.schema import deliveries, subscribers
from mailer.subscribers import add_subscriber, import_csv

from .conftest import BASE_ENV, EXAMPLE_ISSUE
from .sendgrid_server import SendGridServer
from .smtp_server import MisbehavingServer, ScriptedHandler, start_server

SUBSCRIBERS = 600
GROUP = 10  # MAILER_SMTP_COMMIT_EVERY's default: what a crash may repeat per SMTP connection


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


def _populate(store, project: Path, count: int = SUBSCRIBERS) -> list[str]:
    """`count` active subscribers abonneNNNN@example.org named "Abonné N", imported from a CSV."""
    addresses = [f"abonne{i:04d}@example.org" for i in range(count)]
    path = project / "liste.csv"
    path.write_text("email,name\n" + "".join(f"{a},Abonné {i}\n" for i, a in enumerate(addresses)), encoding="utf-8")
    assert import_csv(store, path).added == count
    return addresses


def kill_mid_send(project: Path, env: dict[str, str], sink, at: int, total: int) -> tuple[int, list[int]]:
    """Start `mailer send EXAMPLE_ISSUE --yes`, SIGKILL it once the sink received `at` messages;
    returns how many the sink had then (fewer than `total`: killed mid-send) and the pids of the child
    processes it had (DKIM signing processes)."""
    victim = subprocess.Popen([sys.executable, "-m", "mailer.cli", "send", EXAMPLE_ISSUE, "--yes"], cwd=project,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children: list[int] = []
    try:
        _wait_for(lambda: len(sink.handler.messages) >= at, 60, f"{at} messages")
        children = _children(victim.pid)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    received = len(sink.handler.messages)
    assert received < total, "the send finished before it could be killed"
    return received, children


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _people(store, count: int) -> list[str]:
    people = [f"lecteur{i}@example.org" for i in range(count)]
    for address in people:
        add_subscriber(store, address)
    return people


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


def _dkim(project: Path, signed: str) -> tuple[dict[str, str], object]:
    """The DKIM settings for a send signed with a fresh key of kind `signed` ("" for none), and the key."""
    if not signed:
        return {}, None
    key = generate_key(project / f"dkim-{signed}.pem", "crash", "example.org", signed)
    return {"MAILER_DKIM_PRIVATE_KEY": str(key.path), "MAILER_DKIM_SELECTOR": "crash"}, key


def _verify_all(sink, key) -> None:  # noqa: ANN001
    """Every message the sink received carries a DKIM signature that verifies (dkimpy, the key's record)."""
    if key is None:
        return
    record = {(key.record_name + ".").encode(): key.record_value.encode()}
    for message in sink.handler.messages:
        assert dkim.verify(message.data, dnsfunc=lambda name, timeout=5: record.get(name)), message.data[:300]


@pytest.mark.slow
@pytest.mark.parametrize("signed", ["", "rsa"], ids=["unsigned", "dkim-rsa"])
def test_a_crash_may_repeat_at_most_one_commit_group_per_smtp_connection_and_skips_nobody(signed, store, db_url, project,
                                                                                         smtp_sink):
    """Signed sends too: the signatures made ahead by the signing processes are not 'recorded' by anything,
    so the window is the same one commit group, and no signing process outlives the killed sender."""
    addresses = _populate(store, project)
    extra, key = _dkim(project, signed)
    env = _env(db_url, smtp_sink.port, **extra)
    command = [sys.executable, "-m", "mailer.cli", "send", EXAMPLE_ISSUE, "--yes"]
    received_before, orphans = kill_mid_send(project, env, smtp_sink, SUBSCRIBERS // 3, SUBSCRIBERS)
    _wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in orphans), 10,
              f"the killed sender's helper processes {orphans} to exit")
    interrupted = _counts(store)
    # group commit: at most one group (≤ 10 messages by default, with the message in flight) unrecorded
    assert interrupted["sent"] >= received_before - GROUP
    assert interrupted["queued"] + interrupted["sending"] > 0

    resumed = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    per_recipient = smtp_sink.handler.per_recipient()
    assert set(per_recipient) == set(addresses), "someone was skipped"
    duplicates = {a: n for a, n in per_recipient.items() if n > 1}
    # The ambiguous window: what the server accepted while the process died, before the ledger
    # recorded it — at most one commit group over the one connection, resent with the same Message-ID.
    assert sum(n - 1 for n in duplicates.values()) <= GROUP, f"sent twice: {duplicates}"
    assert sum(n - 1 for n in duplicates.values()) == received_before - interrupted["sent"]
    for address in duplicates:
        copies = [m.parse()["Message-ID"] for m in smtp_sink.handler.messages if address in m.rcpt_tos]
        assert len(set(copies)) == 1, copies
    final = _counts(store)
    assert final["sent"] == SUBSCRIBERS and final["queued"] == final["sending"] == 0
    _verify_all(smtp_sink, key)


@pytest.mark.slow
def test_two_worker_processes_share_the_queue_without_duplicates(store, db_url, project, smtp_sink):
    addresses = _populate(store, project)
    settings = load_settings(project, env=_env(db_url, smtp_sink.port))
    prepare_send(settings, store, EXAMPLE_ISSUE)  # freeze; the workers do the sending
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


# ----- what the README promises, in its words -------------------------------------------------------------
def _sendgrid_env(db_url: str, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILER_", "SENDGRID_"))}
    env.update(BASE_ENV)
    env.update({"MAILER_DATABASE_URL": db_url, "MAILER_BACKEND": "sendgrid", "SENDGRID_API_KEY": "SG.test",
                "MAILER_SENDGRID_API_URL": url, "MAILER_BATCH_SIZE": "100"})
    env.update(extra)
    return env


SEND = [sys.executable, "-m", "mailer.cli", "send", EXAMPLE_ISSUE, "--yes"]


def _sigterm_after_a_third(project, env: dict, smtp_sink) -> None:  # noqa: ANN001
    """A real `mailer send` stopped with SIGTERM once a third of the list has arrived: it exits 5
    (paused), cleanly."""
    victim = subprocess.Popen(SEND, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(smtp_sink.handler.messages) >= SUBSCRIBERS // 3, 60, "a third of the messages")
    victim.send_signal(signal.SIGTERM)
    _, stderr = victim.communicate(timeout=10)
    assert victim.returncode == 5 and "Traceback" not in stderr, stderr


@pytest.mark.slow
@pytest.mark.parametrize("signed", ["", "ed25519"], ids=["unsigned", "dkim-ed25519"])
def test_a_graceful_stop_lets_what_is_in_flight_finish_and_be_recorded_so_it_repeats_nobody_smtp(
        signed, store, db_url, project, smtp_sink):
    addresses = _populate(store, project)
    extra, key = _dkim(project, signed)
    env = _env(db_url, smtp_sink.port, **extra)
    _sigterm_after_a_third(project, env, smtp_sink)
    received = len(smtp_sink.handler.messages)
    stopped = _counts(store)
    assert stopped["sent"] == received and stopped["sending"] == 0  # what was in flight finished AND was recorded
    resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert smtp_sink.handler.per_recipient() == Counter(addresses)  # nobody skipped, nobody twice
    _verify_all(smtp_sink, key)


@pytest.mark.slow
def test_a_graceful_stop_lets_what_is_in_flight_finish_and_be_recorded_so_it_repeats_nobody_sendgrid(
        store, db_url, project):
    addresses = _populate(store, project)
    with SendGridServer(latency=0.3) as server:  # each request answered 0.3 s after it was accepted
        env = _sendgrid_env(db_url, server.url, MAILER_SENDGRID_IN_FLIGHT="300")
        victim = subprocess.Popen(SEND, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: server.accepted_count >= 2 and server.in_flight_requests >= 2, 60,
                  "requests in flight")
        victim.send_signal(signal.SIGTERM)  # while several requests wait for their answer
        _, stderr = victim.communicate(timeout=10)
        assert victim.returncode == 5 and "Traceback" not in stderr, stderr
        stopped = _counts(store)
        assert stopped["sent"] == server.accepted_recipients and stopped["sending"] == 0
        assert server.max_in_flight_requests >= 2
        resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert server.count_by_recipient() == Counter(addresses)


@pytest.mark.slow
def test_a_crash_may_repeat_exactly_the_recipients_of_the_sendgrid_requests_in_flight(store, db_url, project):
    """SIGKILL while several requests are in flight (accepted by SendGrid, answer not yet back): on
    resume, exactly the recipients of those unrecorded requests get a second copy with the same
    Message-ID — never more than MAILER_SENDGRID_IN_FLIGHT (here 300: 3 requests of 100) — and nobody
    is skipped."""
    addresses = _populate(store, project)
    with SendGridServer(latency=1.0) as server:
        env = _sendgrid_env(db_url, server.url, MAILER_SENDGRID_IN_FLIGHT="300")
        victim = subprocess.Popen(SEND, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for(lambda: server.accepted_count >= 4 and server.in_flight_requests >= 2, 60,
                      "requests in flight after the first answers")
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
        # a request already in the socket when the process died is still read and accepted: wait for it
        _wait_for(lambda: server.in_flight_requests == 0, 10, "the server to finish what it was handed")
        assert server.max_in_flight_recipients <= 300
        with store.engine.connect() as conn:
            issue_id = store.issue_row(conn, EXAMPLE_ISSUE).id
            sent_before = {row.email_given for row in conn.execute(sa.select(subscribers.c.email_given).join(
                deliveries, deliveries.c.subscriber_id == subscribers.c.id).where(
                deliveries.c.issue_id == issue_id, deliveries.c.status == "sent"))}
        accepted = {p["to"][0]["email"] for r in server.accepted for p in r.personalizations}
        in_flight = accepted - sent_before  # accepted by SendGrid, not recorded: what a crash may repeat
        assert in_flight and len(in_flight) <= 300
        resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        counts = server.count_by_recipient()
        assert set(counts) == set(addresses), "someone was skipped"
        twice = {a for a, n in counts.items() if n > 1}
        assert twice == in_flight and max(counts.values()) == 2
        for address in list(twice)[:5]:
            copies = server.delivered_to(address)
            assert len({c.headers["Message-ID"] for c in copies}) == 1


def _send_in_three_processes(project: Path, env: dict[str, str], **popen: object) -> tuple[subprocess.Popen, list[int]]:
    """`mailer send ISSUE --yes --processes 3` started, once its two helper processes exist: (it, their pids)."""
    victim = subprocess.Popen([*SEND, "--processes", "3"], cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, **popen)
    _wait_for(lambda: len(_processes_of(victim.pid)) == 2, 60, "two helper processes")
    return victim, _processes_of(victim.pid)


def _stop_within_seconds(victim: subprocess.Popen) -> None:
    """SIGTERM: the process ends a few seconds later (the stop grace, then the cut), paused, no traceback."""
    signalled = time.monotonic()
    victim.send_signal(signal.SIGTERM)
    _, stderr = victim.communicate(timeout=30)
    took = time.monotonic() - signalled
    assert took < dispatch.STOP_GRACE + 3, f"the stop took {took:.1f}s"
    assert victim.returncode == 5 and "Traceback" not in stderr, stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stall-after-data", "trickle-ehlo"])
def test_a_stop_takes_effect_within_seconds_against_a_stalled_smtp_server(store, db_url, project, mode):
    """The relay goes silent after the final dot (or trickles "250-" lines forever): SIGTERM ends the
    send within a few seconds, the message stays queued, and a resume delivers it once."""
    people = _people(store, 3)
    stalled = MisbehavingServer(mode, interval=0.3)
    try:
        env = _env(db_url, stalled.port)
        victim = subprocess.Popen(SEND, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if mode == "stall-after-data":
            _wait_for(lambda: stalled.data_ends >= 1, 30, "the first message's final dot")
        else:
            _wait_for(lambda: stalled.connections >= 1, 30, "a connection")
            time.sleep(1.0)
        _stop_within_seconds(victim)
        stopped = _counts(store)
        assert stopped["queued"] == 3 and stopped["sent"] == stopped["failed"] == stopped["sending"] == 0
    finally:
        stalled.stop()
    good = start_server(ScriptedHandler())
    try:
        resumed = subprocess.run(SEND, cwd=project, env=_env(db_url, good.port), capture_output=True, text=True,
                                 timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        assert good.handler.per_recipient() == Counter(people)
    finally:
        good.stop()


@pytest.mark.slow
def test_a_stop_takes_effect_within_seconds_against_a_stalled_sendgrid(store, db_url, project):
    people = _populate(store, project)
    with SendGridServer() as server:
        server.hang_next(seconds=120)
        env = _sendgrid_env(db_url, server.url)
        victim = subprocess.Popen(SEND, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: "hang" in server.statuses(), 30, "a request in flight")
        _stop_within_seconds(victim)
        stopped = _counts(store)  # the hung request's recipients stay queued; the other requests went through
        assert stopped["sent"] == server.accepted_recipients and stopped["sending"] == 0
        assert stopped["queued"] == SUBSCRIBERS - stopped["sent"] > 0
        resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert server.count_by_recipient() == Counter(people)


def _catches_sigterm(pid: int) -> bool:
    """The process has its own SIGTERM handler in place (/proc/PID/status SigCgt, bit 15)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            caught = next(line for line in handle if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def _sigterm_to_a_thread_other_than_main(pid: int) -> None:
    """What the kernel does with a process's SIGTERM when its main thread cannot take it at that
    instant (e.g. glibc blocks all signals while it creates a thread): it goes to another thread.
    tgkill(2) to the newest thread does the same on purpose."""
    import ctypes
    others = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
    assert others, "the sender has no thread besides the main one"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234 if os.uname().machine == "x86_64" else 131, pid, others[-1], signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine not in ("x86_64", "aarch64"),
                    reason="/proc and tgkill(2): Linux")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("moment", ["launch", "handler-in-place", "first-request", "first-request-other-thread"])
def test_a_stop_at_any_moment_of_start_up_is_prompt_and_clean(store, db_url, project, moment):
    """SIGTERM just after launch, once the stop handler is in place (render, plan, freeze), or while
    the first request hangs (also when the kernel hands the signal to a thread other than the main
    one, while the main thread waits for the hung request's thread only): the process ends within a few seconds, exit 5 (or killed before Python started), no
    traceback, nothing left claimed; a resume reaches everyone exactly once."""
    people = _populate(store, project)
    with SendGridServer() as server:
        server.hang_next(seconds=120)
        env = _sendgrid_env(db_url, server.url)
        victim = subprocess.Popen(SEND, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if moment == "handler-in-place":
            _wait_for(lambda: _catches_sigterm(victim.pid), 30, "the stop handler")
        elif moment.startswith("first-request"):
            _wait_for(lambda: "hang" in server.statuses(), 30, "a request in flight")
        signalled = time.monotonic()
        if moment == "first-request-other-thread":
            # the other requests answered, their threads done: the main thread waits for the hung one only
            _wait_for(lambda: server.accepted_recipients == SUBSCRIBERS - 100, 30, "every other request answered")
            time.sleep(0.5)
            signalled = time.monotonic()
            _sigterm_to_a_thread_other_than_main(victim.pid)
        else:
            victim.send_signal(signal.SIGTERM)
        _, stderr = victim.communicate(timeout=30)
        took = time.monotonic() - signalled
        assert took < dispatch.STOP_GRACE + 3, f"the stop took {took:.1f}s: {stderr}"
        assert "Traceback" not in stderr, stderr
        if victim.returncode == -signal.SIGTERM:  # before the handler: the default action, nothing done
            assert moment == "launch" and server.accepted_recipients == 0, stderr
        else:
            assert victim.returncode == 5, stderr
        with store.engine.connect() as conn:
            row = store.issue_row(conn, EXAMPLE_ISSUE)
            stopped = store.delivery_counts(conn, row.id) if row is not None else {"sending": 0, "sent": 0}
        assert stopped["sending"] == 0 and stopped["sent"] == server.accepted_recipients, stopped
        resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert server.count_by_recipient() == Counter(people)


# ----- a claimant that was PID 1 (any container) -----------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_a_sender_killed_as_pid_1_leaves_no_claim_behind(store, db_url, project, smtp_sink):
    """`unshare --pid --fork --mount-proc`: the sender is PID 1 of its own namespace, like in a
    container; SIGKILL it mid-send. PID 1 exists forever in every namespace, so "does the pid exist"
    would keep its claims; its start time and namespace say it is gone: a later send resumes at once."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a pid namespace here: {probe.stderr.decode().strip()}")
    addresses = _populate(store, project)
    env = _env(db_url, smtp_sink.port)
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", *SEND], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:  # mid-batch (batches of 50): the killed sender holds claimed rows
        _wait_for(lambda: len(smtp_sink.handler.messages) >= SUBSCRIBERS // 3 + 25, 60, "a third of the messages")
    finally:
        for child in _children(outer.pid):  # the sender: PID 1 inside, `child` outside
            os.kill(child, signal.SIGKILL)
        outer.wait(10)
    with store.engine.connect() as conn:
        holders = {c for c, _ in store.claimants(conn, store.issue_row(conn, EXAMPLE_ISSUE).id)}
    assert holders and all(h.split(":")[1] == "1" for h in holders), holders  # claimed as PID 1
    started = time.monotonic()
    resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert time.monotonic() - started < 60  # no lease to wait out
    per_recipient = smtp_sink.handler.per_recipient()
    assert set(per_recipient) == set(addresses)
    assert sum(n - 1 for n in per_recipient.values()) <= GROUP  # at most one commit group
    final = _counts(store)
    assert final["sent"] == SUBSCRIBERS and final["queued"] == final["sending"] == 0


# ----- two first sends at once (the loser joins the winner's freeze) ---------------------------------------
@pytest.mark.slow
def test_two_first_sends_at_once_freeze_once_and_deliver_each_once(store, db_url, project, smtp_sink):
    people = _people(store, 40)
    env = _env(db_url, smtp_sink.port)
    source = project / "issues" / EXAMPLE_ISSUE
    for round_number in range(5):
        slug = f"2026-12-0{round_number + 1}-course"
        shutil.copytree(source, project / "issues" / slug)
        command = [sys.executable, "-m", "mailer.cli", "send", slug, "--yes"]
        racers = [subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for _ in range(2)]
        outputs = [r.communicate(timeout=120) for r in racers]
        for racer, (out, err) in zip(racers, outputs):
            assert racer.returncode == 0 and "Traceback" not in err, (round_number, out, err)
        with store.engine.connect() as conn:
            issue = store.issue_row(conn, slug)
            counts = store.delivery_counts(conn, issue.id)
        assert issue.status == "sent" and counts["sent"] == len(people)
    assert smtp_sink.handler.per_recipient() == Counter({a: 5 for a in people})


def test_a_claimant_out_of_sight_on_the_same_host_obeys_the_lease():
    """Seen from inside a fresh pid namespace (a restarted container), a claim made in another namespace
    cannot be checked against the kernel: it is alive while its lease runs, dead after it."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                                         capture_output=True).returncode != 0:
        pytest.skip("cannot create a pid namespace here")
    script = """
import datetime as dt
from mailer.sending import claimant
me = claimant.me()
assert me.pid == 1 and me.pidns != claimant.INITIAL_PID_NAMESPACE, me
now = dt.datetime.now(dt.timezone.utc)
other = f"{me.host}:1:12345:{me.boot}:4026531836:abcdef"   # PID 1 of the host namespace, another start time
gone_ns = f"{me.host}:1:12345:{me.boot}:4026599999:abcdef"  # a namespace we cannot see
print(claimant.is_alive(gone_ns, now - dt.timedelta(seconds=30), now),
      claimant.is_alive(gone_ns, now - claimant.LEASE - dt.timedelta(seconds=1), now),
      claimant.is_alive(other, now - dt.timedelta(seconds=30), now))
"""
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "True"]


@pytest.mark.slow
def test_a_graceful_stop_leaves_the_issue_paused_stopped_and_the_same_command_resumes_it(
        store, db_url, project, smtp_sink):
    addresses = _populate(store, project)
    env = _env(db_url, smtp_sink.port)
    _sigterm_after_a_third(project, env, smtp_sink)
    status = subprocess.run([sys.executable, "-m", "mailer.cli", "status", EXAMPLE_ISSUE, "--json"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert '"paused"' in status.stdout and "stopped" in status.stdout, status.stdout
    resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert smtp_sink.handler.per_recipient() == Counter(addresses)


# ----- `mailer send --processes N`: several sending processes, one send ------------------------------------
def _processes_of(pid: int) -> list[int]:
    """`pid`'s helper processes: its children started by multiprocessing's spawn (not its resource tracker)."""
    found = []
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return "(zombie)" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_several_sending_processes_reach_everyone_exactly_once(store, db_url, project):
    """`--processes 3`: three real processes share the frozen list through the ledger's claims; every
    subscriber gets exactly one message, and helpers did send part of it (claimants of other pids)."""
    addresses = _populate(store, project, 1500)
    with SendGridServer(latency=1.0) as server:
        env = _sendgrid_env(db_url, server.url, MAILER_SENDGRID_IN_FLIGHT="200")
        done = subprocess.run([*SEND, "--processes", "3"], cwd=project, env=env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr
        assert f"sent {len(addresses)} now" in done.stdout, done.stdout
        assert server.count_by_recipient() == Counter(addresses)
        assert server.max_in_flight_recipients <= 200  # the send's bound, for its three processes together
    assert _counts(store)["sent"] == len(addresses)
    with store.engine.connect() as conn:
        pids = {row[0].split(":")[1] for row in conn.execute(sa.select(deliveries.c.claimed_by).distinct())}
    assert len(pids) >= 2, pids  # helpers claimed and sent part of the list (a third may start late on a busy machine)


@pytest.mark.slow
def test_sigterm_to_the_parent_stops_every_sending_process_gracefully_and_repeats_nobody(store, db_url, project):
    """SIGTERM to `mailer send --processes 3` while requests of several processes are in flight: the
    parent passes the stop on, each process lets its requests finish and records them, all of them
    exit (exit 5, paused, no traceback), nothing stays `sending`; the same command resumes and nobody
    gets a second message. The three processes never had more than MAILER_SENDGRID_IN_FLIGHT in
    flight together."""
    addresses = _populate(store, project, 1500)
    with SendGridServer(latency=1.0) as server:
        env = _sendgrid_env(db_url, server.url, MAILER_SENDGRID_IN_FLIGHT="600")
        victim, helpers = _send_in_three_processes(project, env)
        # 6 requests of 100 for the send: a process has 3 threads (its 2 slots' worth + 1), so 4 at
        # once are of several processes
        _wait_for(lambda: server.in_flight_requests >= 4, 60, "requests of several processes in flight")
        victim.send_signal(signal.SIGTERM)
        _, stderr = victim.communicate(timeout=40)
        assert victim.returncode == 5 and "Traceback" not in stderr, stderr
        assert not [pid for pid in helpers if _running(pid)], "a helper outlived its parent"
        stopped = _counts(store)
        assert stopped["sent"] == server.accepted_recipients and stopped["sending"] == 0
        assert 0 < stopped["sent"] < len(addresses)
        resumed = subprocess.run([*SEND, "--processes", "3"], cwd=project, env=env, capture_output=True, text=True,
                                 timeout=180)
        assert resumed.returncode == 0, resumed.stderr
        assert server.count_by_recipient() == Counter(addresses)
        assert server.max_in_flight_recipients <= 600  # one bound for the send, not one per process


@pytest.mark.slow
def test_sigkill_of_the_parent_repeats_at_most_its_own_in_flight_and_its_helpers_finish_and_stop(
        store, db_url, project):
    """SIGKILL of `mailer send --processes 3` (the parent alone) while several processes have
    requests in flight: the helpers see their parent gone, let their requests finish, record them and
    stop by themselves; only the parent's own in-flight recipients (its 3 threads: ≤ 300 of the send's
    MAILER_SENDGRID_IN_FLIGHT = 600) stay unrecorded, and the resumed send repeats exactly those,
    nobody skipped."""
    addresses = _populate(store, project, 1500)
    with SendGridServer(latency=1.0) as server:
        env = _sendgrid_env(db_url, server.url, MAILER_SENDGRID_IN_FLIGHT="600")
        victim = subprocess.Popen([*SEND, "--processes", "3"], cwd=project, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        try:
            _wait_for(lambda: len(_processes_of(victim.pid)) == 2, 60, "two helper processes")
            helpers = _processes_of(victim.pid)
            _wait_for(lambda: server.in_flight_requests >= 4, 60, "requests of several processes in flight")
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
        _wait_for(lambda: not any(_running(pid) for pid in helpers), 40, "the helpers to stop by themselves")
        _wait_for(lambda: server.in_flight_requests == 0, 10, "the server to finish what it was handed")
        with store.engine.connect() as conn:
            issue_id = store.issue_row(conn, EXAMPLE_ISSUE).id
            held_by = {row.claimed_by.split(":")[1] for row in conn.execute(
                sa.select(deliveries.c.claimed_by).where(deliveries.c.issue_id == issue_id,
                                                         deliveries.c.status == "sending"))}
            sent_before = {row.email_given for row in conn.execute(sa.select(subscribers.c.email_given).join(
                deliveries, deliveries.c.subscriber_id == subscribers.c.id).where(
                deliveries.c.issue_id == issue_id, deliveries.c.status == "sent"))}
        assert held_by <= {str(victim.pid)}, "a helper left claims behind"
        accepted = {p["to"][0]["email"] for r in server.accepted for p in r.personalizations}
        in_flight = accepted - sent_before
        assert len(in_flight) <= 300 and server.max_in_flight_recipients <= 600
        resumed = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=180)
        assert resumed.returncode == 0, resumed.stderr
        counts = server.count_by_recipient()
        assert set(counts) == set(addresses), "someone was skipped"
        assert {a for a, n in counts.items() if n > 1} == in_flight


@pytest.mark.slow
def test_worker_processes_started_together_share_the_queue_and_stop_together(store, db_url, project):
    """`mailer worker --processes 3`: three real processes drain a frozen send, every subscriber once,
    and the count printed is theirs together; then `mailer worker --processes 3` with nothing queued
    waits, and one SIGTERM to it ends all three (exit 0, no helper left, no traceback)."""
    addresses = _populate(store, project, 1500)
    with SendGridServer(latency=1.0) as server:
        env = _sendgrid_env(db_url, server.url, MAILER_SENDGRID_IN_FLIGHT="200")
        settings = load_settings(project, env=env)
        prepare_send(settings, store, EXAMPLE_ISSUE)  # freeze; the workers do the sending
        command = [sys.executable, "-m", "mailer.cli", "worker", "--processes", "3"]
        drained = subprocess.run([*command, "--once"], cwd=project, env=env, capture_output=True, text=True,
                                 timeout=180)
        assert drained.returncode == 0, drained.stderr
        assert drained.stdout.strip().endswith(f"worker stopped: {len(addresses)} sent"), drained.stdout
        assert server.count_by_recipient() == Counter(addresses)
        with store.engine.connect() as conn:
            pids = {row[0].split(":")[1] for row in conn.execute(sa.select(deliveries.c.claimed_by).distinct())}
        assert len(pids) >= 2, pids
        waiting = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        _wait_for(lambda: len(_processes_of(waiting.pid)) == 2, 60, "two helper processes")
        helpers = _processes_of(waiting.pid)
        time.sleep(1.0)
        waiting.send_signal(signal.SIGTERM)
        _, stderr = waiting.communicate(timeout=30)
        assert waiting.returncode == 0 and "Traceback" not in stderr, stderr
        assert not [pid for pid in helpers if _running(pid)], "a worker process outlived the stop"


@pytest.mark.slow
def test_a_send_over_two_processes_keeps_one_in_flight_bound_and_keeps_it_full(store, db_url, project):
    """`MAILER_SEND_PROCESSES=2` (what the automatic choice makes of a large SendGrid send on two
    cores) and the default bound: `mailer send ISSUE --yes` sends from two processes (claimants of two
    pids), SendGrid never has more than 4,000 recipients in flight from both together, the pipeline
    keeps it near full, and everyone gets exactly one message."""
    count = 40_000
    path = project / "liste.csv"
    path.write_text("email\n" + "".join(f"r{i}@example.org\n" for i in range(count)), encoding="utf-8")
    assert import_csv(store, path).added == count
    with SendGridServer(latency=0.3, cheap=True) as server:
        env = _sendgrid_env(db_url, server.url, MAILER_SEND_PROCESSES="2")
        del env["MAILER_BATCH_SIZE"]  # the defaults: requests of 1000, 4 in flight
        done = subprocess.run(SEND, cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"sent {count} now" in done.stdout, done.stdout
        assert server.accepted_recipients == count
        assert 3000 < server.max_in_flight_recipients <= 4000  # the pipeline kept the bound full, never past it
    with store.engine.connect() as conn:
        sent = conn.execute(sa.select(sa.func.count()).select_from(deliveries).where(
            deliveries.c.status == "sent")).scalar()
        pids = {row[0].split(":")[1] for row in conn.execute(sa.select(deliveries.c.claimed_by).distinct())}
    assert sent == count and len(pids) == 2, pids


@pytest.mark.parametrize(("cpus", "expected"), [("0", 1), ("0,1", 2)])
def test_the_automatic_number_of_sending_processes_follows_the_cpus_the_send_may_use(cpus, expected, project):
    """The decision `mailer send` makes without --processes, in a real process pinned with `taskset`:
    every CPU it may run on (at most 4) for a SendGrid send of 500,000 recipients or more; one process
    below that, over SMTP, or when MAILER_SEND_PROCESSES / --processes say otherwise."""
    if len(os.sched_getaffinity(0)) < len(cpus.split(",")):
        pytest.skip("needs two CPUs")
    pinned = ",".join(map(str, sorted(os.sched_getaffinity(0))[:len(cpus.split(","))]))
    code = ("import json, sys; from mailer.config import load_settings; from mailer.sending.inflight import "
            "sending_processes as n, AUTO_PROCESSES_FROM as big; from pathlib import Path; s = load_settings(Path('.')); "
            "print(json.dumps([n(s, big), n(s, big - 1), n(s, big, 3), n(s, big, workers=1)]))")
    env = _sendgrid_env("sqlite:///unused.db", "http://127.0.0.1:9")
    outputs = {}
    for name, extra in {"default": {}, "setting": {"MAILER_SEND_PROCESSES": "3"},
                        "smtp": {"MAILER_BACKEND": "smtp", "MAILER_SMTP_HOST": "127.0.0.1"}}.items():
        done = subprocess.run(["taskset", "-c", pinned, sys.executable, "-c", code], cwd=project,
                              env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs[name] = json.loads(done.stdout)
    assert outputs["default"] == [expected, 1, 3, 1]  # `--workers 1`: one request in flight, one process
    assert outputs["setting"] == [3, 3, 3, 3]
    assert outputs["smtp"] == [1, 1, 3, 1]


def _hold_forever(lock) -> None:  # noqa: ANN001 - a spawned process: take the turn and never give it back
    lock.acquire()
    time.sleep(600)


def test_a_sending_process_killed_holding_the_sqlite_writer_turn_does_not_block_the_others():
    """The SQLite writer turn the processes of a send share (`processes.WriterTurn`) is a scheduling
    aid: a process SIGKILLed while it holds it (a real spawned process) costs the survivors one wait of
    TURN_WAIT seconds, after which they write without it — they must still record what they have in
    flight — and every later turn is immediate."""
    import multiprocessing

    from mailer.sending import processes

    context = multiprocessing.get_context("spawn")
    lock = context.Lock()
    holder = context.Process(target=_hold_forever, args=(lock,))
    holder.start()
    _wait_for(lambda: not lock.acquire(False) or lock.release(), 30, "the other process to take the turn")
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    turn = processes.WriterTurn(lock)
    started = time.monotonic()
    with turn:
        first = time.monotonic() - started
    assert processes.TURN_WAIT - 0.1 <= first < processes.TURN_WAIT + 2
    started = time.monotonic()
    for _ in range(100):
        with turn:
            pass
    assert time.monotonic() - started < 1.0


@pytest.mark.slow
def test_a_helper_killed_mid_send_leaves_the_send_to_the_others_who_finish_it(store, db_url, project):
    """SIGKILL of one helper of `mailer send --processes 3` while requests are in flight: the parent
    notices (it reaps the helper, whose claims go back to the queue at once), the other processes
    send the rest, the command ends by itself with exit 0, everyone is reached, and only what the
    killed helper had in flight (its 3 threads: ≤ 300) gets a second copy."""
    addresses = _populate(store, project, 3000)
    with SendGridServer(latency=1.0) as server:
        env = _sendgrid_env(db_url, server.url, MAILER_SENDGRID_IN_FLIGHT="600")
        victim, (helper, _) = _send_in_three_processes(project, env)
        _wait_for(lambda: server.in_flight_requests >= 4, 60, "requests of several processes in flight")
        os.kill(helper, signal.SIGKILL)
        out, err = victim.communicate(timeout=120)
        assert victim.returncode == 0 and "Traceback" not in err, err
        assert "was killed" in err, err
        counts = server.count_by_recipient()
        assert set(counts) == set(addresses), "someone was skipped"
        assert sum(n - 1 for n in counts.values()) <= 300
        assert server.max_in_flight_recipients <= 600
    assert _counts(store)["sent"] == len(addresses)


@pytest.mark.slow
def test_ctrl_c_while_the_helpers_start_stops_the_send_quietly_and_it_resumes(store, db_url, project):
    """Ctrl-C (SIGINT to the terminal's whole process group) the moment the helper processes of
    `mailer send --processes 3` exist, while they are still importing: the send stops gracefully
    (exit 5) with no traceback from any process, and the same command delivers everyone once."""
    addresses = _populate(store, project, 1500)
    with SendGridServer(latency=0.5) as server:
        env = _sendgrid_env(db_url, server.url, MAILER_SENDGRID_IN_FLIGHT="600")
        victim, _ = _send_in_three_processes(project, env, start_new_session=True)  # their imports take ≈ 1 s
        time.sleep(0.1)  # (measured: with the helpers still importing, the code before this fix printed tracebacks)
        os.killpg(victim.pid, signal.SIGINT)
        _, err = victim.communicate(timeout=60)
        assert victim.returncode == 5 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
        resumed = subprocess.run([*SEND, "--processes", "3"], cwd=project, env=env, capture_output=True, text=True,
                                 timeout=180)
        assert resumed.returncode == 0, resumed.stderr
        assert server.count_by_recipient() == Counter(addresses)
