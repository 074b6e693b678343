"""The sendgrid backend against a real local HTTP server that enforces SendGrid's documented limits.

The official `sendgrid` client posts real requests to `tests/sendgrid_server.py`; nothing of ours is
mocked. The server records what it accepted, so each recipient's message can be rebuilt (its
substitutions applied to the body sent once) and compared with what the outbox/SMTP path renders.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import replace
from email import policy as email_policy
from email.header import decode_header, make_header
from email.parser import BytesParser

import pytest
import sendgrid
import sqlalchemy as sa

import mailer.sending.dispatch as dispatch
from mailer.sending.inflight import in_flight_bound
from mailer.providers import make_backend
from mailer.providers.base import Batch, OutgoingMessage, PermanentError, RecipientResult, TransientError
from mailer.providers.sendgrid import (MAX_ARGS_BYTES, RESERVED_HEADERS, SendGridBackend, api_host, category_for,
                                      recipient_name, retry_after_from)
from mailer.config import MAX_BASE_URL
from mailer.errors import ConfigError, SendAborted
from mailer.content.issue import load_issue
from mailer.mime import MessageFactory
from mailer.content.render import Recipient, render_issue
from mailer.store.schema import deliveries, subscribers
from mailer.subscribers import add_subscriber, import_csv

from .conftest import EXAMPLE_ISSUE
from .sendgrid_server import Fault, SendGridServer, validate

KEY = "SG.test-key"


# ----- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def server():
    with SendGridServer(KEY) as srv:
        yield srv


@pytest.fixture
def sg_settings(make_settings, server):
    def factory(**overrides):
        env = {"MAILER_BACKEND": "sendgrid", "SENDGRID_API_KEY": KEY, "MAILER_SENDGRID_API_URL": server.url,
               "MAILER_BATCH_SIZE": "1000", **overrides}
        return make_settings(**env)
    return factory


@pytest.fixture
def fast_backoff(monkeypatch):
    """Dispatch's backoff constants are configuration: keep retries quick (Retry-After still wins)."""
    monkeypatch.setattr(dispatch, "BACKOFF_BASE", 0.01)


def _factory(settings) -> MessageFactory:
    return MessageFactory(render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings))


def _message(i: int, name: str = "", email: str | None = None, base: str = "https://lettre.example.org") -> OutgoingMessage:
    recipient = Recipient(email=email or f"reader{i}@example.com", name=name, subscriber_id=1000 + i,
                          unsubscribe_url=f"{base}/u/tok{i:06d}")
    return OutgoingMessage(recipient, f"<m{i}@example.org>", delivery_id=5000 + i)


def _populate(store, tmp_path, count: int, *, bad: tuple[str, ...] = ()) -> None:
    """`count` active subscribers through the real CSV import (plus `bad` addresses)."""
    csv_path = tmp_path / "subscribers.csv"
    with open(csv_path, "w", encoding="utf-8") as handle:
        handle.write("email,name\n")
        for i in range(count):
            handle.write(f"person{i:05d}@example.net,Élodie{i} Lecteur\n")
        for address in bad:
            handle.write(f"{address},Bad\n")
    report = import_csv(store, csv_path)
    assert report.added == count + len(bad), report.rejections[:3]


def _ledger(store) -> list:
    with store.engine.connect() as conn:
        return conn.execute(
            sa.select(deliveries.c.id, deliveries.c.status, deliveries.c.provider_message_id, deliveries.c.last_error,
                      deliveries.c.attempts, subscribers.c.email_given, subscribers.c.status.label("sub_status"))
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id).order_by(deliveries.c.id)).all()


def _assert_each_once(server, store, count: int) -> None:
    counts = server.count_by_recipient()
    rows = _ledger(store)
    assert len(rows) == count
    assert {r.status for r in rows} == {"sent"}
    assert set(counts) == {r.email_given for r in rows}
    assert set(counts.values()) == {1}, [a for a, n in counts.items() if n > 1][:5]


