"""The ledger's claim and record, checked against a naive model on both engines.

PostgreSQL claims in one statement (ids locked SKIP LOCKED into an array, then UPDATE … RETURNING
joined to the subscribers) and records through arrays (`= ANY`, `unnest`); SQLite keeps its ranges
and executemany. Whatever the form, the result must be the old semantics exactly:
* concurrent claimers (threads, processes) never get the same row, and together get every row once;
* a row locked by an open claim is skipped, not waited for (SKIP LOCKED);
* outcomes (accepted with a shared or an own provider id, deferred, refused, skipped) land exactly as
  a one-row-at-a-time model says, and only on rows the recording worker still holds.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from mailer.store import IntegrityError, open_store
from mailer.store.schema import deliveries, issues, subscribers

ANSWERED = {"sent", "failed"}


def _ledger_with(store, count: int, *, suppressed: int = 0) -> int:
    """`count` active subscribers (every third with a first_name attribute; `suppressed` of them
    unsubscribed after the freeze) and an issue frozen for them: its id."""
    with store.begin() as conn:
        ids = [store.insert_subscriber(conn, email=f"p{i:05d}@example.net", email_given=f"P{i:05d}@Example.net",
                                       status="active", name=f"Élodie {i}" if i % 2 else "",
                                       attributes={"first_name": f"Zoé{i}"} if i % 3 == 0 else {})
               for i in range(count)]
        issue = store.ensure_issue(conn, slug="ledger-test", subject="Test", list_name=None, web_html=None,
                                   issue_date=None)
        store.update_issue(conn, issue.id, status="sending")
        assert store.freeze_recipients(conn, issue.id, None) == count
        for subscriber_id in ids[:suppressed]:
            store.set_status(conn, subscriber_id, "unsubscribed", source="test")
    return issue.id


def _rows(store) -> dict[int, dict]:
    with store.engine.connect() as conn:
        return {row.id: dict(row._mapping) for row in conn.execute(
            sa.select(deliveries.c.id, deliveries.c.status, deliveries.c.attempts, deliveries.c.provider_message_id,
                      deliveries.c.last_error, deliveries.c.claimed_by, deliveries.c.sent_at))}


def test_claim_reads_back_exactly_the_claimed_rows_with_their_subscribers(store):
    issue_id = _ledger_with(store, 30, suppressed=4)
    with store.begin() as conn:
        first = store.claim_deliveries(conn, issue_id, "w1", 12)
    with store.begin() as conn:
        second = store.claim_deliveries(conn, issue_id, "w2", 100)
    assert [r.delivery_id for r in first] == sorted(r.delivery_id for r in first)  # in id order
    assert len(first) == 12 and len(second) == 18
    assert not {r.delivery_id for r in first} & {r.delivery_id for r in second}
    for row in first + second:
        number = int(row.email_given[1:6])
        assert row.email_given == f"P{number:05d}@Example.net"
        assert row.name == (f"Élodie {number}" if number % 2 else "")
        assert row.first_name == (f"Zoé{number}" if number % 3 == 0 else None)
        assert row.subscriber_status == ("unsubscribed" if number < 4 else "active")
        assert row.attempts == 0
    ledger = _rows(store)
    assert {ledger[r.delivery_id]["claimed_by"] for r in first} == {"w1"}
    assert {ledger[r.delivery_id]["status"] for r in first + second} == {"sending"}
    with store.begin() as conn:
        assert store.claim_deliveries(conn, issue_id, "w3", 5) == []


def test_a_claim_read_after_its_commit_gives_the_same_rows(store):
    """The send loop claims inside a write transaction and reads the claimed rows after the commit
    (`claim_batch`: on SQLite that read takes no write lock). The rows read then carry the same eight
    fields, in the same order, as those `claim_deliveries` gives inside the transaction, and together
    the two claims take each person once, in id order."""
    issue_id = _ledger_with(store, 30, suppressed=4)
    with store.begin() as conn:
        inside = store.claim_deliveries(conn, issue_id, "w1", 10)
    with store.connect() as conn:
        with conn.begin():
            claim = store.claim_batch(conn, issue_id, "w2", 10)
        after = list(claim.rows(conn))
        assert not conn.in_transaction()
    ledger = _rows(store)
    assert len(inside) == len(after) == 10
    assert {ledger[row[0]]["claimed_by"] for row in after} == {"w2"}
    numbers = sorted(int(row[3][1:6]) for row in inside + after)
    assert numbers == list(range(20))  # id order over both claims: the first 20 people, each once
    for row in inside:
        assert tuple(row) == (row.delivery_id, row.attempts, row.subscriber_id, row.email_given, row.name,
                              row.subscriber_status, row.language, row.first_name)
    for row in after:  # the same eight fields, by position
        number = int(row[3][1:6])
        assert row[3] == f"P{number:05d}@Example.net"
        assert row[4] == (f"Élodie {number}" if number % 2 else "")
        assert row[7] == (f"Zoé{number}" if number % 3 == 0 else None)
        assert row[5] == ("unsubscribed" if number < 4 else "active")
        assert row[1] == 0


def _model_finish(model: dict, worker: str, outcomes: list[dict]) -> None:
    for outcome in outcomes:
        row = model[outcome["id"]]
        if row["claimed_by"] != worker or row["status"] != "sending":
            continue
        row.update(status=outcome["status"], provider_message_id=outcome.get("provider_message_id"),
                   last_error=outcome.get("last_error"), sent=outcome["status"] == "sent",
                   attempts=row["attempts"] + (outcome["status"] in ANSWERED))


def _model_requeue(model: dict, worker: str, rows: list[tuple[int, str | None]], count_attempt: bool) -> None:
    for delivery_id, error in rows:
        row = model[delivery_id]
        if row["claimed_by"] != worker or row["status"] != "sending":
            continue
        row.update(status="queued", claimed_by=None, last_error=(error or "")[:2000],
                   attempts=row["attempts"] + count_attempt)


@pytest.mark.parametrize("seed", range(4))
def test_recorded_outcomes_match_a_row_by_row_model(store, seed):
    """Generated mixes of accepted (one provider id for a whole request, or one each), deferred,
    refused (final or back to the queue) and skipped results, recorded for rows held by the worker,
    by another worker, or already finished: the ledger ends as the naive model says."""
    rng = random.Random(seed)
    issue_id = _ledger_with(store, 120)
    model = {delivery_id: {"status": row["status"], "attempts": row["attempts"], "claimed_by": None,
                           "provider_message_id": None, "last_error": None, "sent": False}
             for delivery_id, row in _rows(store).items()}
    for round_number in range(6):
        claims = {}
        for worker in ("w1", "w2"):
            with store.begin() as conn:
                claims[worker] = store.claim_deliveries(conn, issue_id, worker, rng.randint(5, 40))
            for row in claims[worker]:
                model[row.delivery_id].update(status="sending", claimed_by=worker)
        for worker, claimed in claims.items():
            ids = [r.delivery_id for r in claimed]
            # some ids the worker does not hold (the other's, finished ones, unknown): must not change
            ids += rng.sample(sorted(model), 5)
            rng.shuffle(ids)
            shared = f"request-{round_number}-{worker}"
            outcomes, deferred, refused = [], [], []
            for delivery_id in ids:
                kind = rng.choice(("shared", "shared", "own", "deferred", "refused", "failed", "skipped"))
                if kind == "shared":
                    outcomes.append({"id": delivery_id, "status": "sent", "provider_message_id": shared})
                elif kind == "own":
                    outcomes.append({"id": delivery_id, "status": "sent", "provider_message_id": f"q{delivery_id}"})
                elif kind == "failed":
                    outcomes.append({"id": delivery_id, "status": "failed", "last_error": rng.choice(
                        ("550 no such user", "550 no such user", f"552 mailbox {delivery_id} full"))})
                elif kind == "skipped":
                    outcomes.append({"id": delivery_id, "status": "skipped", "last_error": "subscriber is unsubscribed"})
                elif kind == "deferred":
                    deferred.append((delivery_id, rng.choice(("429 slow down", None, "x" * 2500))))
                else:
                    refused.append((delivery_id, f"450 try later {delivery_id}"))
            # an id appears in one list only (as dispatch does)
            seen: set[int] = set()
            outcomes = [o for o in outcomes if not (o["id"] in seen or seen.add(o["id"]))]
            deferred = [d for d in deferred if not (d[0] in seen or seen.add(d[0]))]
            refused = [r for r in refused if not (r[0] in seen or seen.add(r[0]))]
            with store.begin() as conn:
                store.finish_deliveries(conn, worker, outcomes)
                store.requeue_ids(conn, worker, deferred, count_attempt=False)
                store.requeue_ids(conn, worker, refused, count_attempt=True)
            _model_finish(model, worker, outcomes)
            _model_requeue(model, worker, deferred, False)
            _model_requeue(model, worker, refused, True)
        got = _rows(store)
        for delivery_id, expected in model.items():
            row = got[delivery_id]
            assert (row["status"], row["attempts"], row["claimed_by"], row["provider_message_id"], row["last_error"],
                    row["sent_at"] is not None) == (
                expected["status"], expected["attempts"], expected["claimed_by"], expected["provider_message_id"],
                expected["last_error"], expected["sent"]), (seed, round_number, delivery_id)


def test_suppressed_among_sees_only_the_workers_claims(store):
    issue_id = _ledger_with(store, 10)
    with store.begin() as conn:
        mine = store.claim_deliveries(conn, issue_id, "w1", 5)
        theirs = store.claim_deliveries(conn, issue_id, "w2", 5)
    with store.begin() as conn:
        for row in (mine[1], mine[3], theirs[0]):
            store.set_status(conn, row.subscriber_id, "bounced" if row is mine[3] else "unsubscribed", source="test")
    with store.begin() as conn:
        found = store.suppressed_among(conn, "w1", [r.delivery_id for r in mine + theirs])
    assert found == {mine[1].delivery_id: "unsubscribed", mine[3].delivery_id: "bounced"}


def test_concurrent_claimers_in_threads_never_share_a_row(store):
    issue_id = _ledger_with(store, 600)
    taken: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            mine = taken.setdefault(name, [])
            with store.engine.connect() as conn:
                while True:
                    with conn.begin():
                        rows = store.claim_deliveries(conn, issue_id, name, 37)
                    if not rows:
                        return
                    mine.extend(r.delivery_id for r in rows)
                    with conn.begin():
                        store.finish_deliveries(conn, name, [{"id": r.delivery_id, "status": "sent",
                                                              "provider_message_id": name} for r in rows])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    every = [i for ids in taken.values() for i in ids]
    assert len(every) == len(set(every)) == 600
    ledger = _rows(store)
    for name, ids in taken.items():  # recorded by the worker that claimed them, once
        assert {(ledger[i]["status"], ledger[i]["provider_message_id"], ledger[i]["attempts"]) for i in ids} <= {
            ("sent", name, 1)}


def _claim_in_process(url: str, issue_id: int, name: str, results) -> None:
    store = open_store(url)
    try:
        mine = []
        while True:
            with store.begin() as conn:
                rows = store.claim_deliveries(conn, issue_id, name, 23)
            if not rows:
                break
            mine.extend(r.delivery_id for r in rows)
            with store.begin() as conn:
                store.finish_deliveries(conn, name, [{"id": r.delivery_id, "status": "sent"} for r in rows])
        results.put((name, mine))
    finally:
        store.close()


@pytest.mark.slow
def test_concurrent_claimers_in_processes_never_share_a_row(store, db_url):
    issue_id = _ledger_with(store, 500)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_claim_in_process, args=(db_url, issue_id, f"p{i}", results))
                 for i in range(3)]
    for process in processes:
        process.start()
    taken = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    every = [i for ids in taken.values() for i in ids]
    assert len(every) == len(set(every)) == 500
    assert {row["status"] for row in _rows(store).values()} == {"sent"}


def test_an_open_claim_is_skipped_not_waited_for(store):
    """SKIP LOCKED: while one claimer's transaction is still open, another gets other rows at once."""
    if store.is_sqlite:
        pytest.skip("SQLite has one writer: a second claimer waits for the first's commit by design")
    issue_id = _ledger_with(store, 20)
    with store.engine.connect() as holder:
        holder.begin()
        held = store.claim_deliveries(holder, issue_id, "slow", 8)
        with store.engine.connect() as other:
            started = time.monotonic()
            with other.begin():
                other.exec_driver_sql("SET LOCAL lock_timeout = '2s'")  # waiting would fail the test, not hang it
                got = store.claim_deliveries(other, issue_id, "fast", 8)
            assert time.monotonic() - started < 1.5
            with other.begin():  # the rest, still skipping the held rows
                rest = store.claim_deliveries(other, issue_id, "fast", 100)
        assert len(held) == len(got) == 8 and len(rest) == 4
        assert not {r.delivery_id for r in held} & {r.delivery_id for r in got + rest}
        holder.rollback()  # the slow claimer crashed: its rows are queued again
    with store.begin() as conn:
        again = store.claim_deliveries(conn, issue_id, "third", 100)
    assert sorted(r.delivery_id for r in again) == sorted(r.delivery_id for r in held)


