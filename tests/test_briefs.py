"""Brief files and issue folders: what editors write, and the errors they get."""

from __future__ import annotations

import unicodedata
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from mailer.content.briefs import parse_arrow_text, parse_file
from mailer.errors import NotFound, SourceError
from mailer.content.issue import find_issue_folder, load_issue, scaffold_issue

from .conftest import write_issue

PARIS = ZoneInfo("Europe/Paris")


def test_arrow_format_splits_intro_and_briefs(tmp_path):
    text = "Bonjour à tous,\nvoici la lettre.\n\n--> Première brève\nsur deux lignes.\n--> Deuxième brève.\n"
    parsed = parse_arrow_text(text, tmp_path / "briefs.txt")
    assert parsed.intro == "Bonjour à tous,\nvoici la lettre."
    assert [b.body for b in parsed.briefs] == ["Première brève\nsur deux lignes.", "Deuxième brève."]
    assert [b.line for b in parsed.briefs] == [4, 6]


def test_no_intro_and_a_single_brief(tmp_path):
    parsed = parse_arrow_text("--> Seule brève.", tmp_path / "b.txt")
    assert parsed.intro is None
    assert len(parsed.briefs) == 1


def test_arrow_not_at_line_start_does_not_split(tmp_path):
    text = "--> Une brève qui cite une flèche --> au milieu\n  --> et une ligne indentée.\n"
    parsed = parse_arrow_text(text, tmp_path / "b.txt")
    assert len(parsed.briefs) == 1
    assert "--> au milieu" in parsed.briefs[0].body and "--> et une ligne indentée." in parsed.briefs[0].body


def test_empty_brief_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "briefs.txt"
    with pytest.raises(SourceError) as info:
        parse_arrow_text("--> Une brève.\n-->   \n--> Une autre.\n", path)
    assert info.value.line == 2
    assert str(info.value).startswith(f"{path}:2: empty brief")


def test_crlf_and_bom_are_read_like_plain_utf8(tmp_path):
    content = "Intro\r\n--> Brève « guillemets » et espace\u00a0insécable ;\r\n--> Deuxième\r\n"
    path = tmp_path / "briefs.txt"
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    parsed = parse_file(path)
    assert parsed.intro == "Intro"
    assert parsed.briefs[0].body == "Brève « guillemets » et espace\u00a0insécable ;"
    assert "\r" not in parsed.briefs[1].body and "\ufeff" not in (parsed.intro or "")


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "briefs.txt"
    path.write_bytes("--> Première\n--> Deuxi".encode() + b"\xe8me en latin-1\n")
    with pytest.raises(SourceError) as info:
        parse_file(path)
    assert info.value.line == 2 and "UTF-8" in str(info.value)


def test_heading_on_the_arrow_line_becomes_the_title(tmp_path):
    parsed = parse_arrow_text("--> # Le titre\nLe texte de la brève.\n", tmp_path / "b.txt")
    assert parsed.briefs[0].title == "Le titre"
    assert parsed.briefs[0].body == "Le texte de la brève."


def test_markdown_brief_with_front_matter(tmp_path):
    path = tmp_path / "02-outil.md"
    path.write_text("---\ntitle: \"Un outil : enfin\"\nlink: https://example.org/outil\nimage: https://example.org/i.png\n"
                    "image_alt: Capture d'écran\n---\n\nLe corps *en Markdown*.\n", encoding="utf-8")
    brief = parse_file(path).briefs[0]
    assert (brief.title, brief.link, brief.image, brief.image_alt) == (
        "Un outil : enfin", "https://example.org/outil", "https://example.org/i.png", "Capture d'écran")
    assert brief.body == "Le corps *en Markdown*."
    assert brief.line == 8


@pytest.mark.parametrize("front, message, line", [
    ("---\ntitle: x\nauthor: moi\n---\ntexte", "unknown front matter key 'author'", 3),
    ("---\ntitle x\n---\ntexte", "malformed front matter line", 2),
    ("---\ntitle: x\ntexte sans fin", "never closed", 1),
    ("---\ntitle: Titre seul\n---\n\n", "empty brief", None),
])
def test_markdown_front_matter_errors(tmp_path, front, message, line):
    path = tmp_path / "a.md"
    path.write_text(front, encoding="utf-8")
    with pytest.raises(SourceError) as info:
        parse_file(path)
    assert message in str(info.value)
    if line is not None:
        assert info.value.line == line


