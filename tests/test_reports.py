"""Reports and click tracking with real parts: a send through the aiosmtpd sink, the public web app
over HTTP (uvicorn on loopback, httpx following the captured links), `mailer report --json`, on
SQLite and PostgreSQL.

Oracles: the untracked rendering of the same issue for the same recipient (a tracked message whose
click links are replaced by where the web app redirects them must be exactly it), and Python's own
HTML parser for "every href of every message"."""

from __future__ import annotations

import asyncio
import json
import re
from email import message_from_bytes, policy
from html.parser import HTMLParser
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from mailer import tokens
from mailer.cli.main import main
from mailer.config import load_settings, secret_key_for
from mailer.content.issue import load_issue
from mailer.content.render import Recipient, render_issue
from mailer.sending import dispatch
from mailer.sending.prepare import prepare_send
from mailer.subscribers.service import add_subscriber, remove_subscriber
from mailer.web.app import create_app

from .browser_support import ThreadedServer
from .cli_support import invoke_with
from .conftest import BASE_ENV, EXAMPLE_ISSUE
from .smtp_server import start_server
from .test_crash import SlowHandler, _env, _populate as populate, kill_mid_send

BASE = BASE_ENV["MAILER_BASE_URL"]
PEOPLE = ["alice@example.net", "bruno@example.net", "chloe@example.net"]
# a reader's browser: link scanners and HTTP libraries (httpx's own User-Agent) are not counted as clicks
READER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}


class _Hrefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        attributes = dict(attrs)
        if tag == "a" and "href" in attributes:
            self.hrefs.append(attributes["href"])
        if tag == "img" and "src" in attributes:
            self.images.append(attributes["src"])


def parts(raw: bytes) -> tuple[str, str, str]:
    """(html, text, List-Unsubscribe) of a captured message."""
    message = message_from_bytes(raw, policy=policy.default)
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    return html.replace("\r\n", "\n"), text.replace("\r\n", "\n"), str(message["List-Unsubscribe"])


def hrefs(html: str) -> _Hrefs:
    parser = _Hrefs()
    parser.feed(html)
    return parser


def send(make_settings, db_url: str, store, **env):  # noqa: ANN001, ANN003, ANN201
    for address in PEOPLE:
        add_subscriber(store, address, name=address.partition("@")[0].title())
    server = start_server()
    try:
        settings = make_settings(database_url=db_url, MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1",
                                 MAILER_SMTP_PORT=str(server.port), MAILER_SMTP_TLS="none", MAILER_SMTP_POOL="1",
                                 **env)
        report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        assert report.counts["sent"] == len(PEOPLE)
        messages = {m.rcpt_tos[0]: m.data for m in server.handler.messages}
    finally:
        server.stop()
    return settings, messages


_CLICK = re.compile(re.escape(BASE) + r"/c/[A-Za-z0-9_-]+")


def assert_resolves_to(raw: bytes, address: str, rendered, store, follow) -> dict[str, str]:  # noqa: ANN001
    """The oracle: every click link of a captured message, replaced by where the web app redirects it
    (`follow(url)` -> Location), gives back exactly `rendered` (the same issue without the link
    rewrite) for this recipient — text part whole, every href of the HTML part. Returns click URL ->
    original URL."""
    html, text, list_unsubscribe = parts(raw)
    unsubscribe_url = re.search(r"<(https://[^>]+/u/[^>]+)>", list_unsubscribe).group(1)
    with store.engine.connect() as conn:
        person = store.subscriber_by_email(conn, address)
    recipient = Recipient(email=address, name=person.name, unsubscribe_url=unsubscribe_url, subscriber_id=person.id)
    want_html, want_text = rendered.personalise(recipient)
    resolved = {url: follow(url) for url in set(_CLICK.findall(html + text))}
    assert resolved, f"{address}: no click link"
    assert _CLICK.sub(lambda m: resolved[m.group(0)], text) == want_text, address
    got_html = _CLICK.sub(lambda m: resolved[m.group(0)].replace("&", "&amp;"), html)
    assert hrefs(got_html).hrefs == hrefs(want_html).hrefs, address
    return resolved