# ----- the request ------------------------------------------------------------------------------------
def test_batch_of_1000_is_one_request_with_the_body_once_and_per_recipient_values(sg_settings, server):
    settings = sg_settings(MAILER_REPLY_TO="Rédaction <redaction@example.org>")
    factory = _factory(settings)
    names = ["", "Zoé Ça-Va", "<script>alert(1)</script> & \"Ô\"", "Dupont, Jean; Marie", "Line\r\nBcc: evil@x.org"]
    messages = tuple(_message(i, names[i % len(names)]) for i in range(1000))
    backend = SendGridBackend.from_settings(settings)
    with backend:
        results = backend.send_batch(Batch(factory, messages, issue_id=42))

    assert len(server.accepted) == 1 and backend.requests_sent == 1
    request = server.accepted[0]
    body = request.body
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert [r.outcome for r in results] == ["sent"] * 1000
    assert {r.provider_message_id for r in results} == {request.message_id}
    # made in bulk (`RecipientResult.all_sent`): each equal, and hashing equal, to the constructor's
    expected = [RecipientResult(message, "sent", provider_message_id=request.message_id) for message in messages]
    assert results == expected and list(map(hash, results)) == list(map(hash, expected))
    assert [r.message for r in results] == list(messages) and {(r.error, r.hard_bounce, r.retry_after) for r in results} == {
        (None, False, None)}

    # the body goes once, as raw templates with their slot markers, text/plain first
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["content"][0]["value"] == factory.email.text.raw
    assert body["content"][1]["value"] == factory.email.html.raw
    assert "%%mailer:unsubscribe_url.html%%" in body["content"][1]["value"]
    assert body["from"] == {"email": "lettre@example.org", "name": "Le Fil du jeudi"}
    assert body["reply_to"] == {"email": "redaction@example.org", "name": "Rédaction"}
    assert body["subject"] == factory.subject
    assert body["headers"] == {"List-Id": settings.effective_list_id}
    assert body["categories"] == [category_for(EXAMPLE_ISSUE)] and body["categories"][0].isascii()
    assert "mail_settings" not in body
    assert len(body["personalizations"]) == 1000
    assert request.size < 2_000_000  # ≈600 bytes a recipient beyond the body

    for i in (0, 1, 2, 3, 4, 999):
        p = body["personalizations"][i]
        message = messages[i]
        recipient = message.recipient
        assert p["to"][0]["email"] == recipient.email
        assert set(p["substitutions"]) <= {f"%%mailer:{n}%%" for n in
                                           ("greeting", "email", "unsubscribe_url", "greeting.html", "email.html",
                                            "unsubscribe_url.html")}
        assert "%%mailer:unsubscribe_url.html%%" in p["substitutions"]
        assert p["headers"] == factory.recipient_headers(recipient, message.message_id)
        assert p["headers"]["List-Unsubscribe"].startswith(f"<{recipient.unsubscribe_url}>, <mailto:")
        assert p["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert p["headers"]["Message-ID"] == f"<m{i}@example.org>"
        assert not {k.lower() for k in p["headers"]} & RESERVED_HEADERS
        assert p["custom_args"] == {"mailer_issue": "42", "mailer_subscriber": str(1000 + i),
                                    "mailer_delivery": str(5000 + i)}

        # what this person receives = what the other backends render for them, byte for byte
        delivered = server.delivered_to(recipient.email)
        assert len(delivered) == 1
        html, text = factory.email.personalise(recipient)
        assert delivered[0].html == html and delivered[0].text == text
        assert "%%mailer:" not in delivered[0].html + delivered[0].text
        assert f'href="{recipient.unsubscribe_url}"' in delivered[0].html
        assert recipient.unsubscribe_url in delivered[0].text
        assert delivered[0].headers["List-Id"] == settings.effective_list_id

    # subscriber-provided values are escaped in HTML, plain in text; names are one clean line
    evil = server.delivered_to("reader2@example.com")[0]
    assert "Bonjour &lt;script&gt;alert(1)&lt;/script&gt;," in evil.html  # greeted by the first word of the name
    assert "<script>alert(1)</script>" not in evil.html
    assert "Bonjour <script>alert(1)</script>," in evil.text
    assert server.delivered_to("reader1@example.com")[0].name == "Zoé Ça-Va"
    assert server.delivered_to("reader3@example.com")[0].name == "Dupont Jean Marie"
    assert server.delivered_to("reader4@example.com")[0].name == "Line Bcc: evil@x.org"
    assert "name" not in body["personalizations"][0]["to"][0]  # no empty names


def test_from_name_is_one_line_and_sandbox_mode_is_passed(sg_settings, server):
    settings = replace(sg_settings(), from_address="Le Fil\r\nBcc: evil@example.com <lettre@example.org>",
                       sendgrid_sandbox=True)
    backend = SendGridBackend.from_settings(settings)
    results = backend.send_batch(Batch(_factory(settings), (_message(1), _message(2)), issue_id=1))
    body = server.accepted[0].body
    assert "\r" not in body["from"]["name"] and "\n" not in body["from"]["name"]
    assert body["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert server.statuses() == [200]  # sandbox: valid, not queued
    assert [r.outcome for r in results] == ["sent", "sent"]


def test_idn_sender_and_accented_list_name_reach_the_api_in_ascii(sg_settings, server):
    settings = sg_settings(MAILER_NAME="Les Actualités", MAILER_FROM="Médiathèque <lettre@médiathèque-exemple.fr>",
                           MAILER_REPLY_TO="Rédaction <redaction@médiathèque-exemple.fr>")
    SendGridBackend.from_settings(settings).send_batch(Batch(_factory(settings), (_message(1),), issue_id=1))
    body = server.accepted[0].body
    domain = "xn--mdiathque-exemple-xsbn.fr"
    assert body["from"] == {"email": f"lettre@{domain}", "name": "Médiathèque"}
    assert body["reply_to"] == {"email": f"redaction@{domain}", "name": "Rédaction"}
    list_id = body["headers"]["List-Id"]
    phrase, _, ident = list_id.rpartition(" <")
    assert list_id.isascii() and ident == f"les-actualites.{domain}>"
    assert str(make_header(decode_header(phrase))) == "Les Actualités"


def test_test_sends_carry_no_ledger_ids(sg_settings, server):
    settings = sg_settings()
    recipient = Recipient(email="editor@example.org", unsubscribe_url="https://lettre.example.org/u/x")
    backend = make_backend(settings)
    results = backend.send_batch(Batch(_factory(settings), (OutgoingMessage(recipient, "<t@example.org>"),)))
    assert results[0].outcome == "sent"
    assert "custom_args" not in server.accepted[0].personalizations[0]


def test_settings_are_checked_before_anything_is_sent(sg_settings):
    with pytest.raises(ConfigError, match="SENDGRID_API_KEY"):
        SendGridBackend.from_settings(replace(sg_settings(), sendgrid_api_key=""))
    with pytest.raises(ConfigError, match="MAILER_SENDGRID_API_URL"):
        SendGridBackend.from_settings(replace(sg_settings(), sendgrid_api_url="api.sendgrid.com"))
    assert api_host("https://api.sendgrid.com/v3/") == "https://api.sendgrid.com"


def test_helpers():
    assert recipient_name("Zoé\u00a0 Dupont,\tJean;") == "Zoé Dupont Jean"
    assert recipient_name("Jean Dupont") == "Jean Dupont"
    assert category_for("2026-11-26-données ouvertes!") == "2026-11-26-donnees-ouvertes"
    assert retry_after_from({"Retry-After": "3"}) == 3
    assert retry_after_from({"X-RateLimit-Reset": "1010"}, now=1000.0) == 10
    assert retry_after_from({"X-RateLimit-Reset": "990"}, now=1000.0) == 0
    assert retry_after_from({"Retry-After": "Thu, 01 Jan 1970 00:16:50 GMT"}, now=1000.0) == 10
    assert retry_after_from({}) is None


def test_more_than_1000_messages_or_a_repeated_address_are_split(sg_settings, server):
    settings = sg_settings()
    messages = [_message(i) for i in range(1500)] + [_message(9999, email="READER3@example.com")]
    results = SendGridBackend.from_settings(settings).send_batch(Batch(_factory(settings), tuple(messages), 1))
    assert [len(r.personalizations) for r in server.accepted] == [1000, 501]
    for request in server.accepted:
        addresses = [p["to"][0]["email"].lower() for p in request.personalizations]
        assert len(addresses) == len(set(addresses))
    assert [r.outcome for r in results] == ["sent"] * 1501
    assert results[0].provider_message_id != results[-1].provider_message_id


# ----- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault, expected_retry_after", [
    (Fault("status", 429, {"Retry-After": "1", "X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0"}), 1),
    (Fault("status", 500), None),
    (Fault("status", 502), None),
    (Fault("status", 503, {"Retry-After": "2"}), 2),
    (Fault("reset"), None),
    (Fault("close"), None),
    (Fault("hang", seconds=10), None),
], ids=["429", "500", "502", "503", "reset", "close", "hang"])
def test_transient_failures_raise_transient_error(sg_settings, server, fault, expected_retry_after):
    settings = sg_settings()
    server.script(fault)
    backend = SendGridBackend.from_settings(settings, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        backend.send_batch(Batch(_factory(settings), (_message(1), _message(2)), 1))
    assert time.monotonic() - started < 5
    assert info.value.retry_after == expected_retry_after
    assert server.accepted == []
    # the next attempt goes through
    assert [r.outcome for r in backend.send_batch(Batch(_factory(settings), (_message(1),), 1))] == ["sent"]


def test_429_with_only_x_ratelimit_reset(sg_settings, server):
    settings = sg_settings()
    server.rate_limit_next(retry_after=None, reset_in=3)
    with pytest.raises(TransientError) as info:
        SendGridBackend.from_settings(settings).send_batch(Batch(_factory(settings), (_message(1),), 1))
    assert 1.5 <= info.value.retry_after <= 3


def test_connection_refused_is_transient(sg_settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = sg_settings(MAILER_SENDGRID_API_URL=f"http://127.0.0.1:{port}")
    with pytest.raises(TransientError, match="unreachable"):
        SendGridBackend.from_settings(settings).send_batch(Batch(_factory(settings), (_message(1),), 1))


@pytest.mark.parametrize("case", ["wrong key", "forbidden", "too large", "not found"])
def test_permanent_failures(sg_settings, server, case):
    settings = sg_settings()
    if case == "wrong key":
        settings = replace(settings, sendgrid_api_key="SG.revoked")
        expected = r"refused the API key \(401.*SENDGRID_API_KEY"
    elif case == "forbidden":
        server.forbidden_keys.add(KEY)
        expected = r"\(403.*Mail Send permission"
    elif case == "too large":
        server.max_body_bytes = 10_000
        expected = r"too large \(413.*30 MB"
    else:
        settings = replace(settings, sendgrid_api_url=server.url + "/nowhere")
        expected = r"404.*MAILER_SENDGRID_API_URL"
    with pytest.raises(PermanentError, match=expected):
        SendGridBackend.from_settings(settings).send_batch(Batch(_factory(settings), (_message(1),), 1))
    assert server.accepted == []


def test_one_invalid_address_fails_alone_and_the_rest_is_resent_at_once(sg_settings, server):
    settings = sg_settings()
    server.reject_addresses("bad")
    server.reject_addresses("blocked", message="The recipient is on a list we will not send to.")
    messages = tuple(_message(i) for i in range(10)) + (_message(10, email="bad.person@example.com"),
                                                       _message(11, email="blocked@example.com"))
    results = SendGridBackend.from_settings(settings).send_batch(Batch(_factory(settings), messages, 1))
    assert server.statuses() == [400, 202]
    assert [len(e.recipients) for e in server.log] == [12, 10]
    assert [r.outcome for r in results] == ["sent"] * 10 + ["permanent", "permanent"]
    assert results[10].hard_bounce is True and "valid address" in results[10].error
    assert results[11].hard_bounce is False and "will not send" in results[11].error
    assert "bad.person@example.com" not in server.count_by_recipient()


def test_a_400_naming_no_recipient_is_permanent(sg_settings, server):
    settings = sg_settings()
    server.script(Fault("status", 400, body={"errors": [
        {"message": "The from email does not contain a valid address.", "field": "from.email", "help": None}]}))
    with pytest.raises(PermanentError, match="from.email"):
        SendGridBackend.from_settings(settings).send_batch(Batch(_factory(settings), (_message(1), _message(2)), 1))


def test_a_400_blaming_every_recipient_for_a_non_address_field_is_our_bug(sg_settings, server):
    settings = sg_settings()
    server.script(Fault("status", 400, body={"errors": [
        {"message": "Invalid type.", "field": f"personalizations.{n}.custom_args.x"} for n in range(3)]}))
    with pytest.raises(PermanentError, match="custom_args"):
        SendGridBackend.from_settings(settings).send_batch(
            Batch(_factory(settings), tuple(_message(i) for i in range(3)), 1))


def test_personal_values_over_10000_bytes_fail_that_recipient_only(sg_settings, server):
    settings = sg_settings()
    huge = _message(1, name="É" * 2600)  # greeting + greeting.html: > 10,000 bytes in UTF-8
    results = SendGridBackend.from_settings(settings).send_batch(Batch(_factory(settings), (huge, _message(2)), 1))
    assert [r.outcome for r in results] == ["permanent", "sent"]
    assert f"{MAX_ARGS_BYTES:,}" in results[0].error
    assert server.statuses() == [202]


# ----- the server enforces SendGrid's documented limits ------------------------------------------------
def _valid_body(n: int = 1) -> dict:
    return {"from": {"email": "a@example.org"}, "subject": "s",
            "content": [{"type": "text/plain", "value": "t"}, {"type": "text/html", "value": "<p>h</p>"}],
            "personalizations": [{"to": [{"email": f"p{i}@example.org"}]} for i in range(n)]}


def _fields(body: dict) -> set:
    return {e["field"] for e in validate(body)}


def test_server_validation_rules():
    assert validate(_valid_body(1000)) == []
    assert "personalizations" in _fields(_valid_body(1001))
    many = _valid_body(2)
    many["personalizations"][0]["bcc"] = [{"email": f"b{i}@example.org"} for i in range(999)]
    assert "personalizations" in _fields(many)  # 1001 recipients across to + bcc
    body = _valid_body(2)
    body["headers"] = {"X-Mailer": "ok", "To": "x"}
    body["personalizations"][1]["headers"] = {"DKIM-Signature": "x", "List-Unsubscribe": "<https://x>"}
    assert _fields(body) == {"headers.To", "personalizations.1.headers.DKIM-Signature"}
    body = _valid_body(1)
    body["personalizations"][0]["custom_args"] = {"n": 1}
    assert _fields(body) == {"personalizations.0.custom_args.n"}
    body = _valid_body(1)
    body["personalizations"][0]["substitutions"] = {"%%k%%": "x" * 9000}
    body["personalizations"][0]["custom_args"] = {"a": "y" * 1000}
    assert _fields(body) == {"personalizations.0.custom_args"}
    body = _valid_body(1)
    body["content"].reverse()
    assert _fields(body) == {"content"}
    body = _valid_body(2)
    body["personalizations"][1]["to"][0]["email"] = "P0@example.org"
    assert _fields(body) == {"personalizations.1.to.0.email"}
    body = _valid_body(1)
    body["personalizations"][0]["to"][0]["name"] = "Dupont, Jean"
    assert _fields(body) == {"personalizations.0.to.0.name"}
    body = _valid_body(1)
    del body["subject"]
    assert _fields(body) == {"subject"}


def test_server_over_http_auth_and_json(server):
    client = sendgrid.SendGridAPIClient(api_key="SG.wrong", host=server.url)
    with pytest.raises(Exception) as info:
        client.client.mail.send.post(request_body=_valid_body())
    assert info.value.status_code == 401
    client = sendgrid.SendGridAPIClient(api_key=KEY, host=server.url)
    with pytest.raises(Exception) as info:
        client.client.mail.send.post(request_body={**_valid_body(), "headers": {"Subject": "x"}})
    assert info.value.status_code == 400 and json.loads(info.value.body)["errors"][0]["field"] == "headers.Subject"
    response = client.client.mail.send.post(request_body=_valid_body(3))
    assert response.status_code == 202 and response.headers["X-Message-Id"]
    assert server.count_by_recipient() == {"p0@example.org": 1, "p1@example.org": 1, "p2@example.org": 1}


# ----- through the dispatcher and the ledger -------------------------------------------------------------
def test_send_issue_2500_in_three_requests_each_subscriber_once(sg_settings, server, store, tmp_path):
    settings = sg_settings()
    _populate(store, tmp_path, 2500)
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert report.complete and report.sent_now == 2500
    sizes = sorted(len(r.personalizations) for r in server.accepted)
    # in flight together: requests of at most 1000; concurrent claimers (SKIP LOCKED on PostgreSQL) may
    # split the last 500 between two requests, never a full batch into small ones
    assert sum(sizes) == 2500 and max(sizes) == 1000 and sizes.count(1000) == 2 and len(sizes) <= 4, sizes
    _assert_each_once(server, store, 2500)
    rows = _ledger(store)
    assert {r.provider_message_id for r in rows} == {r.message_id for r in server.accepted}
    # custom_args name the very ledger rows (webhook correlation)
    by_email = {r.email_given: r for r in rows}
    delivered = server.delivered_to("person01234@example.net")[0]
    assert delivered.custom_args["mailer_delivery"] == str(by_email["person01234@example.net"].id)
    assert delivered.custom_args["mailer_issue"].isdigit()
    assert delivered.headers["Message-ID"].endswith("@example.org>")
    assert "Bonjour Élodie1234," in delivered.text  # each subscriber's own first name
    # running again sends nothing more
    requests = len(server.accepted)
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert len(server.accepted) == requests


@pytest.mark.parametrize("fault", ["429", "500", "503", "reset", "close", "hang"])
def test_transient_faults_lose_nothing_and_double_nothing(sg_settings, server, store, tmp_path, fast_backoff, fault):
    settings = sg_settings(MAILER_BATCH_SIZE="400")  # two requests: the first one meets the fault
    _populate(store, tmp_path, 600)
    if fault == "429":
        server.rate_limit_next(retry_after=1)
    elif fault == "hang":
        server.hang_next(seconds=10)
    elif fault in ("reset", "close"):
        server.script(Fault(fault))
    else:
        server.fail_next(int(fault), times=2)
    # Only the hang needs a short timeout; a loaded machine may take over 0.5 s to answer a healthy request.
    timeout = 1.0 if fault == "hang" else 15.0
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE,
                                 backend_factory=lambda: SendGridBackend.from_settings(settings, timeout=timeout))
    assert report.complete
    _assert_each_once(server, store, 600)
    statuses = server.statuses()
    assert statuses.count(202) == 2 and len(statuses) == (4 if fault in ("500", "503") else 3)
    if fault == "429":  # Retry-After honoured
        refused = next(e for e in server.log if e.status == 429)
        retried = next(e for e in server.log if e.status == 202 and e.recipients == refused.recipients)
        assert retried.at - refused.at >= 0.9


def test_response_lost_after_acceptance_duplicates_at_most_that_request(sg_settings, server, store, tmp_path,
                                                                        fast_backoff):
    """The documented ambiguous window: SendGrid accepted, the answer never came back."""
    settings = sg_settings(MAILER_BATCH_SIZE="400")
    _populate(store, tmp_path, 1000)
    server.reset_next(after_accept=True)
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    counts = server.count_by_recipient()
    assert len(counts) == 1000
    doubled = [a for a, n in counts.items() if n == 2]
    assert max(counts.values()) == 2 and 0 < len(doubled) <= 400  # one request's recipients, never a whole run
    # exactly the recipients of the request whose answer was lost (requests are in flight together, so
    # the lost one may be the 200-recipient remainder as well as a full 400)
    requests = [{person["email"] for p in request.personalizations for person in p.get("to", [])}
                for request in server.accepted]
    assert set(doubled) in requests
    for address in doubled[:50]:  # same Message-ID in both copies: receivers can dedupe
        copies = server.delivered_to(address)
        assert len(copies) == 2 and copies[0].headers["Message-ID"] == copies[1].headers["Message-ID"]


def test_bad_api_key_pauses_the_send_and_fails_nobody(sg_settings, server, store, tmp_path, fast_backoff):
    settings = sg_settings(SENDGRID_API_KEY="SG.revoked", MAILER_BATCH_SIZE="400")
    _populate(store, tmp_path, 1000)
    with pytest.raises(SendAborted, match=r"send paused: sendgrid: SendGrid refused the API key \(401.*SENDGRID_API_KEY"):
        dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    rows = _ledger(store)
    assert {r.status for r in rows} == {"queued"} and len(rows) == 1000  # nobody failed, nothing left in flight
    # the requests in flight together all hear it; none is sent after the send paused
    assert server.accepted == [] and set(server.statuses()) == {401}
    assert len(server.statuses()) <= in_flight_bound(settings)[0]  # no more than the requests in flight
    with store.engine.connect() as conn:
        assert store.issue_row(conn, EXAMPLE_ISSUE).status == "paused"


def test_resume_in_the_same_process_after_fixing_the_key(sg_settings, server, sqlite_store, tmp_path, fast_backoff):
    """The scheduler and `mailer worker` are long-lived: a paused send must resume without a restart."""
    _populate(sqlite_store, tmp_path, 600)
    with pytest.raises(SendAborted):
        dispatch.send_issue(sg_settings(SENDGRID_API_KEY="SG.revoked", MAILER_BATCH_SIZE="400"), sqlite_store,
                            EXAMPLE_ISSUE)
    assert {r.status for r in _ledger(sqlite_store)} == {"queued"}  # paused, nothing in flight
    report = dispatch.send_issue(sg_settings(MAILER_BATCH_SIZE="400"), sqlite_store, EXAMPLE_ISSUE)
    assert report.complete
    _assert_each_once(server, sqlite_store, 600)


def test_one_bad_recipient_fails_alone_and_the_rest_of_its_batch_is_sent(sg_settings, server, store, tmp_path,
                                                                          fast_backoff):
    settings = sg_settings()
    _populate(store, tmp_path, 40, bad=("bad.address@example.net",))
    server.reject_addresses("bad")
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert report.complete and report.sent_now == 40 and report.failed_now == 1
    rows = {r.email_given: r for r in _ledger(store)}
    bad = rows.pop("bad.address@example.net")
    assert bad.status == "failed" and "Does not contain a valid address" in bad.last_error
    assert bad.sub_status == "bounced"  # an invalid address is a hard bounce: never mailed again
    assert {r.status for r in rows.values()} == {"sent"}
    assert server.statuses() == [400, 202]
    counts = server.count_by_recipient()
    assert set(counts) == set(rows) and set(counts.values()) == {1}


def test_add_subscriber_path_with_non_ascii_names(sg_settings, server, store):
    settings = sg_settings()
    add_subscriber(store, "zoe@example.net", name="Zoé Ça-Va <b>")
    add_subscriber(store, "Jean.Dupont@example.net", name="Dupont, Jean")
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    zoe = server.delivered_to("zoe@example.net")[0]
    assert zoe.name == "Zoé Ça-Va <b>"
    assert "Bonjour Zoé," in zoe.html and "Bonjour Zoé," in zoe.text  # greeted by the first name
    jean = server.delivered_to("Jean.Dupont@example.net")[0]
    assert jean.name == "Dupont Jean" and "Bonjour Jean," in jean.text


def test_a_split_batch_never_raises_once_part_of_it_was_accepted(sg_settings, server):
    """More than 1000 messages means several requests: once one is accepted, a later failure is reported
    per recipient (raising would make the dispatcher resend what SendGrid already took)."""
    settings = sg_settings()
    server.script(Fault("ok"), Fault("status", 503))
    results = SendGridBackend.from_settings(settings).send_batch(
        Batch(_factory(settings), tuple(_message(i) for i in range(2500)), 1))
    assert [e.personalizations for e in server.log] == [1000, 1000]  # the third request is not even tried
    assert [r.outcome for r in results[:1000]] == ["sent"] * 1000
    # the 503 was SendGrid's, not theirs: the rest is deferred (queued again, counted against nobody)
    assert {r.outcome for r in results[1000:]} == {"deferred"} and "503" in results[1500].error
    assert len(server.accepted) == 1


# ----- total deadline and the stop -----------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["hang", "trickle"])
def test_a_stalled_or_trickling_answer_is_cut_at_the_total_deadline(sg_settings, server, fault):
    """A 202 status line then one header byte every 0.2 s: every read succeeds, only a total deadline ends it."""
    settings = sg_settings()
    if fault == "hang":
        server.hang_next(seconds=60)
    else:
        server.trickle_next(seconds=60, interval=0.2)
    backend = SendGridBackend.from_settings(settings, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TransientError, match="no complete answer within 1 s"):
        backend.send_batch(Batch(_factory(settings), (_message(1), _message(2)), 1))
    assert 0.9 < time.monotonic() - started < 2.5
    assert server.accepted == []


def test_the_timeout_setting_bounds_each_request(sg_settings, server):
    backend = SendGridBackend.from_settings(sg_settings(MAILER_SENDGRID_TIMEOUT="1.5"))
    assert backend.timeout == 1.5


def test_abort_cuts_a_request_in_flight_at_once(sg_settings, server):
    settings = sg_settings()
    server.trickle_next(seconds=60, interval=0.2)
    backend = SendGridBackend.from_settings(settings, timeout=60)
    threading.Timer(0.5, backend.abort).start()
    started = time.monotonic()
    with pytest.raises(TransientError, match="cut by a stop request"):
        backend.send_batch(Batch(_factory(settings), (_message(1),), 1))
    assert time.monotonic() - started < 1.5


def test_a_long_lived_process_gets_its_interpreter_settings_back_after_a_send(sg_settings, server, store, tmp_path):
    """The scheduler and `mailer worker` live on between sends: what a send tunes for itself (fewer
    garbage collections, prompter thread switches: `dispatch.sending_mode`) is in force during the send
    and back to the process's own values after it."""
    import gc
    import sys

    before = (gc.get_threshold(), sys.getswitchinterval())
    during = []
    server.latency = 0.05
    settings = sg_settings(MAILER_BATCH_SIZE="100")
    _populate(store, tmp_path, 300)
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE,
                                 on_progress=lambda _: during.append((gc.get_threshold(), sys.getswitchinterval())))
    assert report.complete and during
    assert all(threshold[0] >= dispatch.GC_THRESHOLD and interval <= dispatch.SWITCH_INTERVAL
               for threshold, interval in during)
    assert (gc.get_threshold(), sys.getswitchinterval()) == before