def test_a_stale_claim_taken_over_is_never_recorded_twice(store):
    """A worker presumed dead whose rows were re-queued and claimed by another records nothing."""
    issue_id = _ledger_with(store, 6)
    with store.begin() as conn:
        old = store.claim_deliveries(conn, issue_id, "old", 6)
        store.requeue(conn, issue_id, statuses=("sending",), claimed_by=["old"])
        new = store.claim_deliveries(conn, issue_id, "new", 6)
    with store.begin() as conn:
        store.finish_deliveries(conn, "old", [{"id": r.delivery_id, "status": "sent", "provider_message_id": "old"}
                                              for r in old])
        store.finish_deliveries(conn, "old", [{"id": old[0].delivery_id, "status": "failed", "last_error": "x"},
                                              {"id": old[1].delivery_id, "status": "sent", "provider_message_id": "q"}])
        store.requeue_ids(conn, "old", [(r.delivery_id, "late") for r in old])
    ledger = _rows(store)
    assert {(ledger[r.delivery_id]["status"], ledger[r.delivery_id]["claimed_by"], ledger[r.delivery_id]["attempts"])
            for r in new} == {("sending", "new", 0)}


def test_outcomes_of_their_own_store_the_same_timestamps_as_shared_ones(store):
    """SMTP's outcomes (a queue id each) go through a statement executed many on the driver (SQLite) or
    arrays (PostgreSQL); SendGrid's (one id shared) through SQLAlchemy: what they store reads back the same,
    a timezone-aware UTC instant of the call, in `sent_at` and `updated_at` alike."""
    issue_id = _ledger_with(store, 5)
    with store.begin() as conn:
        rows = store.claim_deliveries(conn, issue_id, "w", 5)
    before = datetime.now(timezone.utc)
    with store.begin() as conn:
        store.finish_deliveries(conn, "w", [
            {"id": rows[0].delivery_id, "status": "sent", "provider_message_id": "q1"},
            {"id": rows[1].delivery_id, "status": "sent", "provider_message_id": "shared"},
            {"id": rows[2].delivery_id, "status": "sent", "provider_message_id": "shared"},
            {"id": rows[3].delivery_id, "status": "failed", "last_error": "550 no such user"}])
    after = datetime.now(timezone.utc)
    with store.engine.connect() as conn:
        stamps = {row.id: (row.sent_at, row.updated_at) for row in conn.execute(
            sa.select(deliveries.c.id, deliveries.c.sent_at, deliveries.c.updated_at))}
    from mailer.store import as_utc
    own, shared, _, failed, untouched = (stamps[r.delivery_id] for r in rows)
    assert own == shared and as_utc(own[0]) == as_utc(own[1])  # one instant per call, stored alike
    assert before <= as_utc(own[0]) <= after
    assert failed[0] is None and as_utc(failed[1]) == as_utc(own[1])
    assert untouched[0] is None


