"""One suppression rule for every path (README: "a complaint outranks a bounce, which outranks an
unsubscribe"; an event about an earlier subscription changes nothing: they came back since).

Generated (status, confirmed_at, event time, wanted status) combinations go through the three paths
that suppress people — a provider webhook's events (`subscribers.feedback`), a bounce mailbox (real
DSN and ARF reports in a Maildir, matched by VERP to a real SMTP send), a CSV import (the mailer
export format, whose `unsubscribed_at` is the event's time) — and each outcome is checked against a
small model of the rule: rank first, then "came back since" in whole seconds (the same second counts;
an import gives no time: its dates are another system's history, so only the rank applies).
"""

from __future__ import annotations

import csv
import mailbox
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer.providers.events import ProviderEvent
from mailer.statuses import SUBSCRIBER_STATUSES, SUPPRESSION_RANK
from mailer.store.schema import deliveries, subscribers
from mailer.subscribers import add_subscriber
from mailer.subscribers.feedback import process_bounce_source, record_provider_events
from mailer.subscribers.importer import import_csv
from mailer.subscribers.service import CAME_BACK, OUTRANKED, suppression_verdict

from . import bounce_samples as samples
from .test_bounces import SEED, send_over_smtp
from .smtp_server import start_server

CONFIRMED = datetime(2024, 3, 1, 12, 0, 0, 600000, tzinfo=timezone.utc)
# around the confirmation: the second before, the same second (before and after it), later seconds
OFFSETS = (-3600.0, -1.0, -0.6, -0.2, 0.0, 0.3, 0.4, 1.0, 86400.0)


def model(status: str, confirmed_at: datetime | None, event_at: datetime | None, wanted: str) -> bool:
    """Brute force: does the event change the status?"""
    if SUPPRESSION_RANK[wanted] <= SUPPRESSION_RANK[status]:
        return False
    if confirmed_at is None or event_at is None:
        return True
    return int(event_at.timestamp()) >= int(confirmed_at.timestamp())


def cases(rng: random.Random, count: int, wanted: tuple[str, ...]) -> list[tuple[str, datetime | None, datetime | None, str]]:
    found = []
    for _ in range(count):
        confirmed = rng.choice([CONFIRMED, CONFIRMED, CONFIRMED, None])
        event = rng.choice([*[CONFIRMED + timedelta(seconds=o) for o in OFFSETS], None])
        found.append((rng.choice(SUBSCRIBER_STATUSES), confirmed, event, rng.choice(wanted)))
    return found


@pytest.fixture
def rng() -> random.Random:
    print(f"seed {SEED} (MAILER_TEST_SEED to replay)")
    return random.Random(SEED)


def set_people(store, rows: dict[str, tuple[str, datetime | None]]) -> None:  # noqa: ANN001
    with store.begin() as conn:
        for email, (status, confirmed) in rows.items():
            conn.execute(subscribers.update().where(subscribers.c.email == email).values(
                status=status, confirmed_at=confirmed))


def statuses(store) -> dict[str, str]:  # noqa: ANN001
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(subscribers.c.email, subscribers.c.status)).all())


def test_the_rule_against_the_model(rng):
    for status, confirmed, event, wanted in cases(rng, 2000, ("unsubscribed", "bounced", "complained")):
        verdict = suppression_verdict(status, confirmed, event, wanted)
        assert (verdict is None) == model(status, confirmed, event, wanted), (status, confirmed, event, wanted)
        assert verdict != OUTRANKED or SUPPRESSION_RANK[wanted] <= SUPPRESSION_RANK[status]
        assert verdict != CAME_BACK or event < confirmed.replace(microsecond=0)
    # naive times are UTC (SQLite hands them back so)
    assert suppression_verdict("active", CONFIRMED.replace(tzinfo=None), CONFIRMED - timedelta(seconds=1),
                               "bounced") == CAME_BACK
    with pytest.raises(ValueError):
        suppression_verdict("active", None, None, "active")


def test_webhooks_mailboxes_and_imports_agree_with_the_model(make_settings, store, tmp_path, rng):
    wanted_by_path = {"webhook": ("unsubscribed", "bounced", "complained"), "mailbox": ("bounced", "complained"),
                      "import": ("unsubscribed", "bounced", "complained")}
    per_path = {path: cases(rng, 14, wanted) for path, wanted in wanted_by_path.items()}
    addresses = {path: [f"{path}.{i}@example.net" for i in range(len(found))] for path, found in per_path.items()}

    # the mailbox path needs real deliveries: one send to its people while active
    server = start_server()
    try:
        settings, received = send_over_smtp(make_settings, store, server, addresses["mailbox"])
    finally:
        server.stop()
    for path in ("webhook", "import"):
        for address in addresses[path]:
            add_subscriber(store, address)
    expected: dict[str, str] = {}
    for path, found in per_path.items():
        set_people(store, {a: (s, c) for a, (s, c, _, _) in zip(addresses[path], found)})
        for address, (status, confirmed, event, wanted) in zip(addresses[path], found):
            # an import's date is another system's: only the rank applies (test_import's Mailchimp case)
            known = None if path == "import" else event
            expected[address] = wanted if model(status, confirmed, known, wanted) else status

    # webhooks: normalised events, as the web route hands them over
    events = [ProviderEvent(provider="sendgrid", event_id=f"e{i}", kind=wanted, suppress=wanted, name=wanted,
                            email_key=address, subscriber_id=None, issue_id=None, occurred=event,
                            reason="test", payload={})
              for i, (address, (_, _, event, wanted)) in enumerate(zip(addresses["webhook"], per_path["webhook"]))]
    record_provider_events(store, events)

    # bounce mailbox: the event's time is the send's; a hard bounce or a complaint about it
    box = mailbox.Maildir(tmp_path / "md", create=True)
    with store.begin() as conn:
        for address, (_, _, event, wanted) in zip(addresses["mailbox"], per_path["mailbox"]):
            person = conn.execute(sa.select(subscribers.c.id).where(subscribers.c.email == address)).scalar_one()
            conn.execute(deliveries.update().where(deliveries.c.subscriber_id == person).values(sent_at=event))
            sent = received[address]
            box.add(samples.arf(sent.data, address, sent.mail_from, rng, "yahoo") if wanted == "complained"
                    else samples.postfix(sent.data, address, sent.mail_from, "5.1.1", rng))
    summary = process_bounce_source(store, settings, str(tmp_path / "md"))
    assert summary.unmatched == 0 and summary.unparseable == 0

    # import: the mailer export format, `unsubscribed_at` the time of the suppression
    path = tmp_path / "people.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "status", "source", "confirmed_at", "unsubscribed_at"])
        for address, (_, _, event, wanted) in zip(addresses["import"], per_path["import"]):
            writer.writerow([address, wanted, "import", "", event.isoformat() if event else ""])
    import_csv(store, Path(path))

    assert statuses(store) == expected