# ----- requests in flight at once (the pipeline) -----------------------------------------------------------
def test_requests_overlap_by_default_and_never_exceed_the_in_flight_bound(sg_settings, server, store, tmp_path):
    """With an API that takes 0.1 s to answer, several requests are in flight at once without any flag,
    and the recipients in flight never exceed MAILER_SENDGRID_IN_FLIGHT (counted by the server)."""
    server.latency = 0.1
    settings = sg_settings(MAILER_BATCH_SIZE="100", MAILER_SENDGRID_IN_FLIGHT="250")
    _populate(store, tmp_path, 1200)
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert report.complete
    _assert_each_once(server, store, 1200)
    assert server.max_in_flight_requests >= 2, "the requests went one after another"
    assert server.max_in_flight_recipients <= 250
    assert max(len(r.personalizations) for r in server.accepted) <= 100


@pytest.mark.parametrize("workers", [1, 10])
def test_workers_shrink_the_requests_to_keep_the_in_flight_bound(sg_settings, server, store, tmp_path, workers):
    server.latency = 0.05
    settings = sg_settings(MAILER_SENDGRID_IN_FLIGHT="300")
    _populate(store, tmp_path, 700)
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE, workers=workers)
    assert report.complete
    _assert_each_once(server, store, 700)
    assert server.max_in_flight_recipients <= 300
    assert max(len(r.personalizations) for r in server.accepted) == 300 // workers


