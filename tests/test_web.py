"""The public web app at the HTTP level: unsubscribe (page + RFC 8058 one-click), subscribe + confirm,
the SendGrid event webhook and the archive — against a real store (SQLite, and PostgreSQL when
MAILER_TEST_DATABASE_URL is set) and the outbox backend (emails are read back as .eml files).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import warnings
from email import message_from_bytes, policy
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from mailer import tokens
from mailer.config import secret_key_for
from mailer.schema import issues, provider_events, subscriber_events, subscribers
from mailer.store import utcnow
from mailer.subscribers import add_subscriber, set_subscriber_status
from mailer.web import SIGNATURE_HEADER, TIMESTAMP_HEADER, classify_sendgrid_event, create_app

from .conftest import EXAMPLE_ISSUE

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

ONE_CLICK = {"content": b"List-Unsubscribe=One-Click",
             "headers": {"Content-Type": "application/x-www-form-urlencoded"}}


# ----- helpers -----------------------------------------------------------------------------------
def make_web(settings, store, **kwargs) -> SimpleNamespace:
    app = create_app(settings, store=store, **kwargs)
    client = TestClient(app, base_url="https://lettre.example.org")
    return SimpleNamespace(app=app, client=client, store=store, settings=settings, key=secret_key_for(settings),
                           outbox=settings.outbox_dir)


@pytest.fixture
def web(make_settings, store):
    """The app on SQLite and on PostgreSQL: for behaviour that lives in the database."""
    ns = make_web(make_settings(), store)
    with ns.client:
        yield ns


@pytest.fixture
def web1(make_settings, sqlite_store):
    """The app on SQLite only: for behaviour that lives in HTTP and HTML."""
    ns = make_web(make_settings(), sqlite_store)
    with ns.client:
        yield ns


def status_of(store, subscriber_id: int) -> str:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(subscribers.c.status).where(subscribers.c.id == subscriber_id)).scalar_one()


def events_of(store, subscriber_id: int, kind: str | None = None) -> list:
    query = sa.select(subscriber_events).where(subscriber_events.c.subscriber_id == subscriber_id)
    if kind:
        query = query.where(subscriber_events.c.kind == kind)
    with store.engine.connect() as conn:
        return list(conn.execute(query.order_by(subscriber_events.c.id)).mappings())


def all_events(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(subscriber_events)).scalar_one()


def snapshot(store) -> list:
    with store.engine.connect() as conn:
        people = conn.execute(sa.select(subscribers.c.id, subscribers.c.status).order_by(subscribers.c.id)).all()
    return [tuple(p) for p in people] + [all_events(store)]


def unsub_token(web, subscriber_id: int) -> str:
    return tokens.make_token(web.key, "unsubscribe", subscriber_id)


def read_eml(path: Path):
    return message_from_bytes(path.read_bytes(), policy=policy.default)


def text_part(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def html_part(message) -> str:
    return message.get_body(preferencelist=("html",)).get_content()


def confirm_link(web, email: str) -> str:
    message = read_eml(web.outbox / "confirm" / f"test-{email}.eml")
    match = re.search(r"https://lettre\.example\.org(/confirm/[A-Za-z0-9_-]+)", text_part(message))
    assert match, text_part(message)
    assert match.group(1) in html_part(message)
    return match.group(1)


def page_state(response) -> str:
    match = re.search(r'<main id="main" data-state="([^"]*)"', response.text)
    return match.group(1) if match else ""


# ----- unsubscribe ---------------------------------------------------------------------------------
def test_one_click_post_unsubscribes_at_once_and_records_the_event(web):
    sid, _ = add_subscriber(web.store, "ada@example.org", name="Ada")
    response = web.client.post(f"/u/{unsub_token(web, sid)}", **ONE_CLICK)
    assert response.status_code == 200
    assert status_of(web.store, sid) == "unsubscribed"
    (event,) = events_of(web.store, sid, "status")
    assert (event["old_status"], event["new_status"], event["source"]) == ("active", "unsubscribed", "one-click")
    assert page_state(response) == "unsubscribed"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_one_click_accepts_multipart_bodies_too(web1):
    sid, _ = add_subscriber(web1.store, "multi@example.org")
    response = web1.client.post(f"/u/{unsub_token(web1, sid)}", files={"List-Unsubscribe": (None, "One-Click")})
    assert response.status_code == 200
    assert events_of(web1.store, sid, "status")[-1]["source"] == "one-click"


def test_get_and_head_never_unsubscribe(web1):
    sid, _ = add_subscriber(web1.store, "scanner@example.org", name="Scan")
    token = unsub_token(web1, sid)
    for _ in range(3):
        page = web1.client.get(f"/u/{token}")
        assert web1.client.head(f"/u/{token}").status_code == 200
    assert page.status_code == 200 and page_state(page) == "ask"
    assert f'action="/u/{token}"' in page.text and 'method="post"' in page.text
    assert "Le Fil du jeudi" in page.text and "scanner@example.org" in page.text
    assert status_of(web1.store, sid) == "active"
    assert events_of(web1.store, sid, "status") == []
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_unsubscribe_is_idempotent(web):
    sid, _ = add_subscriber(web.store, "twice@example.org")
    token = unsub_token(web, sid)
    answers = [web.client.post(f"/u/{token}", **ONE_CLICK) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert status_of(web.store, sid) == "unsubscribed"
    assert len(events_of(web.store, sid, "status")) == 1


def test_page_button_unsubscribes_then_resubscribe_is_the_persons_choice(web):
    sid, _ = add_subscriber(web.store, "page@example.org")
    token = unsub_token(web, sid)
    done = web.client.post(f"/u/{token}", data={})
    assert page_state(done) == "unsubscribed"
    assert f'action="/u/{token}/resubscribe"' in done.text
    assert events_of(web.store, sid, "status")[-1]["source"] == "web"
    assert web.client.get(f"/u/{token}/resubscribe").status_code == 405  # a GET changes nothing
    again = web.client.post(f"/u/{token}/resubscribe")
    assert again.status_code == 200 and page_state(again) == "resubscribed"
    assert status_of(web.store, sid) == "active"
    last = events_of(web.store, sid, "status")[-1]
    assert (last["old_status"], last["new_status"], last["source"]) == ("unsubscribed", "active", "web")
    assert web.client.post(f"/u/{token}/resubscribe").status_code == 200  # idempotent
    assert len(events_of(web.store, sid, "status")) == 2


def test_suppressed_people_see_why_and_may_come_back_themselves(web):
    bounced, _ = add_subscriber(web.store, "bounced@example.org")
    complained, _ = add_subscriber(web.store, "complained@example.org")
    set_subscriber_status(web.store, "bounced@example.org", "bounced", source="test")
    set_subscriber_status(web.store, "complained@example.org", "complained", source="test")
    assert page_state(web.client.get(f"/u/{unsub_token(web, bounced)}")) == "bounced"
    # one-click on an already-suppressed person: 200, and a complaint is not softened into an unsubscribe
    assert page_state(web.client.post(f"/u/{unsub_token(web, complained)}", **ONE_CLICK)) == "complained"
    assert status_of(web.store, complained) == "complained"
    # a person who complained and now presses "subscribe me again" themselves comes back (documented)
    assert web.client.post(f"/u/{unsub_token(web, complained)}/resubscribe").status_code == 200
    assert status_of(web.store, complained) == "active"


@pytest.mark.parametrize("method", ["get", "post", "resubscribe"])
def test_forged_tampered_and_truncated_tokens_change_nothing(web, method):
    sid, _ = add_subscriber(web.store, "victim@example.org")
    good = unsub_token(web, sid)
    tampered = good[:-1] + ("A" if good[-1] != "A" else "B")
    flipped_id = tokens.make_token(b"another key", "unsubscribe", sid)
    wrong_purpose = tokens.make_token(web.key, "confirm", sid)
    malformed = [good[:-4], good[:10], tampered, flipped_id, wrong_purpose, "x", "!!!!", "A" * 64, "%00" + good,
                 good + "AAAA", good[:5] + "." + good[5:], good[:5] + "%20" + good[5:], good + "="]
    before = snapshot(web.store)

    def call(token: str):
        if method == "get":
            return web.client.get(f"/u/{token}")
        if method == "post":
            return web.client.post(f"/u/{token}", **ONE_CLICK)
        return web.client.post(f"/u/{token}/resubscribe")

    for token in malformed:
        response = call(token)
        assert response.status_code in (400, 404), token
        assert response.status_code == 400 or "/" in token or "%" in token, token
        assert "victim@example.org" not in response.text
    unknown = call(unsub_token(web, sid + 1000))
    assert unknown.status_code == 404 and page_state(unknown) == "unknown_link"
    assert snapshot(web.store) == before


def test_a_test_send_link_leads_to_a_friendly_page(web1):
    before = snapshot(web1.store)
    token = unsub_token(web1, 0)
    for response in (web1.client.get(f"/u/{token}"), web1.client.post(f"/u/{token}", **ONE_CLICK),
                     web1.client.post(f"/u/{token}/resubscribe")):
        assert response.status_code == 200 and page_state(response) == "test"
        assert "Ceci était un message de test" in response.text
    assert snapshot(web1.store) == before


def test_erased_people_are_unknown(web):
    from mailer.subscribers import remove_subscriber
    sid, _ = add_subscriber(web.store, "gone@example.org")
    remove_subscriber(web.store, "gone@example.org", purge=True)
    assert web.client.get(f"/u/{unsub_token(web, sid)}").status_code == 404
    assert web.client.post(f"/u/{unsub_token(web, sid)}/resubscribe").status_code == 404


# ----- subscribe and confirm ---------------------------------------------------------------------------
def test_subscribe_form_is_accessible_and_works_without_javascript(web1):
    page = web1.client.get("/subscribe")
    assert page.status_code == 200 and "<script" not in page.text
    assert '<form method="post" action="/subscribe">' in page.text
    for field in ("email", "name"):
        assert f'<label for="{field}">' in page.text and f'id="{field}" name="{field}"' in page.text
    assert re.search(r'<div class="hp" aria-hidden="true">\s*<label for="website">', page.text)
    assert 'name="website" value="" tabindex="-1" autocomplete="off"' in page.text
    assert '<html lang="fr">' in page.text


def test_subscribe_makes_a_pending_subscriber_and_the_emailed_link_confirms(web):
    response = web.client.post("/subscribe", data={"email": "Nouvelle@Example.org", "name": "Nora"})
    assert response.status_code == 200 and page_state(response) == "check-inbox"
    with web.store.engine.connect() as conn:
        row = web.store.subscriber_by_email(conn, "nouvelle@example.org")
    assert (row.status, row.source, row.name, row.email_given) == ("pending", "web", "Nora", "Nouvelle@example.org")
    message = read_eml(web.outbox / "confirm" / "test-Nouvelle@example.org.eml")
    assert message["To"].addresses[0].addr_spec == "Nouvelle@example.org"
    assert "Confirmez votre abonnement" in message["Subject"]
    assert "Bonjour Nora," in text_part(message)
    link = confirm_link(web, "Nouvelle@example.org")
    assert "nouvelle" not in link.lower() and "@" not in link  # no address in any URL
    assert web.client.head(link).status_code == 200  # a prefetcher's HEAD confirms no one
    assert status_of(web.store, row.id) == "pending"
    assert web.client.get(link + "!").status_code == 400 and web.client.get(link[:12] + "." + link[12:]).status_code == 400
    confirmed = web.client.get(link)
    assert confirmed.status_code == 200 and page_state(confirmed) == "confirmed"
    assert status_of(web.store, row.id) == "active"
    assert events_of(web.store, row.id, "status")[-1]["reason"].startswith("confirmed by email link")
    welcome = read_eml(web.outbox / "welcome" / "test-Nouvelle@example.org.eml")
    assert "Bienvenue" in welcome["Subject"]
    assert "List-Unsubscribe" in welcome
    again = web.client.get(link)  # idempotent; no second welcome event
    assert page_state(again) == "confirmed" and len(events_of(web.store, row.id, "status")) == 1


def test_subscribe_answers_the_same_whatever_the_address(web):
    add_subscriber(web.store, "active@example.org")
    add_subscriber(web.store, "left@example.org")
    set_subscriber_status(web.store, "left@example.org", "unsubscribed", source="test")

    def answer(email: str):
        response = web.client.post("/subscribe", data={"email": email, "name": "X"})
        return response.status_code, response.text.replace(email, "EMAIL"), dict(
            (k, v) for k, v in response.headers.items() if k.lower() not in ("content-length", "date"))

    new = answer("fresh@example.org")
    assert answer("fresh@example.org") == new        # now pending
    assert answer("active@example.org") == new       # active: nothing visible, nothing sent
    assert answer("left@example.org") == new         # unsubscribed: may come back (own choice, confirmed)
    assert not (web.outbox / "confirm" / "test-active@example.org.eml").exists()
    with web.store.engine.connect() as conn:
        active = web.store.subscriber_by_email(conn, "active@example.org")
    assert status_of(web.store, active.id) == "active" and events_of(web.store, active.id, "confirm_sent") == []


def test_confirmation_emails_are_throttled_per_address(web1):
    for _ in range(3):
        web1.client.post("/subscribe", data={"email": "again@example.org"})
    with web1.store.engine.connect() as conn:
        row = web1.store.subscriber_by_email(conn, "again@example.org")
    assert len(events_of(web1.store, row.id, "confirm_sent")) == 1


def test_a_suppressed_person_comes_back_only_by_pressing_the_emailed_button(web):
    sid, _ = add_subscriber(web.store, "back@example.org", name="Back")
    web.client.post(f"/u/{unsub_token(web, sid)}", **ONE_CLICK)
    web.client.post("/subscribe", data={"email": "back@example.org"})
    assert status_of(web.store, sid) == "unsubscribed"  # the form alone changes nothing
    link = confirm_link(web, "back@example.org")
    page = web.client.get(link)  # a link scanner's GET must not undo an unsubscribe
    assert page_state(page) == "ask" and status_of(web.store, sid) == "unsubscribed"
    assert f'action="{link}"' in page.text
    done = web.client.post(link)
    assert page_state(done) == "confirmed" and status_of(web.store, sid) == "active"


def test_an_old_confirmation_link_never_undoes_a_later_unsubscribe(web):
    web.client.post("/subscribe", data={"email": "old@example.org"})
    link = confirm_link(web, "old@example.org")
    web.client.get(link)
    with web.store.engine.connect() as conn:
        sid = web.store.subscriber_by_email(conn, "old@example.org").id
    web.client.post(f"/u/{unsub_token(web, sid)}", **ONE_CLICK)
    for response in (web.client.get(link), web.client.post(link)):
        assert response.status_code == 200 and page_state(response) == "stale"
    assert status_of(web.store, sid) == "unsubscribed"


def test_forged_confirm_links_change_nothing(web):
    web.client.post("/subscribe", data={"email": "wait@example.org"})
    with web.store.engine.connect() as conn:
        sid = web.store.subscriber_by_email(conn, "wait@example.org").id
    before = snapshot(web.store)
    for token in (unsub_token(web, sid), tokens.make_token(b"other", "confirm", sid), "garbage",
                  tokens.make_token(web.key, "confirm", sid)[:-2]):
        assert web.client.get(f"/confirm/{token}").status_code == 400
        assert web.client.post(f"/confirm/{token}").status_code == 400
    assert web.client.get(f"/confirm/{tokens.make_token(web.key, 'confirm', sid + 99)}").status_code == 404
    assert web.client.get(f"/confirm/{tokens.make_token(web.key, 'confirm', 0)}").status_code == 404
    assert snapshot(web.store) == before and status_of(web.store, sid) == "pending"


def test_invalid_address_shows_the_form_again_with_an_accessible_error(web1):
    response = web1.client.post("/subscribe", data={"email": '"><script>alert(1)</script>', "name": "<b>n</b>"})
    assert response.status_code == 400 and page_state(response) == "invalid"
    assert 'role="alert"' in response.text and 'aria-describedby="email-error"' in response.text
    assert "<script>alert(1)" not in response.text and "&lt;script&gt;" in response.text
    assert "<b>n</b>" not in response.text
    assert snapshot(web1.store) == [0]


def test_honeypot_pretends_success_and_stores_nothing(web1):
    response = web1.client.post("/subscribe", data={"email": "bot@example.org", "website": "http://spam.example"})
    assert response.status_code == 200 and page_state(response) == "check-inbox"
    assert snapshot(web1.store) == [0]
    assert not (web1.outbox / "confirm").exists()


def test_subscribe_is_rate_limited_per_client(web1):
    codes = [web1.client.post("/subscribe", data={"email": f"r{i}@example.org"}).status_code for i in range(6)]
    assert codes == [200] * 5 + [429]
    limited = web1.client.post("/subscribe", data={"email": "r9@example.org"})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert page_state(limited) == "rate_limited"
    with web1.store.engine.connect() as conn:
        assert web1.store.count_subscribers(conn) == 5
    assert web1.client.get("/subscribe").status_code == 200  # the form itself is never limited


def test_pages_follow_mailer_language(make_settings, sqlite_store):
    ns = make_web(make_settings(MAILER_LANGUAGE="en"), sqlite_store)
    sid, _ = add_subscriber(sqlite_store, "en@example.org")
    with ns.client:
        page = ns.client.get(f"/u/{unsub_token(ns, sid)}")
        assert '<html lang="en">' in page.text and "Unsubscribe me" in page.text
        assert "Subscribe to" in ns.client.get("/subscribe").text
        ns.client.post("/subscribe", data={"email": "new.en@example.org"})
    assert "Confirm your subscription" in read_eml(ns.outbox / "confirm" / "test-new.en@example.org.eml")["Subject"]


def test_names_and_subjects_are_escaped_everywhere(web1):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    sid, _ = add_subscriber(web1.store, "xss@example.org", name=evil)
    for response in (web1.client.get(f"/u/{unsub_token(web1, sid)}"), web1.client.post(f"/u/{unsub_token(web1, sid)}")):
        assert "<script>" not in response.text and "<img src=x" not in response.text
        assert "&lt;script&gt;" in response.text
    with web1.store.begin() as conn:
        conn.execute(issues.insert().values(slug="evil", subject=evil, status="sent", web_html="<p>x</p>",
                                            issue_date="2026-01-01"))
    archive = web1.client.get("/archive")
    assert "<script>" not in archive.text and "&lt;script&gt;" in archive.text


# ----- archive -------------------------------------------------------------------------------------------
def test_archive_lists_sent_issues_and_serves_their_web_version(web):
    from mailer.dispatch import send_issue
    empty = web.client.get("/archive")
    assert empty.status_code == 200 and "Aucune lettre" in empty.text
    assert web.client.get(f"/issues/{EXAMPLE_ISSUE}").status_code == 404
    add_subscriber(web.store, "reader@example.org", name="Reader")
    with web.store.begin() as conn:
        conn.execute(issues.insert().values(slug="draft-issue", subject="Brouillon secret", status="draft",
                                            web_html="<p>secret</p>"))
    send_issue(web.settings, web.store, EXAMPLE_ISSUE)
    archive = web.client.get("/archive")
    assert f'href="/issues/{EXAMPLE_ISSUE}"' in archive.text
    assert "Brouillon secret" not in archive.text
    issue = web.client.get(f"/issues/{EXAMPLE_ISSUE}")
    assert issue.status_code == 200 and "<html" in issue.text.lower()
    assert "reader@example.org" not in issue.text and "Reader" not in issue.text  # no personal values
    assert "script-src" not in issue.headers["Content-Security-Policy"]  # default-src 'none': no script
    assert web.client.get("/issues/draft-issue").status_code == 404
    assert web.client.get("/issues/nope").status_code == 404


# ----- SendGrid event webhook ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ec_keys():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(public).decode("ascii")


def sign(private, body: bytes, timestamp: str) -> str:
    """What SendGrid does: ECDSA P-256 / SHA-256 over timestamp + payload, base64 of the DER signature."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    return base64.b64encode(private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode("ascii")


