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
from mailer.providers.sendgrid_events import SIGNATURE_HEADER, TIMESTAMP_HEADER, classify_sendgrid_event
from mailer.config import secret_key_for
from mailer.store.schema import issues, provider_events, subscriber_events, subscribers
from mailer.store import utcnow
from mailer.subscribers import add_subscriber, set_subscriber_status
from mailer.web.app import create_app

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


def notice_files(outbox: Path, kind: str, email: str) -> list[Path]:
    """The notices of `kind` sent to `email`, oldest first: outbox/<kind>/<UTC time>-<address>.eml."""
    found = sorted((outbox / kind).glob(f"*-{email}.eml"))
    for path in found:
        assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-.+\.eml", path.name), path.name
    return found


def notice(outbox: Path, kind: str, email: str):
    """The one notice of `kind` sent to `email`, parsed."""
    (path,) = notice_files(outbox, kind, email)
    return read_eml(path)


def confirm_link(web, email: str) -> str:
    message = read_eml(notice_files(web.outbox, "confirm", email)[-1])
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
    message = notice(web.outbox, "confirm", "Nouvelle@example.org")
    assert message["To"].addresses[0].addr_spec == "Nouvelle@example.org"
    assert message["Subject"] == "Confirmez votre abonnement au Fil du jeudi"
    assert "Nora" not in message.as_string()  # nothing the form's sender typed (see the relay test)
    link = confirm_link(web, "Nouvelle@example.org")
    assert "nouvelle" not in link.lower() and "@" not in link  # no address in any URL
    assert web.client.head(link).status_code == 200  # a prefetcher's HEAD confirms no one
    page = web.client.get(link)  # nor does a GET: it shows the button
    assert page.status_code == 200 and page_state(page) == "ask_pending"
    assert f'<form method="post" action="{link}">' in page.text and 'id="confirm"' in page.text
    assert status_of(web.store, row.id) == "pending" and not (web.outbox / "welcome").exists()
    assert web.client.get(link + "!").status_code == 400 and web.client.get(link[:12] + "." + link[12:]).status_code == 400
    confirmed = web.client.post(link)
    assert confirmed.status_code == 200 and page_state(confirmed) == "confirmed"
    assert status_of(web.store, row.id) == "active"
    assert events_of(web.store, row.id, "status")[-1]["reason"].startswith("confirmed by email link")
    welcome = notice(web.outbox, "welcome", "Nouvelle@example.org")
    assert welcome["Subject"] == "Bienvenue au Fil du jeudi"
    assert "List-Unsubscribe" in welcome
    assert "Bonjour Nora," in text_part(welcome)  # confirmed: their own name now
    for again in (web.client.post(link), web.client.get(link)):  # idempotent; no second welcome
        assert page_state(again) == "confirmed"
    assert len(events_of(web.store, row.id, "status")) == 1
    assert len(notice_files(web.outbox, "welcome", "Nouvelle@example.org")) == 1


RELAYED_TEXTS = [  # (what a stranger types in the form's name field, a word of it no email of ours has)
    ("Gagnez 1000 euros sur https://spam.example/win", "Gagnez"),
    ("Buy now at cheap-pills.example", "cheap-pills"),
    ("Jo\r\nBcc: target@example.net", "Bcc"),
    ("<a href=\"https://phish.example\">Cliquez ici</a>", "phish"),
    ("Urgent : votre compte expire — appelez le 0899 00 00 00", "0899"),
    ("\u202eetiS laiciffO\u202c Offre", "laiciffO"),
    ("Zorglub " * 25, "Zorglub"),
]


def _comparable(message, email: str) -> tuple:
    """What a reader sees, with the per-person parts (address, links, ids, dates) masked."""
    def mask(text: str) -> str:
        text = text.replace(email, "ADDRESS")
        return re.sub(r"/(u|confirm)/[A-Za-z0-9_-]+", r"/\1/TOKEN", text)
    return (str(message["To"]).replace(email, "ADDRESS"), str(message["Subject"]), mask(text_part(message)),
            mask(html_part(message)))


@pytest.mark.parametrize("typed, distinctive", RELAYED_TEXTS)
def test_the_subscribe_form_relays_no_strangers_text(web1, typed, distinctive):
    """Oracle: the confirmation sent after a stranger typed something is, but for the address and
    the links, the very email sent to someone who typed nothing."""
    web1.client.post("/subscribe", data={"email": "target@example.net", "name": typed})
    web1.client.post("/subscribe", data={"email": "plain@example.net"})
    (path,) = notice_files(web1.outbox, "confirm", "target@example.net")
    message = read_eml(path)
    assert _comparable(message, "target@example.net") == _comparable(
        notice(web1.outbox, "confirm", "plain@example.net"), "plain@example.net")
    assert message["To"].addresses[0].display_name == "" and str(message["To"]) == "target@example.net"
    assert "Bonjour," in text_part(message)  # a neutral greeting
    assert distinctive.encode() not in path.read_bytes()
    # nor on the unsubscribe page of that pending person
    with web1.store.engine.connect() as conn:
        sid = web1.store.subscriber_by_email(conn, "target@example.net").id
    assert distinctive not in web1.client.get(f"/u/{unsub_token(web1, sid)}").text