def test_a_429_slows_the_whole_send_not_one_thread(sg_settings, server, store, tmp_path):
    """One request meets a 429 (Retry-After: 2) while others are in flight: no thread hands anything
    over until the 2 s are up; then everyone is delivered once."""
    server.latency = 0.2
    settings = sg_settings(MAILER_BATCH_SIZE="100")
    _populate(store, tmp_path, 1500)
    server.script(Fault("ok"), Fault("ok"))  # the first two requests go through…
    server.rate_limit_next(retry_after=2)      # …the third is refused while they are in flight
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert report.complete
    _assert_each_once(server, store, 1500)
    refused = next(e for e in server.log if e.status == 429)
    # (a request that passed its gate check just before the 429 was heard may still arrive a little
    # later on a loaded machine: the window starts 1 s after the 429)
    during = [e for e in server.log if refused.at + 1.0 < e.at < refused.at + 1.9]
    assert during == [], f"{len(during)} request(s) sent while the send should have been waiting"
    assert server.max_in_flight_requests >= 2


def test_the_rate_limit_holds_across_the_threads_of_a_send(sg_settings, server, store, tmp_path):
    """MAILER_RATE_LIMIT = 2000 recipients/s with 4 requests of 100 in flight: 1000 recipients take at
    least (1000 - 100) / 2000 s (the first request may go at once). Each answer takes 0.2 s, four times
    the 0.05 s between two requests' slots, so the threads' requests overlap while the rate holds."""
    server.latency = 0.2
    settings = sg_settings(MAILER_BATCH_SIZE="100", MAILER_SENDGRID_IN_FLIGHT="400", MAILER_RATE_LIMIT="2000")
    _populate(store, tmp_path, 1000)
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert report.complete
    _assert_each_once(server, store, 1000)
    assert report.elapsed >= (1000 - 100) / 2000  # the threads book their slots in one shared schedule
    assert server.max_in_flight_requests >= 2