@pytest.fixture
def hook(make_settings, store, ec_keys):
    yield from _hook(make_settings, store, ec_keys)


@pytest.fixture
def hook1(make_settings, sqlite_store, ec_keys):
    yield from _hook(make_settings, sqlite_store, ec_keys)


def _hook(make_settings, store, ec_keys):
    private, public = ec_keys
    ns = make_web(make_settings(MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY=public), store)

    def post(events, *, timestamp: str | None = None, signature: str | None = None, body: bytes | None = None):
        raw = body if body is not None else json.dumps(events, separators=(",", ":")).encode()
        stamp = timestamp or str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp,
                   SIGNATURE_HEADER: signature or sign(private, raw, stamp)}
        return ns.client.post("/webhooks/sendgrid", content=raw, headers=headers)

    ns.post = post
    ns.private = private
    with ns.client:
        yield ns


def stored_events(store) -> list:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(provider_events).order_by(provider_events.c.id)).mappings())


def sg_event(event: str, email: str, n: int, **extra) -> dict:
    return {"email": email, "timestamp": int(time.time()), "event": event, "sg_event_id": f"evt-{event}-{n}",
            "sg_message_id": f"msg{n}.filter", **extra}


def test_webhook_maps_each_event_type(hook):
    cases = [  # (event, extra, expected kind, expected status)
        ("bounce", {"type": "bounce", "reason": "550 5.1.1 no such user"}, "bounced", "bounced"),
        ("bounce", {"type": "blocked", "reason": "421 try later"}, "blocked", "active"),
        ("spamreport", {}, "complained", "complained"),
        ("unsubscribe", {}, "unsubscribed", "unsubscribed"),
        ("group_unsubscribe", {"asm_group_id": 1}, "unsubscribed", "unsubscribed"),
        ("dropped", {"reason": "Bounced Address"}, "dropped", "bounced"),
        ("dropped", {"reason": "Spam Reporting Address"}, "dropped", "complained"),
        ("dropped", {"reason": "Unsubscribed Address"}, "dropped", "unsubscribed"),
        ("dropped", {"reason": "Spam Content (if spam checker app enabled)"}, "dropped", "active"),
        ("delivered", {"response": "250 OK"}, "delivered", "active"),
        ("open", {}, "opened", "active"),
        ("click", {"url": "https://example.org"}, "clicked", "active"),
        ("deferred", {}, "deferred", "active"),
        ("processed", {}, "processed", "active"),
    ]
    people, events = [], []
    for n, (name, extra, _, _) in enumerate(cases):
        email = f"p{n}@example.org"
        sid, _ = add_subscriber(hook.store, email)
        people.append(sid)
        events.append(sg_event(name, email, n, mailer_subscriber=str(sid), mailer_issue="7", **extra))
    response = hook.post(events)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": len(cases), "new": len(cases), "suppressed": 7}
    rows = stored_events(hook.store)
    assert len(rows) == len(cases)
    for (name, extra, kind, status), sid, row in zip(cases, people, rows):
        assert (row["kind"], row["subscriber_id"], row["issue_id"]) == (kind, sid, 7), name
        assert row["payload"]["event"] == name and row["provider"] == "sendgrid"
        assert status_of(hook.store, sid) == status, (name, extra)
    suppressed = [e for sid in people for e in events_of(hook.store, sid, "status")]
    assert all(e["source"] == "webhook" for e in suppressed) and len(suppressed) == 7