# ----- the ledger's references: the same guarantees whatever keeps them ------------------------------
# SQLite keeps them with foreign keys; PostgreSQL with set-based triggers (revision 0008: a freeze checks
# its rows as one set instead of two foreign-key probes per row). A random mix of freezes, deletions and
# bad writes on both engines, against a model of what foreign keys with ON DELETE CASCADE allow.

def _pairs(store) -> set[tuple[int, int]]:
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(deliveries.c.issue_id, deliveries.c.subscriber_id)).all())


def _orphans(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(deliveries).where(
            ~sa.exists().where(subscribers.c.id == deliveries.c.subscriber_id)
            | ~sa.exists().where(issues.c.id == deliveries.c.issue_id))).scalar_one()


@pytest.mark.parametrize("seed", range(3))
def test_references_refuse_unknown_parents_and_cascade_deletions(store, seed):
    rng = random.Random(seed)
    people: set[int] = set()
    sent: set[int] = set()  # issues
    model: set[tuple[int, int]] = set()
    counter = iter(range(10_000))

    def add_person() -> None:
        with store.begin() as conn:
            people.add(store.insert_subscriber(conn, email=f"r{next(counter)}@example.net",
                                               email_given="R@example.net", status="active"))

    def refused(statement) -> None:
        with pytest.raises(IntegrityError):
            with store.begin() as conn:
                conn.execute(statement)

    for _ in range(6):
        add_person()
    for step in range(40):
        action = rng.choice(("person", "freeze", "freeze", "delete_person", "delete_issue", "bad_insert",
                             "bad_update", "bad_parent_id"))
        unknown = max(people | sent | {0}) + 1000
        if action == "person":
            add_person()
        elif action == "freeze":
            slug = f"issue-{rng.randint(1, 4)}"
            with store.begin() as conn:
                issue = store.ensure_issue(conn, slug=slug, subject=slug, list_name=None, web_html=None,
                                           issue_date=None)
                store.freeze_recipients(conn, issue.id, None)
            sent.add(issue.id)
            model |= {(issue.id, person) for person in people}
        elif action == "delete_person" and people:
            gone = rng.choice(sorted(people))
            with store.begin() as conn:
                conn.execute(subscribers.delete().where(subscribers.c.id == gone))
            people.discard(gone)
            model = {pair for pair in model if pair[1] != gone}
        elif action == "delete_issue" and sent:
            gone = rng.choice(sorted(sent))
            with store.begin() as conn:
                conn.execute(issues.delete().where(issues.c.id == gone))
            sent.discard(gone)
            model = {pair for pair in model if pair[0] != gone}
        elif action == "bad_insert" and people and sent:
            now = datetime.now(timezone.utc)
            bad = rng.choice(({"issue_id": rng.choice(sorted(sent)), "subscriber_id": unknown},
                              {"issue_id": unknown, "subscriber_id": rng.choice(sorted(people))}))
            # beside a valid row when there is one (a person added since that issue's freeze): the
            # statement is refused whole
            valid = [{"issue_id": issue_id, "subscriber_id": person} for issue_id in sorted(sent)
                     for person in sorted(people) if (issue_id, person) not in model][:1]
            refused(deliveries.insert().values([{**row, "status": "queued", "attempts": 0, "created_at": now,
                                                 "updated_at": now} for row in [*valid, bad]]))
        elif action == "bad_update" and model:
            issue_id, person = rng.choice(sorted(model))
            column = rng.choice(("issue_id", "subscriber_id"))
            refused(deliveries.update().where(deliveries.c.issue_id == issue_id,
                                              deliveries.c.subscriber_id == person).values({column: unknown}))
        elif action == "bad_parent_id" and model:
            issue_id, person = rng.choice(sorted(model))
            refused(subscribers.update().where(subscribers.c.id == person).values(id=unknown)
                    if rng.random() < 0.5 else issues.update().where(issues.c.id == issue_id).values(id=unknown))
        assert _pairs(store) == model, (seed, step, action)
        assert _orphans(store) == 0


