"""The send loop's guarantees on SQLite and PostgreSQL: freeze, skip, resume, retry, pause.

Fault injection here uses `ScriptedProvider`, a provider stand-in that obeys the backend contract
and answers as scripted (real SMTP and SendGrid servers are exercised in test_smtp / test_sendgrid).
"""

from __future__ import annotations

import collections
import threading
import time

import pytest
import sqlalchemy as sa

import mailer.sending.dispatch as dispatch
from mailer.sending.prepare import prepare_send, requeue_dead_claims
from mailer.providers import Backend, Batch, PermanentError, RecipientResult, TransientError
from mailer.errors import ConfigError, EmptyAudience, SendAborted, SourceError
from mailer.store.schema import deliveries
from mailer.subscribers import add_subscriber, import_csv, remove_subscriber, show_subscriber

from .conftest import EXAMPLE_ISSUE


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(dispatch, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(dispatch, "BACKOFF_CAP", 0.05)


class ScriptedProvider(Backend):
    """Accepts messages and counts them per address; `script` decides per call / per address."""

    name = "scripted"

    def __init__(self, max_batch: int = 1000) -> None:
        self.max_batch = max_batch
        self.received: collections.Counter[str] = collections.Counter()
        self.batch_errors: list[Exception] = []          # raised on the next calls, in order
        self.refuse: dict[str, str] = {}                  # address -> "transient" | "permanent" | "bounce"
        self.calls = 0
        self.lock = threading.Lock()

    def factory(self):
        return lambda: self

    def send_batch(self, batch: Batch) -> list[RecipientResult]:
        with self.lock:
            self.calls += 1
            if self.batch_errors:
                raise self.batch_errors.pop(0)
            results = []
            for message in batch.messages:
                address = message.recipient.email
                verdict = self.refuse.get(address)
                if verdict == "transient":
                    results.append(RecipientResult(message, "transient", error="450 mailbox busy"))
                elif verdict in ("permanent", "bounce"):
                    results.append(RecipientResult(message, "permanent", error="550 no such user",
                                                   hard_bounce=verdict == "bounce"))
                else:
                    self.received[address] += 1
                    data = batch.factory.build(message.recipient, message.message_id, batch.date)
                    assert message.recipient.unsubscribe_url.encode() in data
                    results.append(RecipientResult(message, "sent", provider_message_id=message.message_id))
            return results


def _populate(store, tmp_path, count: int) -> list[str]:
    path = tmp_path / "liste.csv"
    addresses = [f"lecteur{i:05d}@example.org" for i in range(count)]
    path.write_text("email,name\n" + "".join(f"{a},Lecteur {i}\n" for i, a in enumerate(addresses)), encoding="utf-8")
    assert import_csv(store, path).added == count
    return addresses


def _counts(store, slug=EXAMPLE_ISSUE):
    with store.engine.connect() as conn:
        return store.delivery_counts(conn, store.issue_row(conn, slug).id)


def test_everyone_once_in_batches(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, batch_size=7)
    addresses = _populate(store, tmp_path, 50)
    provider = ScriptedProvider()
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert report.sent_now == 50 and report.complete
    assert provider.received == collections.Counter(addresses)
    assert provider.calls == 8  # ceil(50 / 7)
    again = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert again.sent_now == 0 and sum(provider.received.values()) == 50


def test_freeze_excludes_later_subscribers_unless_include_new(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url)
    _populate(store, tmp_path, 3)
    provider = ScriptedProvider()
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    add_subscriber(store, "tardif@example.org")
    assert dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory()).sent_now == 0
    assert "tardif@example.org" not in provider.received
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, include_new=True, backend_factory=provider.factory())
    assert report.sent_now == 1 and provider.received["tardif@example.org"] == 1
    assert sum(provider.received.values()) == 4


def test_unsubscribed_after_the_freeze_is_skipped_never_sent(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url)
    addresses = _populate(store, tmp_path, 5)
    prepare_send(settings, store, EXAMPLE_ISSUE)  # freeze only
    remove_subscriber(store, addresses[2])
    provider = ScriptedProvider()
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert addresses[2] not in provider.received and report.sent_now == 4 and report.skipped_now == 1
    assert _counts(store)["skipped"] == 1