def test_webhook_replay_is_idempotent(hook):
    sid, _ = add_subscriber(hook.store, "replay@example.org")
    events = [sg_event("bounce", "replay@example.org", 1, type="bounce"), sg_event("delivered", "replay@example.org", 2)]
    first = hook.post(events)
    again = hook.post(events)
    assert first.json()["new"] == 2 and again.status_code == 200 and again.json()["new"] == 0
    assert len(stored_events(hook.store)) == 2
    assert len(events_of(hook.store, sid, "status")) == 1
    dup_in_batch = hook.post([sg_event("open", "replay@example.org", 3)] * 2)
    assert dup_in_batch.json()["new"] == 1


@pytest.mark.parametrize("attack", ["other key", "tampered body", "bad base64", "missing signature",
                                    "old timestamp", "future timestamp", "non-numeric timestamp", "empty signature"])
def test_webhook_refuses_unsigned_or_stale_requests(hook1, attack):
    from cryptography.hazmat.primitives.asymmetric import ec
    sid, _ = add_subscriber(hook1.store, "target@example.org")
    events = [sg_event("spamreport", "target@example.org", 1)]
    raw = json.dumps(events).encode()
    now = str(int(time.time()))
    if attack == "other key":
        response = hook1.post(events, signature=sign(ec.generate_private_key(ec.SECP256R1()), raw, now))
    elif attack == "tampered body":
        good = sign(hook1.private, raw, now)
        response = hook1.post(None, body=raw.replace(b"spamreport", b"unsubscribe"), signature=good, timestamp=now)
    elif attack == "bad base64":
        response = hook1.post(events, signature="!!!not base64###")
    elif attack == "missing signature":
        response = hook1.client.post("/webhooks/sendgrid", content=raw, headers={TIMESTAMP_HEADER: now})
    elif attack == "old timestamp":
        old = str(int(time.time()) - 601)
        response = hook1.post(None, body=raw, timestamp=old)  # validly signed, but too old: a replay
    elif attack == "future timestamp":
        response = hook1.post(None, body=raw, timestamp=str(int(time.time()) + 3600))
    elif attack == "non-numeric timestamp":
        response = hook1.post(None, body=raw, timestamp="yesterday")
    else:
        response = hook1.client.post("/webhooks/sendgrid", content=raw, headers={TIMESTAMP_HEADER: now,
                                                                                SIGNATURE_HEADER: ""})
    assert response.status_code == 403
    assert stored_events(hook1.store) == [] and status_of(hook1.store, sid) == "active"