def test_deleting_a_subscriber_during_a_freeze_leaves_no_orphan(store):
    """Whichever commits first, a freeze and a concurrent DELETE of one of its recipients end with no
    ledger row for the deleted person: the DELETE waits for the freeze, or the freeze for the DELETE."""
    if store.is_sqlite:
        pytest.skip("SQLite has one writer: the two transactions cannot overlap")
    with store.begin() as conn:
        people = [store.insert_subscriber(conn, email=f"c{i}@example.net", email_given="C@example.net",
                                          status="active") for i in range(20)]
    for first in ("freeze", "delete"):
        slug, gone = f"race-{first}", people.pop()
        done = threading.Event()
        outcome: dict = {}

        def freeze() -> None:
            with store.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '20s'")
                issue = store.ensure_issue(conn, slug=slug, subject=slug, list_name=None, web_html=None,
                                           issue_date=None)
                outcome["frozen"] = store.freeze_recipients(conn, issue.id, None)
                outcome["issue"] = issue.id
                if first == "freeze":
                    done.wait(1.0)  # the DELETE has started meanwhile, and must still be waiting
                    outcome["delete waited"] = not deleted.is_set()

        def delete() -> None:
            with store.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '20s'")
                conn.execute(subscribers.delete().where(subscribers.c.id == gone))
                deleted.set()
                if first == "delete":
                    time.sleep(1.0)  # the freeze has started meanwhile
                    outcome["freeze waited"] = "frozen" not in outcome

        deleted = threading.Event()
        order = (freeze, delete) if first == "freeze" else (delete, freeze)
        threads = [threading.Thread(target=step) for step in order]
        threads[0].start()
        time.sleep(0.3)
        threads[1].start()
        for thread in threads:
            thread.join(30)
        assert outcome.get("delete waited" if first == "freeze" else "freeze waited"), outcome
        assert outcome["frozen"] == len(people) + (1 if first == "freeze" else 0)
        assert gone not in {person for issue_id, person in _pairs(store) if issue_id == outcome["issue"]}
        assert _orphans(store) == 0