def test_pending_and_suppressed_are_never_frozen(store, make_settings, db_url):
    settings = make_settings(database_url=db_url)
    add_subscriber(store, "actif@example.org")
    add_subscriber(store, "attente@example.org", status="pending")
    add_subscriber(store, "parti@example.org")
    remove_subscriber(store, "parti@example.org")
    provider = ScriptedProvider()
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert list(provider.received) == ["actif@example.org"]


def test_transient_batch_errors_are_retried_nothing_lost_nothing_doubled(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, batch_size=10)
    addresses = _populate(store, tmp_path, 30)
    provider = ScriptedProvider()
    provider.batch_errors = [TransientError("429 too many requests", retry_after=0.01), TransientError("503"),
                             TransientError("connection reset")]
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert report.complete and provider.received == collections.Counter(addresses)


def test_transient_recipient_refusal_is_retried_then_delivered(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, batch_size=5)
    addresses = _populate(store, tmp_path, 10)
    provider = ScriptedProvider()
    provider.refuse[addresses[3]] = "transient"
    calls_before_release = []

    original = provider.send_batch

    def release_after_two_refusals(batch):
        if provider.calls >= 3:
            provider.refuse.pop(addresses[3], None)
            calls_before_release.append(provider.calls)
        return original(batch)

    provider.send_batch = release_after_two_refusals  # the mailbox frees up after a while
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert report.complete and provider.received == collections.Counter(addresses)


def test_transient_refusal_gives_up_after_max_attempts(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url)
    addresses = _populate(store, tmp_path, 4)
    provider = ScriptedProvider()
    provider.refuse[addresses[0]] = "transient"
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert report.complete and _counts(store)["failed"] == 1 and _counts(store)["sent"] == 3
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(deliveries.c.attempts, deliveries.c.last_error)
                           .where(deliveries.c.status == "failed")).one()
    assert row.attempts == dispatch.MAX_ATTEMPTS and "450" in row.last_error


def test_one_permanent_failure_does_not_block_the_rest_and_retry_failed_requeues(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url)
    addresses = _populate(store, tmp_path, 6)
    provider = ScriptedProvider()
    provider.refuse[addresses[1]] = "bounce"
    provider.refuse[addresses[4]] = "permanent"
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert report.sent_now == 4 and report.failed_now == 2
    assert show_subscriber(store, addresses[1]).status == "bounced"
    assert show_subscriber(store, addresses[4]).status == "active"
    provider.refuse.clear()
    retried = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, retry_failed=True, backend_factory=provider.factory())
    # the bounced subscriber is skipped (suppressed), the other failure goes out once
    assert retried.sent_now == 1 and retried.skipped_now == 1
    assert provider.received[addresses[4]] == 1 and addresses[1] not in provider.received


def test_consecutive_failures_pause_the_send_with_a_clear_message(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, batch_size=10)
    addresses = _populate(store, tmp_path, 120)
    provider = ScriptedProvider()
    for address in addresses:
        provider.refuse[address] = "permanent"
    # changed with the streak rule: it pauses at STREAK_LIMIT (10) refusals, not after 50 over 5 steps
    with pytest.raises(SendAborted, match="refused all of the last 10 recipients .550 no such user.: .*nothing was "
                                          "marked bounced.*run the same command .*again to resume .0 sent, 120 left"):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    counts = _counts(store)
    # everyone refused, nothing accepted: the path's fault, not theirs; nobody failed, no attempt spent
    assert (counts["failed"], counts["queued"], counts["sending"]) == (0, 120, 0)
    with store.engine.connect() as conn:
        assert store.issue_row(conn, EXAMPLE_ISSUE).status == "paused"
        assert conn.execute(sa.select(sa.func.max(deliveries.c.attempts))).scalar() == 0
    provider.refuse.clear()
    resumed = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert resumed.sent_now == 120 and resumed.complete
    assert provider.received == collections.Counter(addresses)


def test_permanent_provider_error_pauses_and_keeps_rows_queued(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url)
    _populate(store, tmp_path, 5)
    provider = ScriptedProvider()
    provider.batch_errors = [PermanentError("401 invalid API key")]
    with pytest.raises(SendAborted, match="401 invalid API key"):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    counts = _counts(store)
    assert counts["queued"] == 5 and counts["failed"] == 0 and counts["sending"] == 0


