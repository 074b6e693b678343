"""Rendering: compiled once per issue, personalised per recipient, French typography, warnings."""

from __future__ import annotations

import html as html_module
import random
import re
import shutil
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import mjml
import pytest
from markdown_it.common.normalize_url import normalizeLinkText

import mailer.content.render as render_module
from mailer.errors import RenderError, SourceError
from mailer.content.issue import load_issue
from mailer.content.markup import NBSP, NNBSP, to_html, to_text
from mailer.content.render import Recipient, first_name_of, render_issue

from .conftest import EXAMPLE_ISSUE, write_issue

CASES = Path(__file__).parent / "cases"


def _render(settings, ref=EXAMPLE_ISSUE):
    return render_issue(load_issue(ref, settings.issues_dir, settings.zone), settings)


def test_mjml_is_compiled_once_for_many_recipients(settings, monkeypatch):
    calls = []
    real = mjml.mjml2html

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(render_module.mjml, "mjml2html", counting)
    rendered = _render(settings)
    outputs = [rendered.personalise(Recipient(email=f"r{i}@example.org", name=f"Lecteur{i} Martin",
                                              unsubscribe_url=f"https://lettre.example.org/u/tok{i}"))
               for i in range(200)]
    assert len(calls) == 1
    for i, (html, text) in enumerate(outputs):
        assert f'href="https://lettre.example.org/u/tok{i}"' in html
        assert f"https://lettre.example.org/u/tok{i}" in text
        assert f"Bonjour Lecteur{i}," in html and f"Bonjour Lecteur{i}," in text
        assert "%%mailer:" not in html and "%%mailer:" not in text
        other = (i + 1) % 200
        assert f"/u/tok{other}\"" not in html


def test_subscriber_values_are_escaped_in_html_only(settings):
    rendered = _render(settings)
    for name, first in (('<script>alert("x")</script>&Cie', '<script>alert("x")</script>&Cie'),
                        ('Durand, <b onclick="x()">Zoé</b>', '<b'), ("", "")):
        for first_name in ("", '<i>"Lou"</i> & Co'):
            html, text = rendered.personalise(Recipient(email="x@example.org", name=name, first_name=first_name,
                                                        unsubscribe_url="https://lettre.example.org/u/abc"))
            shown = first_name or first
            assert "<script>alert" not in html and "<i>" not in html and "<b " not in html
            assert f"Bonjour {html_module.escape(shown, quote=True)}," in html if shown else "Bonjour," in html
            assert f"Bonjour {shown}," in text if shown else "Bonjour," in text


def test_greeting_without_a_name(settings):
    html, text = _render(settings).personalise(Recipient(email="x@example.org", unsubscribe_url="https://e.org/u/a"))
    assert "Bonjour," in html and "Bonjour," in text and "Bonjour ," not in text


def test_every_brief_title_link_and_footer_in_both_parts(settings):
    rendered = _render(settings)
    html, text = rendered.personalise(Recipient(email="x@example.org", unsubscribe_url="https://e.org/u/a"))
    issue = rendered.issue
    flat_text = " ".join(text.replace(NBSP, " ").replace(NNBSP, " ").split())
    for brief in issue.briefs:
        first_words = " ".join(brief.body.split()[:3]).replace("[", "").replace("*", "")
        assert first_words in flat_text
    assert "Le coup de cœur de la rédaction" in html and "Le coup de cœur de la rédaction" in text
    assert 'href="https://transport.data.gouv.fr"' in html
    assert "portail national des transports (https://transport.data.gouv.fr)" in " ".join(text.split())
    assert 'href="https://example.org/forum-communs"' in html  # bare URL became a link
    assert "12 rue des Exemples, 75011 Paris" in html and "12 rue des Exemples, 75011 Paris" in text
    web_url = f"https://lettre.example.org/issues/{issue.slug}"
    assert f'href="{web_url}"' in html and web_url in text
    assert "Se désabonner" in html
    assert rendered.preheader in html_module.unescape(html)  # mj-preview, typeset
    assert rendered.html.slot_names.count("unsubscribe_url.html") >= 1


