"""Bounce and complaint mailboxes, end to end with real parts.

Messages are really sent (aiosmtpd sink on loopback, or the outbox) with MAILER_BOUNCE_ADDRESS set;
the bounces are generated from real-shaped templates (`bounce_samples`) around the bytes that were
really sent, for recipients drawn at random; they are written into a real Maildir or mbox and
processed by the library, twice. The oracle for what each report means is the template's declared
status (RFC 3463 class and the rule table in `EXPECTED`), independent of the reader.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mailbox
import os
import quopri
import random
import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer.sending import dispatch
from mailer.config import secret_key_for
from mailer.errors import ConfigError
from mailer.providers.bounces.process import deliverability
from mailer.subscribers.feedback import process_bounce_source as process_source
from mailer.providers.bounces.reading import classify, read_message
from mailer.providers.bounces.sources import MailboxError, parse_imap_url
from mailer.providers.bounces.verp import Verp
from mailer.store.schema import deliveries, issues, provider_events, subscriber_events, subscribers
from mailer.subscribers import add_subscriber

from . import bounce_samples as samples
from .conftest import BASE_ENV, EXAMPLE_ISSUE
from .smtp_server import start_server

BOUNCE = "bounces@example.org"
VERP_SHAPE = re.compile(r"bounces\+[a-z2-7]{47}@example\.org")
SEED = int(os.environ.get("MAILER_TEST_SEED", random.randrange(1 << 30)))


@pytest.fixture
def rng() -> random.Random:
    print(f"seed {SEED} (MAILER_TEST_SEED to replay)")
    return random.Random(SEED)


@pytest.fixture
def sink():
    server = start_server()
    yield server
    server.stop()


def people(rng: random.Random, count: int) -> list[str]:
    first = ["jeanne", "amadou", "lea", "yusuf", "chloe", "karim", "ines", "paul", "zoe", "ngoc", "marta", "olu"]
    domains = ["example.net", "mail.example.com", "fai.example", "exemple.fr"]
    found: set[str] = set()
    while len(found) < count:
        found.add(f"{rng.choice(first)}.{rng.randint(1, 9999)}@{rng.choice(domains)}")
    return sorted(found)


def send_over_smtp(make_settings, store, server, addresses: list[str], **env):  # noqa: ANN001, ANN003
    settings = make_settings(database_url=str(store.engine.url.render_as_string(hide_password=False)),
                             MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1", MAILER_SMTP_PORT=str(server.port),
                             MAILER_SMTP_TLS="none", MAILER_SMTP_POOL="1", MAILER_BOUNCE_ADDRESS=BOUNCE, **env)
    for address in addresses:
        add_subscriber(store, address)
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert report.counts["sent"] == len(addresses)
    return settings, {received.rcpt_tos[0]: received for received in server.handler.messages}


def statuses(store) -> dict[str, str]:  # noqa: ANN001
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(subscribers.c.email, subscribers.c.status)).all())


def ids(store) -> tuple[dict[str, int], int]:  # noqa: ANN001
    with store.engine.connect() as conn:
        people = dict(conn.execute(sa.select(subscribers.c.email, subscribers.c.id)).all())
        issue_id = conn.execute(sa.select(issues.c.id).where(issues.c.slug == EXAMPLE_ISSUE)).scalar_one()
    return people, issue_id


# ----- the envelope sender --------------------------------------------------------------------------
def test_smtp_envelope_sender_names_the_delivery_and_forgeries_name_no_one(sink, make_settings, sqlite_store, rng):
    addresses = people(rng, 7)
    settings, received = send_over_smtp(make_settings, sqlite_store, sink, addresses)
    verp = Verp.from_settings(settings)
    person, issue_id = ids(sqlite_store)
    senders = set()
    for address, message in received.items():
        assert VERP_SHAPE.fullmatch(message.mail_from), message.mail_from
        named = verp.read(message.mail_from)
        assert (named.subscriber_id, named.issue_id) == (person[address], issue_id)
        assert verp.read(message.mail_from.upper()) == named  # a relay that changes the case changes nothing
        senders.add(message.mail_from)
        # altering any one character of the token, or signing with another key, names no one
        token = message.mail_from.split("+", 1)[1].split("@")[0]
        at = rng.randrange(len(token))
        altered = token[:at] + rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz234567" if c != token[at]]) + token[at + 1:]
        assert verp.read(f"bounces+{altered}@example.org") is None
        assert Verp("bounces", "example.org", b"another key" * 3).read(message.mail_from) is None
        assert verp.read(message.mail_from.replace("example.org", "example.com")) is None
    assert len(senders) == len(addresses)  # one address per delivery

    # a test send has no delivery: the plain bounce address
    sink.handler.messages.clear()
    dispatch.send_test(settings, EXAMPLE_ISSUE, ["editor@example.net"])
    assert [m.mail_from for m in sink.handler.messages] == [BOUNCE]


def test_outbox_files_carry_the_return_path(make_settings, sqlite_store, rng):
    settings = make_settings(database_url=str(sqlite_store.engine.url), MAILER_BOUNCE_ADDRESS=BOUNCE)
    addresses = people(rng, 3)
    for address in addresses:
        add_subscriber(sqlite_store, address)
    dispatch.send_issue(settings, sqlite_store, EXAMPLE_ISSUE)
    person, issue_id = ids(sqlite_store)
    verp = Verp.from_settings(settings)
    files = sorted((settings.outbox_dir / EXAMPLE_ISSUE).glob("*.eml"))
    assert len(files) == 3
    for path in files:
        first = path.read_bytes().split(b"\r\n", 1)[0].decode()
        assert first.startswith("Return-Path: <bounces+") and first.endswith("@example.org>")
        named = verp.read(first[len("Return-Path: "):])
        address = next(a for a in addresses if a in path.name)
        assert (named.subscriber_id, named.issue_id) == (person[address], issue_id)


@pytest.mark.parametrize("value", ["bounces+x@example.org", "not an address", "a-very-long-local-part@example.org"])
def test_a_bad_bounce_address_is_a_one_line_error(make_settings, value):
    with pytest.raises(ConfigError, match="MAILER_BOUNCE_ADDRESS"):
        make_settings(MAILER_BOUNCE_ADDRESS=value)


# ----- what a report means ---------------------------------------------------------------------------
# template style → statuses it is generated with; the oracle: RFC 3463 class, with the codes that are
# not about the address (X.2.2 mailbox full, X.7.X policy) soft
EXPECTED = {"5.1.1": "hard", "5.1.10": "hard", "5.2.2": "soft", "4.2.2": "soft", "5.7.1": "soft"}
STYLES = {"postfix": samples.postfix, "gmail": samples.gmail, "exchange": samples.exchange, "exim": samples.exim}


def test_reading_generated_reports_against_the_rule_table(rng):
    original = (b"Date: Thu, 26 Nov 2026 07:00:00 +0000\r\nFrom: Le Fil <lettre@example.org>\r\n"
                b"Subject: Le Fil du jeudi\r\nMessage-ID: <m@example.org>\r\n\r\nBonjour\r\n")
    checked = 0
    for _ in range(60):  # half of them internationalised (RFC 6531): every style must name them too
        recipient = people(rng, 1)[0] if rng.random() < 0.5 else rng.choice(INTERNATIONAL).format(n=rng.randint(1, 999))
        style = rng.choice(sorted(STYLES))
        status = rng.choice(sorted(EXPECTED))
        raw = STYLES[style](original.replace(b"\r\n\r\n", f"\r\nTo: {recipient}\r\n\r\n".encode(), 1), recipient,
                            "bounces+" + "a" * 47 + "@example.org", status, rng)
        reading = read_message(raw)
        assert reading.kind == "bounce", (style, status)
        assert [(f.recipient, f.severity, f.status) for f in reading.failures] == [(recipient, EXPECTED[status], status)]
        assert reading.original_message_id == "<m@example.org>"
        checked += 1
    assert checked == 60
    # a delay warning is no bounce; Action decides only together with the status
    delay = read_message(samples.postfix(original, "x@example.net", BOUNCE, "4.2.2", rng, action="delayed"))
    assert delay.kind == "other" and delay.failures[0].severity == "delayed"
    assert classify("delivered", "2.0.0") is None and classify("failed", "") == "hard"
    for style in ("yahoo", "aol"):
        report = read_message(samples.arf(original, "x@example.net", BOUNCE, rng, style))
        assert report.kind == "complaint" and report.feedback_type == "abuse"
        assert read_message(samples.arf(original, "x@example.net", BOUNCE, rng, style, "not-spam")).kind == "other"
    assert read_message(samples.auto_reply("x@example.net", BOUNCE, rng)).kind == "other"
    assert read_message(samples.broken_dsn("x@example.net", BOUNCE, rng)).kind == "unparseable"
    assert read_message(samples.garbage(rng)).kind == "unparseable"


def _soft_breaks(line: str, width: int = 20) -> str:
    pieces, current = [], ""
    for token in re.findall(r"=[0-9A-F]{2}|.", line):  # never inside an =XX escape
        if len(current) + len(token) > width:
            pieces.append(current + "=")
            current = ""
        current += token
    return "\n".join([*pieces, current])


def _reencode(raw: bytes, encoding: str, global_types: bool) -> bytes:
    """The same report with its message/delivery-status part (and text/rfc822-headers part) sent in
    `encoding` (Microsoft's servers: base64 or quoted-printable), optionally under RFC 6533's types
    (message/global-delivery-status, message/global-headers)."""
    text = raw.decode("utf-8")
    out = []
    for piece in re.split(r"(?m)(?=^--)", text):
        head, sep, body = piece.partition("\n\n")
        kind = re.search(r"(?im)^Content-Type:\s*(message/delivery-status|text/rfc822-headers)", head)
        if not sep or not kind:
            out.append(piece)
            continue
        data = body.rstrip("\n").encode("utf-8") + b"\n"
        if encoding == "base64":
            encoded = base64.encodebytes(data).decode("ascii")
        elif encoding == "quoted-printable":  # lines soft-broken ("=" at the end) every ~20 characters
            encoded = "".join(_soft_breaks(line) + "\n"
                              for line in quopri.encodestring(data, quotetabs=True).decode("ascii").splitlines())
        else:
            encoded = data.decode("utf-8")
        if global_types:
            head = head.replace(kind.group(1), {"message/delivery-status": "message/global-delivery-status",
                                                "text/rfc822-headers": "message/global-headers"}[kind.group(1)])
        out.append(f"{head}\nContent-Transfer-Encoding: {encoding}{sep}{encoded}\n")
    return "".join(out).encode("utf-8")


def test_reports_in_every_transfer_encoding_and_rfc6533_types_read_as_the_plain_one(rng):
    """The reading of a report must not depend on how its parts are encoded: the plain report is the oracle."""
    checked = 0
    for _ in range(12):
        recipient = people(rng, 1)[0]
        style = rng.choice(["postfix", "gmail", "exchange"])  # the DSN styles
        status = rng.choice(sorted(EXPECTED))
        original = (f"Date: Thu, 26 Nov 2026 07:00:00 +0000\nFrom: Le Fil <lettre@example.org>\nTo: {recipient}\n"
                    f"Subject: Le Fil\nMessage-ID: <{rng.getrandbits(64):x}@example.org>\n\nBonjour\n").encode()
        raw = STYLES[style](original, recipient, "bounces+" + "a" * 47 + "@example.org", status, rng)
        plain = read_message(raw)
        assert plain.kind == "bounce" and plain.detector == "dsn" and plain.original_message_id
        for encoding in ("base64", "quoted-printable", "8bit"):
            for global_types in (False, True):
                variant = _reencode(raw, encoding, global_types)
                assert variant != raw
                reading = read_message(variant)
                assert (reading.kind, reading.detector, reading.failures, reading.original_message_id) == (
                    plain.kind, plain.detector, plain.failures, plain.original_message_id), (style, encoding, global_types)
                checked += 1
    assert checked == 72


def test_an_internationalised_report_names_the_utf8_recipient(rng):
    recipient = "jeanne.dupré@exemple.fr"
    original = (f"From: lettre@example.org\nTo: {recipient}\nSubject: Le Fil\nMessage-ID: <g1@example.org>\n\nx\n").encode()
    raw = samples.postfix(original, recipient, BOUNCE, "5.1.1", rng).replace(b"rfc822;", b"utf-8;")
    for encoding in ("8bit", "base64", "quoted-printable"):
        reading = read_message(_reencode(raw, encoding, True))
        assert [(f.recipient, f.status) for f in reading.failures] == [(recipient, "5.1.1")], encoding
        assert reading.original_message_id == "<g1@example.org>"


def test_stored_subject_is_decoded_and_reason_stops_at_the_copied_message(rng):
    """Subjects as readers see them (RFC 2047 in any charset, raw 8-bit UTF-8 or Latin-1), oracle the text
    encoded; a plain-text bounce's reason holds the diagnostic, not the returned message's headers."""
    from email.header import Header
    words = ["Données", "ouvertes", "Réponse", "automatique", "Straße", "été", "naïve", "absent", "Noël"]
    for _ in range(30):
        subject = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        charset = rng.choice(["utf-8", "iso-8859-1"])
        form = rng.choice(["rfc2047", "8bit"])
        head = (Header(subject, charset).encode().encode("ascii") if form == "rfc2047" else subject.encode(charset))
        raw = samples.auto_reply("x@example.net", BOUNCE, rng)
        raw = re.sub(rb"(?m)^Subject:[^\n]*(\n[ \t][^\n]*)*", lambda _: b"Subject: " + head, raw, count=1)
        assert read_message(raw).subject == subject, (form, charset, head)
    original = (b"Return-Path: <bounces+abc@example.org>\nMessage-ID: <copied@example.org>\nSubject: Le Fil secret\n"
                b"From: lettre@example.org\nTo: u@example.net\n\nBonjour\n")
    for _ in range(5):
        reading = read_message(samples.exim(original, "u@example.net", BOUNCE, "5.1.1", rng))
        reason = reading.failures[0].reason
        assert "5.1.1" in reason and "copied@example.org" not in reason and "Le Fil secret" not in reason, reason


# ----- a mailbox, processed twice ----------------------------------------------------------------------
def build_mailbox_messages(received: dict, rng: random.Random) -> tuple[list[bytes], dict[str, str], dict]:
    """Reports about random recipients; returns (messages, expected status per address, expected counts)."""
    addresses = sorted(received)
    rng.shuffle(addresses)
    plan = [("postfix", "5.1.1"), ("gmail", "5.1.1"), ("exchange", "5.1.10"), ("exim", "5.1.1"), ("gmail", "5.2.2"),
            ("postfix", "4.2.2"), ("exim", "4.2.2"), ("arf", "yahoo"), ("arf", "aol"), ("lost-verp", "5.1.1"),
            ("forged", "5.1.1"), ("auto-reply", ""), ("delayed", "4.4.1")]
    messages: list[bytes] = []
    expected: dict[str, str] = {}
    counts = dict(processed=0, hard_bounces=0, soft_bounces=0, complaints=0, unmatched=0, unparseable=0)
    for (style, detail), address in zip(plan, addresses):
        sent = received[address]
        original, verp_address = sent.data, sent.mail_from
        counts["processed"] += 1
        if style in STYLES:
            messages.append(STYLES[style](original, address, verp_address, detail, rng))
            severity = EXPECTED[detail]
            counts["hard_bounces" if severity == "hard" else "soft_bounces"] += 1
            expected[address] = "bounced" if severity == "hard" else "active"
        elif style == "arf":
            messages.append(samples.arf(original, address, verp_address, rng, detail))
            counts["complaints"] += 1
            expected[address] = "complained"
        elif style == "lost-verp":  # delivered to the plain address: matched by Message-ID + recipient
            messages.append(samples.postfix(original, address, BOUNCE, detail, rng))
            counts["hard_bounces"] += 1
            expected[address] = "bounced"
        elif style == "forged":  # someone else's token, altered; no returned headers to fall back on
            token = verp_address.split("+", 1)[1].split("@")[0]
            forged = f"bounces+{token[:-1]}{'a' if token[-1] != 'a' else 'b'}@example.org"
            raw = samples.postfix(b"Subject: x\r\n\r\n", address, forged, detail, rng)
            messages.append(raw)
            counts["unmatched"] += 1  # the categories are disjoint: an unmatched bounce is not a hard bounce
            expected[address] = "active"
        elif style == "auto-reply":
            messages.append(samples.auto_reply(address, verp_address, rng))
            expected[address] = "active"
        elif style == "delayed":
            messages.append(samples.postfix(original, address, verp_address, "4.2.2", rng, action="delayed"))
            expected[address] = "active"
    messages.append(samples.garbage(rng))
    messages.append(samples.broken_dsn(addresses[0], BOUNCE, rng))
    counts["unparseable"] = 2
    rng.shuffle(messages)
    return messages, expected, counts


def summary_counts(summary) -> dict:  # noqa: ANN001
    data = summary.as_dict()
    parts = ("hard_bounces", "soft_bounces", "complaints", "unmatched", "other")
    assert data["processed"] == sum(data[key] for key in parts), data  # disjoint, summing to processed
    return {key: data[key] for key in ("processed", "hard_bounces", "soft_bounces", "complaints", "unmatched",
                                       "unparseable")}


INTERNATIONAL = ["élodie.{n}@exemple.fr", "jérôme.{n}@example.net", "jo.{n}@bücher.example", "用户{n}@例子.中国",
                 "zoë.{n}@fai.example", "dvořák.{n}@příklad.cz"]


@pytest.mark.parametrize("style", ["exim", "postfix", "gmail"])
def test_bounces_of_internationalised_addresses_suppress_them(style, sink, make_settings, store, tmp_path, rng):
    """RFC 6531 addresses (a UTF-8 local part, a non-ASCII domain) bounce like any other. Exim's
    plain-text bounce names them in the body and in `X-Failed-Recipients`; flufl.bounce reads the body
    with ASCII patterns and found none of them, so the report read as "not a bounce" and the dead
    address kept being mailed. Sent for real over SMTP (SMTPUTF8), bounced as each style writes it, to
    the address the relay was given, read from a Maildir: hard codes suppress, soft ones do not."""
    addresses = sorted({rng.choice(INTERNATIONAL).format(n=rng.randint(1, 999)) for _ in range(8)})
    settings, received = send_over_smtp(make_settings, store, sink, addresses)
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    expected = {}
    for number, address in enumerate(sorted(received)):
        status = "5.1.1" if number % 3 else "4.2.2"
        sent = received[address]
        box.add(STYLES[style](sent.data, address, sent.mail_from, status, rng))
        expected[address] = EXPECTED[status]
    assert len(expected) == len(addresses)
    summary = process_source(store, settings, str(tmp_path / "Maildir")).as_dict()
    hard = sum(1 for severity in expected.values() if severity == "hard")
    assert (summary["hard_bounces"], summary["soft_bounces"], summary["unmatched"], summary["other"]) == (
        hard, len(expected) - hard, 0, 0), summary
    now = statuses(store)
    assert sorted(now.values()) == sorted("bounced" if severity == "hard" else "active"
                                          for severity in expected.values())


def test_maildir_processed_twice(sink, make_settings, store, tmp_path, rng):
    addresses = people(rng, 16)
    settings, received = send_over_smtp(make_settings, store, sink, addresses)
    messages, expected, counts = build_mailbox_messages(received, rng)
    folder = tmp_path / "Maildir"
    box = mailbox.Maildir(folder, create=True)
    for raw in messages:
        box.add(raw)

    first = process_source(store, settings, str(folder))
    assert summary_counts(first) == counts
    now = statuses(store)
    assert {address: now[address] for address in expected} == expected
    assert all(now[a] == "active" for a in addresses if a not in expected)
    # processed messages moved to .Processed (Seen); the two unparseable ones left in place
    done = box.get_folder("Processed")
    assert len(done) == len(messages) - 2 and all("S" in done.get_message(k).get_flags() for k in done.keys())
    assert sorted(box.get_bytes(k) for k in box.keys()) == sorted(m for m in messages if read_message(m).kind == "unparseable")

    second = process_source(store, settings, str(folder))
    assert summary_counts(second) == dict(processed=0, hard_bounces=0, soft_bounces=0, complaints=0, unmatched=0,
                                          unparseable=2)
    assert statuses(store) == now
    # the subscriber's history keeps the raw reason; the events table one row per report
    with store.engine.connect() as conn:
        reasons = conn.execute(sa.select(subscriber_events.c.reason).where(
            subscriber_events.c.source == "mailbox", subscriber_events.c.new_status.is_not(None))).scalars().all()
        soft = conn.execute(sa.select(subscriber_events.c.reason).where(
            subscriber_events.c.kind == "soft_bounce")).scalars().all()
        kinds = conn.execute(sa.select(provider_events.c.kind).where(provider_events.c.provider == "mailbox")).scalars().all()
    assert len(reasons) == sum(1 for s in expected.values() if s != "active")
    assert any("5.1.1" in reason and "550" in reason for reason in reasons)
    assert len(soft) == counts["soft_bounces"] and all("soft bounce on" in reason for reason in soft)
    assert len(kinds) == counts["processed"]
    # per issue, for `mailer report`: 2 complaints of 16 sent is far over Gmail's and Yahoo's 0.3 %
    (row,) = deliverability(store)
    assert (row["slug"], row["sent"]) == (EXAMPLE_ISSUE, len(addresses))
    assert row["hard_bounces"] == sum(1 for s in expected.values() if s == "bounced")
    assert row["complaints"] == 2 and row["soft_bounces"] == counts["soft_bounces"]
    assert row["complaint_rate"] == 2 / 16 and row["over_limit"]


def test_mbox_processed_twice_and_never_rewritten(sink, make_settings, sqlite_store, tmp_path, rng):
    addresses = people(rng, 16)
    settings, received = send_over_smtp(make_settings, sqlite_store, sink, addresses)
    messages, expected, counts = build_mailbox_messages(received, rng)
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(path)
    for raw in messages:
        box.add(raw)
    box.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    assert summary_counts(process_source(sqlite_store, settings, str(path))) == counts
    assert {a: s for a, s in statuses(sqlite_store).items() if a in expected} == expected
    again = process_source(sqlite_store, settings, str(path))
    assert again.processed == 0 and again.unparseable == 2 and again.already_processed == counts["processed"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_the_same_report_in_maildir_and_mbox_counts_once(sink, make_settings, sqlite_store, tmp_path, rng):
    settings, received = send_over_smtp(make_settings, sqlite_store, sink, people(rng, 2))
    address, sent = sorted(received.items())[0]
    raw = samples.gmail(sent.data, address, sent.mail_from, "5.1.1", rng)
    box = mailbox.Maildir(tmp_path / "md", create=True)
    box.add(raw.replace(b"\n", b"\r\n"))   # as fetched over IMAP
    mbox = mailbox.mbox(tmp_path / "b.mbox")
    mbox.add(raw)
    mbox.close()
    assert process_source(sqlite_store, settings, str(tmp_path / "md")).hard_bounces == 1
    second = process_source(sqlite_store, settings, str(tmp_path / "b.mbox"))
    assert second.processed == 0 and second.already_processed == 1


# ----- soft bounces: N over the last M sends ------------------------------------------------------------
def test_soft_bounces_suppress_at_the_limit_over_the_last_sends(make_settings, sqlite_store, tmp_path, rng):
    settings = make_settings(database_url=str(sqlite_store.engine.url), MAILER_BOUNCE_ADDRESS=BOUNCE,
                             MAILER_SOFT_BOUNCE_LIMIT="3", MAILER_SOFT_BOUNCE_SENDS="5")
    flaky, steady = people(rng, 2)
    for address in (flaky, steady):
        add_subscriber(sqlite_store, address)
    source = settings.issues_dir / EXAMPLE_ISSUE
    # sends 1..7; soft bounces for `flaky` on 1, 2 (old), then 6, 7 → 3 of the last 5? no: 2 (6, 7) + 0;
    # then on 5 as well (reported late) → 3 of sends 3..7 → bounced
    timeline = {1: True, 2: True, 3: False, 4: False, 5: False, 6: True, 7: True}
    folder = tmp_path / "Maildir"
    box = mailbox.Maildir(folder, create=True)
    verp = Verp.from_settings(settings)
    late = None
    for number, bounces in timeline.items():
        slug = f"{EXAMPLE_ISSUE}-{number}"
        shutil.copytree(source, settings.issues_dir / slug)
        dispatch.send_issue(settings, sqlite_store, slug)
        path = next((settings.outbox_dir / slug).glob(f"*{flaky}*.eml"))
        original = path.read_bytes()
        envelope = original.split(b"\r\n", 1)[0].decode()[len("Return-Path: <"):-1]
        assert verp.read(envelope) is not None
        style = rng.choice(["postfix", "exim", "gmail"])
        raw = STYLES[style](original, flaky, envelope, "4.2.2", rng)
        if number == 5:
            late = raw
        if bounces:
            box.add(raw)
            summary = process_source(sqlite_store, settings, str(folder))
            assert summary.soft_bounces == 1 and summary.unmatched == 0
        assert statuses(sqlite_store)[flaky] == "active", number  # never 3 of the last 5 so far
    box.add(late)
    summary = process_source(sqlite_store, settings, str(folder))
    assert statuses(sqlite_store) == {flaky: "bounced", steady: "active"}
    with sqlite_store.engine.connect() as conn:
        reason = conn.execute(sa.select(subscriber_events.c.reason).where(
            subscriber_events.c.new_status == "bounced")).scalar_one()
    assert "3 soft bounces over the last 5 sends" in reason and "4.2.2" in reason
    report = deliverability(sqlite_store)
    assert [r["soft_bounces"] for r in report] == [1, 1, 0, 0, 1, 1, 1]
    assert all(r["sent"] == 2 and r["complaint_rate"] == 0 and not r["over_limit"] for r in report)


def test_suppression_ranking_and_resubscribed_people(sink, make_settings, sqlite_store, tmp_path, rng):
    settings, received = send_over_smtp(make_settings, sqlite_store, sink, people(rng, 2))
    (a, sent_a), (b, sent_b) = sorted(received.items())
    box = mailbox.Maildir(tmp_path / "md", create=True)
    box.add(samples.arf(sent_a.data, a, sent_a.mail_from, rng, "yahoo"))
    process_source(sqlite_store, settings, str(tmp_path / "md"))
    box.add(samples.gmail(sent_a.data, a, sent_a.mail_from, "5.1.1", rng))  # a bounce never lowers a complaint
    # b confirmed again after the send (resubscribed): an old bounce changes nothing
    with sqlite_store.begin() as conn:
        conn.execute(subscribers.update().where(subscribers.c.email == b).values(
            confirmed_at=sa.func.datetime("now", "+1 hour")))
    box.add(samples.postfix(sent_b.data, b, sent_b.mail_from, "5.1.1", rng))
    summary = process_source(sqlite_store, settings, str(tmp_path / "md"))
    assert summary.hard_bounces == 2 and summary.suppressed == 0
    assert statuses(sqlite_store) == {a: "complained", b: "active"}


# ----- command line and IMAP interface -----------------------------------------------------------------
@pytest.fixture
def run(cli):
    """`mailer ARGS` in this process (tests/cli_support.py), any exit code."""
    def invoke(*args: str, extra_env: dict | None = None):
        return cli(*args, extra_env=extra_env, check_exit=None)
    return invoke


def test_cli_summary_line_and_json(run, project, rng):
    folder = project / "Maildir"
    box = mailbox.Maildir(folder, create=True)
    box.add(samples.auto_reply("x@example.net", BOUNCE, rng))
    result = run("bounces", "process", "Maildir")
    # exactly the summary line: flufl.bounce's "Running detector" INFO lines only with -v
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.splitlines() == ["Maildir: 1 new processed: 0 hard bounces, 0 soft bounces, 0 complaints, "
                                          "0 unmatched, 1 other; 0 unparseable (left in place); 0 subscribers suppressed"]
    box.add(samples.auto_reply("y@example.net", BOUNCE, rng))
    verbose = run("-v", "bounces", "process", "Maildir")
    assert "Running detector" in verbose.stderr and len(verbose.stdout.splitlines()) == 1
    box.add(samples.garbage(rng))
    result = run("bounces", "process", "Maildir")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("1 unparseable (left in place); 0 subscribers suppressed")
    assert "0 new processed" in result.stdout
    data = json.loads(run("bounces", "process", "Maildir", "--json").stdout)
    assert data["processed"] == 0 and data["unparseable"] == 1 and data["problems"]
    assert run("bounces", "process", "--help").stdout.count("MAILER_IMAP_PASSWORD") == 1



def test_cli_errors_are_one_line_naming_the_source(project, monkeypatch):
    from click.testing import CliRunner
    from mailer.cli import main
    for name in [k for k in os.environ if k.startswith(("MAILER_", "SENDGRID_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(project)
    for args, env, words in [
        (("nowhere",), {}, "nowhere: no such Maildir folder or mbox file"),
        (("issues",), {}, "issues: not a Maildir (no cur, new, tmp/ folder)"),
        (("mailer.toml",) if (project / "mailer.toml").exists() else ("issues/" + EXAMPLE_ISSUE + "/issue.toml",), {},
         "not an mbox file"),
        (("imap://me@127.0.0.1:1/INBOX",), {}, "MAILER_IMAP_PASSWORD is not set"),
        (("imap://me@127.0.0.1:1/INBOX",), {"MAILER_IMAP_PASSWORD": "pw"}, "@127.0.0.1:1/INBOX: cannot connect"),
        (("imap://me:pw@127.0.0.1/INBOX",), {}, "not in the URL"),
        (("pop3://me@127.0.0.1/",), {}, "unknown scheme"),
    ]:
        result = CliRunner().invoke(main, ["bounces", "process", *args], env={**BASE_ENV, **env})
        assert result.exit_code == 2 and result.stdout == "", (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (args, result.stderr)
        assert ":pw" not in lines[0] and result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("url, expected", [
    ("imap://bounces@mail.example.org/INBOX", ("ssl", "mail.example.org", 993, "bounces", "INBOX", "")),
    ("imaps://me%40example.org@mail.example.org:1993", ("ssl", "mail.example.org", 1993, "me@example.org", "INBOX", "")),
    ("imap+starttls://u@h/Bounces%20FBL?move=Done", ("starttls", "h", 143, "u", "Bounces FBL", "Done")),
    ("imap+plain://u@127.0.0.1:1143/INBOX", ("plain", "127.0.0.1", 1143, "u", "INBOX", "")),
])
def test_imap_urls(url, expected):
    location = parse_imap_url(url)
    assert (location.security, location.host, location.port, location.username, location.folder,
            location.move_to) == expected


def test_readme_documents_the_command_and_settings():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for needle in ("mailer bounces process", "MAILER_BOUNCE_ADDRESS", "MAILER_IMAP_PASSWORD", "MAILER_BOUNCE_MAILBOX",
                   "MAILER_BOUNCE_POLL", "MAILER_SOFT_BOUNCE_LIMIT", "MAILER_SOFT_BOUNCE_SENDS"):
        assert needle in readme, needle


# ----- IMAP: a real Dovecot on loopback -------------------------------------------------------------------
@pytest.fixture
def dovecot():
    from .imap_server import start_dovecot, stop_dovecot
    server = start_dovecot()
    yield server
    stop_dovecot(server)


def imap_client(server, *, starttls: bool = False):  # noqa: ANN001, ANN201
    import ssl
    from imapclient import IMAPClient
    from .imap_server import PASSWORD, USER
    context = ssl.create_default_context(cafile=str(server.certs.ca))
    client = IMAPClient("127.0.0.1", port=server.imap_port if starttls else server.imaps_port, ssl=not starttls,
                        ssl_context=context, timeout=10)
    if starttls:
        client.starttls(context)
    client.login(USER, PASSWORD)
    return client, context


@pytest.mark.parametrize("mode", ["imaps-flags", "starttls-move"])
def test_imap_mailbox_processed_twice(dovecot, sink, make_settings, sqlite_store, rng, mode):
    from .imap_server import PASSWORD
    settings, received = send_over_smtp(make_settings, sqlite_store, sink, people(rng, 4),
                                        MAILER_IMAP_PASSWORD=PASSWORD)
    (a, sent_a), (b, sent_b), (c, sent_c), _ = sorted(received.items())
    client, context = imap_client(dovecot)
    reports = [samples.gmail(sent_a.data, a, sent_a.mail_from, "5.1.1", rng),
               samples.arf(sent_b.data, b, sent_b.mail_from, rng, "aol"),
               samples.auto_reply(c, sent_c.mail_from, rng), samples.garbage(rng)]
    for raw in reports:
        client.append("INBOX", raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    client.create_folder("Processed")
    if mode == "imaps-flags":
        url = f"imap://bounces@127.0.0.1:{dovecot.imaps_port}/INBOX"
    else:
        url = f"imap+starttls://bounces@127.0.0.1:{dovecot.imap_port}/INBOX?move=Processed"

    first = process_source(sqlite_store, settings, url, ssl_context=context)
    assert summary_counts(first) == dict(processed=3, hard_bounces=1, soft_bounces=0, complaints=1, unmatched=0,
                                         unparseable=1)
    assert {k: v for k, v in statuses(sqlite_store).items() if k in (a, b, c)} == {a: "bounced", b: "complained",
                                                                                  c: "active"}
    second = process_source(sqlite_store, settings, url, ssl_context=context)
    assert (second.processed, second.unparseable, second.already_processed) == (0, 1, 0)

    client.select_folder("INBOX")
    flags = client.get_flags(client.search("ALL"))
    if mode == "imaps-flags":
        assert len(flags) == 4
        marked = [uid for uid, f in flags.items() if b"$MailerProcessed" in f and b"\\Seen" in f]
        untouched = [uid for uid, f in flags.items() if not f]
        assert len(marked) == 3 and len(untouched) == 1  # the garbage: left as it was, not even \Seen
    else:
        assert len(flags) == 1 and flags[next(iter(flags))] == ()
        client.select_folder("Processed")
        assert len(client.search("ALL")) == 3
    client.logout()


def test_imap_refusals_are_one_line_errors(dovecot, make_settings, sqlite_store):
    import ssl
    settings = make_settings(database_url=str(sqlite_store.engine.url), MAILER_IMAP_PASSWORD="wrong")
    trusted = ssl.create_default_context(cafile=str(dovecot.certs.ca))
    url = f"imap://bounces@127.0.0.1:{dovecot.imaps_port}/INBOX"
    with pytest.raises(MailboxError, match=r"login refused \(check the user name and MAILER_IMAP_PASSWORD\)"):
        process_source(sqlite_store, settings, url, ssl_context=trusted)
    # IMAPS verifies the certificate: a self-signed server is refused by the default context
    with pytest.raises(MailboxError, match=r"cannot connect: .*CERTIFICATE_VERIFY_FAILED"):
        process_source(sqlite_store, settings, url)


def test_imap_move_folder_is_checked_before_any_message(dovecot, make_settings, sqlite_store, rng):
    """A ?move= folder that does not exist, or is written with the wrong hierarchy separator, is a one-line
    error before anything is processed: every message stays as it was."""
    from .imap_server import PASSWORD
    settings = make_settings(database_url=str(sqlite_store.engine.url), MAILER_IMAP_PASSWORD=PASSWORD)
    client, context = imap_client(dovecot)
    client.append("INBOX", samples.auto_reply("x@example.net", BOUNCE, rng).replace(b"\n", b"\r\n"))
    delimiter = client.list_folders()[0][1].decode()
    wrong = "/" if delimiter == "." else "."
    client.create_folder(f"Done{delimiter}Bounces")
    base = f"imap+starttls://bounces@127.0.0.1:{dovecot.imap_port}/INBOX?move="
    for folder, words in ((f"Missing{rng.randint(0, 999)}", "no such folder on the server; create it first"),
                          (f"Done{wrong}Bounces", f"separates folder levels with '{delimiter}', not '{wrong}': "
                                                  f"write ?move=Done{delimiter}Bounces")):
        with pytest.raises(MailboxError) as caught:
            process_source(sqlite_store, settings, base + folder, ssl_context=context)
        assert words in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    client.select_folder("INBOX")
    assert list(client.get_flags(client.search("ALL")).values()) == [()]  # untouched
    done = process_source(sqlite_store, settings, base + f"Done{delimiter}Bounces", ssl_context=context)
    assert done.processed == 1
    client.logout()


# ----- the scheduler polls the mailbox ----------------------------------------------------------------------
def test_schedule_run_polls_the_bounce_mailbox(make_settings, sqlite_store, tmp_path, rng):
    import threading
    import time
    from mailer.scheduling.runtime import BOUNCE_JOB, run_scheduler
    folder = tmp_path / "Maildir"
    box = mailbox.Maildir(folder, create=True)
    settings = make_settings(database_url=str(sqlite_store.engine.url), MAILER_BOUNCE_ADDRESS=BOUNCE,
                             MAILER_BOUNCE_MAILBOX=str(folder), MAILER_BOUNCE_POLL="0.2")
    addresses = people(rng, 2)
    for address in addresses:
        add_subscriber(sqlite_store, address)
    dispatch.send_issue(settings, sqlite_store, EXAMPLE_ISSUE)

    def report_for(address: str) -> bytes:
        original = next((settings.outbox_dir / EXAMPLE_ISSUE).glob(f"*{address}*.eml")).read_bytes()
        envelope = original.split(b"\r\n", 1)[0].decode()[len("Return-Path: <"):-1]
        return samples.exchange(original, address, envelope, "5.1.10", rng)

    def wait_for(address: str, status: str) -> None:
        deadline = time.monotonic() + 20
        while statuses(sqlite_store)[address] != status:
            assert time.monotonic() < deadline, f"{address} still {statuses(sqlite_store)[address]}"
            time.sleep(0.05)

    box.add(report_for(addresses[0]))
    stop = threading.Event()
    thread = threading.Thread(target=run_scheduler, args=(settings, stop), daemon=True)
    thread.start()
    try:
        wait_for(addresses[0], "bounced")  # at start
        box.add(report_for(addresses[1]))
        wait_for(addresses[1], "bounced")  # on a later poll
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert len(box) == 0 and len(box.get_folder("Processed")) == 2
    with sqlite_store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM scheduler_jobs WHERE id = :id"), {"id": BOUNCE_JOB}).scalar() == 1


def test_schedule_run_refuses_a_bounce_mailbox_it_cannot_use(make_settings, sqlite_store, tmp_path):
    from mailer.scheduling.runtime import run_scheduler
    for value, env, words in [(str(tmp_path / "none"), {}, "no such Maildir"),
                              ("imap://u@127.0.0.1/INBOX", {}, "MAILER_IMAP_PASSWORD is not set")]:
        settings = make_settings(database_url=str(sqlite_store.engine.url), MAILER_BOUNCE_MAILBOX=value, **env)
        with pytest.raises(MailboxError, match=words):
            run_scheduler(settings)


def test_every_one_character_change_of_a_verp_token_is_refused():
    """Exhaustive over one token: each position × each other base32 letter (the last character's
    unused low bits included: a token has exactly one spelling, whatever the letter case)."""
    verp = Verp("bounces", "example.org", b"k" * 32)
    token = verp.sender(424242, 17).split("+")[1].split("@")[0]
    refused = 0
    for at in range(len(token)):
        for letter in "abcdefghijklmnopqrstuvwxyz234567":
            if letter != token[at]:
                assert verp.read(f"bounces+{token[:at]}{letter}{token[at + 1:]}@example.org") is None, (at, letter)
                refused += 1
    assert refused == 47 * 31
    assert verp.read(f"bounces+{token}@example.org").subscriber_id == 424242


def test_maildirplusplus_folder_sets_aside_into_a_sibling_dovecot_lists(dovecot, sink, make_settings, sqlite_store,
                                                                         rng):
    """`mailer bounces process ~/Maildir/.bounces` (a Maildir++ folder, made here by Dovecot itself) moves
    processed mail to `~/Maildir/.bounces.Processed`, which IMAP LIST shows (a `.Processed` inside
    `.bounces` would be invisible to Dovecot and every IMAP client)."""
    import shutil
    settings, received = send_over_smtp(make_settings, sqlite_store, sink, people(rng, 2))
    (a, sent_a), (b, sent_b) = sorted(received.items())
    client, _ = imap_client(dovecot)
    client.create_folder("bounces")
    for raw in (samples.gmail(sent_a.data, a, sent_a.mail_from, "5.1.1", rng), samples.garbage(rng)):
        client.append("bounces", raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    top = dovecot.root / "home" / "bounces" / "Maildir"
    folder = top / ".bounces"
    assert (folder / "cur").is_dir()

    summary = process_source(sqlite_store, settings, str(folder))
    assert (summary.processed, summary.unparseable) == (1, 1)
    assert not (folder / ".Processed").exists()
    done = top / ".bounces.Processed"
    assert all((done / name).is_dir() for name in ("cur", "new", "tmp")) and (done / "maildirfolder").is_file()
    for path in [done, *done.rglob("*")]:  # mailer ran as root here; the mail user owns the store
        shutil.chown(path, "dovecot", "dovecot")
    client.logout()
    client, _ = imap_client(dovecot)  # a new session: Dovecot reads its list index at login
    listed = [name for _flags, _sep, name in client.list_folders()]
    assert "bounces.Processed" in listed, listed
    client.select_folder("bounces.Processed")
    assert len(client.search("ALL")) == 1
    client.select_folder("bounces")
    assert len(client.search("ALL")) == 1  # the unparseable one, left in place
    client.logout()
    again = process_source(sqlite_store, settings, str(folder))
    assert (again.processed, again.unparseable) == (0, 1)


def test_plain_maildir_keeps_its_processed_subfolder(tmp_path):
    from mailer.providers.bounces.sources import MaildirSource
    top = tmp_path / "Maildir"
    mailbox.Maildir(top, create=True)
    assert MaildirSource(top).processed_path() == top.resolve() / ".Processed"
    child = mailbox.Maildir(top, create=False).add_folder("bounces")
    assert MaildirSource(top / ".bounces").processed_path() == top.resolve() / ".bounces.Processed"
    assert child is not None
    lone = tmp_path / ".lonely"  # a dot name whose parent is no Maildir: a plain Maildir
    mailbox.Maildir(lone, create=True)
    assert MaildirSource(lone).processed_path() == lone.resolve() / ".Processed"


def test_soft_bounces_are_in_the_subscribers_history(sink, make_settings, store, tmp_path, rng, run):
    """Two 4.2.2 reports: the status stays active, and `mailer subscribers show` lists each one with its
    status code and the server's words (README: the history keeps the raw reason)."""
    settings, received = send_over_smtp(make_settings, store, sink, people(rng, 1))
    [(address, sent)] = received.items()
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for style in rng.sample(sorted(STYLES), 2):
        box.add(STYLES[style](sent.data, address, sent.mail_from, "4.2.2", rng))
    summary = process_source(store, settings, str(tmp_path / "Maildir"))
    assert summary.soft_bounces == 2 and statuses(store)[address] == "active"
    url = store.engine.url.render_as_string(hide_password=False)
    shown = run("subscribers", "show", address, extra_env={"MAILER_DATABASE_URL": url}).stdout
    lines = [line for line in shown.splitlines() if "soft_bounce" in line]
    assert len(lines) == 2 and all(f"soft bounce on {EXAMPLE_ISSUE}: 4.2.2" in line and "mailbox" in line
                                   for line in lines), shown
    assert shown.splitlines()[0].endswith("active")
    data = json.loads(run("subscribers", "show", address, "--json", extra_env={"MAILER_DATABASE_URL": url}).stdout)
    assert [e["kind"] for e in data["events"]].count("soft_bounce") == 2
    process_source(store, settings, str(tmp_path / "Maildir"))  # processed twice: no new line
    again = run("subscribers", "show", address, extra_env={"MAILER_DATABASE_URL": url}).stdout
    assert again.count("soft_bounce") == 2


def _qmail(recipient: str, host_ip: str, rng: random.Random) -> bytes:
    return (f"Return-Path: <>\nDate: Thu, 26 Nov 2026 07:00:00 +0000\nFrom: MAILER-DAEMON@mail.example.net\n"
            f"To: {BOUNCE}\nSubject: failure notice\n\n"
            f"Hi. This is the qmail-send program at mail.example.net.\n"
            f"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
            f"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
            f"<{recipient}>:\n{host_ip} does not like recipient.\n"
            f"Remote host said: 550 5.1.1 <{recipient}>... User unknown\nGiving up on {host_ip}.\n\n"
            f"--- Below this line is a copy of the message.\n\nReturn-Path: <{BOUNCE}>\n"
            f"Message-ID: <x{rng.getrandbits(32)}@example.org>\nTo: {recipient}\n\nBonjour\n").encode("utf-8")


def test_plain_text_reasons_start_with_the_servers_words(rng):
    """qmail's `<addr>:` (and Exim's indented address line): the stored reason is what the server said,
    without the address's stray `>` or `:` — for generated addresses, IDN domains included."""
    for _ in range(12):
        local = rng.choice(["idn", "jean.dupont", "a+b", "x_y"])
        domain = rng.choice(["xn--exmple-cua.fr", "example.fr", "mail.example.co.uk"])
        ip = f"192.0.2.{rng.randint(1, 254)}"
        reading = read_message(_qmail(f"{local}@{domain}", ip, rng))
        assert reading.kind == "bounce", reading
        [failure] = [f for f in reading.failures if f.recipient == f"{local}@{domain}"]
        assert failure.reason.startswith("5.1.1 ") and f"{ip} does not like recipient" in failure.reason, failure
        assert failure.diagnostic.startswith(f"{ip} does not like recipient."), failure.diagnostic  # no stray `>:`
        assert "Below this line" not in failure.reason


def test_a_message_without_origin_fields_says_which_fields_and_what_else_is_wrong(rng):
    for _ in range(8):
        fields = rng.sample(["Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"",
                             "MIME-Version: 1.0", "X-Mailer: relay"], rng.randint(1, 3))
        if not any(f.startswith("Content-Type") for f in fields):
            fields.append("Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"")
        body = ("--b\nContent-Type: text/plain\n\nSee below.\n--b\nContent-Type: message/delivery-status\n\n"
                "Reporting-MTA: dns; relay.example.org\n\n--b--\n")
        reading = read_message(("\n".join(fields) + "\n\n" + body).encode())
        assert reading.kind == "unparseable"
        assert reading.problem.startswith("no From, Date, Subject or Message-ID field (only ")
        assert all(f.split(":")[0] in reading.problem for f in fields), reading.problem
        assert "no header fields" not in reading.problem
        assert "message/delivery-status" in reading.problem, reading.problem  # the broken DSN, said too