def test_stop_request_finishes_the_batch_and_leaves_a_consistent_ledger(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, batch_size=10)
    addresses = _populate(store, tmp_path, 50)
    provider = ScriptedProvider()
    stop = threading.Event()
    original = provider.send_batch

    def stop_after_two(batch):
        result = original(batch)
        if provider.calls == 2:
            stop.set()
        return result

    provider.send_batch = stop_after_two
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, stop=stop, backend_factory=provider.factory())
    assert report.sent_now == 20 and not report.complete
    counts = _counts(store)
    assert (counts["sent"], counts["queued"], counts["sending"]) == (20, 30, 0)
    provider.send_batch = original
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert provider.received == collections.Counter(addresses)


def test_rows_left_sending_by_a_dead_process_are_resumed(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url)
    addresses = _populate(store, tmp_path, 12)
    prepared = prepare_send(settings, store, EXAMPLE_ISSUE)
    with store.begin() as conn:  # a worker of a process that no longer exists claimed 5 rows
        store.claim_deliveries(conn, prepared.issue_id, "localhost-gone:999999999:abcdef", 5)
    import socket
    dead_here = f"{socket.gethostname()}:999999999:abcdef"
    with store.begin() as conn:
        conn.execute(deliveries.update().where(deliveries.c.status == "sending").values(claimed_by=dead_here))
    provider = ScriptedProvider()
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert report.requeued_stale == 5 and report.complete
    assert provider.received == collections.Counter(addresses)


def test_a_few_bad_addresses_in_a_row_do_not_pause(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, batch_size=3)
    addresses = _populate(store, tmp_path, 40)
    provider = ScriptedProvider()
    # changed with the streak rule (30 refusals in a row now pause: see the test above): runs of bad
    # addresses shorter than STREAK_LIMIT, across batches, with accepted ones in between
    bad = addresses[:9] + addresses[12:21] + addresses[30:39]
    for address in bad:
        provider.refuse[address] = "permanent"
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert report.complete and report.failed_now == 27 and report.sent_now == 13


@pytest.mark.parametrize("group", [1, 3, 10])
def test_per_message_backend_records_accepted_messages_in_bounded_groups(store, make_settings, tmp_path, db_url,
                                                                        group):
    """SMTP's group commit: before each message leaves, at most `group - 1` accepted ones are unrecorded
    (so a crash repeats at most one group with the message in flight), and the ledger catches up in
    whole groups."""
    settings = make_settings(database_url=db_url, batch_size=50, smtp_commit_every=group, smtp_commit_ms=60_000)
    _populate(store, tmp_path, 20)
    provider = ScriptedProvider()
    provider.ledger_step = 1
    seen_sent_counts = []
    original = provider.send_batch

    def observe(batch):
        assert len(batch.messages) == 1
        seen_sent_counts.append(_counts(store)["sent"])  # what the ledger holds before this message
        return original(batch)

    provider.send_batch = observe
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert seen_sent_counts == [k - k % group for k in range(20)]
    assert _counts(store)["sent"] == 20


def test_group_commit_records_a_group_once_it_is_old_enough(store, make_settings, tmp_path, db_url):
    """The time bound: with a slow server (50 ms a message) and groups of up to 10 or 20 ms, each
    accepted message is recorded before the next one leaves."""
    settings = make_settings(database_url=db_url, batch_size=50, smtp_commit_every=10, smtp_commit_ms=20)
    _populate(store, tmp_path, 6)
    provider = ScriptedProvider()
    provider.ledger_step = 1
    seen_sent_counts = []
    original = provider.send_batch

    def slow(batch):
        seen_sent_counts.append(_counts(store)["sent"])
        time.sleep(0.05)
        return original(batch)

    provider.send_batch = slow
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert seen_sent_counts == list(range(6))


def test_threads_share_the_queue_without_duplicates(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, batch_size=9)
    addresses = _populate(store, tmp_path, 200)
    provider = ScriptedProvider()
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, workers=4, backend_factory=provider.factory())
    assert report.complete and provider.received == collections.Counter(addresses)


def test_rate_limit_is_respected(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, rate_limit=200.0, batch_size=10)
    _populate(store, tmp_path, 60)
    provider = ScriptedProvider()
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, workers=2, backend_factory=provider.factory())
    assert report.elapsed >= (60 - 10) / 200.0  # the first batch may go at once