def test_english_strings(make_settings):
    rendered = _render(make_settings(MAILER_LANGUAGE="en"))
    html, text = rendered.personalise(Recipient(email="x@example.org", name="Jo", unsubscribe_url="https://e.org/u/a"))
    assert "Unsubscribe" in html and "Hello Jo," in text and "Thursday 26 November 2026" in text


def test_french_typography_binds_punctuation_without_touching_urls():
    html = to_html("Question ? Oui : « super » ; voir https://example.org/a:b?c=d !", "fr")
    assert f"Question{NNBSP}?" in html and f"Oui{NBSP}:" in html and f"«{NBSP}super{NBSP}»" in html
    assert f"{NNBSP};" in html and f"{NNBSP}!" in html
    assert 'href="https://example.org/a:b?c=d"' in html
    assert "Question ?" in to_html("Question ?", "en")


def test_markdown_is_escaped_and_cannot_break_mjml():
    html = to_html("Un <b>gras</b> et </mj-text> et [lien](javascript:alert(1))", "fr")
    assert "<b>" not in html and "&lt;/mj-text&gt;" in html
    assert "javascript:" not in html.split("href=")[-1] if "href=" in html else True
    assert 'href="javascript' not in html


def test_text_part_wraps_without_breaking_urls_or_nbsp():
    long_url = "https://example.org/" + "a" * 120
    text = to_text(f"Un texte assez long pour être replié plusieurs fois, avec un lien {long_url} au milieu ; et fin.", "fr")
    assert long_url in text.replace("\n", " ")
    assert all(len(line) <= 76 or long_url in line for line in text.split("\n"))
    assert f"{NNBSP};" in text


def test_editor_markdown_cannot_inject_slots_or_break_the_email(project, settings):
    write_issue(project, "2026-12-03-piege", {"briefs.txt": "--> Texte avec %%mailer:email%% et </mj-column></mj-section>.\n"})
    rendered = _render(settings, "piege")
    html, text = rendered.personalise(Recipient(email="secret@example.org", unsubscribe_url="https://e.org/u/a"))
    assert "secret@example.org" not in html and "secret@example.org" not in text.split("Se désabonner")[0]
    assert "Texte avec %\u200b%mailer:email%\u200b% et" in text
    assert "&lt;/mj-column&gt;" in html


def test_unknown_template_is_a_source_error(project, settings):
    write_issue(project, "2026-12-03-gabarit", {"briefs.txt": "--> x\n"}, toml='subject = "S"\ntemplate = "absent"\n')
    with pytest.raises(SourceError, match="unknown template 'absent'"):
        _render(settings, "gabarit")


def test_broken_template_is_a_render_error(project, settings):
    (project / "templates" / "cassé.mjml.j2").write_text("<mjml><mj-body>{{ oops( }}</mj-body></mjml>", encoding="utf-8")
    (project / "templates" / "cassé.txt.j2").write_text("{{ slot['unsubscribe_url'] }}", encoding="utf-8")
    write_issue(project, "2026-12-03-casse", {"briefs.txt": "--> x\n"}, toml='subject = "S"\ntemplate = "cassé"\n')
    with pytest.raises(RenderError, match="template syntax error"):
        _render(settings, "casse")


def test_template_without_unsubscribe_link_is_refused(project, settings):
    (project / "templates" / "nu.mjml.j2").write_text(
        "<mjml><mj-body><mj-section><mj-column><mj-text>Rien</mj-text></mj-column></mj-section></mj-body></mjml>",
        encoding="utf-8")
    (project / "templates" / "nu.txt.j2").write_text("{{ slot['unsubscribe_url'] }}", encoding="utf-8")
    write_issue(project, "2026-12-03-nu", {"briefs.txt": "--> x\n"}, toml='subject = "S"\ntemplate = "nu"\n')
    with pytest.raises(RenderError, match="no visible unsubscribe link"):
        _render(settings, "nu")


