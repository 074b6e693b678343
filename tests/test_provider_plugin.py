"""A new provider is one module: `tests/plugins/mailer_postmarkish.py` (a Postmark-like HTTP API and
its bounce webhook), registered the way a third-party package would be (an entry point in the group
`mailer.providers`, written here as an installer writes it) or by `register_provider`, with its own
settings. A real `mailer send` goes through it and its webhook through the web app, with no other
change to mailer."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import warnings
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer import registry
from mailer.config import ENV_VARS, load_settings
from mailer.errors import ConfigError
from mailer.store.schema import deliveries, provider_events, subscribers
from mailer.subscribers import add_subscriber
from mailer.web.app import create_app

from .conftest import BASE_ENV, EXAMPLE_ISSUE, REPO

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

PLUGINS = Path(__file__).resolve().parent / "plugins"
TOKEN = "server-token-7f3a"
INACTIVE = "inactive@example.org"  # the fake API refuses this one (ErrorCode 406, as Postmark does)


class FakePostmark:
    """`POST /email/batch` on loopback, answering as Postmark documents; keeps every message."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.refused_tokens = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/email/batch" or self.headers.get("X-Postmark-Server-Token") != TOKEN:
                    outer.refused_tokens += 1
                    return self._answer(401, {"ErrorCode": 10, "Message": "Bad or missing Server API token."})
                answers = []
                for message in json.loads(body):
                    outer.messages.append(message)
                    if message["To"] == INACTIVE:
                        answers.append({"ErrorCode": 406, "Message": "You tried to send to an inactive recipient."})
                    else:
                        answers.append({"ErrorCode": 0, "Message": "OK", "To": message["To"],
                                        "MessageID": f"pm-{len(outer.messages)}"})
                self._answer(200, answers)

            def _answer(self, status: int, data: object) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_postmark():
    server = FakePostmark()
    yield server
    server.close()


@pytest.fixture
def installed(tmp_path: Path) -> str:
    """PYTHONPATH on which the plug-in is installed as pip would: its module, and a `.dist-info`
    declaring the entry point `postmarkish = mailer_postmarkish:PROVIDER` in `mailer.providers`."""
    site = tmp_path / "site"
    info = site / "mailer_postmarkish-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mailer-postmarkish\nVersion: 1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[mailer.providers]\npostmarkish = mailer_postmarkish:PROVIDER\n",
                                           encoding="utf-8")
    return os.pathsep.join((str(site), str(PLUGINS), str(REPO)))