def test_rate_limit_holds_across_independent_senders(store, make_settings, tmp_path, db_url):
    """Two senders that share nothing but the database (as two `mailer worker` processes would)."""
    settings = make_settings(database_url=db_url, rate_limit=100.0, batch_size=5)
    addresses = _populate(store, tmp_path, 40)
    prepared = prepare_send(settings, store, EXAMPLE_ISSUE)
    provider = ScriptedProvider()
    senders = [dispatch.Sender(settings, store, prepared.edition, prepared.issue_id, provider.factory())
               for _ in range(2)]
    started = time.monotonic()
    threads = [threading.Thread(target=s.run_worker, args=(dispatch.worker_id(f"-{i}"), 5)) for i, s in enumerate(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert provider.received == collections.Counter(addresses)
    assert elapsed >= (40 - 5) / 100.0  # one shared schedule: two senders do not double the rate


# ----- whose failure is it: the path's failures count against nobody --------------------------------
def _max_unsent_attempts(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.coalesce(sa.func.max(deliveries.c.attempts), 0))
                            .where(deliveries.c.status != "sent")).scalar()


def test_an_outage_pauses_after_the_window_without_spending_attempts_then_resumes(store, make_settings, tmp_path,
                                                                                  db_url):
    settings = make_settings(database_url=db_url, batch_size=4, pause_after=0.4)
    addresses = _populate(store, tmp_path, 10)
    provider = ScriptedProvider()
    provider.batch_errors = [TransientError("connection refused")] * 10_000
    started = time.monotonic()
    with pytest.raises(SendAborted, match="connection refused.*nothing went through for 0 s.*nobody's attempts"):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert 0.35 < time.monotonic() - started < 5
    counts = _counts(store)
    assert (counts["queued"], counts["failed"], counts["sending"]) == (10, 0, 0) and _max_unsent_attempts(store) == 0
    provider.batch_errors = []
    assert dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory()).complete
    assert provider.received == collections.Counter(addresses)


def test_the_providers_retry_after_is_waited_out(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, pause_after=30)
    addresses = _populate(store, tmp_path, 3)
    provider = ScriptedProvider()
    provider.batch_errors = [TransientError("429", retry_after=0.3), TransientError("429", retry_after=0.3)]
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert report.complete and report.elapsed >= 0.6 and provider.received == collections.Counter(addresses)
    assert _max_unsent_attempts(store) == 0


def test_a_transient_refusal_of_everyone_is_the_paths_fault_not_theirs(store, make_settings, tmp_path, db_url):
    """Three subscribers, every one refused 4xx, nothing accepted: before, each spent its five attempts
    and ended `failed`; now the pattern (the same refusal coming round again) is the path's: forgiven."""
    settings = make_settings(database_url=db_url, pause_after=0.3)
    addresses = _populate(store, tmp_path, 3)
    provider = ScriptedProvider()
    for address in addresses:
        provider.refuse[address] = "transient"
    with pytest.raises(SendAborted, match="refused all of the last 3 recipients .*450 mailbox busy"):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    counts = _counts(store)
    assert (counts["queued"], counts["failed"]) == (3, 0) and _max_unsent_attempts(store) == 0
    provider.refuse.clear()
    assert dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory()).complete
    assert provider.received == collections.Counter(addresses)


def test_deferred_messages_go_back_to_the_queue_without_an_attempt(store, make_settings, tmp_path, db_url):
    """A backend that got half a batch through before its path failed: the rest is `deferred`."""
    settings = make_settings(database_url=db_url, batch_size=6)
    addresses = _populate(store, tmp_path, 6)
    provider = ScriptedProvider()
    original = provider.send_batch
    calls = []

    def half_then_path_down(batch):
        calls.append(len(batch.messages))
        if len(calls) == 1:
            first = original(Batch(batch.factory, batch.messages[:3], batch.issue_id, batch.date))
            return first + [RecipientResult(m, "deferred", error="connection lost") for m in batch.messages[3:]]
        return original(batch)

    provider.send_batch = half_then_path_down
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert report.complete and calls == [6, 3] and provider.received == collections.Counter(addresses)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(deliveries.c.attempts))).scalar() == 1  # the one answer each


# ----- an audience of nobody is refused; nothing is marked sent that reached no one ---------------------------
def _with_list(project, list_name: str) -> None:
    toml = project / "issues" / EXAMPLE_ISSUE / "issue.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + f'\nlist = "{list_name}"\n', encoding="utf-8")


def _archive(settings, store) -> str:
    from starlette.testclient import TestClient

    from mailer.web.app import create_app
    with TestClient(create_app(settings, store)) as client:
        return client.get("/archive").text