def test_warnings_for_size_alt_text_http_links_and_empty_text(project, make_settings):
    settings = make_settings(MAILER_BASE_URL="http://localhost:8000")
    big = "\n".join(f"--> Brève numéro {i} : " + "du texte qui prend de la place " * 40 for i in range(80))
    write_issue(project, "2026-12-03-lourd", {
        "briefs.txt": big + "\n--> Lien en clair http://example.org/non-securise\n--> ![](https://example.org/x.png)\n",
        "z-image.md": "---\nimage: https://example.org/photo.jpg\n---\nUne photo sans texte alternatif.\n",
    })
    warnings = _render(settings, "lourd").warnings
    joined = "\n".join(warnings)
    assert "Gmail clips messages over 102 KB" in joined
    assert "image https://example.org/photo.jpg has no alt text" in joined
    assert "image https://example.org/x.png has no alt text" in joined
    assert "insecure link (http://): http://example.org/non-securise" in joined
    assert "MAILER_BASE_URL is http://localhost:8000" in joined
    assert "brief has no readable text" in joined


def test_example_issue_builds_without_warnings(settings):
    rendered = _render(settings)
    assert rendered.warnings == ()
    html, _ = rendered.personalise(Recipient(email="x@example.org", unsubscribe_url="https://e.org/u/a"))
    assert len(html.encode()) < 102 * 1024


# ----- each link of the HTML part once in the text part (issue 10.4) ------------------------------
_HREF = re.compile(r'<a\b[^>]*\bhref="([^"]*)"', re.IGNORECASE)


def _link_kinds(n: int) -> list[str]:
    """Markdown for the same kinds of link editors write, each with a URL of its own (`n`)."""
    return [
        f"https://example.org/plain-{n}",
        f"https://fr.wikipedia.org/wiki/%C3%89t%C3%A9_{n}",
        f"https://exämple-{n}.org/page",
        f"https://example.org/recherche?q=trains&page={n}&tri=date",
        f"https://en.wikipedia.org/wiki/Foo_(bar)_{n}",
        f"https://example.org/fin-{n}.",
        f"(voir https://example.org/parenthese-{n})",
        f"https://example.org/question-{n} ?",
        f"www.example-{n}.org/chemin",
        f"<https://exämple-auto-{n}.org/é>",
        f"<https://example.org/auto-{n}>",
        f"[https://example.org/meme-{n}](https://example.org/meme-{n})",
        f"[https://example.org/slash-{n}](https://example.org/slash-{n}/)",
        f"[example.org/sans-schema-{n}](https://example.org/sans-schema-{n})",
        f"[https://fr.wikipedia.org/wiki/Été_lien_{n}](https://fr.wikipedia.org/wiki/%C3%89t%C3%A9_lien_{n})",
        f"[https://exämple-lien-{n}.org](https://exämple-lien-{n}.org/)",
        f"[le portail](https://example.org/portail-{n}?a=1&b=2)",
        f"[un *lien* emphatique](https://example.org/emph-{n})",
        f"[écrivez-nous](mailto:redaction-{n}@example.org)",
        f"courriel-{n}@example.org",
        f"[https://example.org/autre-{n}](https://example.org/cible-differente-{n})",
    ]


def _count_url(text: str, url: str) -> int:
    return len(re.findall(r"(?<![\w/%.-])" + re.escape(url) + r"(?![\w/%-])", text))