def test_a_confirmation_never_carries_a_name_whoever_sends_it(web1):
    """The rule lives in `Notifier`, not only in the form: any caller passing a name gets a neutral email."""
    from mailer.sending.notices import Notifier
    sid, _ = add_subscriber(web1.store, "direct@example.org", status="pending", source="web")
    result = Notifier(web1.settings).send("confirm", sid, "direct@example.org", name="Zorglub Spam")
    assert result.outcome == "sent"
    (path,) = notice_files(web1.outbox, "confirm", "direct@example.org")
    assert b"Zorglub" not in path.read_bytes() and read_eml(path)["To"].addresses[0].display_name == ""
    Notifier(web1.settings).send("welcome", sid, "direct@example.org", name="Zorglub")  # confirmed: named
    assert read_eml(notice_files(web1.outbox, "welcome", "direct@example.org")[0])["To"].addresses[0].display_name == "Zorglub"


def test_the_confirmation_text_part_gives_the_link_not_a_button(make_settings, sqlite_store):
    for language, expected in (("fr", "en ouvrant ce lien"), ("en", "by opening this link")):
        ns = make_web(make_settings(MAILER_LANGUAGE=language), sqlite_store)
        with ns.client:
            ns.client.post("/subscribe", data={"email": f"text-{language}@example.org"})
        message = notice(ns.outbox, "confirm", f"text-{language}@example.org")
        text = text_part(message)
        assert "bouton" not in text and "button" not in text and "ci-dessous" not in text and "below" not in text
        lines = text.splitlines()  # the sentence (wrapped at 76 columns), then the link alone on its line
        (index,) = [i for i, line in enumerate(lines)
                    if re.fullmatch(r"https://lettre\.example\.org/confirm/[A-Za-z0-9_-]{34}", line)]
        before = " ".join(lines[:index]).split("\n")[-1]
        assert before.rstrip(" :\u00a0").endswith(expected), lines
        assert "bouton" in html_part(message) or "button" in html_part(message)  # the HTML part has one


@pytest.mark.parametrize("newsletter, expected", [
    ("Le Fil du jeudi", "au Fil du jeudi"),
    ("La Lettre verte", "à la Lettre verte"),
    ("Les Échos du quartier", "aux Échos du quartier"),
    ("L’Hebdo des communs", "à l’Hebdo des communs"),
    ("L'Écho", "à l'Écho"),
    ("Mediapart Matin", "à Mediapart Matin"),
    ("Lesbos Hebdo", "à Lesbos Hebdo"),
    ("Le 1", "au 1"),
    ("LE FIL", "AU FIL"),
    ("LA Weekly", "à LA Weekly"),
])
def test_french_names_are_contracted_in_notices_and_footers(make_settings, sqlite_store, newsletter, expected):
    """« à » + the name is always grammatical: the emails as a reader gets them."""
    ns = make_web(make_settings(MAILER_NAME=newsletter, MAILER_FROM=f"{newsletter} <lettre@example.org>"), sqlite_store)
    with ns.client:
        ns.client.post("/subscribe", data={"email": "fr@example.org"})
        ns.client.post(confirm_link(ns, "fr@example.org"))
    assert notice(ns.outbox, "confirm", "fr@example.org")["Subject"] == f"Confirmez votre abonnement {expected}"
    welcome = notice(ns.outbox, "welcome", "fr@example.org")
    assert welcome["Subject"] == f"Bienvenue {expected}"
    footer = f"Vous recevez cette lettre parce que vous êtes abonné·e {expected}."
    assert footer in " ".join(text_part(welcome).splitlines()) and footer.replace("'", "&#39;") in html_part(welcome).replace("&#x27;", "&#39;")
    for text in (welcome["Subject"], text_part(welcome)):
        assert not re.search(r"\bà (Le|Les|le|les) ", text) and "dans Le" not in text


