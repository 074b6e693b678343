"""Link scanners are not readers: over HTTP (the public app on loopback, httpx) a known scanner's or
bot's User-Agent, or none, and a browser-looking scanner fetching every link of a message within a
second, are redirected (302) like anyone and counted apart ("likely scanners excluded"); readers'
clicks stay counted. Then generated click schedules through the real store (SQLite, PostgreSQL)
against a brute-force model of the rule (oracle: per delivery, first follows of every link of the
message, two or more, within one second → one follow per link is a scanner's)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx

from mailer.sending.report import issue_report
from mailer.sending.scanners import is_scanner
from mailer.web.app import create_app

from .browser_support import ThreadedServer
from .conftest import EXAMPLE_ISSUE
from .test_reports import BASE, PEOPLE, READER, _CLICK, parts, send

# User-Agents link scanners and bots send (mail security gateways, HTTP libraries, crawlers), with
# generated versions; and none at all
SCANNER_AGENTS = ["Mozilla/5.0 (compatible; Barracuda Sentinel (EE))", "python-requests/{v}", "Go-http-client/1.1",
                  "curl/{v}", "okhttp/{v}", "Apache-HttpClient/{v} (Java/17.0.2)", "Java/1.8.0_{n}",
                  "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.{n}; Pro)",
                  "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
                  "Wget/{v}", "python-urllib3/{v}", "axios/{v}", "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
                  "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", ""]
BROWSERS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{n}.0.0.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{m} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{m} "
            "Mobile/15E148 Safari/604.1", "Mozilla/5.0 (X11; Linux x86_64; rv:{n}.0) Gecko/20100101 Firefox/{n}.0"]


def generated(templates: list[str], rng: random.Random, count: int) -> list[str]:
    return [rng.choice(templates).format(v=f"{rng.randint(1, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 9)}",
                                         n=rng.randint(90, 140), m=rng.randint(0, 6)) for _ in range(count)]


def test_user_agents_of_scanners_and_browsers_are_told_apart():
    rng = random.Random(7)
    assert all(is_scanner(agent) for agent in generated(SCANNER_AGENTS, rng, 200))
    assert not any(is_scanner(agent) for agent in generated(BROWSERS, rng, 200))


def test_scanners_are_redirected_and_counted_apart_readers_counted(make_settings, store, db_url):
    settings, messages = send(make_settings, db_url, store, MAILER_TRACK_CLICKS="1")
    click_links = {address: sorted(set(_CLICK.findall(parts(raw)[0]))) for address, raw in messages.items()}
    assert all(len(found) >= 2 for found in click_links.values())
    rng = random.Random(3)
    scanner_fetches = 0
    with ThreadedServer(create_app(settings, store)) as web, httpx.Client(base_url=web.url) as client:
        def get(url: str, agent: str | None) -> None:
            headers = {"User-Agent": agent} if agent is not None else {}
            response = client.get(url.replace(BASE, web.url), headers=headers)
            assert response.status_code == 302 and response.headers["location"].startswith("http"), agent

        for agent in generated(SCANNER_AGENTS, rng, 30):   # gateways fetching every link of every message
            for links in click_links.values():
                get(rng.choice(links), agent)
                scanner_fetches += 1
        browser = generated(BROWSERS, rng, 1)[0]
        for url in click_links[PEOPLE[1]]:                   # a scanner with a browser's User-Agent: a burst
            get(url, browser)
        get(click_links[PEOPLE[0]][0], READER["User-Agent"])  # a reader: one link, twice
        get(click_links[PEOPLE[0]][0], READER["User-Agent"])
    report = issue_report(settings, store, EXAMPLE_ISSUE)
    assert (report.clicks_total, report.clicks_unique, report.clickers) == (2, 1, 1)
    assert report.scanner_clicks == scanner_fetches + len(click_links[PEOPLE[1]])
    assert report.as_json()["clicks"]["scanners_excluded"] == report.scanner_clicks


def test_generated_click_schedules_against_the_burst_rule(make_settings, store, db_url):
    settings, _ = send(make_settings, db_url, store, MAILER_TRACK_CLICKS="1")
    with store.engine.connect() as conn:
        issue = store.issue_row(conn, EXAMPLE_ISSUE)
        edition = store.current_editions(conn, [issue.id])[issue.id]
        import sqlalchemy as sa
        from mailer.store.schema import editions, links
        edition_id = conn.execute(sa.select(editions.c.id).where(editions.c.issue_id == issue.id,
                                                                 editions.c.number == edition.number)).scalar_one()
        positions = list(conn.execute(sa.select(links.c.position).where(links.c.edition_id == edition_id)
                                      .order_by(links.c.position)).scalars())
        people = {address: store.subscriber_by_email(conn, address).id for address in PEOPLE}
    assert len(positions) >= 2
    rng = random.Random(11)
    start = datetime(2026, 12, 1, 7, 0, tzinfo=timezone.utc)
    expected_total, expected_scans, expected_readers = 0, 0, set()
    for round_number in range(12):
        # each round: every person gets a fresh pattern (their earlier rows are removed first)
        with store.engine.begin() as conn:
            from mailer.store.schema import link_clicks
            conn.execute(link_clicks.delete())
        follows: Counter = Counter()
        firsts: dict[tuple[int, int], datetime] = {}
        for address, subscriber in people.items():
            kind = rng.choice(("burst", "burst-then-reader", "reader", "reader-all-slow", "none"))
            moment = start + timedelta(hours=round_number, seconds=rng.uniform(0, 600))
            schedule: list[tuple[int, datetime]] = []
            if kind.startswith("burst"):
                schedule = [(p, moment + timedelta(seconds=rng.uniform(0, 0.95))) for p in positions]
                if kind == "burst-then-reader":
                    schedule.append((rng.choice(positions), moment + timedelta(minutes=rng.uniform(5, 90))))
            elif kind == "reader":
                chosen = rng.sample(positions, rng.randint(1, len(positions) - 1))
                schedule = [(p, moment + timedelta(seconds=rng.uniform(0, 0.5))) for p in chosen]
            elif kind == "reader-all-slow":
                schedule = [(p, moment + timedelta(seconds=2 * i + rng.uniform(1.1, 1.9))) for i, p in enumerate(positions)]
            with store.engine.begin() as conn:
                for position, at in sorted(schedule, key=lambda item: item[1]):
                    store.record_click(conn, edition_id, subscriber, position, at)
                    follows[(subscriber, position)] += 1
                    firsts.setdefault((subscriber, position), at)
        # the model
        total, scans, readers = 0, 0, set()
        for subscriber in people.values():
            mine = {p: follows[(subscriber, p)] for p in positions if follows[(subscriber, p)]}
            first = [firsts[(subscriber, p)] for p in mine]
            burst = len(mine) == len(positions) >= 2 and max(first) - min(first) <= timedelta(seconds=1)
            kept = {p: n - (1 if burst else 0) for p, n in mine.items()}
            total += sum(kept.values())
            scans += len(mine) if burst else 0
            if any(kept.values()):
                readers.add(subscriber)
        report = issue_report(settings, store, EXAMPLE_ISSUE)
        assert (report.clicks_total, report.scanner_clicks, report.clickers) == (total, scans, len(readers)), round_number
        expected_total += total
        expected_scans += scans
        expected_readers |= readers
    assert expected_scans > 0 and expected_total > 0  # both kinds were generated