@pytest.mark.parametrize("seed", range(6))
def test_every_link_of_the_html_shows_once_in_the_text(project, settings, seed):
    rng = random.Random(seed)
    kinds = _link_kinds(seed)
    rng.shuffle(kinds)
    lines = []
    for start in range(0, len(kinds), 4):
        words = []
        for kind in kinds[start:start + 4]:
            words += [rng.choice(["Voir", "et", "puis", "lire :", "—", "ici"]), kind]
        lines.append("--> " + " ".join(words) + " " + rng.choice([".", "!", ""]))
    link_md = "---\nlink: https://example.org/lien-de-la-breve\n---\nUne brève qui cite https://example.org/lien-de-la-breve aussi.\n"
    write_issue(project, "2026-12-03-liens", {"briefs.txt": "\n".join(lines) + "\n", "z.md": link_md})
    html, text = _render(settings, "liens").personalise(
        Recipient(email="x@example.org", unsubscribe_url="https://lettre.example.org/u/abc"))
    hrefs = _check_each_href_once(html, text)
    assert len(hrefs) >= len(kinds) + 3


_LINK_TEXT = re.compile(r'<a\b[^>]*\bhref="([^"]*)"[^>]*>(.*?)</a>', re.IGNORECASE | re.DOTALL)


def _check_each_href_once(html, text, bare=""):
    """Each href of the HTML once in the text, never also decoded. Links whose href holds `bare`
    (bare URLs and autolinks of the brief): each one's visible text is its href decoded faithfully, with nothing invisible
    or misleading in it (WHATWG URL Standard §4.8)."""
    links = [(html_module.unescape(h), html_module.unescape(label)) for h, label in _LINK_TEXT.findall(html)]
    for href, label in links:
        shown = href.removeprefix("mailto:")
        assert _count_url(text, shown) == 1, (href, text)
        decoded = normalizeLinkText(href).removeprefix("mailto:")
        if decoded != shown:
            assert _count_url(text, decoded) == 0, (href, text)
        if bare and bare in href:
            path, href_path = label.split("/", 3)[3:], href.split("/", 3)[3:]  # after the host
            assert [unquote(x, errors="surrogateescape") for x in path] == \
                [unquote(x, errors="surrogateescape") for x in href_path], (href, label)
            assert not any(unicodedata.category(c)[0] in "CZ" for c in label), (href, label)
    return {href for href, _ in links}


@pytest.mark.parametrize("where", ["/chemin/a{}b", "/p?q=a{}b&r=1", "/p#a{}b"])
def test_every_percent_escape_in_a_url_shows_once_in_the_text(project, settings, where):
    """Issue 10.4 again: `%20` (and every escape of a byte 0x00–0xFF, in a path, a query or a
    fragment), as a bare URL and as an autolink."""
    lines = []
    for byte in range(256):
        escape = f"%{byte:02X}" if byte % 2 else f"%{byte:02x}"  # both cases of hex digits
        url = f"https://example.org/b{byte}" + where.format(escape)
        lines.append(f"--> Voir {url} ici.\nEt <{url.replace('example.org', 'auto.example.org')}> aussi.")
    write_issue(project, "2026-12-03-escapes", {"briefs.txt": "\n".join(lines) + "\n"})
    html, text = _render(settings, "escapes").personalise(
        Recipient(email="x@example.org", unsubscribe_url="https://lettre.example.org/u/abc"))
    hrefs = _check_each_href_once(html, text, bare="example.org/b")
    assert len([h for h in hrefs if "example.org/b" in h]) == 512
    assert "https://example.org/b32/" + where.format("%20")[1:] in text  # the reported case
    assert "a b" not in text


def test_a_space_escape_written_as_a_space_in_the_link_text_shows_once():
    text = to_text("[https://example.org/a b](https://example.org/a%20b) et <https://example.org/c%20d>", "fr")
    assert text == "https://example.org/a%20b et https://example.org/c%20d"


_IDN_LABELS = ["médiathèque-exemple", "été", "çà-et-là", "ñandú", "пример", "москва-музей", "例子", "東京",
               "straße", "größe", "i̇stanbul", "ıspanak", "ärger", "ŝanĝo"]


def _mixed_case(rng, label):
    return "".join(c.upper() if rng.random() < 0.5 else c for c in label)