EMPTY_AUDIENCES = {
    "no subscribers": (lambda store, project: None, r"there are no subscribers yet"),
    "all unsubscribed": (lambda store, project: [remove_subscriber(store, a) for a in
                                                  [add_subscriber(store, f"x{i}@example.org") and f"x{i}@example.org"
                                                   for i in range(3)]],
                         r"no active subscriber \(3 unsubscribed\)"),
    "only pending": (lambda store, project: add_subscriber(store, "p@example.org", status="pending"),
                     r"no active subscriber \(1 pending\)"),
    "unknown list (typo)": (lambda store, project: (add_subscriber(store, "m@example.org", lists=["abonnes-premium"]),
                                                    _with_list(project, "abonnes-premiun")),
                            r"list 'abonnes-premiun' \(.*issue.toml\) has no members; did you mean 'abonnes-premium'\?"),
    "list of unsubscribed": (lambda store, project: (add_subscriber(store, "m@example.org", lists=["club"]),
                                                     remove_subscriber(store, "m@example.org"),
                                                     add_subscriber(store, "other@example.org"),
                                                     _with_list(project, "club")),
                             r"list 'club' \(.*issue.toml\) has no active subscriber \(1 unsubscribed\)"),
}


@pytest.mark.parametrize("shape", list(EMPTY_AUDIENCES))
def test_an_empty_audience_is_refused_with_the_reason_and_leaves_the_issue_unsent(shape, store, make_settings, db_url,
                                                                                  project):
    arrange, reason = EMPTY_AUDIENCES[shape]
    arrange(store, project)
    settings = make_settings(database_url=db_url)
    provider = ScriptedProvider()
    with pytest.raises(EmptyAudience, match=reason):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert provider.calls == 0
    with store.engine.connect() as conn:
        assert store.issue_row(conn, EXAMPLE_ISSUE) is None  # not half-started, not "sent"
    assert EXAMPLE_ISSUE not in _archive(settings, store)
    # someone joins: the same command now sends, and counts them from the start
    add_subscriber(store, "nouveau@example.org", lists=["abonnes-premium", "abonnes-premiun", "club"])
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert report.complete and report.frozen == 1 and provider.received["nouveau@example.org"] == 1


def test_an_issue_that_reached_nobody_is_paused_not_sent(store, make_settings, tmp_path, db_url):
    """Everyone frozen unsubscribed before anything left: all skipped, the issue is not `sent`."""
    settings = make_settings(database_url=db_url)
    addresses = _populate(store, tmp_path, 3)
    prepare_send(settings, store, EXAMPLE_ISSUE)
    for address in addresses:
        remove_subscriber(store, address)
    with pytest.raises(SendAborted, match="reached nobody: of 3 frozen recipients 3 were skipped"):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=ScriptedProvider().factory())
    with store.engine.connect() as conn:
        assert store.issue_row(conn, EXAMPLE_ISSUE).status == "paused"
    assert EXAMPLE_ISSUE not in _archive(settings, store)


def test_a_finished_issue_stays_finished_even_with_the_provider_down(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, pause_after=0.2)
    _populate(store, tmp_path, 4)
    provider = ScriptedProvider()
    assert dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory()).complete
    provider.batch_errors = [TransientError("connection refused")] * 1000
    calls = provider.calls
    again = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    assert again.already_finished and again.sent_now == 0 and provider.calls == calls
    with store.engine.connect() as conn:
        row = store.issue_row(conn, EXAMPLE_ISSUE)
    assert row.status == "sent" and row.paused_reason is None
    # --include-new with nobody new, --retry-failed with no failure: still finished, nothing sent
    for option in ({"include_new": True}, {"retry_failed": True}):
        report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory(), **option)
        assert report.already_finished and provider.calls == calls


