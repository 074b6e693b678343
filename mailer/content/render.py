"""`Issue` → `RenderedIssue`: HTML and text compiled ONCE, then personalised per recipient.

Jinja2 renders the issue into MJML (autoescape on, editor Markdown rendered by `markup` and marked
safe); mjml-python compiles it to HTML once. Per-recipient values are *slots*: literal markers left
in the compiled HTML and text (`%%mailer:NAME%%`), filled by joining pre-split pieces — a few
microseconds per recipient — or, for SendGrid, sent as `substitutions` so one request carries the
body once for up to 1000 recipients.

Longer than ~400 lines because the three renderings (HTML via MJML, text part, web edition) share
one context and one slot mechanism.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache, partial
from html.parser import HTMLParser
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import jinja2
import mjml
from markupsafe import Markup

from . import i18n, markup, templating, textlayout
from .. import links
from .briefs import control_character, describe_character, read_text
from ..config import Settings, secret_key_for
from ..errors import ConfigError, MailerError, RenderError, SourceError
from ..headers import clean_display_name
from .issue import ISSUE_FILE, Issue, holds, key_line

GMAIL_CLIP_BYTES = 102 * 1024
SLOT_PREFIX = "%%mailer:"
SLOT_SUFFIX = "%%"
# Slot names; the `.html` variants carry HTML-escaped values.
TEXT_SLOTS = ("greeting", "email", "unsubscribe_url")
HTML_SLOTS = tuple(f"{name}.html" for name in TEXT_SLOTS)
_SLOT_RE = re.compile(re.escape(SLOT_PREFIX) + r"([a-z0-9_.]+)" + re.escape(SLOT_SUFFIX))
_HREF_RE = re.compile(r"""<a\b[^>]*\bhref="([^"]*)\"""", re.IGNORECASE)
_IMG_RE = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_ALT_RE = re.compile(r"""\balt="([^"]*)\"""", re.IGNORECASE)


def slot(name: str) -> str:
    """The literal marker for slot `name` as it appears in compiled HTML/text."""
    return f"{SLOT_PREFIX}{name}{SLOT_SUFFIX}"


class SlotMarker(Markup):
    """A slot marker placed by the template (the only kind `_neutralise_markers` lets through)."""


def slot_marker(name: str) -> SlotMarker:
    """What a template context gets for slot `name` (templates of issues and of notices alike)."""
    return SlotMarker(slot(name))


def _neutralise_markers(value: object) -> object:
    """Jinja `finalize`: a value from editors, settings or subscribers can never read as a slot
    marker (a zero-width space splits any `%%`), so only the template decides where slots are."""
    if isinstance(value, SlotMarker) or not isinstance(value, str) or "%%" not in value:
        return value
    return value.replace("%%", "%\u200b%")


@dataclass(frozen=True)
class Recipient:
    """Who a message goes to. `unsubscribe_url` is built by the caller (it holds a signed token).
    `first_name` (the subscriber's `first_name` attribute) greets them; without it, `first_name_of(name)`."""

    email: str
    unsubscribe_url: str
    name: str = ""
    subscriber_id: int | None = None
    first_name: str = ""


@dataclass(frozen=True)
class Template:
    """A text with slots, pre-split so filling it is one list build and one join."""

    pieces: tuple[str, ...]  # static, slot name, static, slot name, …, static

    @classmethod
    def parse(cls, text: str) -> "Template":
        return cls(tuple(_SLOT_RE.split(text)))

    @property
    def slot_names(self) -> tuple[str, ...]:
        return self.pieces[1::2]

    def fill(self, values: dict[str, str]) -> str:
        pieces = list(self.pieces)
        for index in range(1, len(pieces), 2):
            pieces[index] = values[pieces[index]]
        return "".join(pieces)

    @property
    def raw(self) -> str:
        """The text with its slot markers, as a provider-side substitution wants it."""
        pieces = list(self.pieces)
        for index in range(1, len(pieces), 2):
            pieces[index] = slot(pieces[index])
        return "".join(pieces)


@dataclass(frozen=True)
class RenderedIssue:
    issue: Issue
    settings: Settings
    mjml_source: str
    html: Template
    text: Template
    web_url: str
    warnings: tuple[str, ...] = ()
    compile_seconds: float = 0.0
    # The greeting's pattern, resolved once by `issue_greeting` ("" = none): `greeting` in
    # issue.toml, else the language's "Bonjour {name}," — unless the intro starts with a greeting.
    greeting: str = ""
    # The language of its fixed strings (footer, unsubscribe text, greeting): see `render_variants`.
    language: str = ""

    @property
    def content_language(self) -> str:
        """The language the issue is written in (issue.toml `language`, else MAILER_LANGUAGE): its typography."""
        return self.issue.language or self.settings.language

    @property
    def subject(self) -> str:
        """The subject as sent: with the body's typography (narrow no-break spaces in French…)."""
        return markup.typeset(self.issue.subject, self.content_language)

    @property
    def preheader(self) -> str:
        return markup.typeset(self.issue.preheader, self.content_language)

    @property
    def key(self) -> str:
        """Names this email's outbox folder and provider category."""
        return self.issue.slug

    @property
    def notice_kind(self) -> None:
        """An issue is not a notice (`email.EmailWithSlots`)."""
        return None

    def slot_values(self, recipient: Recipient) -> dict[str, str]:
        return personal_values(self.settings, recipient, greeting=self.greeting)

    def personalise(self, recipient: Recipient) -> tuple[str, str]:
        """(html, text) for one recipient: substitution only, no template or MJML work."""
        values = self.slot_values(recipient)
        return self.html.fill(values), self.text.fill(values)


def personal_values(settings: Settings, recipient: Recipient, extra: dict[str, str] | None = None, *,
                    greeting: str | None = None) -> dict[str, str]:
    """Every slot's value for one recipient (plus `extra` slots); each also as `NAME.html`, HTML-escaped,
    since subscriber-provided values must never become markup. `greeting` is a pattern with
    `{name}` (None: the language's "Bonjour {name},"; "": no greeting)."""
    if greeting is None:
        greeting = i18n.strings(settings.language)["hello"]
    if greeting:
        # a name never reads as a slot marker, even where a provider substitutes values (SendGrid)
        name = given_name(recipient.first_name) or first_name_of(recipient.name)
        greeting = fill_greeting(greeting, name.replace("%%", "%\u200b%"))
    email, url = recipient.email, recipient.unsubscribe_url
    if extra:
        values = {"greeting": greeting, "email": email, "unsubscribe_url": url, **extra}
        for key, value in list(values.items()):  # per recipient: escape only what holds something to escape
            values[f"{key}.html"] = html.escape(value, quote=True) if _HTML_SPECIAL(value) else value
        return values
    # the same dict, unrolled (once per recipient of every send)
    return {"greeting": greeting, "email": email, "unsubscribe_url": url,
            "greeting.html": html.escape(greeting, quote=True) if _HTML_SPECIAL(greeting) else greeting,
            "email.html": html.escape(email, quote=True) if _HTML_SPECIAL(email) else email,
            "unsubscribe_url.html": html.escape(url, quote=True) if _HTML_SPECIAL(url) else url}


_HTML_SPECIAL = re.compile(r"[&<>\"']").search  # what html.escape(quote=True) changes


# ----- the greeting ------------------------------------------------------------------------------
# Words that open a greeting (an intro starting with one gets no automatic greeting above it).
# Forms of address (Madame, Messieurs…) count only as a vocative: followed by a comma, `!`, or
# another form joined by et/and/&// ("Madame, Monsieur,"; not "Madame la ministre a dit…").
_ADDRESS_FORMS = r"(?:madame|monsieur|mademoiselle|mesdames|messieurs|mesdemoiselles|madam|sir|ladies|gentlemen)"
_GREETING_START = re.compile(
    r"^\W*(?:(?:re-?|bien le )?bonjour|bonsoir|salut|salutations|coucou|hello|hi|hiya|hey|howdy|hallo|hola"
    r"|dear(?:est)?|greetings|good (?:morning|afternoon|evening|day)|chers?|ch[èe]res?|bienvenue|welcome"
    r"|to whom it may concern"
    rf"|{_ADDRESS_FORMS}(?:\s*(?:,|et|and|ou|or|&|/)\s*{_ADDRESS_FORMS})*\s*[,!])(?![\w'’-])", re.IGNORECASE)
# Honorifics (French and English, with or without the abbreviation's dot): never greeted alone.
_HONORIFICS = frozenset(
    "m mm mme mmes mlle mlles me maître maitre dr docteur docteure pr professeur professeure prof mr mrs ms mx"
    " miss messrs sir dame madame monsieur mademoiselle mesdames messieurs lord lady rev revd père mère frère"
    " sœur soeur abbé fr sr".split())
# Religious honorifics are followed by a given name ("Sœur Marie"); the others, alone with one
# more word, by a family name ("Maître Dupond", "Mme Martin"): no name then.
_GIVEN_NAME_HONORIFICS = frozenset("sœur soeur frère père mère abbé fr sr".split())
_COUPLE = frozenset("et and & + /".split())
# Particles opening a family name ("Mme Le Goff", "Dr Van Dijk"): after a title, no given name follows.
_PARTICLES = frozenset("le la les de du des d' l' van von der den da di del della dos das mac st saint sainte".split())
_INITIALS = re.compile(r"(?:\w[.-]{1,2}){1,3}|\w")
# What exports write where no name is known (compared casefolded, without the punctuation around).
FILLER_NAMES = frozenset(
    "n/a na n.a. #n/a - -- --- ? ?? ... . x xx xxx xxxx none null nil nan undefined unknown inconnu inconnue"
    " anonyme anonymous aucun aucune néant neant test tbd n.c. nc non-renseigné firstname prénom prenom name"
    " nom".split() + ["non renseigné", "sans nom", "no name", "first name", "not available"])


def _is_filler(text: str) -> bool:
    key = text.casefold().strip(" .,;:")
    return not key.strip("-?.x#/ ") or key in FILLER_NAMES


def _honorific(word: str) -> bool:
    return word.casefold().rstrip(".") in _HONORIFICS


def _capitalised(word: str) -> str:
    """A name written all in lowercase or all in capitals, capitalised as names are: each part
    after a hyphen or an apostrophe (`jean-pierre` → Jean-Pierre, `O'BRIEN` → O'Brien), a French
    elided particle kept lowercase (`D'ARC` → d'Arc). Mixed case (McDonald, DeShawn) is kept."""
    if not (word.islower() or word.isupper()):
        return word
    parts = re.split(r"([-'’])", word)
    out = []
    for index, part in enumerate(parts):
        rest = part[1:].lower().replace("i\u0307", "i")  # İ lowercases to i + combining dot: plain i
        following = parts[index + 1] if index + 1 < len(parts) else ""
        if following in ("'", "’") and part.lower() in ("d", "l") and index + 2 < len(parts):
            out.append(part.lower())  # d'Arc, l'Hermite
        else:  # a capital kept as written (İsmail), a lowercase one raised
            out.append((part[:1] if part[:1].isupper() else part[:1].title()) + rest)
    return "".join(out)


_WORD_FACTS: dict[str, tuple[bool, bool, bool, str]] = {}
_WORD_FACTS_MAX = 20_000  # distinct words remembered per process (given names repeat across a list)


def _word_facts(word: str) -> tuple[bool, bool, bool, str]:
    """What greeting a person reads off one word of a name: (an honorific, an initial, a filler, the
    word capitalised), remembered per word. A send greets each recipient, and the words a greeting
    looks at (a given name, a title) repeat across a list where the names do not: looked up, they
    cost a dict read instead of four calls (issue 12)."""
    facts = _WORD_FACTS.get(word)
    if facts is None:
        facts = (_honorific(word), _INITIALS.fullmatch(word) is not None, _is_filler(word), _capitalised(word))
        if len(_WORD_FACTS) < _WORD_FACTS_MAX:
            _WORD_FACTS[word] = facts
    return facts


def given_name(first_name: str) -> str:
    """A `first_name` attribute as a greeting uses it: "" for what an export writes for "unknown"
    (`FILLER_NAMES`: N/A, -, ?, null, inconnu…) or an honorific alone, capitalised when written all
    in one case (`jean` → Jean, `ÉLOÏSE` → Éloïse). Shapes: str → str, never raises."""
    if not first_name:
        return ""
    name = clean_display_name(first_name)
    if name and " " not in name:  # one word (the usual attribute)
        honorific, _, filler, capitalised = _word_facts(name)
        return "" if filler or honorific or name.casefold() in _COUPLE else capitalised
    if not name or _is_filler(name) or all(_honorific(word) or word.casefold() in _COUPLE for word in name.split()):
        return ""
    return " ".join(_capitalised(word) for word in name.split(" "))


def first_name_of(name: str) -> str:
    """The part of a full name to greet someone with, when no `first_name` attribute says it.

    "Last, First" → First; "First Last" → First; "DUPONT Jean" (family name in capitals first) →
    Jean; after honorifics the given name that follows ("M. Jean Dupont" → Jean, "Sœur Marie" →
    Marie), or no name when only a family name follows ("Maître Dupond", "Mme Martin") or the name
    is a couple ("M. et Mme Dupont"); a name opening with an initial stays whole ("J. Smith");
    fillers (N/A, inconnu…) and addresses greet nobody (""). A first name written all in one case
    is capitalised (`jean dupont` → Jean). Shapes: str → str, never raises."""
    if not name:
        return ""
    name = clean_display_name(name)
    if not name or "@" in name or _is_filler(name):
        return ""
    given_follows = False
    if "," in name:
        last, _, first = (part.strip() for part in name.partition(","))
        name = first or last
        given_follows = bool(first)  # "Dupont, M. Jean": after the comma, given names
    words = name.split()  # the cleaned name: single ASCII spaces are its only whitespace
    titled = False
    while words and (_word_facts(words[0])[0] or (titled and words[0].casefold() in _COUPLE)):
        if words[0].casefold() in _COUPLE:
            return ""  # "M. et Mme Dupont": two people, no one first name
        titled = True
        given_follows = given_follows or words[0].casefold().rstrip(".") in _GIVEN_NAME_HONORIFICS
        words = words[1:]
    if not words or (titled and not given_follows and len(words) == 1):
        return ""
    head = words[0]
    _, initial, filler, capitalised = _word_facts(head)
    if len(words) == 1:
        pass  # the head
    elif initial:
        return "" if titled else " ".join(words)  # "J. Smith" whole; "Dr J. Smith": no given name
    elif head.isupper() and len(head) > 1 and not all(word.isupper() for word in words):
        _, _, filler, capitalised = _word_facts(next(word for word in words[1:] if not word.isupper()))  # "DUPONT Jean"
    elif titled and not given_follows and head.casefold() in _PARTICLES:
        return ""  # "Mme Le Goff": a family name
    return "" if filler else capitalised


def fill_greeting(pattern: str, first_name: str) -> str:
    """`pattern` with `{name}` replaced; without a name, `{name}` and the space before it go
    ("Bonjour {name}," → "Bonjour,", "{name}, bonjour" → "Bonjour")."""
    if "{name}" not in pattern:
        return pattern
    if first_name:
        return pattern.replace("{name}", first_name)
    return _nameless_greeting(pattern)


@lru_cache(maxsize=64)
def _nameless_greeting(pattern: str) -> str:
    """`fill_greeting(pattern, "")`: the same for every recipient without a name, made once per pattern."""
    text = re.sub(r"\s*\{name\}", "", pattern).lstrip(" ,")
    return text[:1].upper() + text[1:]


def starts_with_greeting(text: str | None) -> bool:
    """Whether an intro opens with a greeting of its own (Bonjour, Hello, Chers lecteurs…)."""
    return bool(text) and _GREETING_START.match(markup.plain_inline(text.strip().split("\n")[0])) is not None


def issue_greeting(issue: Issue, language: str) -> str:
    """The greeting pattern an issue asks for ("" = none): see `RenderedIssue.greeting`. `language`
    is the fixed strings' (the default "Bonjour {name}," / "Hello {name},"); an issue's own pattern
    keeps the issue's typography."""
    if issue.greeting is False:
        return ""
    if isinstance(issue.greeting, str):
        return markup.typeset(issue.greeting, issue.language or language)
    if starts_with_greeting(issue.intro):
        return ""
    return i18n.strings(language)["hello"]


@dataclass(frozen=True)
class CompiledEmail:
    mjml_source: str
    html: Template
    text: Template
    compile_seconds: float


def compile_email(settings: Settings, name: str, context: dict, *, slots: Sequence[str], required: Sequence[str],
                  text_context: dict | None = None, measure=None) -> CompiledEmail:  # noqa: ANN001
    """`templates/NAME.mjml.j2` → MJML → HTML (mjml-python, once) and `NAME.txt.j2` → text, whose
    lines are wrapped at `textlayout.TEXT_WIDTH` as written (`measure(url)`: a URL's length as sent;
    slots as long as the values they get: `slot_width`).

    Only `slots` may appear (each part its own variant: `x` in text, `x.html` in HTML); every slot of
    `required` must be in both parts (an email without its unsubscribe link is refused)."""
    try:
        mjml_source = jinja_environment(settings.templates_dir, autoescape=True).get_template(f"{name}.mjml.j2").render(context)
        text_source = jinja_environment(settings.templates_dir, autoescape=False).get_template(f"{name}.txt.j2").render(
            {**context, **(text_context or {})})
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{exc.filename or exc.name}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {name!r}: {exc.message}") from None

    started = time.perf_counter()
    try:
        compiled = mjml.mjml2html(mjml_source, disable_comments=False)
    except ValueError as exc:
        raise RenderError(f"template {name!r} produced invalid MJML: {exc}{_control_hint(mjml_source)}") from None
    compile_seconds = time.perf_counter() - started

    html_template = Template.parse(hidden_preheader(compiled))
    text_template = Template.parse(textlayout.layout(
        _normalise_text(text_source), textlayout.TEXT_WIDTH, measure,
        textlayout.Slots(_SLOT_RE, partial(slot_width, settings.base_url))))
    html_slots = tuple(f"{slot_name}.html" for slot_name in slots)
    for label, tpl, allowed in (("HTML", html_template, html_slots), ("text", text_template, slots)):
        unknown = sorted(set(tpl.slot_names) - set(allowed))
        if unknown:
            raise RenderError(f"template {name!r}: unknown slot(s) in the {label} part: {', '.join(unknown)}")
    for slot_name in required:
        if f"{slot_name}.html" not in html_template.slot_names:
            raise RenderError(f"template {name!r}: the HTML part has no visible {slot_name.replace('_url', '')} link")
        if slot_name not in text_template.slot_names:
            raise RenderError(f"template {name!r}: the text part has no {slot_name.replace('_url', '')} link")
    return CompiledEmail(mjml_source, html_template, text_template, compile_seconds)


def slot_width(base_url: str, name: str) -> int:
    """The longest value slot `name` gets, for wrapping: a URL slot (unsubscribe, confirm) a real URL's
    length with the longest token; a greeting or an address, a typical one (they stand on lines of
    their own in the shipped templates)."""
    if name.endswith("_url"):
        return len(links.longest_slot_url(base_url))
    return 24


# mj-preview's hidden block as MRML writes it: white 1 px text, i.e. text coloured like its background,
# which SpamAssassin scores (HTML_FONT_LOW_CONTRAST, 20_html_tests.cf) whether or not it is displayed.
_PREVIEW_DIV = re.compile(r'<div style="display:none;font-size:1px;color:#ffffff;line-height:1px;'
                          r'max-height:0px;max-width:0px;opacity:0;overflow:hidden;">')
PREHEADER_STYLE = "display:none;max-height:0;max-width:0;opacity:0;overflow:hidden;mso-hide:all;"


def hidden_preheader(compiled_html: str) -> str:
    """The preheader hidden by layout alone (display, size, opacity), never by a colour close to the
    background: spam filters read such text as an attempt to hide words from the reader."""
    return _PREVIEW_DIV.sub(f'<div style="{PREHEADER_STYLE}">', compiled_html, count=1)


class _SummaryReader(HTMLParser):
    """Collects the text of the first hidden block (the preheader) and of the first brief's body."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []  # per open element: "pre" (in the preheader), "brief", "body" or ""
        self.preheader: list[str] = []
        self.brief: list[str] = []
        self.done_preheader = self.done_brief = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            return
        values = dict(attrs)
        classes = (values.get("class") or "").split()
        style = (values.get("style") or "").replace(" ", "").lower()
        role = ""
        if not self.done_preheader and not self.stack_has("pre") and style.startswith("display:none"):
            role = "pre"
        elif "brief" in classes and not self.done_brief:
            role = "brief"
        elif "body-text" in classes and self.stack_has("brief") and not self.done_brief:
            role = "body"
        self.stack.append(role)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID_TAGS or not self.stack:
            return
        role = self.stack.pop()
        if role == "pre":
            self.done_preheader = True
        elif role == "body" and "".join(self.brief).strip():
            self.done_brief = True

    def handle_data(self, data: str) -> None:
        if self.stack_has("pre") and not self.done_preheader:
            self.preheader.append(data)
        elif self.stack_has("body") and not self.done_brief:
            self.brief.append(data)

    def stack_has(self, role: str) -> bool:
        return role in self.stack


_LAYOUT_SPACE = re.compile(r"[ \t\r\n\f]+")  # not str.split(): no-break spaces are typography, kept


def _collapse(text: str) -> str:
    return _LAYOUT_SPACE.sub(" ", text).strip()


_VOID_TAGS = frozenset("area base br col embed hr img input link meta source track wbr".split())


def edition_summary(web_html: str, limit: int = 300) -> str:
    """Plain text summarising a stored web edition (for the Atom feed): its preheader, else the text
    of its first brief; whitespace collapsed, at most `limit` characters (cut at a word, with "…")."""
    reader = _SummaryReader()
    reader.feed(web_html)
    reader.close()
    text = _collapse("".join(reader.preheader)) or _collapse("".join(reader.brief))
    text = "".join(char for char in text if unicodedata.category(char) not in ("Cc", "Cs", "Co", "Cn"))  # XML-safe
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.") + "…"
    return text


def _control_hint(mjml_source: str) -> str:
    """Editors' files are checked for control characters when read; one that still reaches the MJML
    came from a template or a setting: say where in the rendered MJML."""
    found = control_character(mjml_source)
    if found is None:
        return ""
    index, char, _ = found
    return (f" (control character {describe_character(char)} at line {mjml_source.count(chr(10), 0, index) + 1}"
            " of the rendered MJML: it comes from the template or a setting such as MAILER_POSTAL_ADDRESS)")


def jinja_environment(templates_dir: Path, *, autoescape: bool) -> jinja2.Environment:
    """`select_autoescape()` would not escape `.mjml.j2`: escaping is set explicitly."""
    return templating.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=autoescape,
        finalize=_neutralise_markers,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def missing_templates(settings: Settings, name: str) -> str | None:
    """Why the templates folder cannot render template `name` (`NAME.mjml.j2` and `NAME.txt.j2`): a
    phrase naming MAILER_TEMPLATES_DIR and its resolved path; None when both files are there."""
    folder = settings.templates_dir
    if not folder.is_dir():
        return (f"the templates folder (MAILER_TEMPLATES_DIR, here {folder}) does not exist, so it has no "
                f"{name}.mjml.j2: copy the templates/ folder of mailer's repository there, or set MAILER_TEMPLATES_DIR")
    missing = [f"{name}.{ext}.j2" for ext in ("mjml", "txt") if not (folder / f"{name}.{ext}.j2").is_file()]
    if not missing:
        return None
    return f"the templates folder (MAILER_TEMPLATES_DIR, here {folder}) has no {' and no '.join(missing)}"


def template_problem(settings: Settings, issue: Issue) -> MailerError | None:
    """The error that stops `issue` from rendering because its template's files are missing, or None:
    SourceError at issue.toml's `template =` line when the issue names one (with the templates there),
    ConfigError about the folder when it uses the default template."""
    problem = missing_templates(settings, issue.template)
    if problem is None:
        return None
    toml = issue.folder / ISSUE_FILE
    line = key_line(read_text(toml), "template")
    if line is None:
        return ConfigError(f"{problem} (the default template {issue.template!r}: {toml} names none)")
    folder = settings.templates_dir
    names = sorted(p.name[:-len(".mjml.j2")] for p in folder.glob("*.mjml.j2")) if folder.is_dir() else []
    return SourceError(toml, f"unknown template {issue.template!r}: {problem}"
                             + (f" (templates there: {', '.join(names)})" if names else ""), line)


def render_issue(issue: Issue, settings: Settings, *, strings_language: str | None = None) -> RenderedIssue:
    """Compile the issue once: Jinja → MJML → HTML, and Jinja → text. Its fixed strings are in
    `strings_language` (default: issue.toml's `language`, else MAILER_LANGUAGE); the content keeps
    the issue's own language and typography."""
    content_language = issue.language or settings.language
    language = strings_language or content_language
    problem = template_problem(settings, issue)
    if problem is not None:
        raise problem
    web_url = web_edition_url(settings, issue)
    measure = text_measure(issue, settings)
    compiled = compile_email(settings, issue.template, _context(issue, settings, web_url, language), slots=TEXT_SLOTS,
                             required=("unsubscribe_url",), text_context=_text_context(issue, content_language, measure),
                             measure=measure)
    rendered = RenderedIssue(issue=issue, settings=settings, mjml_source=compiled.mjml_source, html=compiled.html,
                             greeting=issue_greeting(issue, language), language=language,
                             text=compiled.text, web_url=web_url, compile_seconds=compiled.compile_seconds)
    return RenderedIssue(**{**rendered.__dict__, "warnings": tuple(build_warnings(rendered))})


def render_variants(issue: Issue, settings: Settings) -> dict[str, RenderedIssue]:
    """One compiled email per language of fixed strings a recipient may get, the default first: the
    issue's `language` alone when issue.toml forces one; else MAILER_LANGUAGE's and every other
    shipped language's (`i18n.STRINGS`), since each subscriber's `language` picks theirs
    (`variant_key`). Compiled once per language per send, never per recipient."""
    default = render_issue(issue, settings)
    variants = {default.language: default}
    if issue.language is None:
        for language in i18n.STRINGS:
            if language not in variants:
                variants[language] = render_issue(issue, settings, strings_language=language)
    return variants


def variant_key(subscriber_language: str | None, variants: dict[str, object]) -> str:
    """Which of `variants` (keyed by language, the default first) a subscriber gets: their stored
    `language` (`en`, `fr`; a region such as `en-GB` counts as `en`) when there is a variant for it,
    else the default."""
    if subscriber_language:
        key = subscriber_language.strip().lower().replace("_", "-").split("-", 1)[0]
        if key in variants:
            return key
    return next(iter(variants))


def web_edition_url(settings: Settings, issue: Issue) -> str:
    """Where an issue's web edition lives: `/issues/SLUG` for a public issue; for a private one
    (sent to a list or a segment, or `archive = false`) the same address with a key only its
    recipients have (`?k=`, `tokens.web_edition_key`), so the email's "view online" link works
    while the archive does not show it. A public local-time issue (`send_local`) is private until its
    last wave is due (`Store.published_issues`), so its emails carry the key too."""
    return links.web_edition_url(settings.base_url, secret_key_for(settings), issue.slug,
                                 public=issue.public and issue.send_local is None)


def render_web_edition(rendered: RenderedIssue) -> str:
    """The issue's web edition (the page at its `web_url`): the same template rendered with
    `web_edition = true`, which leaves out the personal parts (greeting, "you receive this because",
    unsubscribe link) and offers the subscribe page instead. A template that ignores the flag still
    gets no personal value: its slots are filled with a neutral greeting and the subscribe page."""
    issue, settings = rendered.issue, rendered.settings
    context = {**_context(issue, settings, rendered.web_url, rendered.language), "web_edition": True,
               "show_greeting": False}
    compiled = compile_email(settings, issue.template, context, slots=TEXT_SLOTS, required=(),
                             text_context=_text_context(issue, rendered.content_language))
    neutral = Recipient(email="", name="", unsubscribe_url=links.subscribe_url(settings.base_url))
    return compiled.html.fill(personal_values(settings, neutral))


def _context(issue: Issue, settings: Settings, web_url: str, strings_language: str | None = None) -> dict:
    """The template's context: content in the issue's language, fixed strings (`t`, the date line,
    the greeting) in `strings_language` (default: the issue's language)."""
    language = issue.language or settings.language
    strings_language = strings_language or language
    strings = i18n.strings(strings_language, settings.name)
    briefs = []
    for index, brief in enumerate(issue.briefs, start=1):
        briefs.append({
            "number": index,
            "title": Markup(markup.to_inline_html(brief.title, language)) if brief.title else None,
            "title_text": markup.plain_inline(brief.title, language) if brief.title else None,
            "html": Markup(markup.to_html(brief.body, language)),
            "link": markup.link_href(brief.link) if brief.link else None,
            "image": markup.link_href(brief.image) if brief.image else None,
            "image_alt": brief.image_alt,
            "where": brief.where,
        })
    return {
        "issue": issue,
        "name": settings.name,
        "language": language,
        "t": strings,
        "date_long": i18n.long_date(issue.date, strings_language),
        "subject": markup.typeset(issue.subject, language),
        "show_greeting": bool(issue_greeting(issue, strings_language)),
        "preheader": markup.typeset(issue.preheader, language),
        "intro_html": Markup(markup.to_html(issue.intro, language)) if issue.intro else None,
        "briefs": briefs,
        "web_url": web_url,
        "web_edition": False,  # True when rendering the web page (render_web_edition): no personal parts
        "subscribe_url": links.subscribe_url(settings.base_url),
        "archive_url": links.archive_url(settings.base_url),
        "feed_url": links.feed_url(settings.base_url),
        "postal_address": settings.postal_address,
        "why_received": strings["why_received"].format(name=settings.name),
        # GDPR: readers are told when the links they follow are counted (tracking.py)
        "tracking_note": tracking_note(issue, settings, strings),
        "slot": {name: slot_marker(name) for name in (*TEXT_SLOTS, *HTML_SLOTS)},
    }


def tracking_note(issue: Issue, settings: Settings, strings: dict[str, str]) -> str:
    """The footer's notice of what is counted (GDPR transparency), from the language's `strings`:
    clicks and opens, clicks alone, opens alone (MAILER_TRACK_OPENS: the pixel), or "" for neither."""
    clicks, opens = tracks_clicks(issue, settings), settings.track_opens
    if clicks:
        return strings["links_opens_tracked" if opens else "links_tracked"]
    return strings["opens_tracked"] if opens else ""


def tracks_clicks(issue: Issue, settings: Settings) -> bool:
    """Click tracking for this issue: issue.toml `track_clicks` when set, else MAILER_TRACK_CLICKS."""
    return settings.track_clicks if issue.track_clicks is None else issue.track_clicks


def text_measure(issue: Issue, settings: Settings):  # noqa: ANN201 - a textlayout.Measure or None
    """How long each URL of the text part is as sent: a tracked link's click URL when click tracking
    is on for the issue (`tracking.written_length`), else None (as written)."""
    if not tracks_clicks(issue, settings):
        return None
    from .tracking import written_length  # tracking builds on this module
    return written_length(issue, issue.language or settings.language, settings.base_url)


def _text_context(issue: Issue, language: str, measure=None) -> dict:  # noqa: ANN001 - a textlayout.Measure
    briefs = []
    for brief in issue.briefs:
        text = markup.to_text(brief.body, language, measure=measure)
        link = markup.link_href(brief.link) if brief.link else None
        briefs.append({
            "title": markup.plain_inline(brief.title, language) if brief.title else None,
            "text": text,
            # the brief's link once: not again under a text that already shows it
            "link": link if link and not _shows_url(text, link) else None,
        })
    return {"intro_text": markup.to_text(issue.intro, language, measure=measure) if issue.intro else None,
            "briefs_text": briefs}


def _shows_url(text: str, url: str) -> bool:
    """`url` appears whole in `text` (not as the start of a longer URL)."""
    return re.search(r"(?:^|[\s(<])" + re.escape(url) + r"(?=$|[\s)>.,;:!?])", text) is not None


def _normalise_text(text: str) -> str:
    """Trailing blanks off every line, at most one blank line in a row, one final newline."""
    lines = [line.rstrip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def build_warnings(rendered: RenderedIssue) -> Iterable[str]:
    """What an editor should fix before sending, one line each (file:line where there is one). The
    first ones are `issue.holds`'s (draft, scaffold placeholders): `mailer send` refuses those itself
    (`prepare.refuse_held`) and the scheduler holds them; the rest never block a send."""
    for _reason, line in holds(rendered.issue):
        yield line
    sample = rendered.html.fill(rendered.slot_values(Recipient(
        email="sample.reader@example.org", name="Sample Reader",
        unsubscribe_url=links.sample_unsubscribe_url(rendered.settings.base_url))))
    size = len(sample.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        yield (f"HTML is {size / 1024:.1f} KB: Gmail clips messages over 102 KB "
               f"(the unsubscribe link would be hidden); shorten the issue")
    for brief in rendered.issue.briefs:
        if brief.image and not brief.image_alt:
            yield f"{brief.where}: image {brief.image} has no alt text (add image_alt)"
        for alt_match in re.finditer(r"!\[([^\]]*)\]\(([^)\s]+)", brief.body):
            if not alt_match.group(1).strip():
                yield f"{brief.where}: image {alt_match.group(2)} has no alt text"
        plain = re.sub(r"\(?(https?|mailto):\S+|[\[\]()]", "", markup.to_text(brief.body, rendered.settings.language))
        if len(plain.strip()) < 3:
            yield f"{brief.where}: brief has no readable text"
    for img in _IMG_RE.findall(sample):
        alt = _ALT_RE.search(img)
        if alt is None:
            yield f"an image has no alt attribute: {img[:80]}"
    issue = rendered.issue
    if isinstance(issue.greeting, str) and starts_with_greeting(issue.intro):
        yield (f"{issue.folder / 'issue.toml'}: greeting is set and the intro starts with a greeting too: "
               "readers get two (remove one)")
    base_url = rendered.settings.base_url
    if rendered.settings.base_url_problem:
        yield (f"MAILER_BASE_URL is {base_url}: it {rendered.settings.base_url_problem}, so unsubscribe and "
               f"web-version links would not work for recipients (send refuses it with a real backend)")
    seen: set[str] = set()
    for href in _HREF_RE.findall(sample):
        href = html.unescape(href)
        if href.startswith("http://") and not href.startswith(base_url) and href not in seen:
            seen.add(href)
            yield f"insecure link (http://): {href}"