@pytest.mark.parametrize("seed", range(4))
def test_idn_hosts_in_any_case_become_their_uts46_a_label(project, settings, seed):
    """`https://MÉDIATHÈQUE-exemple.fr/` → `xn--mdiathque-exemple-xsbn.fr`, as the base URL is
    converted: oracle `idna.encode(host, uts46=True)`, for bare URLs, autolinks, Markdown links,
    mailto and a brief's `link:`."""
    import idna

    rng = random.Random(seed)
    hosts = [f"{_mixed_case(rng, label)}.{rng.choice(['fr', 'ORG', 'De', 'com'])}" for label in _IDN_LABELS]
    hosts.append("MÉDIATHÈQUE-exemple.fr")
    hosts.append(_mixed_case(rng, "xn--mdiathque-exemple-xsbn") + ".FR")  # an A-label in capitals
    expected = {host: idna.encode(host, uts46=True).decode("ascii") for host in hosts}
    lines = []
    for n, host in enumerate(hosts):
        lines.append(f"--> Voir https://{host}/nu-{n} et <https://{host}/auto-{n}> et [le site](https://{host}/md-{n}) "
                     f"et [écrire](mailto:moi-{n}@{host}).")
    link_md = f"---\nlink: https://{hosts[0]}/lien\n---\nUne brève.\n"
    write_issue(project, "2026-12-03-idn", {"briefs.txt": "\n".join(lines) + "\n", "z.md": link_md})
    html, text = _render(settings, "idn").personalise(
        Recipient(email="x@example.org", unsubscribe_url="https://lettre.example.org/u/abc"))
    hrefs = _check_each_href_once(html, text)
    for n, host in enumerate(hosts):
        ascii_host = expected[host]
        for path in (f"nu-{n}", f"auto-{n}", f"md-{n}"):
            assert f"https://{ascii_host}/{path}" in hrefs, (host, path)
        assert f"mailto:moi-{n}@{ascii_host}" in hrefs
    assert f"https://{expected[hosts[0]]}/lien" in hrefs
    assert "https://xn--mdiathque-exemple-xsbn.fr/nu-" in text
    assert not any(h.split("/")[2] != h.split("/")[2].lower() for h in hrefs if h.startswith("https://"))


def test_the_text_url_twice_case(project, settings):
    shutil.copytree(CASES / "text-url-twice" / "issue", project / "issues" / "2026-12-03-urls")
    _, text = _render(settings, "urls").personalise(Recipient(email="x@example.org", unsubscribe_url="https://e.org/u/a"))
    assert ("Voir https://fr.wikipedia.org/wiki/%C3%89t%C3%A9 et https://xn--exmple-cua.org/page et "
            "https://example.org/page") in " ".join(text.split())
    assert "Été" not in text and "exämple" not in text


def test_typography_never_touches_a_url_shown_as_text():
    html = to_html("Voir https://example.org/l'avis:x et [https://example.org/d'accord](https://example.org/d'accord) !", "fr")
    assert ">https://example.org/l'avis:x</a>" in html and ">https://example.org/d'accord</a>" in html
    assert f"{NNBSP}!" in html


def test_a_control_character_from_a_template_is_located_in_the_mjml_error(project, settings):
    source = (project / "templates" / "weekly.mjml.j2").read_text(encoding="utf-8")
    (project / "templates" / "weekly.mjml.j2").write_text(source.replace("{{ date_long }}", "{{ date_long }}\x0c"),
                                                           encoding="utf-8")
    with pytest.raises(RenderError) as info:
        _render(settings)
    message = str(info.value)
    assert "produced invalid MJML" in message and "control character U+000C (FORM FEED) at line" in message
    line = int(message.split("at line ")[1].split()[0])
    assert "\x0c" in _rendered_mjml_line(project, settings, line)


def _rendered_mjml_line(project, settings, line):
    from mailer.content.render import _context, jinja_environment
    issue = load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone)
    mjml_source = jinja_environment(settings.templates_dir, autoescape=True).get_template("weekly.mjml.j2").render(
        _context(issue, settings, "https://lettre.example.org/issues/x"))
    return mjml_source.split("\n")[line - 1]