def test_webhook_bad_json_is_400(hook1):
    assert hook1.post(None, body=b"{not json").status_code == 400
    assert hook1.post(None, body=b'"a string"').status_code == 400
    assert hook1.post(None, body=b"[1, 2]").status_code == 400
    assert hook1.post(None, body=b"\xff\xfe").status_code == 400
    assert stored_events(hook1.store) == []


def test_webhook_correlates_by_custom_args_then_by_address(hook):
    a, _ = add_subscriber(hook.store, "Alice@Example.org")
    b, _ = add_subscriber(hook.store, "bob@example.org")
    events = [
        sg_event("delivered", "alice@example.org", 1),                                  # by address (case-insensitive)
        sg_event("delivered", "bob@example.org", 2, mailer_subscriber=str(b)),         # by id
        sg_event("delivered", "bob@example.org", 3, mailer_subscriber=str(a)),         # id names someone else: address wins
        sg_event("delivered", "test@example.org", 4, mailer_subscriber="0"),           # a test send: nobody
        sg_event("delivered", "", 5, mailer_subscriber="not-a-number"),
        {"email": "bob@example.org", "event": "open", "timestamp": 1},                  # no sg_event_id: content hash
    ]
    assert hook.post(events).status_code == 200
    assert [r["subscriber_id"] for r in stored_events(hook.store)] == [a, b, b, None, None, b]
    assert hook.post(events[-1:]).json()["new"] == 0


