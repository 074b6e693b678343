"""Failures of the whole path, with real parts: a SendGrid stand-in that is down, answers 500 or 429 to
everything; an SMTP relay that refuses connections or greets with 421; an outbox on a read-only or a
full filesystem (real tmpfs mounts). Each pauses the send — a one-line reason, exit 5 — without
failing anyone or spending anyone's attempts; once the path is back, the same command delivers every
subscriber exactly once. Also: an unsubscribe during a slow send is honoured right before the message
or request leaves.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer.sending import dispatch
from mailer.errors import SendAborted
from mailer.config import load_settings
from mailer.store.schema import deliveries, subscribers
from mailer.subscribers import import_csv, remove_subscriber

from .cli_support import invoke_with
from .conftest import BASE_ENV, EXAMPLE_ISSUE
from .sendgrid_server import SendGridServer
from .smtp_server import MisbehavingServer, ScriptedHandler, free_port, start_server

SUBSCRIBERS = 30
PAUSE_AFTER = "1.5"  # seconds of outage before the send pauses (MAILER_PAUSE_AFTER)


# ----- helpers ------------------------------------------------------------------------------------
def cli_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILER_", "SENDGRID_"))}
    env.update(BASE_ENV)
    env.update({"MAILER_DATABASE_URL": db_url, "MAILER_PAUSE_AFTER": PAUSE_AFTER})
    env.update(extra)
    return env


def run_send(project: Path, env: dict[str, str], *args: str):
    """`mailer send EXAMPLE_ISSUE --yes ARGS` in this process (tests/cli_support.py) with `env`'s settings."""
    return invoke_with(env, ("send", EXAMPLE_ISSUE, "--yes", *args), project)


def populate(store, project: Path, count: int = SUBSCRIBERS) -> list[str]:
    addresses = [f"lecteur{i:03d}@example.org" for i in range(count)]
    path = project / "liste.csv"
    path.write_text("email,name\n" + "".join(f"{a},Lecteur {i}\n" for i, a in enumerate(addresses)), encoding="utf-8")
    assert import_csv(store, path).added == count
    return addresses