# ----- the greeting ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,first", [
    ("Bernard, Hugo", "Hugo"), ("Hugo Bernard", "Hugo"), ("Smith, Jo A.", "Jo"), ("DUPONT Jean-Pierre", "Jean-Pierre"),
    ("Marie-Claire Lefèvre", "Marie-Claire"), ("  Zoé\t ", "Zoé"), ("李小龙", "李小龙"), ("Dr Jo Smith", "Jo"),
    ("Mme Dupont", ""), ("J. Smith", "J. Smith"), ("J.-P. Sartre", "J.-P. Sartre"),
    ("jo@example.org", ""), ("", ""), (",", ""), ("Bernard,", "Bernard"),
])
def test_first_name_of(name, first):
    assert first_name_of(name) == first


_GIVEN = ["Jean", "Jean-Pierre", "Éloïse", "Zoé", "Marie-Claire", "Hugo", "Anaïs", "Noël"]
_FAMILY = ["Dupont", "Lefèvre", "Martin", "Le Goff", "Smith"]
_TITLES_WITH_FAMILY_NAME = ["M.", "M", "Mme", "Mlle", "Dr", "Dr.", "Pr", "Me", "Maître", "Mr", "Mr.", "Mrs", "Ms",
                            "Prof.", "Madame", "Monsieur", "Docteur", "Sir", "Miss"]
_TITLES_WITH_GIVEN_NAME = ["Sœur", "Soeur", "Frère", "Père", "Abbé"]
_FILLERS = ["N/A", "n/a", "-", "?", "none", "null", "unknown", "inconnu", "xxx", "test", "NULL", " N/A ", "#N/A", "--",
            "Non renseigné", "Unknown.", "..."]


def _first_name_table(rng):
    """(name as an export writes it, first name a reader expects), built from known parts."""
    rows = []
    for given in _GIVEN:
        family = rng.choice(_FAMILY)
        title = rng.choice(_TITLES_WITH_FAMILY_NAME)
        title = rng.choice([title, title.upper(), title.lower()]) if title not in ("M.", "M") else title
        rows += [
            (f"{given} {family}", given), (f"{family}, {given}", given), (f"{family.upper()} {given}", given),
            (f"{given.lower()} {family.lower()}", given), (f"{given.upper()} {family.upper()}", given),
            (f"{title} {given} {family}", given), (f"{family}, {title} {given}", given),
            (f"{title} {family}", ""), (title, ""), (f"{title} {family.upper()} {given}", given),
            (f"{rng.choice(_TITLES_WITH_GIVEN_NAME)} {given}", given),
            (f"{title} et {rng.choice(_TITLES_WITH_FAMILY_NAME)} {family}", ""),
            (f"  {given}\t{family} ", given), (given.lower(), given),
        ]
    rows += [(filler, "") for filler in _FILLERS]
    rows += [("Maître Dupond", ""), ("Sœur Marie", "Marie"), ("M. Jean Dupont", "Jean"), ("jean dupont", "Jean"),
             ("D'ARC jeanne", "Jeanne"), ("d'arc", "d'Arc"), ("O'BRIEN", "O'Brien"), ("İSMAİL YILMAZ", "İsmail"),
             ("McDonald", "McDonald"), ("Dr J. Smith", ""), ("Mr & Mrs Smith", "")]
    return rows


@pytest.mark.parametrize("seed", range(3))
def test_first_names_from_a_generated_table_of_export_names(seed):
    for name, first in _first_name_table(random.Random(seed)):
        assert first_name_of(name) == first, name