def test_request_bodies_parse_back_to_the_reference_dicts(sg_settings, server, store, tmp_path):
    """The request body is encoded by orjson from the static part prepared once and the personalization
    dicts; the oracle is the standard library's parser: what SendGrid's stand-in received, read with
    `json.loads`, equals the dicts `personalization()` builds one key at a time, on generated recipients
    (quotes, backslashes, Unicode beyond the BMP, U+2028, HTML specials, commas in names, empty names,
    huge and tiny ids)."""
    import random

    settings = sg_settings()
    factory = _factory(settings)
    backend = SendGridBackend.from_settings(settings)
    rng = random.Random(7)
    alphabet = "aéÉ\"'\\<>&;, -ſ€😀\u00a0\u2028zß"
    messages = []
    for n in range(400):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14)))
        local = "".join(rng.choice("abc.+_-'&") for _ in range(rng.randrange(1, 10))) + str(n)
        first = rng.choice(["", "jean", "ÉLOÏSE", "N/A", name])
        recipient = Recipient(email=f"{local}@example.org", name=name, subscriber_id=rng.choice([None, 0, 2**62, n]),
                              first_name=first, unsubscribe_url=f"https://lettre.example.org/u/t{n}")
        messages.append(OutgoingMessage(recipient, f"<m{n}@example.org>", delivery_id=rng.choice([None, n, 10**12])))
    with backend:
        results = backend.send_batch(Batch(factory, tuple(messages), 12, "Thu, 26 Nov 2026 07:00:00 GMT"))
        expected = [backend.personalization(factory, message, 12) for message in messages]
    assert [(r.outcome, r.error) for r in results if r.outcome != "sent"] == []
    body = server.accepted[0].body  # parsed by the stand-in with json.loads
    assert body["personalizations"] == expected
    assert {k: v for k, v in body.items() if k != "personalizations"} == backend.static_part(factory, factory.key)