@pytest.fixture
def registered(monkeypatch):
    """The same module, registered in this process by `register_provider` (and removed afterwards)."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    import mailer_postmarkish
    registry.register_provider(mailer_postmarkish.PROVIDER)
    yield mailer_postmarkish
    registry.unregister_provider("postmarkish")


def _env(db_url: str, installed: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILER_", "SENDGRID_"))}
    env.update(BASE_ENV, PYTHONPATH=installed, MAILER_DATABASE_URL=db_url, MAILER_BACKEND="postmarkish")
    env.update(extra)
    return env


def _ledger(store) -> dict[str, tuple[str, str | None]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(subscribers.c.email, deliveries.c.status, deliveries.c.provider_message_id)
                            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)).all()
    return {email: (status, provider_id) for email, status, provider_id in rows}


def test_a_real_send_goes_through_a_provider_installed_as_one_module(project, sqlite_store, fake_postmark, installed):
    people = {f"lecteur{n}@example.org": sqlite_store for n in range(7)}
    ids = {email: add_subscriber(sqlite_store, email, name=f"Lecteur {n}")[0] for n, email in enumerate(people)}
    ids[INACTIVE] = add_subscriber(sqlite_store, INACTIVE)[0]
    db_url = f"sqlite:///{project / 'subscribers.db'}"
    send = [sys.executable, "-m", "mailer.cli", "send", EXAMPLE_ISSUE, "--yes"]

    # its own setting is checked like any other, before anything is sent
    missing = subprocess.run(send, cwd=project, env=_env(db_url, installed), capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2, missing.stderr
    assert "MAILER_POSTMARKISH_SERVER_TOKEN is missing for the postmarkish backend" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not fake_postmark.messages

    result = subprocess.run(send, cwd=project, capture_output=True, text=True, timeout=120,
                            env=_env(db_url, installed, MAILER_POSTMARKISH_SERVER_TOKEN=TOKEN,
                                     MAILER_POSTMARKISH_API_URL=fake_postmark.url))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "via postmarkish" in result.stdout
    received = {message["To"]: message for message in fake_postmark.messages}
    assert sorted(received) == sorted(ids) and len(fake_postmark.messages) == len(ids)
    for email, message in received.items():
        headers = {header["Name"]: header["Value"] for header in message["Headers"]}
        unsubscribe = headers["List-Unsubscribe"].split(",")[0].strip("<> ")
        assert unsubscribe.startswith("https://lettre.example.org/u/") and unsubscribe in message["HtmlBody"]
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["Metadata"]["mailer_subscriber"] == str(ids[email]) and message["Tag"] == EXAMPLE_ISSUE
        assert "%%mailer:" not in message["HtmlBody"] + message["TextBody"]  # every slot filled for them
        assert message["Subject"] and message["From"] == "Le Fil du jeudi <lettre@example.org>"
    ledger = _ledger(sqlite_store)
    assert ledger.pop(INACTIVE)[0] == "failed"
    assert {status for status, _ in ledger.values()} == {"sent"}
    assert {provider_id for _, provider_id in ledger.values()} == {f"pm-{n}" for n in range(1, len(ids) + 1)} - {
        f"pm-{n}" for n, m in enumerate(fake_postmark.messages, 1) if m["To"] == INACTIVE}


def test_its_settings_are_named_and_checked_like_the_built_in_ones(project, registered):
    assert ENV_VARS["MAILER_POSTMARKISH_TIMEOUT"] == "postmarkish_timeout"
    settings = load_settings(project, env={**BASE_ENV, "MAILER_POSTMARKISH_TIMEOUT": "2.5"})
    assert settings.postmarkish_timeout == 2.5 and settings.postmarkish_api_url == "https://api.postmarkapp.com"
    with pytest.raises(ConfigError, match=r"^MAILER_POSTMARKISH_TIMEOUT must be a positive number of seconds, not 0.0$"):
        load_settings(project, env={**BASE_ENV, "MAILER_POSTMARKISH_TIMEOUT": "0"})
    (project / "mailer.toml").write_text('name = "Le Fil"\npostmarkish_api_url = "ftp://api.example.org"\n',
                                         encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(project, env=BASE_ENV)
    assert str(caught.value) == (f"{project / 'mailer.toml'}:2: postmarkish_api_url 'ftp://api.example.org' "
                                 f"must start with https:// (or http:// for local use)")
    (project / "mailer.toml").write_text('postmarkish_webhook_password = "a\\u000db"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mailer\.toml:1: postmarkish_webhook_password contains a line break"):
        load_settings(project, env=BASE_ENV)


def test_its_capabilities_answer_where_built_in_names_were_compared(project, registered):
    from mailer.sending.inflight import lanes
    env = {k: v for k, v in BASE_ENV.items() if k != "MAILER_SECRET_KEY"}
    settings = load_settings(project, env={**env, "MAILER_BACKEND": "postmarkish", "MAILER_BASE_URL": "http://localhost"})
    assert settings.provider is registered.PROVIDER
    with pytest.raises(ConfigError) as caught:  # it reaches real people (`delivers`), as smtp and sendgrid do
        settings.require_for_send(registered.PROVIDER.send_problems(settings))
    assert "MAILER_POSTMARKISH_SERVER_TOKEN is missing" in str(caught.value)
    assert "MAILER_SECRET_KEY is missing" in str(caught.value) and "the postmarkish backend sends to real people" in str(
        caught.value)
    assert lanes(settings, None) == (1, 0)  # no overlapping requests declared: one thread, its own batch
    with pytest.raises(ConfigError, match=r"must be one of outbox, sendgrid, smtp, postmarkish, not 'postmark'$"):
        load_settings(project, env={**BASE_ENV, "MAILER_BACKEND": "postmark"})


def test_its_webhook_is_served_by_the_web_app(make_settings, sqlite_store, registered):
    sid, _ = add_subscriber(sqlite_store, "rebond@example.org")  # (events older than a subscription act on nobody)
    other, _ = add_subscriber(sqlite_store, "ailleurs@example.org")
    settings = make_settings(MAILER_POSTMARKISH_WEBHOOK_PASSWORD="hook-secret")
    client = TestClient(create_app(settings, store=sqlite_store), base_url="https://lettre.example.org")
    bounce = {"RecordType": "Bounce", "Type": "HardBounce", "ID": 4323372036854775807, "Email": "rebond@example.org",
              "BouncedAt": f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%S.%f}Z", "Description": "The server was unable to deliver your message",
              "Metadata": {"mailer_subscriber": str(sid), "mailer_issue": "3"}}
    soft = {**bounce, "Type": "SoftBounce", "ID": 5, "Email": "ailleurs@example.org",
            "Metadata": {"mailer_subscriber": str(other)}}

    def post(event: dict, password: str) -> object:
        auth = base64.b64encode(f"postmark:{password}".encode()).decode()
        return client.post("/webhooks/postmarkish", content=json.dumps(event).encode(),
                           headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"})

    with client:
        refused = post(bounce, "wrong")
        assert refused.status_code == 401
        answer = post(bounce, "hook-secret")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"received": 1, "new": 1, "suppressed": 1, "ignored": 0}
        assert post(bounce, "hook-secret").json()["new"] == 0  # a replay is a duplicate
        assert post(soft, "hook-secret").json()["suppressed"] == 0
    with sqlite_store.engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(subscribers.c.id, subscribers.c.status)).all())
        rows = list(conn.execute(sa.select(provider_events).order_by(provider_events.c.id)).mappings())
    assert statuses == {sid: "bounced", other: "active"}
    assert [(row["provider"], row["kind"], row["subscriber_id"], row["issue_id"]) for row in rows] == [
        # issue 3 never went to them (no delivery in the ledger): the event acts on the person, not on the
        # issue's report
        ("postmarkish", "bounced", sid, None), ("postmarkish", "blocked", other, None)]
    assert rows[0]["payload"] == bounce  # the raw payload kept