@pytest.mark.parametrize("attribute,expected", [
    ("N/A", "Hugo"), ("null", "Hugo"), ("-", "Hugo"), ("Mme", "Hugo"), ("jean-pierre", "Jean-Pierre"),
    ("ÉLOÏSE", "Éloïse"), ("Hugues", "Hugues"), ("DeShawn", "DeShawn"),
])
def test_the_first_name_attribute_is_capitalised_and_a_filler_falls_back_to_the_name(project, settings, attribute,
                                                                                     expected):
    rendered = _greeting_issue(project, settings)
    html, text = _greetings(rendered, name="Bernard, Hugo", first_name=attribute)
    assert text.startswith(f"Bonjour {expected},\n") and f"Bonjour {expected}," in html


@pytest.mark.parametrize("name,greeting", [
    ("M. Jean Dupont", "Bonjour Jean,"), ("Maître Dupond", "Bonjour,"), ("Sœur Marie", "Bonjour Marie,"),
    ("jean dupont", "Bonjour Jean,"), ("N/A", "Bonjour,"), ("Mme", "Bonjour,"),
])
def test_an_honorific_or_a_filler_is_never_greeted_alone(project, settings, name, greeting):
    html, text = _greetings(_greeting_issue(project, settings), name=name)
    assert text.startswith(greeting + "\n") and greeting in html


def _greeting_issue(project, settings, toml_extra="", intro=""):
    write_issue(project, "2026-12-03-salut", {"briefs.txt": intro + "--> Une brève.\n"},
                toml=f'subject = "Trains de nuit"\ndate = 2026-12-03\n{toml_extra}')
    return _render(settings, "salut")


def _greetings(rendered, **recipient):
    html, text = rendered.personalise(Recipient(email="x@example.org", unsubscribe_url="https://e.org/u/a", **recipient))
    body_text = text.split("\n\n", 1)[1]  # after the masthead
    return html_module.unescape(html), body_text


def test_the_greeting_uses_the_first_name_or_the_attribute(project, settings):
    rendered = _greeting_issue(project, settings)
    html, text = _greetings(rendered, name="Bernard, Hugo")
    assert "Bonjour Hugo," in html and text.startswith("Bonjour Hugo,\n")
    html, text = _greetings(rendered, name="Bernard, Hugo", first_name="Hugues")
    assert "Bonjour Hugues," in html and text.startswith("Bonjour Hugues,\n")
    html, text = _greetings(rendered)
    assert text.startswith("Bonjour,\n")


@pytest.mark.parametrize("greeting,with_name,without_name", [
    ('"Salut {name} !"', "Salut Hugo\u202f!", "Salut\u202f!"),
    ('"Chères lectrices, chers lecteurs,"', "Chères lectrices, chers lecteurs,", "Chères lectrices, chers lecteurs,"),
    ('"{name}, bonjour !"', "Hugo, bonjour\u202f!", "Bonjour\u202f!"),
])
def test_a_custom_greeting_from_issue_toml(project, settings, greeting, with_name, without_name):
    rendered = _greeting_issue(project, settings, f"greeting = {greeting}\n")
    html, text = _greetings(rendered, name="Hugo Bernard")
    assert with_name in html and text.startswith(with_name + "\n")
    assert _greetings(rendered)[1].startswith(without_name + "\n")


def test_greeting_false_means_no_greeting_and_no_slot(project, settings):
    rendered = _greeting_issue(project, settings, "greeting = false\n", intro="Chers amis du rail,\n\n")
    assert "greeting" not in rendered.text.slot_names and "greeting.html" not in rendered.html.slot_names
    html, text = _greetings(rendered, name="Hugo Bernard")
    assert "Bonjour" not in html and "Hugo" not in html and text.startswith("Chers amis du rail,")


@pytest.mark.parametrize("intro", ["Bonjour à toutes et à tous,", "*Chères lectrices*, chers lecteurs,", "Hello everyone!",
                                   "Salut la compagnie !", "Hi,", "Bonsoir,", "Madame, Monsieur,",
                                   "Mesdames, Messieurs,", "Madame ou Monsieur,", "Mesdames et Messieurs,",
                                   "Chère Madame,", "Dear all,", "Good morning!", "Coucou !", "Hey,", "Greetings,",
                                   "Re-bonjour à tous,", "Rebonjour,", "Bien le bonjour !", "**Bonjour**,",
                                   "Ladies and gentlemen,", "Cher·e·s abonné·e·s,"])