def test_the_request_body_is_posted_as_json_text_with_a_json_content_type(sg_settings, server, store, tmp_path):
    settings = sg_settings()
    _populate(store, tmp_path, 3)
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    request = server.accepted[0]
    assert request.headers["Content-Type"].split(";")[0] == "application/json"
    assert validate(request.body) == []


# ----- header values SendGrid writes as they are ----------------------------------------------------
@pytest.mark.parametrize("base_length, name_length", [(0, 0), (300, 80), (MAX_BASE_URL - 60, 150), (MAX_BASE_URL, 200)],
                         ids=["short", "medium", "near-maximum", "maximum"])
def test_every_header_sendgrid_writes_is_one_valid_line(base_length, name_length, sg_settings, server, sqlite_store,
                                                        tmp_path):
    """SendGrid's Mail Send v3 takes `headers` values as plain strings that the caller must have encoded
    (its reference says nothing of folding, and the values carry no line break), so each is written as one
    line `Name: value`: at most 998 octets (RFC 5322 §2.1.1) and read back whole by a standard parser
    (email.policy.default), for base URLs up to MAILER_BASE_URL's maximum and long list names. The https
    one-click URL (RFC 8058) is always there; the mailto alternative (RFC 2369) when the line has room."""
    base = "https://lettre.example.org"
    if base_length:
        base += ("/" + "chemin-" * 200)[:base_length - len(base)]
    name = ("Le Fil du jeudi, édition régionale « Nord » " * 6)[:name_length].strip() or "Le Fil du jeudi"
    settings = sg_settings(MAILER_BASE_URL=base, MAILER_NAME=name, database_url=str(sqlite_store.engine.url))
    assert len(settings.base_url) == max(base_length, len("https://lettre.example.org"))
    _populate(sqlite_store, tmp_path, 3)
    assert dispatch.send_issue(settings, sqlite_store, EXAMPLE_ISSUE).counts["sent"] == 3
    delivered = [d for address in server.recipients() for d in server.delivered_to(address)]
    assert len(delivered) == 3
    for item in delivered:
        raw = b"".join(f"{key}: {value}\r\n".encode("utf-8") for key, value in item.headers.items())
        assert all(len(line) <= 998 for line in raw.split(b"\r\n")), max(map(len, raw.split(b"\r\n")))
        parsed = BytesParser(policy=email_policy.default).parsebytes(raw + b"\r\n")
        assert not parsed.defects
        for key, value in item.headers.items():
            assert not parsed[key].defects and str(parsed[key]) == str(make_header(decode_header(value))), key
        urls = [part.strip().strip("<>") for part in str(parsed["List-Unsubscribe"]).split(",")]
        assert urls[0].startswith(settings.base_url + "/u/") and parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        if base_length < MAX_BASE_URL - 100:  # room for the mailto alternative
            assert urls[1:] == [settings.unsubscribe_mailto_url]
        assert str(parsed["List-Id"]).endswith(f"<{settings.list_id_value}>")