def test_a_link_scanner_never_confirms_a_subscription(web):
    """GET, HEAD and repeated fetches with scanners' headers: still pending, no welcome; one POST confirms."""
    web.client.post("/subscribe", data={"email": "scanned@example.org"})
    link = confirm_link(web, "scanned@example.org")
    with web.store.engine.connect() as conn:
        sid = web.store.subscriber_by_email(conn, "scanned@example.org").id
    scanners = [{"User-Agent": "Mozilla/5.0 (compatible; Microsoft SafeLinks)"}, {"User-Agent": "Barracuda"},
                {"Accept": "*/*"}, {"Range": "bytes=0-1023"}]
    for headers in scanners:
        assert web.client.get(link, headers=headers).status_code == 200
        assert web.client.head(link, headers=headers).status_code == 200
        assert web.client.get(link + "?utm_source=scanner", headers=headers).status_code == 200
    assert web.client.options(link).status_code == 405
    assert status_of(web.store, sid) == "pending" and not (web.outbox / "welcome").exists()
    assert events_of(web.store, sid, "status") == []
    legacy = "/confirm/" + tokens.make_legacy_token(web.key, "confirm", sid)  # a link sent before the upgrade
    assert page_state(web.client.get(legacy)) == "ask_pending"
    assert page_state(web.client.post(legacy)) == "confirmed" and status_of(web.store, sid) == "active"
    assert page_state(web.client.post(link)) == "confirmed"
    assert len(notice_files(web.outbox, "welcome", "scanned@example.org")) == 1


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
    assert notice_files(web.outbox, "confirm", "active@example.org") == []
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
    web.client.post(link)
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
    assert notice(ns.outbox, "confirm", "new.en@example.org")["Subject"] == "Confirm your subscription to Le Fil du jeudi"


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
    from mailer.sending.dispatch import send_issue
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


def test_root_leads_to_the_archive(web1):
    for method in ("get", "head"):
        response = getattr(web1.client, method)("/", follow_redirects=False)
        assert response.status_code == 307 and response.headers["location"] == "/archive"
    assert web1.client.get("/").status_code == 200  # followed: the archive page
    mounted = TestClient(web1.app, base_url="https://lettre.example.org", root_path="/lettre")
    assert mounted.get("/", follow_redirects=False).headers["location"] == "/lettre/archive"


def _send_to(web, slug: str, toml: str, lists=()) -> Path:
    from mailer.sending.dispatch import send_issue
    from .conftest import write_issue
    write_issue(web.settings.root, slug, {"briefs.txt": "Intro de la lettre.\n\n--> Une brève assez longue pour être lue.\n"},
                toml=f'subject = "Sujet {slug}"\ndate = 2026-11-26\n{toml}')
    send_issue(web.settings, web.store, slug)
    return web.outbox / slug


def _view_online_link(folder: Path) -> str:
    message = read_eml(sorted(folder.glob("*.eml"))[0])
    match = re.search(r"Version en ligne\s:\s+(https://lettre\.example\.org(/issues/\S+))", text_part(message))
    assert match, text_part(message)
    assert match.group(1) in html_part(message)
    return match.group(2)


def test_list_only_issues_stay_out_of_the_archive_unless_archive_is_true(web):
    add_subscriber(web.store, "all@example.org")
    add_subscriber(web.store, "premium@example.org", lists=["premium"])
    cases = {  # slug: (issue.toml lines, listed in /archive)
        "2026-11-26-tous": ("", True),
        "2026-11-26-premium": ('list = "premium"\n', False),
        "2026-11-26-premium-publiee": ('list = "premium"\narchive = true\n', True),
        "2026-11-26-cachee": ("archive = false\n", False),
        "2026-11-26-premium-cachee": ('list = "premium"\narchive = false\n', False),
    }
    folders = {slug: _send_to(web, slug, toml) for slug, (toml, _) in cases.items()}
    archive = web.client.get("/archive").text
    for slug, (_, listed) in cases.items():
        assert (f'href="/issues/{slug}"' in archive) is listed, slug
        assert (f">Sujet {slug}<" in archive) is listed, slug
        plain = web.client.get(f"/issues/{slug}")
        assert plain.status_code == (200 if listed else 404), slug
        # the email's own "view online" link always works: a key for a private issue, only its recipients have it
        link = _view_online_link(folders[slug])
        assert ("?k=" in link) is (not listed), link
        page = web.client.get(link)
        assert page.status_code == 200 and f"Sujet {slug}" in page.text, slug
        if not listed:
            assert page.headers["X-Robots-Tag"] == "noindex, nofollow" and page.headers["Cache-Control"].startswith("private")
            base, key = link.split("?k=")
            for wrong in (key[:-1], key + "A", "A" * len(key), tokens.web_edition_key(b"other key", slug), ""):
                assert web.client.get(f"{base}?k={wrong}").status_code == 404
            other = next(s for s, (_, shown) in cases.items() if not shown and s != slug)
            assert web.client.get(f"/issues/{other}?k={key}").status_code == 404  # a key opens its own issue only


def test_changing_archive_after_the_send_applies_when_the_send_runs_again(web):
    from mailer.sending.dispatch import send_issue
    add_subscriber(web.store, "all@example.org")
    folder = _send_to(web, "2026-11-26-retiree", "")
    assert web.client.get("/issues/2026-11-26-retiree").status_code == 200
    toml = web.settings.issues_dir / "2026-11-26-retiree" / "issue.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + "archive = false\n", encoding="utf-8")
    send_issue(web.settings, web.store, "2026-11-26-retiree")  # sends nobody again, applies the setting
    assert len(list(folder.glob("*.eml"))) == 1
    assert web.client.get("/issues/2026-11-26-retiree").status_code == 404
    assert "2026-11-26-retiree" not in web.client.get("/archive").text