def test_issue_orders_briefs_by_file_name_then_position(project):
    write_issue(project, "2026-12-03-ordre", {
        "b.txt": "--> B1\n--> B2\n",
        "a.md": "Brève A",
        "c.txt": "Intro de C\n--> C1\n",
    })
    issue = load_issue("ordre", project / "issues", PARIS)
    assert [b.body for b in issue.briefs] == ["Brève A", "B1", "B2", "C1"]
    assert issue.intro == "Intro de C"
    assert issue.date == date(2026, 11, 26)


def test_issue_toml_fields_and_send_at_zones(project):
    write_issue(project, "2026-12-03-zones", {"briefs.txt": "--> Une brève.\n"},
                toml='subject = "Sujet"\npreheader = "  Un   aperçu "\ndate = "2026-12-03"\n'
                     'send_at = 2026-12-03T07:00:00+01:00\nlist = "premium"\n')
    issue = load_issue("2026-12-03-zones", project / "issues", PARIS)
    assert issue.send_at == datetime(2026, 12, 3, 6, 0, tzinfo=timezone.utc)
    assert issue.preheader == "Un aperçu" and issue.list_name == "premium"
    write_issue(project, "2026-12-04-naive", {"briefs.txt": "--> Une brève.\n"},
                toml='subject = "Sujet"\nsend_at = "2026-12-04T07:00:00"\n')
    naive = load_issue("naive", project / "issues", PARIS)
    assert naive.send_at == datetime(2026, 12, 4, 7, 0, tzinfo=PARIS)
    assert naive.date == date(2026, 12, 4)  # from the folder name


@pytest.mark.parametrize("toml, message, line", [
    ('preheader = "x"\n', "missing subject", None),
    ('subject = "x"\nsubjet = "y"\n', "unknown key 'subjet'", 2),
    ('subject = "x\n', "malformed TOML", 1),
    ('subject = "x"\nsend_at = "demain"\n', "send_at must be ISO 8601", 2),
    ('subject = "x"\ntemplate = 3\n', "template must be a string", 2),
])
def test_issue_toml_errors_name_file_and_line(project, toml, message, line):
    folder = write_issue(project, "2026-12-03-faute", {"briefs.txt": "--> Une brève.\n"}, toml=toml)
    with pytest.raises(SourceError) as info:
        load_issue(folder, project / "issues", PARIS)
    assert message in str(info.value)
    assert info.value.path == folder / "issue.toml"
    assert info.value.line == line


def test_issue_without_briefs_is_an_error(project):
    folder = write_issue(project, "2026-12-03-vide", {"notes.odt": "pas une brève"})
    with pytest.raises(SourceError, match="no briefs"):
        load_issue(folder, project / "issues", PARIS)


def test_issue_reference_by_path_name_or_suffix(project):
    issues = project / "issues"
    full = find_issue_folder("2026-11-26-donnees-ouvertes", issues)
    assert find_issue_folder("donnees-ouvertes", issues) == full
    assert find_issue_folder(str(full), issues) == full
    write_issue(project, "2026-12-10-donnees-ouvertes", {"b.txt": "--> x\n"})
    with pytest.raises(NotFound, match="ambiguous"):
        find_issue_folder("donnees-ouvertes", issues)
    with pytest.raises(NotFound, match="no issue 'absent'"):
        find_issue_folder("absent", issues)


def test_scaffolded_issue_loads(settings):
    folder = scaffold_issue(settings, "Mon Sujet !", date(2026, 12, 10))
    assert folder.name == "2026-12-10-mon-sujet"
    issue = load_issue(folder, settings.issues_dir, settings.zone)
    assert len(issue.briefs) == 2 and issue.intro and issue.draft is True
    with pytest.raises(SourceError, match="already exists"):
        scaffold_issue(settings, "mon sujet", date(2026, 12, 10))


@pytest.mark.parametrize("slug,folder", [
    ("trains-et-vélos", "trains-et-velos"), ("Été 2026 : bilan !", "ete-2026-bilan"), ("Straße", "strasse"),
    ("Œuvre de Noël", "oeuvre-de-noel"), ("李小龙", "li-xiao-long"), ("l’école", "l-ecole"), ("l'école", "l-ecole"),
    ("2026-12-10-déjà-daté", "deja-date"), ("  --x--  ", "x"), ("a " * 50, ("a-" * 30)[:-1]),
])
def test_scaffold_slugs_are_transliterated(settings, slug, folder):
    assert scaffold_issue(settings, slug, date(2026, 12, 10)).name == f"2026-12-10-{folder}"