def test_no_automatic_greeting_above_an_intro_that_has_one(project, settings, intro):
    rendered = _greeting_issue(project, settings, intro=intro + "\n\n")
    html, text = _greetings(rendered, name="Hugo Bernard")
    assert "Bonjour Hugo" not in html and "Hugo" not in text
    assert rendered.warnings == ()


@pytest.mark.parametrize("intro", ["Cette semaine, des trains.", "Madame la ministre a inauguré la ligne.",
                                   "Hi-fi et trains de nuit.", "Monsieur Hulot prend le train."])
def test_an_intro_without_greeting_keeps_the_automatic_one(project, settings, intro):
    rendered = _greeting_issue(project, settings, intro=intro + "\n\n")
    assert _greetings(rendered, name="Hugo Bernard")[1].startswith("Bonjour Hugo,\n\n" + intro.split()[0])


def test_an_explicit_greeting_over_a_greeting_intro_is_kept_with_a_warning(project, settings):
    rendered = _greeting_issue(project, settings, 'greeting = "Salut {name} !"\n', intro="Bonjour à tous,\n\n")
    assert _greetings(rendered, name="Hugo Bernard")[1].startswith("Salut Hugo\u202f!\n\nBonjour à tous,")
    assert any("the intro starts with a greeting too" in w for w in rendered.warnings)


@pytest.mark.parametrize("line,message", [
    ('greeting = "Salut {prenom} !"', "greeting may hold {name}"),
    ('greeting = "Salut {name !"', "greeting may hold {name}"),
    ("greeting = 3", "greeting must be true, false or a text"),
])
def test_a_bad_greeting_is_an_error_naming_the_line(project, settings, line, message):
    write_issue(project, "2026-12-03-salut", {"briefs.txt": "--> Une brève.\n"},
                toml=f'subject = "Sujet"\ndate = 2026-12-03\n{line}\n')
    with pytest.raises(SourceError, match=re.escape(message)) as info:
        _render(settings, "salut")
    assert info.value.line == 3


def test_a_send_greets_each_subscriber_by_the_first_name_attribute_or_the_derived_one(store, make_settings, db_url):
    from email import message_from_bytes, policy

    from mailer.sending import dispatch
    from mailer.subscribers import add_subscriber

    settings = make_settings(database_url=db_url)
    add_subscriber(store, "hugo@example.org", name="Bernard, Hugo", attributes={"first_name": "Hugues"})
    add_subscriber(store, "jean@example.org", name="DUPONT Jean")
    add_subscriber(store, "eve@example.org", name='<b>Ève</b> "la" Pirate')
    report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
    assert report.sent_now == 3
    texts = {}
    for path in (settings.outbox_dir / EXAMPLE_ISSUE).glob("*.eml"):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        text_part, html_part = message.iter_parts()
        texts[message["To"].addresses[0].addr_spec] = (text_part.get_content(), html_part.get_content())
    assert "Bonjour Hugues," in texts["hugo@example.org"][0] and "Bonjour Hugues," in texts["hugo@example.org"][1]
    assert "Bonjour Jean," in texts["jean@example.org"][0]
    assert "Bonjour <b>Ève</b>," in texts["eve@example.org"][0]
    assert "Bonjour &lt;b&gt;Ève&lt;/b&gt;," in texts["eve@example.org"][1]


def test_control_characters_in_a_subscriber_name_never_reach_the_email(settings):
    rendered = _render(settings)
    html, text = rendered.personalise(Recipient(email="x@example.org", name="\x1bZo\x00é\u2028 Martin\x7f",
                                                unsubscribe_url="https://e.org/u/a"))
    assert "Bonjour Zo," in text and "Bonjour Zo," in html  # a control character separates like a space
    for char in "\x1b\x00\u2028\x7f":
        assert char not in html and char not in text