def test_an_issue_toml_archive_that_is_not_a_boolean_is_refused_with_its_line(web1):
    from mailer.errors import SourceError
    from mailer.content.issue import load_issue
    from .conftest import write_issue
    for value in ('"yes"', "1", '"false"'):
        write_issue(web1.settings.root, "2026-11-26-x", {"briefs.txt": "--> Brève.\n"},
                    toml=f'subject = "S"\n\narchive = {value}\n')
        with pytest.raises(SourceError, match=r"issue.toml:3: archive must be true or false"):
            load_issue("2026-11-26-x", web1.settings.issues_dir, web1.settings.zone)


def test_issues_sent_before_the_archive_flag_keep_list_issues_private(tmp_path):
    """Migration 0003 on a database at 0002 holding a list-only and an all-subscribers issue."""
    from alembic import command
    from alembic.config import Config
    from mailer.store import MIGRATIONS_DIR, make_engine, open_store
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
        conn.execute(sa.text("INSERT INTO issues (slug, subject, list_name, status, web_html) VALUES "
                             "('a', 'A', NULL, 'sent', '<p>a</p>'), ('b', 'B', 'premium', 'sent', '<p>b</p>')"))
    engine.dispose()
    store = open_store(url)
    with store.engine.connect() as conn:
        assert [row.slug for row in store.published_issues(conn)] == ["a"]
    store.close()


def test_the_web_edition_has_no_personal_parts(web):
    add_subscriber(web.store, "lecteur@example.org", name="Lecteur Exemple")
    folder = _send_to(web, "2026-11-26-edition", "")
    email = read_eml(sorted(folder.glob("*.eml"))[0])
    sent_html = html_part(email)
    page = web.client.get("/issues/2026-11-26-edition")
    assert page.status_code == 200
    # the email has the personal parts…
    for personal in ("Bonjour Lecteur,", "Vous recevez cette lettre parce que", "Se désabonner", "/u/"):
        assert personal in sent_html, personal
    # …the web edition none of them, not even in neutral form
    for personal in ("Bonjour", "Vous recevez cette lettre", "Se désabonner", "/u/", "lecteur@example.org",
                     "Lecteur Exemple", "Voir la version en ligne"):
        assert personal not in page.text, personal
    assert "Une brève assez longue pour être lue." in page.text and "Intro de la lettre." in page.text
    assert 'href="https://lettre.example.org/subscribe"' in page.text  # an invitation instead
    assert "Recevez les prochaines lettres par email" in page.text


def test_a_custom_template_without_the_web_edition_flag_still_shows_no_personal_values(web):
    """An operator's older template that ignores `web_edition`: the slots get neutral values."""
    template = web.settings.templates_dir / "weekly.mjml.j2"
    text = template.read_text(encoding="utf-8")
    older = text.replace("{% if not web_edition %}", "{% if true %}").replace("{% if web_edition %}", "{% if false %}")
    assert older != text and "web_edition %}" not in older
    template.write_text(older, encoding="utf-8")
    add_subscriber(web.store, "ancien@example.org", name="Ancien Modèle")
    _send_to(web, "2026-11-26-ancien", "")
    page = web.client.get("/issues/2026-11-26-ancien").text
    assert "Ancien Modèle" not in page and "ancien@example.org" not in page and "/u/" not in page


def test_legacy_unsubscribe_links_already_in_inboxes_keep_working(web):
    sid, _ = add_subscriber(web.store, "old-link@example.org")
    legacy = tokens.make_legacy_token(web.key, "unsubscribe", sid)
    assert len(legacy) == 27 and tokens.read_token(web.key, "unsubscribe", legacy).legacy
    assert page_state(web.client.get(f"/u/{legacy}")) == "ask"
    assert web.client.post(f"/u/{legacy}", **ONE_CLICK).status_code == 200
    assert status_of(web.store, sid) == "unsubscribed"
    assert web.client.post(f"/u/{legacy}/resubscribe").status_code == 200 and status_of(web.store, sid) == "active"
    forged = tokens.make_legacy_token(b"not the key", "unsubscribe", sid)
    assert web.client.post(f"/u/{forged}", **ONE_CLICK).status_code == 400 and status_of(web.store, sid) == "active"