def test_webhook_never_softens_a_suppression_nor_applies_stale_events(hook):
    sid, _ = add_subscriber(hook.store, "hard@example.org")
    hook.post([sg_event("spamreport", "hard@example.org", 1)])
    hook.post([sg_event("unsubscribe", "hard@example.org", 2), sg_event("bounce", "hard@example.org", 3)])
    assert status_of(hook.store, sid) == "complained"
    both, _ = add_subscriber(hook.store, "both@example.org")  # two steps in one batch: both recorded
    hook.post([sg_event("unsubscribe", "both@example.org", 10), sg_event("spamreport", "both@example.org", 11)])
    assert status_of(hook.store, both) == "complained"
    assert [(e["old_status"], e["new_status"]) for e in events_of(hook.store, both, "status")] == [
        ("active", "unsubscribed"), ("unsubscribed", "complained")]
    # back by their own choice; a bounce from BEFORE that (delivered late by SendGrid's retries) is ignored
    back, _ = add_subscriber(hook.store, "back@example.org")
    old = sg_event("bounce", "back@example.org", 4, type="bounce")
    old["timestamp"] = int(time.time()) - 3600
    with hook.store.begin() as conn:
        conn.execute(subscribers.update().where(subscribers.c.id == back).values(confirmed_at=utcnow()))
    hook.post([old])
    assert status_of(hook.store, back) == "active"
    assert stored_events(hook.store)[-1]["kind"] == "bounced"  # stored all the same