@pytest.mark.parametrize("slug", ["🚆🎉", "!!!", ""])
def test_a_slug_without_letters_is_refused(settings, slug):
    with pytest.raises(SourceError, match="the slug needs letters or digits"):
        scaffold_issue(settings, slug, date(2026, 12, 10))


@pytest.mark.parametrize("language", ["fr", "en"])
def test_a_scaffold_warns_until_every_placeholder_is_replaced(make_settings, language):
    from mailer.content.render import render_issue

    settings = make_settings(MAILER_LANGUAGE=language)
    folder = scaffold_issue(settings, "brouillon", date(2026, 12, 10))
    warnings = render_issue(load_issue(folder, settings.issues_dir, settings.zone), settings).warnings
    joined = "\n".join(warnings)
    assert f"{folder / 'issue.toml'}:1: the subject " in joined and "is a placeholder: write the real one" in joined
    assert f"{folder / 'issue.toml'}:2: preheader is still the placeholder" in joined
    assert f"{folder / 'briefs.txt'}:1: the intro is still the placeholder" in joined
    assert f"{folder / 'briefs.txt'}:3: brief is still the placeholder" in joined
    assert f"{folder / 'briefs.txt'}:4: brief is still the placeholder" in joined
    assert f"{folder / 'issue.toml'}:5: draft = true: the scheduler holds it" in joined
    toml = (folder / "issue.toml").read_text(encoding="utf-8")
    toml = "\n".join(line for line in toml.split("\n") if not line.startswith(("draft", "subject", "preheader")))
    (folder / "issue.toml").write_text('subject = "Le vrai sujet"\npreheader = "Pour de vrai"\n' + toml, encoding="utf-8")
    (folder / "briefs.txt").write_text("--> Une vraie brève, écrite.\n", encoding="utf-8")
    issue = load_issue(folder, settings.issues_dir, settings.zone)
    assert issue.draft is False
    assert render_issue(issue, settings).warnings == ()


def _spellings(text: str) -> list[str]:
    """How an editor may leave a scaffold text: as is, re-cased, re-spaced, accents or the final dot dropped."""
    return [text, text.upper(), f"  {text.replace(' ', '   ')}  ", text.rstrip("."),
            unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()]


@pytest.mark.parametrize("language", ["fr", "en"])
@pytest.mark.parametrize("left", ["subject", "preheader", "intro", "intro in issue.toml", "brief 1", "brief 2"])
def test_any_single_scaffold_placeholder_left_holds_the_issue_and_names_its_line(make_settings, language, left):
    """Issue 10.12: everything written but one placeholder (in any spelling) → held, with file:line;
    the written version of the same text → not held. Oracle: the line the test itself wrote it on."""
    from mailer.content.issue import SCAFFOLD_TEXT, hold_refusal, holds

    texts = SCAFFOLD_TEXT[language]
    settings = make_settings(MAILER_LANGUAGE=language)
    folder = scaffold_issue(settings, f"reste-{left.replace(' ', '-')}", date(2026, 12, 10))
    for spelled in [*_spellings({"subject": texts["subject"], "preheader": texts["preheader"],
                                 "brief 1": texts["briefs"][0], "brief 2": texts["briefs"][1]}.get(left, texts["intro"])),
                    None]:
        value = spelled if spelled is not None else "Un vrai texte, écrit par quelqu'un."
        fields = {"subject": "Le vrai sujet", "preheader": "Pour de vrai", "intro": "Bonjour à toutes et à tous.",
                  "brief 1": "Une vraie brève.", "brief 2": "Une autre vraie brève."}
        fields[left.replace(" in issue.toml", "")] = value
        toml_intro = f'intro = "{fields["intro"]}"\n' if left == "intro in issue.toml" else ""
        (folder / "issue.toml").write_text(f'subject = "{fields["subject"]}"\npreheader = "{fields["preheader"]}"\n'
                                           f'{toml_intro}date = 2026-12-10\n', encoding="utf-8")
        intro = "" if toml_intro else f"{fields['intro']}\n\n"
        (folder / "briefs.txt").write_text(f"{intro}--> {fields['brief 1']}\n--> {fields['brief 2']}\n", encoding="utf-8")
        issue = load_issue(folder, settings.issues_dir, settings.zone)
        found = holds(issue)
        if spelled is None:
            assert found == [] and hold_refusal(issue) is None, found
            continue
        expected_line = {"subject": f"{folder / 'issue.toml'}:1:", "preheader": f"{folder / 'issue.toml'}:2:",
                         "intro in issue.toml": f"{folder / 'issue.toml'}:3:", "intro": f"{folder / 'briefs.txt'}:1:",
                         "brief 1": f"{folder / 'briefs.txt'}:{1 if toml_intro else 3}:",
                         "brief 2": f"{folder / 'briefs.txt'}:{2 if toml_intro else 4}:"}[left]
        assert [reason for reason, _ in found] == ["placeholder"], (spelled, found)
        assert found[0][1].startswith(expected_line), (spelled, found)
        refusal = str(hold_refusal(issue))
        assert refusal.startswith(expected_line) and "--allow-draft" in refusal and "\n" not in refusal