# ----- nothing half-started -------------------------------------------------------------------------------------
def test_a_send_that_fails_before_the_freeze_leaves_the_issue_as_it_was(store, make_settings, tmp_path, db_url, project):
    _populate(store, tmp_path, 3)
    provider = ScriptedProvider()
    failures = [
        (dict(MAILER_BACKEND="sendgrid"), ConfigError, "SENDGRID_API_KEY"),
        (dict(MAILER_FROM=""), ConfigError, "MAILER_FROM"),
    ]
    for env, error, text in failures:
        with pytest.raises(error, match=text):
            dispatch.send_issue(make_settings(database_url=db_url, **env), store, EXAMPLE_ISSUE,
                                backend_factory=provider.factory())
    briefs = project / "issues" / EXAMPLE_ISSUE / "briefs.txt"
    original = briefs.read_text(encoding="utf-8")
    briefs.write_text(original + "\n-->\n\n", encoding="utf-8")  # an empty brief
    with pytest.raises(SourceError, match="briefs.txt"):
        dispatch.send_issue(make_settings(database_url=db_url), store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    with store.engine.connect() as conn:
        assert store.issue_row(conn, EXAMPLE_ISSUE) is None
    briefs.write_text(original, encoding="utf-8")
    report = dispatch.send_issue(make_settings(database_url=db_url), store, EXAMPLE_ISSUE,
                                 backend_factory=provider.factory())
    assert report.complete and report.sent_now == 3 and provider.calls == 1


def test_a_paused_issue_whose_resume_fails_to_prepare_stays_paused_with_its_reason(store, make_settings, tmp_path,
                                                                                   db_url):
    settings = make_settings(database_url=db_url)
    _populate(store, tmp_path, 3)
    provider = ScriptedProvider()
    provider.batch_errors = [PermanentError("401 invalid API key")]
    with pytest.raises(SendAborted):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    with pytest.raises(ConfigError):
        dispatch.send_issue(make_settings(database_url=db_url, MAILER_FROM=""), store, EXAMPLE_ISSUE)
    with store.engine.connect() as conn:
        row = store.issue_row(conn, EXAMPLE_ISSUE)
    assert row.status == "paused" and "401" in row.paused_reason


def test_an_unexpected_error_mid_send_pauses_the_issue_never_leaves_it_sending(store, make_settings, tmp_path, db_url):
    settings = make_settings(database_url=db_url, batch_size=2)
    addresses = _populate(store, tmp_path, 6)
    provider = ScriptedProvider()
    script = [None, RuntimeError("bug in a provider library")]
    original = provider.send_batch

    def second_call_crashes(batch):
        error = script.pop(0) if script else None
        if error is not None:
            raise error
        return original(batch)

    provider.send_batch = second_call_crashes
    with pytest.raises(RuntimeError):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    counts = _counts(store)
    assert (counts["sent"], counts["queued"], counts["sending"]) == (2, 4, 0)
    with store.engine.connect() as conn:
        row = store.issue_row(conn, EXAMPLE_ISSUE)
    assert row.status == "paused" and "RuntimeError: bug in a provider library" in row.paused_reason
    provider.send_batch = original
    assert dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory()).complete
    assert provider.received == collections.Counter(addresses)



def test_an_error_reading_a_committed_claim_puts_its_rows_back_in_the_queue(store, make_settings, tmp_path, db_url,
                                                                             monkeypatch):
    """The send loop reads a claim's rows after the claim committed (`claim_batch`): an error in that
    read (a locked or failing database, a second Ctrl-C) leaves no row `sending` under a worker that is
    gone, as an error anywhere else in the loop does not; the resume reaches everyone once."""
    from mailer.store import ledger
    settings = make_settings(database_url=db_url, batch_size=2)
    addresses = _populate(store, tmp_path, 6)
    provider = ScriptedProvider()
    original = ledger.ClaimedBatch.rows
    reads = []

    def second_read_fails(claim, conn):
        reads.append(claim)
        if len(reads) == 2:
            raise sa.exc.OperationalError("SELECT", {}, Exception("disk I/O error"))
        return original(claim, conn)

    monkeypatch.setattr(ledger.ClaimedBatch, "rows", second_read_fails)
    with pytest.raises(sa.exc.OperationalError):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory())
    counts = _counts(store)
    assert (counts["sent"], counts["queued"], counts["sending"]) == (2, 4, 0)
    with store.engine.connect() as conn:
        assert store.issue_row(conn, EXAMPLE_ISSUE).status == "paused"
    monkeypatch.setattr(ledger.ClaimedBatch, "rows", original)
    assert dispatch.send_issue(settings, store, EXAMPLE_ISSUE, backend_factory=provider.factory()).complete
    assert provider.received == collections.Counter(addresses)