def test_links_in_emails_reveal_no_subscriber_id(web):
    """Every token a sent email carries (List-Unsubscribe, body links): the v2 shape, no id readable."""
    ids = [add_subscriber(web.store, f"r{n}@example.org")[0] for n in range(5)]
    folder = _send_to(web, "2026-11-26-jetons", "")
    for path in sorted(folder.glob("*.eml")):
        message = read_eml(path)
        found = set(re.findall(r"/u/([A-Za-z0-9_-]+)", message["List-Unsubscribe"] + html_part(message) + text_part(message)))
        assert len(found) == 1
        (token,) = found
        data = tokens.read_token(web.key, "unsubscribe", token)
        # 39 characters: the token names its issue too, so `mailer report` attributes the unsubscribe
        assert data.subscriber_id in ids and not data.legacy and len(token) == 39 and data.issue_id is not None
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert data.subscriber_id.to_bytes(8, "big")[-2:] not in raw


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


@pytest.fixture
def strict_hook(make_settings, store, ec_keys):
    """The webhook with the strictest soft-bounce rule there is (1 soft bounce over 1 send)."""
    yield from _hook(make_settings, store, ec_keys, MAILER_SOFT_BOUNCE_LIMIT="1", MAILER_SOFT_BOUNCE_SENDS="1")


def _hook(make_settings, store, ec_keys, **env):
    private, public = ec_keys
    ns = make_web(make_settings(MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY=public, **env), store)

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
    assert response.json() == {"received": len(cases), "new": len(cases), "suppressed": 7, "ignored": 0}
    rows = stored_events(hook.store)
    assert len(rows) == len(cases)
    for (name, extra, kind, status), sid, row in zip(cases, people, rows):
        # issue 7 never had them in its ledger: the event is the person's, no issue's
        assert (row["kind"], row["subscriber_id"], row["issue_id"]) == (kind, sid, None), name
        assert row["payload"]["event"] == name and row["provider"] == "sendgrid"
        assert status_of(hook.store, sid) == status, (name, extra)
    suppressed = [e for sid in people for e in events_of(hook.store, sid, "status")]
    assert all(e["source"] == "webhook" for e in suppressed) and len(suppressed) == 7


def test_a_sendgrid_soft_bounce_is_a_line_of_the_history_as_a_mailboxs_is_and_suppresses_no_one(strict_hook, cli):
    """SendGrid's `bounce` of type "blocked" (refused for now, this message given up) is a soft bounce:
    `mailer subscribers show` lists it as a `soft_bounce` line with SendGrid's words, as it lists a bounce
    mailbox's (tests/test_bounces.py), and the status stays `active`, even with a soft-bounce rule of 1
    over 1 send. `deferred` (SendGrid still retrying) is no bounce: stored, no line. A replay adds none."""
    from mailer.sending import dispatch
    from mailer.sending.report import issue_report
    hook = strict_hook
    sid, _ = add_subscriber(hook.store, "lea@example.org")
    assert dispatch.send_issue(hook.settings, hook.store, EXAMPLE_ISSUE).counts["sent"] == 1
    with hook.store.engine.connect() as conn:
        ids = {"mailer_subscriber": str(sid), "mailer_issue": str(hook.store.issue_row(conn, EXAMPLE_ISSUE).id)}
    events = [sg_event("bounce", "lea@example.org", 1, type="blocked", status="4.7.28", **ids,
                       reason="421 4.7.28 Our system has detected an unusual rate of mail from your IP"),
              sg_event("deferred", "lea@example.org", 2, response="451 4.7.1 Greylisted, try again later",
                       attempt="1", **ids),
              sg_event("bounce", "lea@example.org", 3, type="blocked", status="5.7.1", **ids,
                       reason="554 5.7.1 Service unavailable; Client host blocked using Spamhaus")]
    assert hook.post(events).json() == {"received": 3, "new": 3, "suppressed": 0, "ignored": 0}
    assert hook.post(events).json()["new"] == 0
    env = {"MAILER_DATABASE_URL": hook.store.engine.url.render_as_string(hide_password=False)}
    shown = cli("subscribers", "show", "lea@example.org", extra_env=env).stdout
    assert shown.splitlines()[0] == "lea@example.org  active", shown
    lines = [line for line in shown.splitlines() if "soft_bounce" in line]
    assert len(lines) == 2 and all("webhook" in line for line in lines), shown
    assert "421 4.7.28 Our system has detected" in lines[0] and "blocked using Spamhaus" in lines[1], shown
    assert "Greylisted" not in shown
    data = json.loads(cli("subscribers", "show", "lea@example.org", "--json", extra_env=env).stdout)
    assert [event["kind"] for event in data["events"]].count("soft_bounce") == 2 and data["status"] == "active"
    assert issue_report(hook.settings, hook.store, EXAMPLE_ISSUE).soft_bounced == 1  # one person