def test_webhook_without_a_key_accepts_and_warns_once(make_settings, sqlite_store, caplog):
    ns = make_web(make_settings(), sqlite_store)
    sid, _ = add_subscriber(sqlite_store, "nokey@example.org")
    with ns.client, caplog.at_level(logging.WARNING, logger="mailer.web"):
        for n in range(3):
            response = ns.client.post("/webhooks/sendgrid", json=[sg_event("bounce", "nokey@example.org", n)])
            assert response.status_code == 200
    assert status_of(sqlite_store, sid) == "bounced"
    assert sum("WITHOUT signature verification" in r.message for r in caplog.records) == 1


def test_a_bad_public_key_is_a_clear_configuration_error(make_settings, sqlite_store):
    from mailer.errors import ConfigError
    with pytest.raises(ConfigError, match="MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY"):
        create_app(make_settings(MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY="not a key"), store=sqlite_store)


def test_webhook_takes_a_batch_of_1000_events_quickly(hook):
    add_subscriber(hook.store, "many@example.org")
    events = [sg_event("delivered", "many@example.org", n) for n in range(1000)]
    started = time.perf_counter()
    response = hook.post(events)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200 and response.json()["new"] == 1000
    assert elapsed < 5, elapsed


def test_classify_is_strict_about_what_suppresses():
    assert classify_sendgrid_event({"event": "bounce"}).suppress == "bounced"  # no type: a bounce
    assert classify_sendgrid_event({"event": "bounce", "type": "blocked"}).suppress is None
    assert classify_sendgrid_event({"event": "dropped", "reason": "Invalid"}).suppress is None
    assert classify_sendgrid_event({"event": "weird-thing!"}).kind == "weird_thing_"
    assert classify_sendgrid_event({}).kind == "unknown"