# ----- two first sends at once (threads; processes are in test_crash) ------------------------------------------
def test_concurrent_first_sends_freeze_once(store, make_settings, tmp_path, db_url, project):
    import shutil

    settings = make_settings(database_url=db_url)
    _populate(store, tmp_path, 25)
    for round_number in range(4):
        slug = f"2026-12-1{round_number}-course"
        shutil.copytree(project / "issues" / EXAMPLE_ISSUE, project / "issues" / slug)
        barrier = threading.Barrier(4)
        outcomes: list = []

        def race():
            barrier.wait()
            try:
                outcomes.append(prepare_send(settings, store, slug).frozen)
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcomes.append(exc)

        threads = [threading.Thread(target=race) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(outcomes, key=str) == [0, 0, 0, 25], outcomes  # one froze, the others joined
        assert sum(_counts(store, slug).values()) == 25


# ----- claimants ------------------------------------------------------------------------------------------------
def _claim_as(store, issue_id: int, claimant_id: str, claimed_at=None) -> None:
    with store.begin() as conn:
        store.claim_deliveries(conn, issue_id, claimant_id, 3)
        if claimed_at is not None:
            conn.execute(deliveries.update().where(deliveries.c.claimed_by == claimant_id).values(claimed_at=claimed_at))


def test_a_claim_whose_pid_now_belongs_to_another_process_is_dead(store, make_settings, tmp_path, db_url):
    """The pid was reused (a restart, a container's PID 1): same pid, another start time → dead at once."""
    import subprocess

    from mailer.sending import claimant
    settings = make_settings(database_url=db_url)
    _populate(store, tmp_path, 6)
    prepared = prepare_send(settings, store, EXAMPLE_ISSUE)
    me = claimant.me()
    live = subprocess.Popen(["sleep", "60"])
    try:
        start = claimant.process_start(live.pid)
        reused = f"{me.host}:{live.pid}:{int(start) - 1}:{me.boot}:{me.pidns}:aaaaaa"
        alive = f"{me.host}:{live.pid}:{start}:{me.boot}:{me.pidns}:bbbbbb"
        _claim_as(store, prepared.issue_id, reused)
        _claim_as(store, prepared.issue_id, alive)
        with store.begin() as conn:
            assert requeue_dead_claims(store, conn, prepared.issue_id) == 3
            assert [w for w, _ in store.claimants(conn, prepared.issue_id)] == [alive]
    finally:
        live.kill()
        live.wait()
    with store.begin() as conn:  # now that process is gone too
        assert requeue_dead_claims(store, conn, prepared.issue_id) == 3


def test_claims_from_another_host_obey_the_lease_and_the_heartbeat_keeps_it(store, make_settings, tmp_path, db_url,
                                                                            monkeypatch):
    from datetime import timedelta

    from mailer.sending import claimant
    from mailer.store import utcnow
    settings = make_settings(database_url=db_url)
    _populate(store, tmp_path, 6)
    prepared = prepare_send(settings, store, EXAMPLE_ISSUE)
    fresh = "elsewhere:4242:123456:0badb007:4026531836:cccccc"
    stale = "elsewhere:4243:123457:0badb007:4026531836:dddddd"
    _claim_as(store, prepared.issue_id, fresh, utcnow() - claimant.LEASE / 2)
    _claim_as(store, prepared.issue_id, stale, utcnow() - claimant.LEASE - timedelta(seconds=1))
    with store.begin() as conn:
        assert requeue_dead_claims(store, conn, prepared.issue_id) == 3
        assert [w for w, _ in store.claimants(conn, prepared.issue_id)] == [fresh]

    # a live worker waiting (rate limit) renews its claims every HEARTBEAT
    monkeypatch.setattr(claimant, "HEARTBEAT", timedelta(seconds=0.2))
    sender = dispatch.Sender(settings, store, prepared.edition, prepared.issue_id, ScriptedProvider().factory())
    worker = dispatch.worker_id()
    with store.engine.connect() as conn:
        with conn.begin():
            store.claim_deliveries(conn, prepared.issue_id, worker, 3)
            conn.execute(deliveries.update().where(deliveries.c.claimed_by == worker)
                         .values(claimed_at=utcnow() - claimant.LEASE * 2))
        sender._local.conn, sender._local.worker, sender._local.renewed = conn, worker, 0.0
        sender._sleep(0.5)
        ages = conn.execute(sa.select(deliveries.c.claimed_at).where(deliveries.c.claimed_by == worker)).scalars().all()
    from mailer.store import as_utc
    assert all(utcnow() - as_utc(at) < timedelta(seconds=5) for at in ages)
    claimant.release(worker)