def test_draft_must_be_a_boolean(project):
    write_issue(project, "2026-12-03-brouillon", {"b.txt": "--> x\n"}, toml='subject = "S"\ndate = 2026-12-03\ndraft = "oui"\n')
    with pytest.raises(SourceError, match="draft must be true or false") as info:
        load_issue("brouillon", project / "issues", PARIS)
    assert info.value.line == 3


# ----- control characters (issue 9.15) -------------------------------------------------------------
CONTROLS = [chr(c) for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, *range(0x80, 0xA0),
                             0x2028, 0x2029]]
# Unicode's 66 noncharacters (Unicode 15 §23.7): U+FDD0–U+FDEF and U+nFFFE/U+nFFFF in all 17 planes
NONCHARACTERS = [chr(c) for c in [*range(0xFDD0, 0xFDF0), *(p << 16 | low for p in range(17) for low in (0xFFFE, 0xFFFF))]]
assert len(NONCHARACTERS) == 66 and all(unicodedata.category(c) == "Cn" for c in NONCHARACTERS)
CONTROLS = CONTROLS + NONCHARACTERS
SURROGATES = [0xD800, 0xDBFF, 0xDC00, 0xDFFF]  # a UTF-8 file cannot hold one; a reference can
BIDI = [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]]

# (file name, content with X where the character goes): the error names X's line and column
RAW_POSITIONS = [
    ("briefs.txt", "--> Une brève.\n--> Une autre avec un X caractère.\n"),
    ("briefs.txt", "Intro X ici.\n\n--> Une brève.\n"),
    ("a.md", "---\ntitle: Un titre X\nlink: https://example.org\n---\nLe texte.\n"),
    ("a.md", "# Titre\n\nLe texte X ici.\n"),
    ("issue.toml", 'subject = "Un sujet X"\ndate = 2026-12-03\n'),
    ("issue.toml", '# un commentaire X\nsubject = "Sujet"\n'),
]
REFERENCE_POSITIONS = [  # the character written as a Markdown/HTML character reference
    ("briefs.txt", "--> Une brève avec X.\n"),
    ("a.md", "---\ntitle: Titre X\n---\nTexte.\n"),
]


def _line_column(content):
    before = content[:content.index("X")]
    return before.count("\n") + 1, len(before) - before.rfind("\n")
TOML_ESCAPES = ["subject", "preheader", "intro", "list", "template"]


def _issue_with(project, name, content):
    files = {"briefs.txt": "--> Une brève.\n"} if name != "briefs.txt" else {}
    if name == "issue.toml":
        return write_issue(project, "2026-12-03-ctrl", files, toml=content)
    return write_issue(project, "2026-12-03-ctrl", {**files, name: content})


def _load(project):
    return load_issue("ctrl", project / "issues", PARIS)


@pytest.mark.parametrize("name,content", RAW_POSITIONS)
def test_every_control_character_typed_in_a_file_is_refused_with_file_line_and_code_point(project, name, content):
    line, column = _line_column(content)
    for char in CONTROLS:
        folder = _issue_with(project, name, content.replace("X", char))
        with pytest.raises(SourceError) as info:
            _load(project)
        message = str(info.value)
        assert message.startswith(f"{folder / name}:{line}: control character U+{ord(char):04X} ("), message
        assert f"at column {column}" in message


