"""/feed.xml: the archive as Atom 1.0, read back with feedparser and checked against /archive itself
(the oracle: the page a reader sees) on generated sets of issues — public, list-only, list-only made
public, hidden, frozen but unsent, scheduled for later — with titles carrying `<&>` and non-ASCII.
"""

from __future__ import annotations

import html
import random
import re
from datetime import datetime, timezone
from email.utils import format_datetime

import feedparser
import pytest
from lxml import etree

from mailer.sending.dispatch import send_issue
from mailer.sending.prepare import prepare_send
from mailer.subscribers import add_subscriber

from .conftest import write_issue
from .test_web import make_web

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

ATOM = "{http://www.w3.org/2005/Atom}"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})$")
ARCHIVE_LINK = re.compile(r'<li><a href="/issues/([^"]+)">(.*?)</a>')


@pytest.fixture
def web(make_settings, store):
    ns = make_web(make_settings(), store)
    with ns.client:
        yield ns


def archive_entries(web) -> list[tuple[str, str]]:
    """(slug, title) in the order /archive shows them."""
    page = web.client.get("/archive")
    assert page.status_code == 200
    return [(slug, html.unescape(title)) for slug, title in ARCHIVE_LINK.findall(page.text)]


def read_feed(web):
    response = web.client.get("/feed.xml")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    parsed = feedparser.parse(response.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    return response, parsed


def assert_atom_valid(body: bytes) -> None:
    """RFC 4287 rules a validator checks: one id/title/updated per feed and entry, ids unique and
    absolute, dates RFC 3339, an author at feed level, a self link."""
    root = etree.fromstring(body)
    assert root.tag == f"{ATOM}feed"
    for element in [root, *root.findall(f"{ATOM}entry")]:
        for name in ("id", "title", "updated"):
            assert len(element.findall(f"{ATOM}{name}")) == 1, (name, etree.tostring(element)[:200])
    ids = [element.text for element in root.iter(f"{ATOM}id")]
    assert len(ids) == len(set(ids)), ids
    assert all(re.match(r"^(tag:|https://)", value) for value in ids), ids
    for name in ("updated", "published"):
        for element in root.iter(f"{ATOM}{name}"):
            assert RFC3339.match(element.text), element.text
    assert root.find(f"{ATOM}author/{ATOM}name").text
    assert [link.get("href") for link in root.findall(f"{ATOM}link") if link.get("rel") == "self"] == [
        "https://lettre.example.org/feed.xml"]


SUBJECT_WORDS = ["Budget", "<2027>", "&", "données", "Ærø", "naïve", "« vélo »", "東京", "été", "a<b", "R&D"]


def generated_set(web, seed: int) -> dict[str, bool]:
    """Issues of every kind, sent or not; returns slug -> whether the archive should list it."""
    rng = random.Random(seed)
    add_subscriber(web.store, "all@example.org")
    add_subscriber(web.store, "premium@example.org", lists=["premium"])
    kinds = {  # kind: (issue.toml lines, action, listed)
        "public": ("", "send", True),
        "list-only": ('list = "premium"\n', "send", False),
        "list-public": ('list = "premium"\narchive = true\n', "send", True),
        "hidden": ("archive = false\n", "send", False),
        "frozen": ("", "freeze", False),
        "scheduled": ('send_at = 2099-01-01T07:00:00+01:00\n', "none", False),
    }
    names = list(kinds) * 2
    rng.shuffle(names)
    expected: dict[str, bool] = {}
    for number, kind in enumerate(names):
        toml, action, listed = kinds[kind]
        day = rng.choice([3, 10, 10, 17])  # same dates on purpose: the order then falls back to the id
        slug = f"2026-12-{day:02d}-{kind}-{number}"
        subject = " ".join(rng.sample(SUBJECT_WORDS, 3)) + f" <{kind}> & n°{number}"
        preheader = f'preheader = "Résumé <{number}> & co"\n' if number % 2 else ""
        write_issue(web.settings.root, slug,
                    {"briefs.txt": f"--> Première brève du numéro {number} : des <données> & des cartes.\n\n"
                                   "--> Seconde brève, qui ne doit pas figurer dans le résumé.\n"},
                    toml=f'subject = "{subject}"\ndate = 2026-12-{day:02d}\n{preheader}{toml}')
        if action == "send":
            send_issue(web.settings, web.store, slug)
        elif action == "freeze":
            prepare_send(web.settings, web.store, slug)
        expected[slug] = listed
    return expected


@pytest.mark.parametrize("seed", [1, 2])
def test_the_feed_lists_exactly_what_the_archive_lists(web, seed):
    expected = generated_set(web, seed)
    archive = archive_entries(web)
    assert {slug for slug, _ in archive} == {slug for slug, listed in expected.items() if listed}

    response, parsed = read_feed(web)
    assert_atom_valid(response.content)
    slugs = [entry.link.removeprefix("https://lettre.example.org/issues/") for entry in parsed.entries]
    assert [(slug, entry.title) for slug, entry in zip(slugs, parsed.entries)] == archive  # same set, same order
    assert all(re.search(r" <[a-z-]+> & n°\d+$", entry.title) for entry in parsed.entries)  # unescaped once, exactly
    for entry in parsed.entries:
        number = int(entry.title.rsplit("n°", 1)[1])
        assert entry.id.startswith("tag:lettre.example.org,2026-12-")
        assert entry.id.endswith(f":/issues/{entry.link.rsplit('/', 1)[1]}")
        assert entry.published_parsed and entry.updated_parsed
        want = f"Résumé <{number}> & co" if number % 2 else f"Première brève du numéro {number} : des <données> & des cartes."
        assert " ".join(html.unescape(entry.summary).split()) == want  # French typography keeps its no-break spaces
        assert entry.summary_detail.type == "text/plain"
    assert parsed.feed.title == web.settings.name and parsed.feed.author_detail.name == web.settings.name
    assert {link.rel: link.href for link in parsed.feed.links} == {
        "self": "https://lettre.example.org/feed.xml", "alternate": "https://lettre.example.org/archive"}
    newest = max(datetime(*entry.updated_parsed[:6], tzinfo=timezone.utc) for entry in parsed.entries)
    assert datetime(*parsed.feed.updated_parsed[:6], tzinfo=timezone.utc) == newest


def test_feed_ids_stay_the_same_when_more_issues_arrive(web):
    add_subscriber(web.store, "all@example.org")
    write_issue(web.settings.root, "2026-12-03-a", {"briefs.txt": "--> Une brève.\n"},
                toml='subject = "Premier"\ndate = 2026-12-03\n')
    send_issue(web.settings, web.store, "2026-12-03-a")
    first = read_feed(web)[1].entries
    write_issue(web.settings.root, "2026-12-10-b", {"briefs.txt": "--> Une autre.\n"},
                toml='subject = "Second"\ndate = 2026-12-10\n')
    send_issue(web.settings, web.store, "2026-12-10-b")
    second = read_feed(web)[1].entries
    assert [entry.title for entry in second] == ["Second", "Premier"]
    assert (second[1].id, second[1].published, second[1].updated) == (first[0].id, first[0].published, first[0].updated)


def test_an_empty_archive_is_a_valid_empty_feed(web):
    response, parsed = read_feed(web)
    assert_atom_valid(response.content)
    assert parsed.entries == []


def test_conditional_get_answers_304_until_the_archive_changes(web):
    add_subscriber(web.store, "all@example.org")
    write_issue(web.settings.root, "2026-12-03-a", {"briefs.txt": "--> Une brève.\n"},
                toml='subject = "Premier"\ndate = 2026-12-03\n')
    send_issue(web.settings, web.store, "2026-12-03-a")
    response = web.client.get("/feed.xml")
    etag, modified = response.headers["etag"], response.headers["last-modified"]
    assert web.client.get("/feed.xml", headers={"If-None-Match": etag}).status_code == 304
    assert web.client.get("/feed.xml", headers={"If-None-Match": f'W/{etag}, "other"'}).status_code == 304
    assert web.client.get("/feed.xml", headers={"If-Modified-Since": modified}).status_code == 304
    assert web.client.get("/feed.xml", headers={"If-None-Match": '"other"'}).status_code == 200
    earlier = format_datetime(datetime(2000, 1, 1, tzinfo=timezone.utc), usegmt=True)
    assert web.client.get("/feed.xml", headers={"If-Modified-Since": earlier}).status_code == 200
    assert web.client.get("/feed.xml", headers={"If-Modified-Since": "nonsense"}).status_code == 200

    write_issue(web.settings.root, "2026-12-10-b", {"briefs.txt": "--> Une autre.\n"},
                toml='subject = "Second"\ndate = 2026-12-10\n')
    send_issue(web.settings, web.store, "2026-12-10-b")
    again = web.client.get("/feed.xml", headers={"If-None-Match": etag})
    assert again.status_code == 200 and again.headers["etag"] != etag and "Second" in again.text


def test_archive_and_issue_pages_point_to_the_feed(web):
    add_subscriber(web.store, "all@example.org")
    write_issue(web.settings.root, "2026-12-03-a", {"briefs.txt": "--> Une brève.\n"},
                toml='subject = "Premier"\ndate = 2026-12-03\n')
    send_issue(web.settings, web.store, "2026-12-03-a")
    for path, href in (("/archive", "/feed.xml"), ("/issues/2026-12-03-a", "https://lettre.example.org/feed.xml")):
        page = web.client.get(path).text
        links = re.findall(r"<link\b[^>]*>", page)
        assert any('rel="alternate"' in link and 'type="application/atom+xml"' in link and f'href="{href}"' in link
                   for link in links), (path, links)



# RFC 4151 §2.1, written from the grammar (the oracle): tag:AUTHORITY,DATE:SPECIFIC
_TAG = re.compile(r"^tag:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                  r"|[^@\s]+@[^@\s]+),\d{4}(?:-\d{2}(?:-\d{2})?)?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*$")


@pytest.mark.parametrize("base", ["https://lettre.example.org", "https://news.example.co.uk/fil", "http://localhost:8000",
                                  "https://xn--lettre-exmple-ihb.org", "http://127.0.0.1:8000", "http://192.168.1.10/lettre",
                                  "http://[::1]:8000", "http://[2001:db8::1]/x"])
def test_entry_ids_are_tag_uris_on_a_domain_and_stable_uuids_on_an_ip(make_settings, base):
    """An IP is no tag: authority (RFC 4151 wants a domain name or an email address): the id is then a
    urn:uuid: (UUID5 of the issue's URL), the same at every build; on a domain the tag: URI is kept as
    it always was (feed readers dedupe by id)."""
    import ipaddress
    import uuid
    from urllib.parse import urlsplit

    from mailer.web import feed

    settings = make_settings(MAILER_BASE_URL=base)
    host = urlsplit(base).hostname
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    ids = {}
    for slug in ("2026-12-03-un", "2026-12-10-deux"):
        entry = feed.FeedEntry(slug, "Sujet", slug[:10], None, "")
        made = {feed.entry_id(settings, entry, moment) for moment in (
            datetime(2026, 12, 3, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc))}
        assert len(made) == 1  # stable: nothing but the base URL and the slug (and the issue's date) in it
        ids[slug] = made.pop()
        if is_ip:
            parsed = uuid.UUID(ids[slug].removeprefix("urn:uuid:"))
            assert ids[slug].startswith("urn:uuid:") and parsed.version == 5
        else:
            assert _TAG.match(ids[slug]), ids[slug]
            path = urlsplit(base).path.rstrip("/")
            assert ids[slug] == f"tag:{host},{slug[:10]}:{path}/issues/{slug}"  # the id it always had
    assert len(set(ids.values())) == 2