# ----- kept-alive connections -------------------------------------------------------------------------
def _send_in_requests(settings, store, tmp_path, requests: int, per_request: int = 3):
    _populate(store, tmp_path, requests * per_request)
    return dispatch.send_issue(settings, store, EXAMPLE_ISSUE, workers=1)


def test_a_sender_thread_keeps_one_connection_for_its_requests(sg_settings, server, store, tmp_path):
    """Over a real network each new HTTPS connection costs two round trips (TCP and TLS handshakes)
    before the request's own: requests reuse a kept-alive connection instead of opening one each (as
    urllib does). With one request in flight the send has two lanes, so at most two connections."""
    report = _send_in_requests(sg_settings(MAILER_BATCH_SIZE="3"), store, tmp_path, requests=8)
    assert report.counts["sent"] == 24
    assert len(server.accepted) == 8
    assert 1 <= server.connections <= 2
    assert sorted(server.count_by_recipient().values()) == [1] * 24


def test_a_server_that_closes_every_connection_is_followed(sg_settings, server, store, tmp_path):
    """`Connection: close` on every answer: each request opens a new connection, nobody is lost or
    sent twice."""
    server.keep_alive = False
    report = _send_in_requests(sg_settings(MAILER_BATCH_SIZE="3"), store, tmp_path, requests=6)
    assert report.counts["sent"] == 18
    assert server.connections == len(server.accepted) == 6
    assert sorted(server.count_by_recipient().values()) == [1] * 18


