"""Click tracking counts the content, and the text part is wrapped as it is sent, over generated
issues (random briefs: Markdown links, bare URLs of every length, lists, quotes, links to the
newsletter's own pages, mailto:, a Markdown brief file with a title link and a `link`), sent to the
outbox with tracking on and off, on SQLite and PostgreSQL.

Oracles: the URLs the generator put in the briefs (what a report may count), the footer's URLs as
the links module builds them (never rewritten), and the RFC 5322 line rule as the text part's
reader sees it (every line at most 76 characters, except a line holding a single URL)."""

from __future__ import annotations

import random
import re
from email import message_from_bytes, policy

import pytest

from mailer import links
from mailer.content.textlayout import TEXT_WIDTH
from mailer.sending import dispatch
from mailer.subscribers import add_subscriber
from tests.conftest import BASE_ENV, write_issue
from tests.test_reports import hrefs

BASE = BASE_ENV["MAILER_BASE_URL"]
WORDS = ("données", "ouvertes", "trains", "de", "nuit", "modèles", "« petits »", "l’été", "à", "Paris", "rivières",
         "atlas", "un", "communs", "forum", "numérique", "et", "sobriété", "réseau", "ferroviaire")


def _url(rng: random.Random, number: int) -> str:
    path = "/".join(rng.choice(("a", "actualites", "2026", "dossier-special", "x" * rng.randint(1, 60)))
                    for _ in range(rng.randint(0, 3)))
    url = f"https://site{number}.example.org/{path}"
    return url + (f"?id={number}&ref=lettre" if rng.random() < 0.3 else "")


def generated_issue(rng: random.Random, number: int) -> tuple[dict[str, str], set[str]]:
    """(files of an issue folder, the external URLs its content links: what tracking may count)."""
    external: set[str] = set()
    own = [f"{BASE}/archive", f"{BASE}/issues/2026-01-01-ancienne", f"{BASE}/subscribe", BASE]
    briefs = []
    for index in range(rng.randint(2, 5)):
        parts = []
        for _ in range(rng.randint(5, 40)):
            roll = rng.random()
            if roll < 0.12:
                url = _url(rng, number * 100 + len(external))
                external.add(url)
                parts.append(f"[{rng.choice(WORDS)} {rng.choice(WORDS)}]({url})")
            elif roll < 0.2:
                url = _url(rng, number * 100 + len(external))
                external.add(url)
                parts.append(url + rng.choice(("", ".", ",", " :")))
            elif roll < 0.24:
                parts.append(f"[nos archives]({rng.choice(own)})")
            elif roll < 0.26:
                parts.append("[écrire](mailto:redaction@example.org)")
            else:
                parts.append(rng.choice(WORDS))
        body = " ".join(parts)
        shape = rng.random()
        if shape < 0.2:
            listed = _url(rng, number * 100 + 50 + index)
            external.add(listed)
            body = f"{body}\n\n- {rng.choice(WORDS)} {listed}\n- {' '.join(rng.choices(WORDS, k=20))}"
        elif shape < 0.35:
            body = f"> {body}"
        briefs.append(f"--> {body}\n")
    files = {"briefs.txt": "\n".join(briefs)}
    titled = _url(rng, number * 100 + 99)
    external.add(titled)
    files["zz-titre.md"] = (f"---\ntitle: \"Un titre [lié]({titled})\"\nlink: {titled}\n---\n"
                            f"{' '.join(rng.choices(WORDS, k=30))}\n")
    return files, external


def sent_messages(settings, slug: str) -> list[tuple[str, str]]:
    """(html, text) of every message the outbox holds for `slug`."""
    out = []
    for path in sorted((settings.outbox_dir / slug).glob("*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        out.append((message.get_body(("html",)).get_content().replace("\r\n", "\n"),
                    message.get_body(("plain",)).get_content().replace("\r\n", "\n")))
    return out


_MARKERS = re.compile(r"^\s*(?:[-*>→•]\s*|\d+\.\s+)*")


def overlong(text: str) -> list[str]:
    """Lines over the width that are not a single URL (after list, quote or arrow markers)."""
    bad = []
    for line in text.split("\n"):
        if len(line) <= TEXT_WIDTH:
            continue
        words = _MARKERS.sub("", line).split(" ")  # ASCII spaces: a no-break space does not break a line
        if len(words) == 1 and "://" in words[0]:
            continue
        bad.append(line)
    return bad


@pytest.mark.parametrize("track", [True, False], ids=["tracked", "untracked"])
def test_text_lines_fit_the_width_as_sent_and_only_content_links_are_tracked(make_settings, store, db_url, project,
                                                                           track):
    rng = random.Random(8 if track else 9)
    env = {"MAILER_TRACK_CLICKS": "1"} if track else {}
    settings = make_settings(database_url=db_url, **env)
    for address in ("alice@example.net", "bruno@example.net"):
        add_subscriber(store, address, name=address.partition("@")[0].title())
    footer = {links.archive_url(BASE)}
    for number in range(12):
        slug = f"2026-12-{number + 1:02d}-genere"
        files, external = generated_issue(rng, number)
        write_issue(project, slug, files, f'subject = "Lettre {number}"\ndate = 2026-12-{number + 1:02d}\n')
        dispatch.send_issue(settings, store, slug)
        messages = sent_messages(settings, slug)
        assert len(messages) == 2
        for html, text in messages:
            assert overlong(text) == [], (slug, overlong(text))
            found = hrefs(html).hrefs
            clicks = [href for href in found if href.startswith(f"{BASE}/c/")]
            assert bool(clicks) == track, slug
            assert footer <= set(found), slug  # the footer's archive link as it is, tracked or not
            assert all(url in text for url in footer)
            web_version = [href for href in found if href.startswith(f"{BASE}/issues/{slug}")]
            assert web_version, slug
            for href in found:  # everything else is a click link, one of our own pages, or not http
                assert href.startswith(f"{BASE}/") or href == BASE or not href.startswith("http") or not track, href
        with store.engine.connect() as conn:
            issue_id = store.issue_row(conn, slug).id
            counted = {row.url for row in store.click_figures(conn, issue_id)}
        # a report counts the content's links, all of them, and nothing else (no footer, no own page)
        assert counted == (external if track else set()), (slug, counted ^ external)