@pytest.mark.parametrize("name,content", REFERENCE_POSITIONS)
def test_a_control_character_written_as_a_reference_is_refused(project, name, content):
    line, column = _line_column(content)
    for char in CONTROLS:
        for reference in (f"&#{ord(char)};", f"&#x{ord(char):X};"):
            folder = _issue_with(project, name, content.replace("X", reference))
            with pytest.raises(SourceError) as info:
                _load(project)
            assert str(info.value).startswith(
                f"{folder / name}:{line}: character reference {reference} is control character U+{ord(char):04X} ("
            ), str(info.value)
            assert f"at column {column}" in str(info.value)


@pytest.mark.parametrize("key", TOML_ESCAPES)
def test_a_control_character_from_a_toml_escape_is_refused_naming_the_key(project, key):
    for char in CONTROLS:
        subject_line = "" if key == "subject" else 'subject = "Sujet"\n'
        escape = f"\\u{ord(char):04X}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08X}"
        toml = f'date = 2026-12-03\n{subject_line}{key} = "ab{escape}c"\n'
        folder = _issue_with(project, "issue.toml", toml)
        with pytest.raises(SourceError) as info:
            _load(project)
        assert str(info.value) == (f"{folder / 'issue.toml'}:{2 if key == 'subject' else 3}: {key}: an escape gives "
                                   f"control character U+{ord(char):04X} ({_name(char)}) at character 3: delete it")


def test_a_lone_surrogate_written_as_a_reference_is_refused(project):
    for name, content in REFERENCE_POSITIONS:
        line, column = _line_column(content)
        for code in SURROGATES:
            reference = f"&#x{code:X};"
            folder = _issue_with(project, name, content.replace("X", reference))
            with pytest.raises(SourceError) as info:
                _load(project)
            assert str(info.value).startswith(f"{folder / name}:{line}: character reference {reference} is control "
                                              f"character U+{code:04X} (SURROGATE) at column {column}"), str(info.value)


@pytest.mark.parametrize("key", ["subject", "preheader"])
def test_a_bidirectional_control_in_the_subject_or_preheader_is_refused_typed_or_escaped(project, key):
    """They can make a subject read differently from what it is (a reversed extension, a fake name)."""
    for char in BIDI:
        subject_line = "" if key == "subject" else 'subject = "Sujet"\n'
        line = 2 if key == "subject" else 3
        for written, how in ((char, ""), (f"\\u{ord(char):04X}", "an escape gives ")):
            folder = _issue_with(project, "issue.toml", f'date = 2026-12-03\n{subject_line}{key} = "ab{written}c"\n')
            with pytest.raises(SourceError) as info:
                _load(project)
            assert str(info.value) == (f"{folder / 'issue.toml'}:{line}: {key}: {how}control character "
                                       f"U+{ord(char):04X} ({unicodedata.name(char)}) at character 3: delete it")


def test_bidirectional_controls_in_a_brief_are_kept_for_right_to_left_text(project):
    body = "\u202bשלום עולם\u202c et \u2067مرحبا\u2069 !"
    write_issue(project, "2026-12-03-ctrl", {"briefs.txt": f"--> {body}\n"}, toml='subject = "Sujet"\ndate = 2026-12-03\n')
    assert _load(project).briefs[0].body == body


def _name(char):
    from mailer.content.briefs import describe_character
    return describe_character(char).partition(" (")[2][:-1]


def test_tab_lf_cr_and_ordinary_unicode_spaces_are_fine(project):
    write_issue(project, "2026-12-03-ctrl", {"briefs.txt": "--> Une\tbrève\u00a0;\r\nsur deux lignes\u202f!\r\n"},
                toml='subject = "Sujet\\tavec tabulation"\ndate = 2026-12-03\n')
    issue = _load(project)
    assert issue.briefs[0].body == "Une\tbrève\u00a0;\nsur deux lignes\u202f!"


def test_describe_character_names_each_kind():
    from mailer.content.briefs import describe_character
    assert describe_character("\x00") == "U+0000 (NULL)"
    assert describe_character("\x0c") == "U+000C (FORM FEED)"
    assert describe_character("\x1b") == "U+001B (ESCAPE)"
    assert describe_character("\x7f") == "U+007F (DELETE)"
    assert describe_character("\x85") == "U+0085 (C1 CONTROL)"
    assert describe_character("\u2028") == "U+2028 (LINE SEPARATOR)"