@pytest.mark.parametrize("after", [1, 2])
def test_a_connection_the_server_closed_without_a_word_is_not_reused(after, sg_settings, server, store, tmp_path,
                                                                     fast_backoff):
    """A server's idle timer closes a kept connection after an answer without saying so: the client
    finds it closed before reusing it and opens a new one. Every recipient once, and no request lost
    on the dead connection (each accepted request was answered)."""
    server.silent_close_after = after
    report = _send_in_requests(sg_settings(MAILER_BATCH_SIZE="3"), store, tmp_path, requests=6)
    assert report.counts["sent"] == 18
    assert sorted(server.count_by_recipient().values()) == [1] * 18
    assert server.connections >= -(-6 // after)


def test_a_request_cut_by_its_deadline_leaves_no_connection_to_reuse(sg_settings, server, store, tmp_path,
                                                                     fast_backoff):
    """A request that outlives MAILER_SENDGRID_TIMEOUT on a kept connection is cut (its rows go back to
    the queue) and that connection is never used again: the next request opens a new one and
    everyone is reached."""
    server.script(Fault("ok"), Fault("hang", seconds=5))  # the second request (on the kept connection) hangs
    report = _send_in_requests(sg_settings(MAILER_BATCH_SIZE="3", MAILER_SENDGRID_TIMEOUT="0.5"), store, tmp_path,
                               requests=3)
    assert report.counts["sent"] == 9
    assert sorted(server.count_by_recipient().values()) == [1] * 9
    assert server.connections >= 2


def test_requests_go_through_the_configured_proxy(sg_settings, server, store, tmp_path, monkeypatch):
    """With `http_proxy` set for the API's host, requests keep urllib's path through the proxy (one
    connection each): the proxy sees the absolute URL of the Mail Send endpoint."""
    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def proxy() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += conn.recv(65536)
                seen.append(head.split(b"\r\n")[0])
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nX-Message-Id: via-proxy\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")

    threading.Thread(target=proxy, daemon=True).start()
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    try:
        report = _send_in_requests(sg_settings(MAILER_BATCH_SIZE="3"), store, tmp_path, requests=2)
    finally:
        listener.close()
    assert report.counts["sent"] == 6
    assert seen == [f"POST {server.url}/v3/mail/send HTTP/1.1".encode()] * 2
    assert server.accepted == []


# ----- kept-alive connections over HTTPS ----------------------------------------------------------------
@pytest.fixture(scope="module")
def sg_certs(tmp_path_factory):
    from .smtp_server import make_certificates
    return make_certificates(tmp_path_factory.mktemp("sg-certs"))


@pytest.fixture
def https_server(sg_certs, monkeypatch):
    """The stand-in behind TLS (a certificate for localhost and 127.0.0.1 from a throw-away CA, which the
    process trusts through SSL_CERT_FILE, as an operator's own CA bundle would be)."""
    import mailer.providers.sendgrid as sendgrid_module

    def start(host: str = "127.0.0.1") -> SendGridServer:
        srv = SendGridServer(KEY, host=host)
        srv._httpd.socket = sg_certs.server_context().wrap_socket(srv._httpd.socket, server_side=True)
        started.append(srv.start())
        return srv

    started: list[SendGridServer] = []
    monkeypatch.setenv("SSL_CERT_FILE", str(sg_certs.ca))
    sendgrid_module._default_ssl_context.cache_clear()
    yield start
    for srv in started:
        srv.stop()
    sendgrid_module._default_ssl_context.cache_clear()


def _https_batch(settings, start: int = 0) -> Batch:
    return Batch(_factory(settings), tuple(_message(start + i) for i in range(3)), issue_id=42)


def test_over_https_requests_share_one_verified_connection(https_server, sg_settings):
    srv = https_server()
    settings = sg_settings(MAILER_SENDGRID_API_URL=f"https://localhost:{srv.port}")
    with SendGridBackend.from_settings(settings) as backend:
        for k in range(4):
            assert [r.outcome for r in backend.send_batch(_https_batch(settings, 3 * k))] == ["sent"] * 3
    assert len(srv.accepted) == 4 and srv.connections == 1


@pytest.mark.parametrize("reused", [False, True])
def test_over_https_a_stop_and_the_deadline_cut_a_request_on_a_new_connection_too(reused, https_server,
                                                                                   sg_settings):
    """Wrapping a socket in TLS detaches the TCP socket the guard held: the TLS socket must be guarded
    too, or a request on a new HTTPS connection (every thread's first, every one after a failure)
    escapes the deadline (a trickling server held it 8 s past a 1 s deadline) and a stop (20 s)."""
    srv = https_server()
    settings = sg_settings(MAILER_SENDGRID_API_URL=f"https://localhost:{srv.port}", MAILER_SENDGRID_TIMEOUT="1")
    with SendGridBackend.from_settings(settings) as backend:
        if reused:
            backend.send_batch(_https_batch(settings))
        srv.trickle_next(seconds=8, interval=0.3)
        started = time.monotonic()
        with pytest.raises(TransientError, match="no complete answer within 1 s"):
            backend.send_batch(_https_batch(settings, 10))
        assert time.monotonic() - started < 2.5
    with SendGridBackend.from_settings(sg_settings(MAILER_SENDGRID_API_URL=f"https://localhost:{srv.port}")) \
            as backend:
        if reused:
            backend.send_batch(_https_batch(settings, 20))
        srv.hang_next(20)
        threading.Timer(0.5, backend.abort).start()
        started = time.monotonic()
        with pytest.raises(TransientError, match="cut by a stop request"):
            backend.send_batch(_https_batch(settings, 30))
        assert time.monotonic() - started < 2


def test_over_https_a_stop_cuts_a_stalled_tls_handshake(https_server, sg_settings):
    """A server that accepts the connection and never answers the TLS handshake: a stop cuts it."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        https_server()  # trusts the test CA
        settings = sg_settings(MAILER_SENDGRID_API_URL=f"https://localhost:{listener.getsockname()[1]}")
        with SendGridBackend.from_settings(settings) as backend:
            threading.Timer(0.5, backend.abort).start()
            started = time.monotonic()
            with pytest.raises(TransientError, match="cut by a stop request"):
                backend.send_batch(_https_batch(settings))
            assert time.monotonic() - started < 2
    finally:
        listener.close()


@pytest.mark.parametrize("case", ["untrusted", "wrong host"])
def test_over_https_a_certificate_refused_says_why(case, https_server, sg_settings, monkeypatch):
    """The error names the reason (hostname mismatch, unknown issuer), not only OpenSSL's code
    CERTIFICATE_VERIFY_FAILED (`SSLError.reason`), and nothing reaches the server."""
    srv = https_server("127.0.0.2" if case == "wrong host" else "127.0.0.1")
    if case == "untrusted":
        monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")
        import mailer.providers.sendgrid as sendgrid_module
        sendgrid_module._default_ssl_context.cache_clear()
    host = "127.0.0.2" if case == "wrong host" else "localhost"
    settings = sg_settings(MAILER_SENDGRID_API_URL=f"https://{host}:{srv.port}")
    with SendGridBackend.from_settings(settings) as backend:
        with pytest.raises(TransientError) as raised:
            backend.send_batch(_https_batch(settings))
    expected = "IP address mismatch" if case == "wrong host" else "unable to get local issuer certificate"
    assert "certificate verify failed" in str(raised.value) and expected in str(raised.value)
    assert srv.accepted == []


def test_a_connection_idle_past_the_limit_is_not_reused(sg_settings, server, monkeypatch):
    """A kept connection idle for longer than KEEP_ALIVE_IDLE (4 s; here 0.3 s) is closed and a new one
    opened: servers close idle connections on timers of their own (Apache's default is 5 s), and a
    request written into one that is being closed would be lost in the ambiguous window. Within the
    limit the same connection serves the next request."""
    import mailer.providers.sendgrid as sendgrid_module

    monkeypatch.setattr(sendgrid_module, "KEEP_ALIVE_IDLE", 0.3)
    settings = sg_settings()
    backend = SendGridBackend.from_settings(settings)
    batch = lambda i: Batch(_factory(settings), (_message(i),), issue_id=1)  # noqa: E731
    try:
        results = [backend.send_batch(batch(1)), backend.send_batch(batch(2))]
        assert server.connections == 1  # back to back: one connection
        time.sleep(0.5)
        results.append(backend.send_batch(batch(3)))
        assert server.connections == 2  # idle past the limit: a new one
    finally:
        backend.close()
    assert [r.outcome for result in results for r in result] == ["sent"] * 3