def report_json(project: Path, monkeypatch, settings, *args: str) -> object:  # noqa: ANN001
    monkeypatch.chdir(project)
    env = {**BASE_ENV, "MAILER_DATABASE_URL": settings.database_url}
    result = CliRunner().invoke(main, ["report", *args, "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_tracked_send_clicks_followed_over_http_then_report(make_settings, store, db_url, project, monkeypatch):
    settings, messages = send(make_settings, db_url, store, MAILER_TRACK_CLICKS="1")
    untracked = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
    clicks_of: dict[str, list[str]] = {}
    with ThreadedServer(create_app(settings, store)) as web, httpx.Client(base_url=web.url, headers=READER) as client:
        def follow(url: str, *, record: bool = False) -> str:
            response = client.get(url.replace(BASE, web.url)) if record else client.head(url.replace(BASE, web.url))
            assert response.status_code == 302, (url, response.status_code)
            assert response.headers["cache-control"] == "no-store"
            return response.headers["location"]

        for address, raw in messages.items():
            html, text, list_unsubscribe = parts(raw)
            found = hrefs(html)
            assert not found.images or all("/o/" not in src for src in found.images)  # no pixel without opens
            tracked = [href for href in found.hrefs if href.startswith(f"{BASE}/c/")]
            assert tracked, "tracking on: the brief links are rewritten"
            for href in found.hrefs:  # not rewritten: the newsletter's own pages (footer), non-http links
                assert href.startswith(f"{BASE}/") or not href.startswith("http"), href
            assert "/c/" not in list_unsubscribe
            clicks_of[address] = tracked
            # HEAD: nothing recorded
            assert_resolves_to(raw, address, untracked, store, follow)

        alice, bruno = clicks_of[PEOPLE[0]], clicks_of[PEOPLE[1]]
        first, second = alice[0], alice[1]
        target_first = follow(first, record=True)
        follow(first, record=True)       # a second click of the same link: total 2, unique 1
        target_second = follow(second, record=True)
        assert follow(bruno[0], record=True) == target_first
        # Chloé unsubscribes in one click (RFC 8058) from this issue's email
        _, _, chloe_header = parts(messages[PEOPLE[2]])
        one_click = re.search(r"<(https://[^>]+/u/[^>]+)>", chloe_header).group(1).replace(BASE, web.url)
        assert client.post(one_click, data={"List-Unsubscribe": "One-Click"}).status_code == 200

    result = report_json(project, monkeypatch, settings, EXAMPLE_ISSUE)
    assert (result["issue"], result["recipients"], result["sent"], result["failed"]) == (EXAMPLE_ISSUE, 3, 3, 0)
    assert (result["bounced"], result["complained"], result["unsubscribed"]) == (0, 0, 1)
    assert result["clicks"]["total"] == 4 and result["clicks"]["unique"] == 3
    by_url = {link["url"]: (link["total"], link["unique"]) for link in result["clicks"]["links"]}
    assert by_url[target_first] == (3, 2) and by_url[target_second] == (1, 1)
    assert sum(total for total, _ in by_url.values()) == 4
    assert "opens" not in result
    overview = report_json(project, monkeypatch, settings)
    assert [item["issue"] for item in overview] == [EXAMPLE_ISSUE]
    # `remove --purge` erases the person's clicks (totals drop by theirs)
    remove_subscriber(store, PEOPLE[1], purge=True)
    after = report_json(project, monkeypatch, settings, EXAMPLE_ISSUE)
    assert after["clicks"]["total"] == 3 and after["clicks"]["unique"] == 2
    # the erased person's old link still leads on, and records nothing: clicks stay erased
    with ThreadedServer(create_app(settings, store)) as web, httpx.Client(base_url=web.url, headers=READER) as client:
        assert client.get(bruno[0].replace(BASE, web.url)).status_code == 302
    again = report_json(project, monkeypatch, settings, EXAMPLE_ISSUE)
    assert again["clicks"]["total"] == 3 and again["clicks"]["unique"] == 2


def test_tracking_off_every_link_is_the_original(make_settings, store, db_url, project, monkeypatch):
    settings, messages = send(make_settings, db_url, store)
    untracked = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
    originals = set(hrefs(untracked.html.raw).hrefs)
    assert len(messages) == len(PEOPLE)
    for raw in messages.values():
        html, text, _ = parts(raw)
        found = hrefs(html)
        for href in found.hrefs:
            assert "/c/" not in href and "/o/" not in href
            assert href in originals or href.startswith(f"{BASE}/u/"), href
        assert all("/o/" not in src for src in found.images)
        assert f"{BASE}/c/" not in text
    result = report_json(project, monkeypatch, settings, EXAMPLE_ISSUE)
    assert result["clicks"] == {"total": 0, "unique": 0, "links": [], "scanners_excluded": 0}
    assert result["click_tracking"] is False


def test_a_worker_sends_the_stored_tracked_edition_even_with_tracking_switched_off(make_settings, store, db_url):
    """`mailer worker` (like a resume and the scheduler) rebuilds the tracking state from the stored
    edition alone: frozen with tracking on, sent by a worker whose settings have it off, every
    message's links are still click links leading to the original URLs."""
    for address in PEOPLE:
        add_subscriber(store, address, name=address.partition("@")[0].title())
    tracked = make_settings(database_url=db_url, MAILER_TRACK_CLICKS="1")
    prepare_send(tracked, store, EXAMPLE_ISSUE)  # frozen: edition stored, nothing sent
    later = make_settings(database_url=db_url)
    assert dispatch.work_queue(later, store, once=True, poll_seconds=0) == len(PEOPLE)
    rendered = render_issue(load_issue(EXAMPLE_ISSUE, tracked.issues_dir, tracked.zone), tracked)
    files = sorted((later.outbox_dir / EXAMPLE_ISSUE).glob("*.eml"))
    assert len(files) == len(PEOPLE)
    with ThreadedServer(create_app(later, store)) as web, httpx.Client(base_url=web.url, headers=READER) as client:
        def follow(url: str) -> str:
            response = client.head(url.replace(BASE, web.url))
            assert response.status_code == 302, (url, response.status_code)
            return response.headers["location"]

        for path in files:
            address = message_from_bytes(path.read_bytes(), policy=policy.default)["To"].addresses[0].addr_spec
            assert_resolves_to(path.read_bytes(), address, rendered, store, follow)


def test_forged_altered_and_foreign_tokens_get_404_and_no_redirect(make_settings, store, db_url):
    settings, messages = send(make_settings, db_url, store, MAILER_TRACK_CLICKS="1")
    html, _, _ = parts(next(iter(messages.values())))
    token = next(h for h in hrefs(html).hrefs if h.startswith(f"{BASE}/c/")).rsplit("/", 1)[1]
    key = secret_key_for(settings)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # every one-character change of the token is refused by the reader (the oracle the route relies on)
    mutations = [token[:i] + c + token[i + 1:] for i in range(len(token)) for c in alphabet if c != token[i]]
    for forged in mutations:
        with pytest.raises(tokens.InvalidToken):
            tokens.read_click_token(key, forged)
    other_key = b"another deployment's secret key, 32+ chars"
    data = tokens.read_click_token(key, token)
    foreign = tokens.click_token(other_key, tokens.click_delivery(other_key, data.subscriber_id, data.edition_id),
                                 data.position)
    with ThreadedServer(create_app(settings, store)) as web, httpx.Client(base_url=web.url, headers=READER) as client:
        assert client.get(f"/c/{token}").status_code == 302
        # over HTTP: one mutation per position, truncations, an extension, another deployment's token,
        # a valid token for a position with no link, the open pixel's token as a link
        unused = tokens.click_token(key, tokens.click_delivery(key, data.subscriber_id, data.edition_id), 999)
        pixel = tokens.click_token(key, tokens.click_delivery(key, data.subscriber_id, data.edition_id), 0)
        samples = [mutations[i * (len(alphabet) - 1)] for i in range(len(token))]
        samples += [token[:-1], token[1:], token + "A", foreign, unused, pixel, "x", "https:%2F%2Fevil.example"]
        for forged in samples:
            response = client.get(f"/c/{forged}")
            assert response.status_code == 404, forged
            assert "location" not in response.headers
        for forged in (token, foreign, token[:-1]):
            assert client.get(f"/o/{forged}").status_code == 404
    with store.engine.connect() as conn:
        issue_id = store.issue_row(conn, EXAMPLE_ISSUE).id
        assert store.click_figures(conn, issue_id)[data.position - 1].total == 1


def test_open_pixel_only_with_track_opens(make_settings, store, db_url, project, monkeypatch):
    settings, messages = send(make_settings, db_url, store, MAILER_TRACK_OPENS="1")
    html, _, _ = parts(messages[PEOPLE[0]])
    found = hrefs(html)
    pixels = [src for src in found.images if src.startswith(f"{BASE}/o/")]
    assert len(pixels) == 1
    assert not any(href.startswith(f"{BASE}/c/") for href in found.hrefs)  # opens alone: links untouched
    with ThreadedServer(create_app(settings, store)) as web, httpx.Client(headers=READER) as client:
        for _ in range(2):
            response = client.get(pixels[0].replace(BASE, web.url))
            assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
    result = report_json(project, monkeypatch, settings, EXAMPLE_ISSUE)
    assert result["opens"] == {"total": 2, "unique": 1}


def test_track_clicks_in_issue_toml_wins_and_footer_says_so(make_settings, project):
    toml = project / "issues" / EXAMPLE_ISSUE / "issue.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + "track_clicks = true\n", encoding="utf-8")
    for language, words in (("fr", "compte les clics"), ("en", "counts clicks")):
        settings = make_settings(MAILER_LANGUAGE=language)
        rendered = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
        assert words in rendered.text.raw and words in rendered.html.raw
    toml.write_text(toml.read_text(encoding="utf-8").replace("track_clicks = true", "track_clicks = false"),
                    encoding="utf-8")
    settings = make_settings(MAILER_TRACK_CLICKS="1")
    rendered = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
    assert "compte les clics" not in rendered.text.raw


def test_report_of_an_unknown_issue_is_one_line_and_non_zero(project, monkeypatch, tmp_path):
    monkeypatch.chdir(project)
    env = {**BASE_ENV, "MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}
    result = CliRunner().invoke(main, ["report", "no-such-issue"], env=env)
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0 and "no-such-issue" in result.output
    result = CliRunner().invoke(main, ["report", EXAMPLE_ISSUE, "--json"], env=env)  # a folder, never sent
    assert result.exit_code != 0 and "never been sent" in result.output


# ----- tracking through a crash, a resume and a rebuild (real processes) -----------------------------
class _SlowerHandler(SlowHandler):
    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
        await asyncio.sleep(0.012)  # 80 messages take about a second: room for two kills
        return await super().handle_DATA(server, session, envelope)


def _edit_links(project: Path) -> None:
    """A new first brief with a new link (every later position shifts) and one URL changed."""
    briefs = project / "issues" / EXAMPLE_ISSUE / "briefs.txt"
    text = briefs.read_text(encoding="utf-8").replace("https://transport.data.gouv.fr",
                                                      "https://transport.data.gouv.fr/ter", 1)
    first = text.index("-->")
    briefs.write_text(text[:first] + "--> Une carte des lignes rouvertes : [la carte](https://example.org/carte-des-"
                      "lignes).\n" + text[first:], encoding="utf-8")


@pytest.mark.slow
def test_tracked_send_killed_resumed_and_rebuilt_every_click_resolves_to_its_editions_url(store, db_url, project,
                                                                                        monkeypatch):
    """SIGKILL mid-send with tracking on; a resume with MAILER_TRACK_CLICKS unset (tracking is frozen
    with the edition: the resumed messages are tracked the same), killed too; links edited and
    `--rebuild` (edition 2: its own positions). Then every click link of every message received is
    followed over HTTP: each redirects to the URL of the edition that message came from (clicks on an
    earlier edition's links still lead to that edition's URLs) and `report --json` counts them all."""
    count = 80
    addresses = populate(store, project, count)
    sink = start_server(_SlowerHandler())
    try:
        env = _env(db_url, sink.port, MAILER_TRACK_CLICKS="1", MAILER_BATCH_SIZE="5")
        untracked_env = {name: value for name, value in env.items() if name != "MAILER_TRACK_CLICKS"}
        settings = load_settings(project, env=env)
        first_edition = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
        kill_mid_send(project, env, sink, count // 4, count)
        kill_mid_send(project, untracked_env, sink, count // 2, count)  # the resume, killed in turn
        _edit_links(project)
        second_edition = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
        before_rebuild = len(sink.handler.messages)
        rebuilt = invoke_with(env, ("send", EXAMPLE_ISSUE, "--yes", "--rebuild"), project)
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "edition 2 made from the folder" in rebuilt.stderr
        messages = [(m.rcpt_tos[0], m.data) for m in sink.handler.messages]
    finally:
        sink.stop()
    assert before_rebuild < len(messages)
    assert {address for address, _ in messages} == set(addresses)

    follows: list[tuple[str, str]] = []  # (recipient, original URL) of every click made
    targets: set[str] = set()
    with ThreadedServer(create_app(settings, store)) as web, httpx.Client(base_url=web.url, headers=READER) as client:
        def follow(url: str, method: str = "HEAD") -> str:
            response = client.request(method, url.replace(BASE, web.url))
            assert response.status_code == 302, (url, response.status_code)
            return response.headers["location"]

        for index, (address, raw) in enumerate(messages):
            rendered = first_edition if index < before_rebuild else second_edition
            resolved = assert_resolves_to(raw, address, rendered, store, follow)  # HEAD: every link, nothing recorded
            targets.update(resolved.values())
            # a reader clicks one or two of the links (all of them at once would be a link scanner's burst)
            for url in sorted(resolved)[index % 2: index % 2 + 1 + index % 3 % 2]:
                follows.append((address, follow(url, "GET")))
    assert "https://transport.data.gouv.fr" in targets and "https://transport.data.gouv.fr/ter" in targets
    assert "https://example.org/carte-des-lignes" in targets

    result = report_json(project, monkeypatch, settings, EXAMPLE_ISSUE)
    assert result["sent"] == count and result["recipients"] == count
    by_url = {link["url"]: (link["total"], link["unique"]) for link in result["clicks"]["links"]}
    assert by_url == {url: (sum(1 for _, t in follows if t == url), len({a for a, t in follows if t == url}))
                      for url in targets}
    assert result["clicks"]["total"] == len(follows) and result["clicks"]["scanners_excluded"] == 0


def test_an_edition_hashes_its_tracked_urls_so_a_changed_link_alone_is_a_new_edition(make_settings, project):
    """The stored parts hold only click slots: a link whose URL alone changed must still change the
    edition's content hash (or `--rebuild` would answer "unchanged" and keep sending the old URL)."""
    from mailer.sending.edition import from_rendered

    settings = make_settings(MAILER_TRACK_CLICKS="1")

    def edition():  # noqa: ANN202
        return from_rendered(render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings))

    before = edition()
    briefs = project / "issues" / EXAMPLE_ISSUE / "briefs.txt"  # a URL of the same length: the same text wrapping
    briefs.write_text(briefs.read_text(encoding="utf-8").replace("(https://transport.data.gouv.fr)",
                                                                 "(https://transport.data.gouv.fx)"),
                      encoding="utf-8")
    after = edition()
    assert after.html.raw == before.html.raw and after.text.raw == before.text.raw  # slots only
    assert "https://transport.data.gouv.fx" in after.links and after.links != before.links
    assert after.content_hash != before.content_hash
    assert edition().content_hash == after.content_hash  # the same folder, the same edition


def test_report_without_issue_lists_each_send_with_its_state_and_dates_newest_first(make_settings, store, db_url,
                                                                                     project, monkeypatch):
    """A finished send, a paused one (stopped by the operator) and one in progress (a local-time send
    whose later waves are ahead): `mailer report` says which is which and when each started and
    finished, newest first; `--json` the same."""
    import threading
    from datetime import datetime, timedelta, timezone

    from tests.conftest import write_issue
    from tests.test_waves import KIRITIMATI, PARIS, people, wall_for

    settings = make_settings(database_url=db_url)
    people(project, store, {KIRITIMATI: 2, PARIS: 2})
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE)                     # finished
    write_issue(project, "2026-12-01-en-pause", {"briefs.txt": "--> Une brève.\n"},
                'subject = "En pause"\ndate = 2026-12-01\n')
    stop = threading.Event()
    stop.set()
    dispatch.send_issue(settings, store, "2026-12-01-en-pause", stop=stop)  # stopped: paused
    due = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=30)
    write_issue(project, "2026-12-02-vagues", {"briefs.txt": "--> Une brève.\n"},
                f'subject = "Vagues"\ndate = 2026-12-02\nsend_local = "{wall_for(KIRITIMATI, due)}"\n')
    dispatch.send_issue(settings, store, "2026-12-02-vagues")               # Kiritimati now, Paris later

    listed = report_json(project, monkeypatch, settings)
    assert [(item["issue"], item["status"], item["state"]) for item in listed] == [
        ("2026-12-02-vagues", "sending", "waves scheduled"), ("2026-12-01-en-pause", "paused", "paused"),
        (EXAMPLE_ISSUE, "sent", "finished")]
    finished, paused, waves = listed[2], listed[1], listed[0]
    assert finished["started_at"] and finished["finished_at"] >= finished["started_at"]
    assert paused["finished_at"] is None and paused["paused_reason"]
    assert waves["finished_at"] is None and waves["started_at"] and waves["sent"] == 2
    assert [(w["zone"], w["state"]) for w in waves["waves"]] == [(KIRITIMATI, "sent"), (PARIS, "pending")]

    monkeypatch.chdir(project)
    env = {**BASE_ENV, "MAILER_DATABASE_URL": settings.database_url}
    result = CliRunner().invoke(main, ["report"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines] == [["2026-12-02-vagues", "waves"], ["2026-12-01-en-pause", "paused"],
                                                    [EXAMPLE_ISSUE, "finished"]]
    day = re.compile(r"started \d{4}-\d\d-\d\d \d\d:\d\d")
    assert all(day.search(line) for line in lines if "not started" not in line)
    assert re.search(r"finished \d{4}-\d\d-\d\d \d\d:\d\d", lines[2])
    assert "not finished" in lines[0] and "not finished" in lines[1]
    assert f"next wave: {PARIS}" in lines[0] and paused["paused_reason"] in lines[1]


def test_a_test_copy_of_a_tracked_issue_is_untracked_throughout(make_settings, project):
    """`send --test` of an issue with `track_clicks = true` (and MAILER_TRACK_OPENS): links as written,
    no pixel, no tracking notice, and the text part exactly the untracked rendering (its wrapping
    measured for the written URLs, not for click URLs)."""
    toml = project / "issues" / EXAMPLE_ISSUE / "issue.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + "track_clicks = true\n", encoding="utf-8")
    settings = make_settings(MAILER_TRACK_OPENS="1")
    dispatch.send_test(settings, EXAMPLE_ISSUE, ["moi@example.org"])
    [raw] = [p.read_bytes() for p in (settings.outbox_dir).rglob("*.eml")]
    html, text, _ = parts(raw)
    assert "compte les clics" not in html and "compte les clics" not in text and "ouverture" not in text
    found = hrefs(html)
    assert not any("/c/" in h for h in found.hrefs) and not any("/o/" in src for src in found.images)
    plain = make_settings()  # the oracle: the same issue rendered with tracking off
    issue = load_issue(EXAMPLE_ISSUE, plain.issues_dir, plain.zone)
    untracked = render_issue(replace(issue, track_clicks=False), plain)
    _, want_text = untracked.personalise(Recipient(email="moi@example.org", name="", unsubscribe_url=re.search(
        r"https://\S+/u/\S+", text).group(0)))
    assert text == want_text


@pytest.mark.parametrize("language", sorted(__import__("mailer.content.i18n", fromlist=["STRINGS"]).STRINGS))
def test_the_footer_says_what_is_counted_for_each_combination_of_clicks_and_opens(make_settings, language):
    """Clicks and opens, clicks alone, opens alone (the pixel with links untouched), neither: the footer's
    notice (both parts) names exactly what the email counts, in every language of fixed strings."""
    import html as html_lib
    from mailer.content.i18n import STRINGS
    from mailer.sending.tracking import tracked_parts
    notes = {key: " ".join(STRINGS[language][key].split())
             for key in ("links_opens_tracked", "links_tracked", "opens_tracked")}
    for clicks in (False, True):
        for opens in (False, True):
            settings = make_settings(MAILER_LANGUAGE=language, MAILER_TRACK_CLICKS="1" if clicks else "0",
                                     MAILER_TRACK_OPENS="1" if opens else "0")
            rendered = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
            html, text, urls = tracked_parts(rendered)
            pixel, rewritten = "open.html" in html.slot_names, bool(urls)
            assert (pixel, rewritten) == (opens, clicks)  # what the email does…
            want = {(True, True): "links_opens_tracked", (True, False): "links_tracked",
                    (False, True): "opens_tracked", (False, False): None}[(clicks, opens)]
            for part in (" ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", html.raw)).split()),
                         " ".join(text.raw.split())):
                found = [key for key, note in notes.items() if note in part]
                assert found == ([want] if want else []), (language, clicks, opens, found)  # …is what it says


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
@pytest.mark.parametrize("language", ["en", "fr"])
def test_the_reports_page_and_mailer_report_say_the_same_state_with_the_same_why(make_settings, store, db_url, project,
                                                                               monkeypatch, language):
    """Finished, sending, paused (with its reason), waves scheduled (with the next wave), missed waves
    (with their zones): the preview's Reports list shows each send's state as `mailer report` does —
    the same state and why (`SendState`), worded in the page's language."""
    import html as html_lib
    import threading
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa
    from starlette.testclient import TestClient

    from mailer.sending.report import reports_overview
    from mailer.store.schema import deliveries, issues
    from mailer.web.preview import create_preview_app
    from tests.conftest import write_issue
    from tests.test_waves import KIRITIMATI, PARIS, people, wall_for

    settings = make_settings(database_url=db_url, MAILER_LANGUAGE=language)
    people(project, store, {KIRITIMATI: 2, PARIS: 2})
    dispatch.send_issue(settings, store, EXAMPLE_ISSUE)                          # finished
    brief = {"briefs.txt": "--> Une brève.\n"}
    write_issue(project, "2026-12-01-en-pause", brief, 'subject = "En pause"\ndate = 2026-12-01\n')
    stop = threading.Event()
    stop.set()
    dispatch.send_issue(settings, store, "2026-12-01-en-pause", stop=stop)       # paused, with its reason
    write_issue(project, "2026-12-02-en-cours", brief, 'subject = "En cours"\ndate = 2026-12-02\n')
    prepare_send(settings, store, "2026-12-02-en-cours")                         # frozen, being sent
    due = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=30)
    for slug in ("2026-12-03-vagues", "2026-12-04-manquee"):
        write_issue(project, slug, brief, f'subject = "Vagues"\ndate = 2026-12-03\n'
                                          f'send_local = "{wall_for(KIRITIMATI, due)}"\n')
        dispatch.send_issue(settings, store, slug)                               # Kiritimati now, Paris later
    with store.engine.begin() as conn:  # the running send; Paris's wave of the last one passed days ago
        conn.execute(issues.update().where(issues.c.slug == "2026-12-02-en-cours").values(status="sending"))
        late = sa.select(issues.c.id).where(issues.c.slug == "2026-12-04-manquee").scalar_subquery()
        for row_id, at in conn.execute(sa.select(deliveries.c.id, deliveries.c.due_at).where(
                deliveries.c.issue_id == late, deliveries.c.status == "queued")).all():
            conn.execute(deliveries.update().where(deliveries.c.id == row_id).values(due_at=at - timedelta(days=3)))

    states = {item.issue: item.send_state() for item in reports_overview(store, settings)}
    assert {slug: state.name for slug, state in states.items()} == {
        EXAMPLE_ISSUE: "finished", "2026-12-01-en-pause": "paused", "2026-12-02-en-cours": "sending",
        "2026-12-03-vagues": "waves scheduled", "2026-12-04-manquee": "missed waves"}
    assert states["2026-12-01-en-pause"].reason and states["2026-12-03-vagues"].next_wave[0] == PARIS
    assert states["2026-12-04-manquee"].missed == (PARIS,)

    monkeypatch.chdir(project)
    env = {**BASE_ENV, "MAILER_DATABASE_URL": settings.database_url, "MAILER_LANGUAGE": language}
    result = CliRunner().invoke(main, ["report"], env=env, catch_exceptions=False)
    cli = {line.split()[0]: line for line in result.output.splitlines()}
    with TestClient(create_preview_app(settings, EXAMPLE_ISSUE, store)) as client:
        page = client.get("/reports").text
    shown = {slug: " ".join(html_lib.unescape(text).split()) for slug, text in
             re.findall(r'<td><a href="[^"]*">([^<]+)</a></td><td class="state">(.*?)</td>', page, re.S)}
    assert set(shown) == set(states) == set(cli)
    for slug, state in states.items():
        assert shown[slug] == state.text(language)  # the page, in its language
        assert f"  {state.text('en')}  " in cli[slug]  # the CLI, in English: the same state and why
        if state.name != "finished" and state.name != "sending":
            assert "(" in shown[slug] and "(" in cli[slug]  # …with why
        if language == "fr":
            assert shown[slug] != state.text("en")


@pytest.mark.parametrize("language", ["fr", "en"])
def test_a_name_ending_with_a_full_stop_ends_the_why_you_receive_it_sentence_once(make_settings, language):
    settings = make_settings(MAILER_LANGUAGE=language, MAILER_NAME="Le Fil Inc.")
    rendered = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
    text = " ".join(rendered.text.raw.split())
    assert "Le Fil Inc." in text and "Inc.." not in text and "Inc.." not in rendered.html.raw
    from mailer.sending.notices import Notifier  # the notices' templates format the strings themselves
    for kind in ("welcome", "confirm"):
        notice, recipient = Notifier(settings).build(kind, 1, "moi@example.org")
        html, text = notice.personalise(recipient)
        assert "Le Fil Inc" in text and "Inc.." not in text and "Inc.." not in html, kind