def test_events_count_for_an_issue_only_from_people_it_was_delivered_to(hook):
    """A signed event naming issue X (`mailer_issue`) for someone X never went to, and an unsubscribe
    link token naming X for them, change that person (status rules as ever) and not X's report."""
    from mailer.sending import dispatch
    from mailer.sending.report import issue_report
    reader, _ = add_subscriber(hook.store, "reader@example.org")
    assert dispatch.send_issue(hook.settings, hook.store, EXAMPLE_ISSUE).counts["sent"] == 1
    with hook.store.engine.connect() as conn:
        issue = hook.store.issue_row(conn, EXAMPLE_ISSUE).id
    outsiders = {name: add_subscriber(hook.store, f"{name}@example.org")[0]
                 for name in ("spam", "bounce", "unsub", "link")}
    events = [sg_event(event, f"{name}@example.org", n, mailer_subscriber=str(outsiders[name]),
                       mailer_issue=str(issue), **extra)
              for n, (name, event, extra) in enumerate([("spam", "spamreport", {}),
                                                        ("bounce", "bounce", {"type": "bounce"}),
                                                        ("unsub", "unsubscribe", {})])]
    assert hook.post(events).json()["suppressed"] == 3
    token = tokens.make_token(hook.key, "unsubscribe", outsiders["link"], issue)
    assert hook.client.post(f"/u/{token}", **ONE_CLICK).status_code == 200
    assert [status_of(hook.store, outsiders[n]) for n in ("spam", "bounce", "unsub", "link")] == [
        "complained", "bounced", "unsubscribed", "unsubscribed"]
    report = issue_report(hook.settings, hook.store, EXAMPLE_ISSUE)
    assert (report.recipients, report.complained, report.bounced, report.unsubscribed) == (1, 0, 0, 0)
    # the same events from the reader X went to count
    reader_events = [sg_event(event, "reader@example.org", 10 + n, mailer_subscriber=str(reader),
                              mailer_issue=str(issue)) for n, event in enumerate(["spamreport"])]
    hook.post(reader_events)
    report = issue_report(hook.settings, hook.store, EXAMPLE_ISSUE)
    assert (report.complained, report.complaint_rate) == (1, 1.0)


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


def _nested(depth: int) -> bytes:
    return b'[{"event":"open","email":"n@example.org","x":' + b"[" * depth + b"]" * depth + b"}]"


BAD_BODIES = {  # signed, so they reach the parser: what SendGrid never sends gets 400, never a 500
    "not json": b"{not json",
    "a string": b'"a string"',
    "a number": b"42",
    "null": b"null",
    "an object, not an array": b'{"event": "spamreport", "email": "x@example.org"}',
    "array of non-objects": b"[1, 2]",
    "an array inside the array": b'[[{"event": "open"}]]',
    "latin-1 bytes": '[{"event":"open","email":"andré@example.org"}]'.encode("latin-1"),
    "utf-16 with BOM": '[{"event":"open"}]'.encode("utf-16"),
    "utf-16 without BOM": '[{"event":"open"}]'.encode("utf-16-le"),
    "NaN": b'[{"event":"open","timestamp":NaN}]',
    "Infinity": b'[{"event":"open","timestamp":-Infinity}]',
    "5,000 digits": b'[{"event":"open","timestamp":' + b"9" * 5000 + b"}]",
    "nested 9 levels": _nested(8),  # the event object, then 8 arrays inside it
    "nested 100,000 levels": _nested(100_000),
    "top level nested 100,000 levels": b"[" * 100_000 + b"]" * 100_000,
    "empty body": b"",
    "trailing garbage": b'[{"event":"open"}] x',
}


@pytest.mark.parametrize("kind", list(BAD_BODIES))
def test_webhook_body_shapes_that_sendgrid_never_sends_are_400(hook1, kind, caplog):
    sid, _ = add_subscriber(hook1.store, "shape@example.org")
    with caplog.at_level(logging.ERROR):
        response = hook1.post(None, body=BAD_BODIES[kind])
    assert response.status_code == 400, response.text
    assert response.json()["error"] and len(response.json()["error"]) <= 300
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)  # no traceback in the log
    assert stored_events(hook1.store) == [] and status_of(hook1.store, sid) == "active"


def test_webhook_nesting_within_the_limit_is_accepted(hook1):
    assert hook1.post(None, body=_nested(7)).status_code == 200  # 8 levels inside the array


