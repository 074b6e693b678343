"""`Issue` → `RenderedIssue`: HTML and text compiled ONCE, then personalised per recipient.

Jinja2 renders the issue into MJML (autoescape on, editor Markdown rendered by `markup` and marked
safe); mjml-python compiles it to HTML once. Per-recipient values are *slots*: literal markers left
in the compiled HTML and text (`%%mailer:NAME%%`), filled by joining pre-split pieces — a few
microseconds per recipient — or, for SendGrid, sent as `substitutions` so one request carries the
body once for up to 1000 recipients.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import jinja2
import mjml
from markupsafe import Markup

from . import i18n, markup
from .config import Settings
from .errors import RenderError, SourceError
from .issue import Issue, holds

GMAIL_CLIP_BYTES = 102 * 1024
SLOT_PREFIX = "%%mailer:"
SLOT_SUFFIX = "%%"
# Slot names; the `.html` variants carry HTML-escaped values.
TEXT_SLOTS = ("greeting", "email", "unsubscribe_url")
HTML_SLOTS = tuple(f"{name}.html" for name in TEXT_SLOTS)
_SLOT_RE = re.compile(re.escape(SLOT_PREFIX) + r"([a-z_.]+)" + re.escape(SLOT_SUFFIX))
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
    """Who a message goes to. `unsubscribe_url` is built by the caller (it holds a signed token)."""

    email: str
    unsubscribe_url: str
    name: str = ""
    subscriber_id: int | None = None


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

    @property
    def subject(self) -> str:
        return self.issue.subject

    @property
    def key(self) -> str:
        """Names this email's outbox folder and provider category."""
        return self.issue.slug

    def slot_values(self, recipient: Recipient) -> dict[str, str]:
        return personal_values(self.settings, recipient)

    def personalise(self, recipient: Recipient) -> tuple[str, str]:
        """(html, text) for one recipient: substitution only, no template or MJML work."""
        values = self.slot_values(recipient)
        return self.html.fill(values), self.text.fill(values)


def personal_values(settings: Settings, recipient: Recipient, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Every slot's value for one recipient (plus `extra` slots); each also as `NAME.html`, HTML-escaped,
    since subscriber-provided values must never become markup."""
    strings = i18n.strings(settings.language)
    name = " ".join(recipient.name.split())
    greeting = strings["hello"].format(name=name) if name else strings["hello"].format(name="").replace(" ,", ",")
    values = {"greeting": greeting, "email": recipient.email, "unsubscribe_url": recipient.unsubscribe_url,
              **(extra or {})}
    values.update({f"{key}.html": html.escape(value, quote=True) for key, value in list(values.items())})
    return values


@dataclass(frozen=True)
class CompiledEmail:
    mjml_source: str
    html: Template
    text: Template
    compile_seconds: float


def compile_email(settings: Settings, name: str, context: dict, *, slots: Sequence[str], required: Sequence[str],
                  text_context: dict | None = None) -> CompiledEmail:
    """`templates/NAME.mjml.j2` → MJML → HTML (mjml-python, once) and `NAME.txt.j2` → text.

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
        raise RenderError(f"template {name!r} produced invalid MJML: {exc}") from None
    compile_seconds = time.perf_counter() - started

    html_template = Template.parse(compiled)
    text_template = Template.parse(_normalise_text(text_source))
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


def jinja_environment(templates_dir: Path, *, autoescape: bool) -> jinja2.Environment:
    """`select_autoescape()` would not escape `.mjml.j2`: escaping is set explicitly."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=autoescape,
        finalize=_neutralise_markers,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_issue(issue: Issue, settings: Settings) -> RenderedIssue:
    """Compile the issue once: Jinja → MJML → HTML, and Jinja → text."""
    language = settings.language
    template_names = (f"{issue.template}.mjml.j2", f"{issue.template}.txt.j2")
    for name in template_names:
        if not (settings.templates_dir / name).is_file():
            raise SourceError(issue.folder / "issue.toml",
                              f"unknown template {issue.template!r}: {settings.templates_dir / name} does not exist")
    web_url = f"{settings.base_url}/issues/{issue.slug}"
    compiled = compile_email(settings, issue.template, _context(issue, settings, web_url), slots=TEXT_SLOTS,
                             required=("unsubscribe_url",), text_context=_text_context(issue, language))
    rendered = RenderedIssue(issue=issue, settings=settings, mjml_source=compiled.mjml_source, html=compiled.html,
                             text=compiled.text, web_url=web_url, compile_seconds=compiled.compile_seconds)
    return RenderedIssue(**{**rendered.__dict__, "warnings": tuple(build_warnings(rendered))})


def _context(issue: Issue, settings: Settings, web_url: str) -> dict:
    language = settings.language
    strings = i18n.strings(language)
    briefs = []
    for index, brief in enumerate(issue.briefs, start=1):
        briefs.append({
            "number": index,
            "title": Markup(markup.to_inline_html(brief.title, language)) if brief.title else None,
            "title_text": markup.plain_inline(brief.title, language) if brief.title else None,
            "html": Markup(markup.to_html(brief.body, language)),
            "link": brief.link,
            "image": brief.image,
            "image_alt": brief.image_alt,
            "where": brief.where,
        })
    return {
        "issue": issue,
        "name": settings.name,
        "language": language,
        "t": strings,
        "date_long": i18n.long_date(issue.date, language),
        "preheader": issue.preheader,
        "intro_html": Markup(markup.to_html(issue.intro, language)) if issue.intro else None,
        "briefs": briefs,
        "web_url": web_url,
        "archive_url": f"{settings.base_url}/archive",
        "postal_address": settings.postal_address,
        "why_received": strings["why_received"].format(name=settings.name),
        "slot": {name: slot_marker(name) for name in (*TEXT_SLOTS, *HTML_SLOTS)},
    }


def _text_context(issue: Issue, language: str) -> dict:
    return {
        "intro_text": markup.to_text(issue.intro, language) if issue.intro else None,
        "briefs_text": [
            {
                "title": markup.plain_inline(brief.title, language) if brief.title else None,
                "text": markup.to_text(brief.body, language),
                "link": brief.link,
            }
            for brief in issue.briefs
        ],
    }


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
    """What an editor should fix before sending; nothing here blocks a send (a draft is refused by
    `mailer send` itself, see issue.holds)."""
    for _reason, line in holds(rendered.issue):
        yield line
    sample = rendered.html.fill(rendered.slot_values(Recipient(
        email="sample.reader@example.org", name="Sample Reader",
        unsubscribe_url=f"{rendered.settings.base_url}/u/{'x' * 43}")))
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
    base_url = rendered.settings.base_url
    if base_url.startswith("http://"):
        yield f"MAILER_BASE_URL is {base_url}: unsubscribe and web-version links are not https"
    seen: set[str] = set()
    for href in _HREF_RE.findall(sample):
        href = html.unescape(href)
        if href.startswith("http://") and not href.startswith(base_url) and href not in seen:
            seen.add(href)
            yield f"insecure link (http://): {href}"