def ledger(store) -> tuple[dict[str, int], int, str]:
    """(counts by status, highest attempts spent on a row not sent, issue status)."""
    with store.engine.connect() as conn:
        issue = store.issue_row(conn, EXAMPLE_ISSUE)
        counts = store.delivery_counts(conn, issue.id)
        attempts = conn.execute(sa.select(sa.func.coalesce(sa.func.max(deliveries.c.attempts), 0))
                                .where(deliveries.c.issue_id == issue.id, deliveries.c.status != "sent")).scalar()
    return counts, attempts, issue.status


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A real, small tmpfs the test can remount (read-only, resized); skipped where mounting is not allowed."""
    point = tmp_path / "outbox"
    point.mkdir()
    try:
        mount("-t", "tmpfs", "-o", "size=320k,mode=0755", "tmpfs", str(point))
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}); the outbox fault tests need root")
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


# ----- the faults: each breaks the path, then repairs it ------------------------------------------
class Fault:
    name = ""

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def break_(self) -> None:
        pass

    def repair(self) -> None:
        pass

    def received(self) -> collections.Counter:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SendGridFault(Fault):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = free_port()
        self.server: SendGridServer | None = None
        if mode != "down":
            self.server = SendGridServer(port=self.port).start()

    def env(self) -> dict[str, str]:
        return {"MAILER_BACKEND": "sendgrid", "SENDGRID_API_KEY": "SG.test",
                "MAILER_SENDGRID_API_URL": f"http://127.0.0.1:{self.port}"}

    def break_(self) -> None:
        if self.mode == "500":
            self.server.fail_next(500, times=10_000)
        elif self.mode == "503":
            self.server.fail_next(503, times=10_000)
        elif self.mode == "429":
            self.server.rate_limit_next(retry_after=0.5, times=10_000)

    def repair(self) -> None:
        if self.server is None:
            self.server = SendGridServer(port=self.port).start()
        else:
            with self.server._lock:
                self.server.faults.clear()

    def received(self) -> collections.Counter:
        return self.server.count_by_recipient()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


class SmtpFault(Fault):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = free_port()
        self.misbehaving = MisbehavingServer("greet-421", port=self.port) if mode == "421" else None
        self.server = None

    def env(self) -> dict[str, str]:
        # "dns": the relay's name does not resolve until the repair (the operator's DNS comes back)
        host = "relay.invalid" if self.mode == "dns" and self.server is None else "127.0.0.1"
        return {"MAILER_BACKEND": "smtp", "MAILER_SMTP_HOST": host, "MAILER_SMTP_PORT": str(self.port),
                "MAILER_SMTP_TLS": "none"}

    def repair(self) -> None:
        if self.misbehaving is not None:
            self.misbehaving.stop()
        self.server = start_server(ScriptedHandler(), port=self.port)

    def received(self) -> collections.Counter:
        return self.server.handler.per_recipient()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        elif self.misbehaving is not None:
            self.misbehaving.stop()


class OutboxFault(Fault):
    def __init__(self, mode: str, point: Path) -> None:
        self.mode = mode
        self.point = point

    def env(self) -> dict[str, str]:
        return {"MAILER_BACKEND": "outbox", "MAILER_OUTBOX_DIR": str(self.point)}

    def break_(self) -> None:
        if self.mode == "read-only":
            mount("-o", "remount,ro", str(self.point))
        # "full": 320 KB hold only a few 40 KB messages

    def repair(self) -> None:
        mount("-o", "remount,rw,size=16m", str(self.point))

    def received(self) -> collections.Counter:
        folder = self.point / EXAMPLE_ISSUE
        counter = collections.Counter()
        for path in folder.glob("*.eml"):
            data = path.read_bytes()
            to = next(line for line in data.split(b"\r\n") if line.startswith(b"To:"))
            counter[to.decode().split("<")[-1].rstrip(">").strip()] += 1
        assert not list(folder.glob("*.tmp")), "a half-written file stayed behind"
        return counter


KINDS = ["sendgrid-down", "sendgrid-500", "sendgrid-503", "sendgrid-429", "smtp-refused", "smtp-421", "smtp-dns",
         "outbox-read-only", "outbox-full"]
CASES = ([pytest.param(kind, "sqlite", id=f"{kind}-sqlite") for kind in KINDS]
         + [pytest.param(kind, "postgresql", id=f"{kind}-postgresql")
            for kind in ("sendgrid-down", "sendgrid-429", "smtp-421", "outbox-full")])


def make_fault(kind: str, request) -> Fault:
    family, _, mode = kind.partition("-")
    if family == "sendgrid":
        return SendGridFault(mode)
    if family == "smtp":
        return SmtpFault(mode)
    return OutboxFault(mode, request.getfixturevalue("tmpfs"))


@pytest.mark.slow
@pytest.mark.parametrize("kind,db_url", CASES, indirect=["db_url"])
def test_a_whole_path_failure_pauses_without_spending_attempts_then_the_same_command_delivers_everyone(
        kind, db_url, store, project, request):
    fault = make_fault(kind, request)
    try:
        addresses = populate(store, project)
        env = cli_env(db_url, **fault.env())
        fault.break_()
        started = time.monotonic()
        first = run_send(project, env)
        took = time.monotonic() - started

        assert first.returncode == 5, (first.stdout, first.stderr)
        errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "send paused" in errors[0] and f"mailer send {EXAMPLE_ISSUE}" in errors[0]
        assert "Traceback" not in first.stderr
        counts, attempts, status = ledger(store)
        assert status == "paused"
        assert counts["failed"] == 0 and counts["sending"] == 0 and attempts == 0, counts
        assert counts["queued"] + counts["sent"] == SUBSCRIBERS
        if kind == "outbox-full":
            assert 0 < counts["sent"] < SUBSCRIBERS  # a few fitted before the disk filled up
        else:
            assert counts["sent"] == 0
        assert took < 30, f"paused after {took:.1f}s"
        if kind == "sendgrid-429":  # Retry-After (0.5 s) was honoured between tries
            times = [entry.at for entry in fault.server.log]
            assert len(times) >= 2 and all(b - a >= 0.45 for a, b in zip(times, times[1:])), times

        fault.repair()
        second = run_send(project, cli_env(db_url, **fault.env()))
        assert second.returncode == 0, (second.stdout, second.stderr)
        counts, _, status = ledger(store)
        assert status == "sent" and counts["sent"] == SUBSCRIBERS and counts["queued"] == counts["failed"] == 0
        assert fault.received() == collections.Counter(addresses), "somebody missing or served twice"
    finally:
        fault.close()


def test_a_retry_after_longer_than_the_pause_window_pauses_at_once_and_says_so(store, make_settings, db_url):
    with SendGridServer() as server:
        settings = make_settings(database_url=db_url, MAILER_BACKEND="sendgrid", SENDGRID_API_KEY="SG.test",
                                 MAILER_SENDGRID_API_URL=server.url, MAILER_PAUSE_AFTER="60")
        store_people(store, 3)
        server.rate_limit_next(retry_after=3600, times=5)
        started = time.monotonic()
        with pytest.raises(SendAborted, match="asks to wait 3600 s"):
            dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        assert time.monotonic() - started < 10 and len(server.log) == 1
    counts, attempts, status = ledger(store)
    assert (counts["queued"], counts["failed"], attempts, status) == (3, 0, 0, "paused")


def test_an_outage_shorter_than_the_window_is_ridden_out(store, make_settings, db_url):
    """SendGrid answers 503 for ~1.5 s: the send waits it out (backoff) and finishes, nobody failed."""
    with SendGridServer() as server:
        settings = make_settings(database_url=db_url, MAILER_BACKEND="sendgrid", SENDGRID_API_KEY="SG.test",
                                 MAILER_SENDGRID_API_URL=server.url, MAILER_PAUSE_AFTER="30", MAILER_BATCH_SIZE="4")
        people = store_people(store, 10)
        server.fail_next(503, times=10_000)
        threading.Timer(1.5, lambda: server.faults.clear()).start()
        report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        assert report.complete and report.counts["sent"] == 10 and report.counts["failed"] == 0
        assert server.count_by_recipient() == collections.Counter(people)
        assert 503 in server.statuses()


def store_people(store, count: int) -> list[str]:
    from mailer.subscribers import add_subscriber

    people = [f"personne{i}@example.org" for i in range(count)]
    for address in people:
        add_subscriber(store, address)
    return people


# ----- an unsubscribe in the middle of a slow send (9.3) ------------------------------------------------
def _delivery_status(store, address: str) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(deliveries.c.status).join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
                            .where(subscribers.c.email == address)).scalar()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["smtp", "sendgrid"])
def test_an_unsubscribe_during_a_slow_send_is_honoured_before_the_message_leaves(backend, store, make_settings,
                                                                                  db_url, project):
    """Rate-limited send (20/s); the target's row is already claimed (`sending`) when they unsubscribe:
    the claim-time check is long past, only the check right before the message/request leaves can
    catch it."""
    addresses = populate(store, project, 40)
    target = addresses[30]
    smtp = sendgrid = None
    if backend == "smtp":
        smtp = start_server(ScriptedHandler())
        env = dict(MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1", MAILER_SMTP_PORT=str(smtp.port),
                   MAILER_SMTP_TLS="none", MAILER_SMTP_POOL="1")
        received = lambda: smtp.handler.per_recipient()  # noqa: E731
    else:
        sendgrid = SendGridServer().start()
        # claims of 20, one request in flight: the second request (the target's) waits ~1 s for its
        # rate-limit slot (with several in flight, either batch could take the first slot)
        env = dict(MAILER_BACKEND="sendgrid", SENDGRID_API_KEY="SG.test", MAILER_SENDGRID_API_URL=sendgrid.url,
                   MAILER_BATCH_SIZE="20", MAILER_SENDGRID_IN_FLIGHT="20")
        received = lambda: sendgrid.count_by_recipient()  # noqa: E731
    settings = make_settings(database_url=db_url, MAILER_RATE_LIMIT="20", **env)
    outcome: dict = {}
    sender = threading.Thread(target=lambda: outcome.update(report=dispatch.send_issue(settings, store, EXAMPLE_ISSUE)))
    try:
        sender.start()
        deadline = time.monotonic() + 30
        while _delivery_status(store, target) != "sending" or sum(received().values()) < 5:
            assert time.monotonic() < deadline, "the target's row was never claimed"
            time.sleep(0.01)
        assert received()[target] == 0
        remove_subscriber(store, target)  # what `mailer subscribers remove` and the one-click POST do
        sender.join(60)
        report = outcome["report"]
        assert report.complete and report.counts["skipped"] == 1 and report.counts["sent"] == 39
        delivered = received()
        assert target not in delivered, "an unsubscribed person got the message"
        assert delivered == collections.Counter(a for a in addresses if a != target)
        assert _delivery_status(store, target) == "skipped"
    finally:
        if smtp:
            smtp.stop()
        if sendgrid:
            sendgrid.stop()


# ----- a relay or provider refusing every recipient is the path, not the people -----------------------------
# A misconfigured Postfix answers `550 5.1.1 User unknown` (or a 5.7.1 relay refusal) to every RCPT;
# SendGrid answers 400 naming every personalization. Nothing of the send was accepted, so no refusal
# is final: after STREAK_LIMIT (10) refusals in a row — or everyone, for a smaller list — the send
# pauses, nobody is failed or bounced, no attempt is spent; the same command then delivers everyone once.
EVERYONE_REFUSED = {
    "550 5.1.1": "550 5.1.1 <{a}>: Recipient address rejected: User unknown in local recipient table",
    "554 5.7.1": "554 5.7.1 <{a}>: Relay access denied",
    "550 5.7.1": "550 5.7.1 Relaying denied",
    "530 5.7.0": "530 5.7.0 Authentication required",
}


def subscriber_statuses(store) -> collections.Counter:
    with store.engine.connect() as conn:
        return collections.Counter(conn.execute(sa.select(subscribers.c.status)).scalars())


def assert_paused_untouched(store, size: int) -> None:
    counts, attempts, status = ledger(store)
    assert status == "paused" and attempts == 0, (status, attempts)
    assert (counts["queued"], counts["failed"], counts["sending"], counts["sent"]) == (size, 0, 0, 0), counts
    assert subscriber_statuses(store) == collections.Counter({"active": size}), "somebody was marked bounced"


@pytest.mark.parametrize("size", [5, 30, 200])
@pytest.mark.parametrize("reply", list(EVERYONE_REFUSED))
def test_a_relay_refusing_every_recipient_pauses_marks_nobody_and_the_same_command_delivers_everyone(
        reply, size, store, make_settings, db_url):
    if size == 200 and reply != "550 5.1.1" and not db_url.startswith("postgresql"):
        pytest.skip("the 200 list runs once per database with the commonest misconfiguration")
    server = start_server(ScriptedHandler())
    try:
        server.handler.on_rcpt = lambda address: EVERYONE_REFUSED[reply].format(a=address)
        settings = make_settings(database_url=db_url, MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1",
                                 MAILER_SMTP_PORT=str(server.port), MAILER_SMTP_TLS="none")
        people = store_people(store, size)
        started = time.monotonic()
        with pytest.raises(SendAborted) as paused:
            dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        message = str(paused.value)
        shown = min(size, dispatch.STREAK_LIMIT)
        assert f"the relay refused all of the last {shown} recipients ({'RCPT ' + reply}" in message, message
        assert "nothing was marked bounced" in message
        assert f"run the same command (`mailer send {EXAMPLE_ISSUE}`) again to resume (0 sent, {size} left)" in message
        assert time.monotonic() - started < 10
        assert sum(server.handler.attempts.values()) == shown  # it stopped asking after the streak
        assert_paused_untouched(store, size)

        server.handler.on_rcpt = None  # the relay is fixed
        report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        assert report.complete and report.sent_now == size and report.failed_now == 0
        assert server.handler.per_recipient() == collections.Counter(people), "somebody missing or served twice"
        assert subscriber_statuses(store) == collections.Counter({"active": size})
    finally:
        server.stop()


@pytest.mark.parametrize("size", [5, 30, 80])
def test_sendgrid_refusing_every_recipient_with_a_400_pauses_and_marks_nobody(size, store, make_settings, db_url):
    with SendGridServer() as server:
        server.reject_addresses(lambda address: True, "Does not contain a valid address.")
        settings = make_settings(database_url=db_url, MAILER_BACKEND="sendgrid", SENDGRID_API_KEY="SG.test",
                                 MAILER_SENDGRID_API_URL=server.url)
        people = store_people(store, size)
        with pytest.raises(SendAborted, match=rf"the provider \(sendgrid\) refused all of the last {size} "
                                              r"recipients .*nothing was marked bounced"):
            dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        assert_paused_untouched(store, size)
        server.clear()
        report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        assert report.complete and report.sent_now == size
        assert server.count_by_recipient() == collections.Counter(people)
        assert subscriber_statuses(store) == collections.Counter({"active": size})


@pytest.mark.parametrize("backend", ["smtp", "sendgrid"])
def test_bad_addresses_before_the_first_accepted_one_still_bounce_once_the_path_works(backend, store, make_settings,
                                                                                     db_url):
    """The first three addresses do not exist, the rest do: their refusals are held until the fourth is
    accepted, then final — failed and bounced — and everyone else is sent, nobody paused."""
    people = store_people(store, 12)
    bad = set(people[:3])
    if backend == "smtp":
        server = start_server(ScriptedHandler())
        server.handler.on_rcpt = lambda a: f"550 5.1.1 <{a}>: User unknown" if a in bad else None
        env = {"MAILER_BACKEND": "smtp", "MAILER_SMTP_HOST": "127.0.0.1", "MAILER_SMTP_PORT": str(server.port),
               "MAILER_SMTP_TLS": "none"}
        received = server.handler.per_recipient
    else:
        server = SendGridServer().start()
        server.reject_addresses(lambda a: a in bad, "Does not contain a valid address.")
        env = {"MAILER_BACKEND": "sendgrid", "SENDGRID_API_KEY": "SG.test", "MAILER_SENDGRID_API_URL": server.url,
               "MAILER_BATCH_SIZE": "4"}
        received = server.count_by_recipient
    try:
        report = dispatch.send_issue(make_settings(database_url=db_url, **env), store, EXAMPLE_ISSUE)
        assert report.complete and report.sent_now == 9 and report.failed_now == 3
        assert received() == collections.Counter(people[3:])
        assert subscriber_statuses(store) == collections.Counter({"active": 9, "bounced": 3})
        with store.engine.connect() as conn:
            bounced = set(conn.execute(sa.select(subscribers.c.email).where(subscribers.c.status == "bounced")).scalars())
        assert bounced == bad
    finally:
        server.stop()