@pytest.mark.parametrize("chunked", [False, True])
def test_webhook_body_over_the_size_limit_is_413(hook1, chunked):
    from mailer.web.app import WEBHOOK_MAX_BYTES
    raw = b"[" + b'{"event":"open"},' * (WEBHOOK_MAX_BYTES // 16) + b'{"event":"open"}]'
    assert len(raw) > WEBHOOK_MAX_BYTES
    if chunked:  # no Content-Length: the limit counts what arrives
        stamp = str(int(time.time()))
        response = hook1.client.post("/webhooks/sendgrid", content=iter([raw[i:i + 65536] for i in range(0, len(raw), 65536)]),
                                     headers={TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(hook1.private, raw, stamp)})
    else:
        response = hook1.post(None, body=raw)
    assert response.status_code == 413 and stored_events(hook1.store) == []


def test_webhook_more_than_10000_events_is_413(hook1):
    assert hook1.post([{"event": "open"}] * 10_001).status_code == 413
    assert stored_events(hook1.store) == []


WRONG_TYPES = [  # (field, value): each event names subscriber `sid` by a valid custom arg
    ("email", 123), ("email", ["w@example.org"]), ("email", {"a": "w@example.org"}), ("email", None), ("email", True),
    ("email", "w@example.org\u0000"), ("email", "not an address"), ("email", "x" * 5000 + "@example.org"),
    ("event", ["spamreport"]), ("event", {"e": 1}), ("event", None), ("event", 7), ("event", "spam-report"),
    ("timestamp", "yesterday"), ("timestamp", 1e300), ("timestamp", -5), ("timestamp", True), ("timestamp", [1]),
    ("timestamp", 2 ** 70),
    ("sg_event_id", 123), ("sg_event_id", {"id": 1}), ("sg_event_id", ""), ("sg_event_id", "x" * 5000),
    ("sg_event_id", "nul\u0000id"), ("sg_event_id", "lone \ud800 surrogate"),
    ("mailer_subscriber", 1.5), ("mailer_subscriber", True), ("mailer_subscriber", "9" * 30),
    ("mailer_subscriber", -3), ("mailer_subscriber", [1]),
    ("mailer_issue", []), ("mailer_issue", "9" * 30), ("mailer_issue", {"a": 1}),
    ("custom_args", "x"), ("custom_args", [1, 2]), ("unique_args", {"mailer_subscriber": {"x": 1}}),
    ("reason", {"a": 1}), ("reason", "\u0000\udfff" * 100), ("reason", "r" * 100_000), ("type", ["bounce"]),
    ("useragent", "Mozilla \ud83d alone"), ("ip", 12), ("url", None), ("category", [["deep"]]),
]


def test_webhook_wrong_types_in_fields_are_stored_and_act_only_when_sound(hook):
    """Every field with every wrong type, in one batch on both databases: 200, every event stored
    once, and only events with the subscriber's own address act."""
    sid, _ = add_subscriber(hook.store, "w@example.org")
    events = []
    for n, (field, value) in enumerate(WRONG_TYPES):
        event = {"email": "w@example.org", "event": "delivered", "timestamp": int(time.time()),
                 "sg_event_id": f"wt-{n}", "mailer_subscriber": str(sid)}
        event[field] = value
        events.append(event)
    response = hook.post(events)  # json.dumps writes NUL and lone surrogates as \u escapes
    assert response.status_code == 200, response.text
    rows = stored_events(hook.store)
    assert response.json()["new"] == len(rows) == len(WRONG_TYPES)
    for row in rows:  # NUL and lone surrogates neutralised (PostgreSQL refuses NUL in text; neither is UTF-8-safe)
        dumped = json.dumps(row["payload"]) + json.dumps(row["reason"]) + json.dumps(row["provider_event_id"])
        assert "\\u0000" not in dumped and "\\ud800" not in dumped and "\\udfff" not in dumped
    assert status_of(hook.store, sid) == "active"  # only "delivered" events here
    spam = [{"email": "w@example.org", "event": "spamreport", "sg_event_id": "final", "mailer_subscriber": str(sid),
             "timestamp": "not a time", "reason": ["x"]}]
    assert hook.post(spam).json()["suppressed"] == 1 and status_of(hook.store, sid) == "complained"


def _random_json(rng, depth: int = 0):
    choice = rng.randrange(9 if depth < 3 else 6)
    return [lambda: None, lambda: rng.choice([True, False]), lambda: rng.randrange(-2 ** 40, 2 ** 40),
            lambda: rng.random() * 10 ** rng.randrange(-5, 300),
            lambda: "".join(rng.choice("ab@.é\u0000\ud800\\\"<>\n x") for _ in range(rng.randrange(12))),
            lambda: rng.choice(["w@example.org", "W@EXAMPLE.ORG", "spamreport", "bounce", "dropped", "1", "0", ""]),
            lambda: [_random_json(rng, depth + 1) for _ in range(rng.randrange(3))],
            lambda: {rng.choice(["email", "event", "x", "mailer_subscriber"]): _random_json(rng, depth + 1)},
            lambda: rng.choice(["Bounced Address", "Spam Reporting Address", "blocked"])][choice]()


def test_webhook_random_events_never_fail_the_server(hook):
    """Generated events (random types and values for every field SendGrid sends): the answer is
    always 200, and an event changes a status only if its address is the subscriber's."""
    import random
    rng = random.Random(1126)
    sid, _ = add_subscriber(hook.store, "w@example.org")
    other, _ = add_subscriber(hook.store, "other@example.org")
    fields = ["email", "event", "timestamp", "sg_event_id", "mailer_subscriber", "mailer_issue", "reason", "type",
              "custom_args", "unique_args", "useragent", "ip", "url", "response"]
    for batch in range(10):
        events = [{field: _random_json(rng) for field in fields if rng.random() < 0.7} for _ in range(60)]
        for event in events:
            if rng.random() < 0.3:
                event["mailer_subscriber"] = str(other)
        response = hook.post(events)
        assert response.status_code == 200, response.text
        assert status_of(hook.store, other) == "active"  # its address never appears
    with hook.store.engine.connect() as conn:
        changes = conn.execute(sa.select(subscriber_events.c.reason).where(
            subscriber_events.c.subscriber_id == sid, subscriber_events.c.kind == "status")).scalars().all()
    for reason in changes:
        assert reason.startswith("sendgrid ")


def test_webhook_acts_only_when_the_address_is_the_named_subscribers(hook):
    a, _ = add_subscriber(hook.store, "Alice@Example.org")
    b, _ = add_subscriber(hook.store, "bob@example.org")
    c, _ = add_subscriber(hook.store, "carol@example.org")
    d, _ = add_subscriber(hook.store, "dan@example.org")
    events = [
        sg_event("delivered", "alice@example.org", 1),                                  # by address (case-insensitive)
        sg_event("delivered", "bob@example.org", 2, mailer_subscriber=str(b)),         # id and its own address
        sg_event("spamreport", "bob@example.org", 3, mailer_subscriber=str(a)),        # id names someone else
        sg_event("delivered", "test@example.org", 4, mailer_subscriber="0"),           # a test send: nobody
        sg_event("delivered", "", 5, mailer_subscriber="not-a-number"),
        {"email": "bob@example.org", "event": "open", "timestamp": 1},                  # no sg_event_id: content hash
        {"event": "spamreport", "sg_event_id": "ids-only", "mailer_subscriber": str(c)},  # an id alone
        sg_event("bounce", "dan@example.org", 8, mailer_subscriber=str(d + 1000)),     # an id naming nobody
        sg_event("unsubscribe", "CAROL@example.org", 9, custom_args={"mailer_subscriber": str(c)}),  # nested, matching
    ]
    response = hook.post(events)
    assert response.status_code == 200 and response.json()["ignored"] == 3
    assert [r["subscriber_id"] for r in stored_events(hook.store)] == [a, b, None, None, None, b, None, None, c]
    assert {status_of(hook.store, p) for p in (a, b, d)} == {"active"}  # nobody suppressed through a mismatch
    assert status_of(hook.store, c) == "unsubscribed"  # the one event naming its own subscriber
    assert hook.post(events[5:6]).json()["new"] == 0


def test_signed_spam_reports_naming_only_ids_suppress_nobody(hook):
    """The attack of the report (50 ids, no or wrong addresses), now with a valid signature: even a
    leaked key cannot suppress people by id."""
    people = [add_subscriber(hook.store, f"reader{n}@example.org")[0] for n in range(50)]
    ids_only = [{"event": "spamreport", "sg_event_id": f"a{p}", "timestamp": int(time.time()),
                 "mailer_subscriber": str(p)} for p in people]
    shifted = [sg_event("spamreport", f"reader{(n + 1) % 50}@example.org", 100 + n, mailer_subscriber=str(p))
               for n, p in enumerate(people)]
    for events in (ids_only, shifted):
        answer = hook.post(events)
        assert answer.status_code == 200 and answer.json()["suppressed"] == 0 and answer.json()["ignored"] == 50
    assert {status_of(hook.store, p) for p in people} == {"active"}
    assert len(stored_events(hook.store)) == 100  # kept for the record


def test_webhook_without_a_key_refuses_everything_and_says_why(make_settings, sqlite_store, ec_keys, caplog):
    """Unsigned requests, and requests signed with any key, while no key is configured: 403, nothing stored."""
    people = [add_subscriber(sqlite_store, f"p{n}@example.org")[0] for n in range(50)]
    with caplog.at_level(logging.WARNING, logger="mailer.web"):
        ns = make_web(make_settings(MAILER_BACKEND="sendgrid", SENDGRID_API_KEY="SG.x"), sqlite_store)
    assert any("MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY is unset" in r.message for r in caplog.records)
    events = [sg_event("spamreport", f"p{n}@example.org", n, mailer_subscriber=str(p)) for n, p in enumerate(people)]
    raw = json.dumps(events).encode()
    now = str(int(time.time()))
    with ns.client:
        for headers in ({}, {TIMESTAMP_HEADER: now, SIGNATURE_HEADER: sign(ec_keys[0], raw, now)}):
            response = ns.client.post("/webhooks/sendgrid", content=raw, headers=headers)
            assert response.status_code == 403
            assert "MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY is not set" in response.json()["error"]
    assert stored_events(sqlite_store) == []
    assert {status_of(sqlite_store, p) for p in people} == {"active"}


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
