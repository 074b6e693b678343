"""Loading an issue folder (`issue.toml` + brief files) into an `Issue`, with validation.

Longer than ~400 lines because every key of `issue.toml` (send_at, send_local, segment, language, …)
is validated here, each with its one-line error naming the file and line, which read best side by side."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Iterable, Sequence
from zoneinfo import ZoneInfo

from slugify import slugify

from .briefs import Brief, brief_files, control_character, describe_character, parse_file, read_text
from ..wallclock import localize  # the one rule for wall times a DST change skips or repeats
from ..errors import AmbiguousIssue, DraftIssue, MailerError, NotFound, SourceError
from ..segments import Segment, SegmentError, parse as parse_segment

ISSUE_FILE = "issue.toml"
ISSUE_KEYS = ("subject", "preheader", "date", "send_at", "send_local", "template", "intro", "list", "archive", "greeting", "draft",
              "track_clicks", "segment", "language")
DEFAULT_TEMPLATE = "weekly"
_TOML_LINE = re.compile(r"at line (\d+)")


@dataclass(frozen=True)
class Issue:
    slug: str
    folder: Path
    subject: str
    preheader: str
    date: date
    briefs: tuple[Brief, ...]
    intro: str | None = None
    send_at: datetime | None = None
    send_local: datetime | None = None  # naive: a wall time, read in each subscriber's zone (sending/waves.py)
    template: str = DEFAULT_TEMPLATE
    list_name: str | None = None
    archive: bool | None = None  # issue.toml `archive`: True lists it, False hides it, None: the rule below
    greeting: bool | str = True  # issue.toml `greeting`: false, or a pattern like "Salut {name} !"
    draft: bool = False  # issue.toml `draft = true` (a fresh scaffold): never ready for the scheduler
    track_clicks: bool | None = None  # issue.toml `track_clicks`: wins over MAILER_TRACK_CLICKS when set
    segment: "Segment | None" = None  # issue.toml `segment`, parsed (segments.py); ANDed with `list`
    language: str | None = None  # issue.toml `language`: forces the fixed strings' language for everyone

    @property
    def public(self) -> bool:
        """Whether /archive lists the issue and /issues/SLUG serves it to anyone: `archive` when set,
        else only an issue sent to everyone (an issue for a named list or a segment stays private)."""
        if self.archive is not None:
            return self.archive
        return self.list_name is None and self.segment is None

    def source_files(self) -> list[Path]:
        """Every file whose change changes the email (the preview watches these)."""
        return [self.folder / ISSUE_FILE, *brief_files(self.folder)]


def matching_issue_names(names: Iterable[str], ref: str) -> list[str]:
    """The names ISSUE designates, sorted: the name itself, or the names ending in `-ISSUE` (the
    unique suffix: `donnees-ouvertes` for `2026-11-26-donnees-ouvertes`). The same rule resolves a
    folder (`find_issue_folder`) and, once the folder is gone, a slug of the ledger
    (`sending.prepare.issue_slug`)."""
    names = list(names)
    return [ref] if ref in names else sorted(name for name in names if name.endswith(f"-{ref}"))


def ambiguous_issue(ref: str, names: Sequence[str]) -> AmbiguousIssue:
    return AmbiguousIssue(f"issue {ref!r} is ambiguous: {', '.join(names)}")


def find_issue_folder(ref: str | Path, issues_dir: Path) -> Path:
    """ISSUE is a folder path, a folder name in `issues_dir`, or the unique suffix of one (`gaia-x`)."""
    path = Path(ref)
    if (path / ISSUE_FILE).is_file():
        return path.resolve()
    candidate = issues_dir / str(ref)
    if (candidate / ISSUE_FILE).is_file():
        return candidate.resolve()
    if issues_dir.is_dir() and "/" not in str(ref):
        matches = matching_issue_names((p.name for p in issues_dir.iterdir() if (p / ISSUE_FILE).is_file()), str(ref))
        if len(matches) == 1:
            return (issues_dir / matches[0]).resolve()
        if len(matches) > 1:
            raise ambiguous_issue(str(ref), matches)
    raise NotFound(f"no issue {ref!r}: expected a folder with {ISSUE_FILE} (looked in {issues_dir})")


def load_issue(ref: str | Path, issues_dir: Path, zone: ZoneInfo) -> Issue:
    """Read and validate an issue; every error names the file and line."""
    folder = find_issue_folder(ref, issues_dir)
    toml_path = folder / ISSUE_FILE
    text = read_text(toml_path)
    try:
        meta = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        raise SourceError(toml_path, f"malformed TOML: {exc}", int(found.group(1)) if found else None) from None

    def line_of(key: str) -> int | None:
        return key_line(text, key)

    for key in meta:
        if key not in ISSUE_KEYS:
            raise SourceError(toml_path, f"unknown key {key!r} (allowed: {', '.join(ISSUE_KEYS)})", line_of(key))
    for key in ("subject", "preheader", "template", "intro", "list", "segment", "language"):
        if key in meta and not isinstance(meta[key], str):
            raise SourceError(toml_path, f"{key} must be a string", line_of(key))
    for key, value in meta.items():
        # TOML escapes (`\f`, `\u0000`) put control characters in a value that the file's text lacks
        found = (control_character(value, markdown=key == "intro", header=key in ("subject", "preheader"))
                 if isinstance(value, str) else None)
        if found:
            index, char, written = found
            how = (f"character reference {written} is " if written
                   else "" if char in text else "an escape gives ")
            raise SourceError(toml_path, f"{key}: {how}control character {describe_character(char)} "
                                         f"at character {index + 1}: delete it", line_of(key))

    greeting = meta.get("greeting", True)
    if isinstance(greeting, str):
        greeting = " ".join(greeting.split())
        unknown = sorted(set(re.findall(r"\{[^{}]*\}", greeting)) - {"{name}"})
        if unknown or greeting.count("{") != greeting.count("}"):
            raise SourceError(toml_path, f"greeting may hold {{name}} (the reader's first name) and nothing else "
                                         f"between braces, not {', '.join(unknown) or greeting!r}", line_of("greeting"))
        greeting = greeting or False
    elif not isinstance(greeting, bool):
        raise SourceError(toml_path, 'greeting must be true, false or a text like "Salut {name} !"', line_of("greeting"))
    if not isinstance(meta.get("draft", False), bool):
        raise SourceError(toml_path, "draft must be true or false (remove the line when the issue is ready)",
                          line_of("draft"))

    if "track_clicks" in meta and not isinstance(meta["track_clicks"], bool):
        raise SourceError(toml_path, f"track_clicks must be true or false, not {meta['track_clicks']!r}",
                          line_of("track_clicks"))
    if "archive" in meta and not isinstance(meta["archive"], bool):
        raise SourceError(toml_path, f"archive must be true or false, not {meta['archive']!r}", line_of("archive"))

    segment = None
    if "segment" in meta and not str(meta["segment"]).strip():
        raise SourceError(toml_path, "segment is empty: remove the line to send to the whole list, or write a "
                                     "filter such as segment = 'language = \"en\"'", line_of("segment"))
    if meta.get("segment", "").strip():
        try:
            segment = parse_segment(meta["segment"], zone)
        except SegmentError as exc:
            raise segment_error(toml_path, line_of("segment"), exc) from None
    language = meta.get("language", "").strip().lower() or None
    if language is not None:
        from .i18n import STRINGS
        if language not in STRINGS:
            raise SourceError(toml_path, f"language must be one of {', '.join(sorted(STRINGS))} (the fixed strings "
                                         f"shipped), not {meta['language']!r}", line_of("language"))

    subject = meta.get("subject", "").strip()
    if not subject:
        raise SourceError(toml_path, "missing subject (add: subject = \"…\")", line_of("subject"))
    if "\n" in subject or "\r" in subject:
        raise SourceError(toml_path, "subject must be one line", line_of("subject"))

    issue_date = _parse_date(meta.get("date"), folder.name, toml_path, line_of("date"))
    send_at = _parse_send_at(meta.get("send_at"), zone, toml_path, line_of("send_at"))
    send_local = _parse_send_local(meta.get("send_local"), toml_path, line_of("send_local"))
    if send_local is not None and send_at is not None:
        raise SourceError(toml_path, "send_local and send_at together: keep one (send_local: each subscriber at "
                                     "that wall time in their own zone; send_at: one instant for everyone)",
                          line_of("send_local"))

    intros: list[str] = []
    briefs: list[Brief] = []
    for path in brief_files(folder):
        parsed = parse_file(path)
        if parsed.intro:
            intros.append(parsed.intro)
        briefs.extend(parsed.briefs)
    if not briefs:
        raise SourceError(folder, "no briefs: add a briefs.txt with '-->' lines or a .md file per brief")

    intro = meta.get("intro", "").strip() or "\n\n".join(intros) or None
    preheader = " ".join(meta.get("preheader", "").split())
    return Issue(
        slug=folder.name,
        folder=folder,
        subject=subject,
        preheader=preheader,
        date=issue_date,
        briefs=tuple(briefs),
        intro=intro,
        send_at=send_at,
        send_local=send_local,
        template=meta.get("template", DEFAULT_TEMPLATE).strip() or DEFAULT_TEMPLATE,
        list_name=meta.get("list", "").strip() or None,
        archive=meta.get("archive"),
        greeting=greeting,
        draft=meta.get("draft", False),
        track_clicks=meta.get("track_clicks"),
        segment=segment,
        language=language,
    )


def segment_error(toml_path: Path, line: int | None, exc: SegmentError) -> SourceError:
    """A segment's error as one line naming issue.toml:LINE, the column and the segment itself."""
    return SourceError(toml_path, f"segment, column {exc.column}: {exc.reason} (segment: {exc.text})", line)


def key_line(toml_text: str, key: str) -> int | None:
    """The line (1-based) of `key = …` in an issue.toml's text, for messages; None if absent."""
    for number, line in enumerate(toml_text.split("\n"), start=1):
        if re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return number
    return None


def where(issue: Issue, key: str) -> str:
    """`issues/<slug>/issue.toml:LINE` of `key` (without `:LINE` when the key is absent), for messages."""
    path = issue.folder / ISSUE_FILE
    line = key_line(read_text(path), key)
    return f"{path}:{line}" if line else str(path)


def hold_refusal(issue: Issue) -> MailerError | None:
    """The error that stops `mailer send` (not `--test`) from starting an issue `holds` holds, naming
    the file:line of the first hold (and how many others there are); None when nothing holds it.
    `--allow-draft` is the one way to send such an issue as it is."""
    found = holds(issue)
    if not found:
        return None
    reason, line = found[0]
    more = f" (and {len(found) - 1} more: `mailer build` lists them)" if len(found) > 1 else ""
    if reason == "draft":
        return DraftIssue(f"{where(issue, 'draft')}: draft = true: this issue is a draft and is not sent{more}; "
                          "remove that line when it is ready, or send it as it is with --allow-draft (test sends "
                          "with --test work on drafts)")
    return DraftIssue(f"{line}; an issue still holding `mailer issue new`'s placeholders is not sent{more}: write "
                      "them, or send it as it is with --allow-draft (test sends with --test work)")


# Subjects that say nobody has written one yet: what `mailer issue new` writes (fr, en) and the usual
# stand-ins. Compared without case, accents, punctuation or spacing ("[Sujet]", "TODO: objet",
# "Newsletter #" = "newsletter", "Lettre n°" = "lettre n"); a subject that says more is never one.
PLACEHOLDER_SUBJECTS = ("Objet de la lettre", "Subject of the issue", "Sujet", "Objet", "Subject", "Titre", "Title",
                        "Sans titre", "Untitled", "Test", "À compléter", "To do", "TODO", "TBD", "TBA", "FIXME", "XXX",
                        "Your subject here", "Subject line", "Sujet de la lettre", "Titre de la lettre",
                        "Objet du mail", "Nouvelle lettre", "New issue", "Untitled issue", "Newsletter #",
                        "Lettre n°")
_PLACEHOLDER_PREFIXES = ("todo ", "tbd ", "fixme ", "xxx ", "lorem ipsum")
# what stands for a number still to write: "Newsletter #XX", "Lettre n° N", "Issue #…"
_NUMBER_STAND_INS = frozenset({"x", "xx", "xxx", "n", "nn", "nnn"})


def _comparable(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", letters).split())


_PLACEHOLDER_KEYS = frozenset(_comparable(s) for s in PLACEHOLDER_SUBJECTS)


def is_placeholder_subject(subject: str) -> bool:
    """True for a subject nobody wrote: the scaffold's, or a stand-in such as "TODO", "[Sujet]",
    "Lorem ipsum…", "Newsletter #XX"; False for any subject that says something more."""
    key = _comparable(subject)
    if key in _PLACEHOLDER_KEYS or f"{key} ".startswith(_PLACEHOLDER_PREFIXES):
        return True
    head, _, last = key.rpartition(" ")
    return last in _NUMBER_STAND_INS and head in _PLACEHOLDER_KEYS


def _is_scaffold_text(text: str | None, key: str) -> str | None:
    """The scaffold's text for `key` (any language) that `text` still is, compared as subjects are
    (case, accents, punctuation, spacing), or a stand-in ("TODO…", "Lorem ipsum…"); else None."""
    if not text:
        return None
    comparable = _comparable(text)
    for texts in SCAFFOLD_TEXT.values():
        for scaffold in (texts[key] if key == "briefs" else (texts[key],)):
            if comparable == _comparable(scaffold):
                return scaffold
    if comparable in _PLACEHOLDER_KEYS or f"{comparable} ".startswith(_PLACEHOLDER_PREFIXES):
        return text
    return None


def _intro_where(issue: Issue) -> str:
    """`file:line` of the issue's intro: the `intro =` line of issue.toml, or the line of a brief file
    (text before the first arrow) where it starts; the folder when no line holds it."""
    first = (issue.intro or "").strip().split("\n", 1)[0].strip()
    for path in (issue.folder / ISSUE_FILE, *brief_files(issue.folder)):
        for number, line in enumerate(read_text(path).split("\n"), start=1):
            if first and first in line:
                return f"{path}:{number}"
    return str(issue.folder)


def placeholders(issue: Issue) -> list[str]:
    """One line naming file:line for each text `mailer issue new` wrote (or a stand-in such as
    "TODO", "Lorem ipsum") still in the issue: subject, preheader, intro, briefs. Empty when none."""
    found = []
    if is_placeholder_subject(issue.subject):
        found.append(f"{where(issue, 'subject')}: the subject {issue.subject!r} is a placeholder: write the real one")
    if _is_scaffold_text(issue.preheader, "preheader"):
        found.append(f"{where(issue, 'preheader')}: preheader is still the placeholder {issue.preheader!r}: "
                     "write the real one")
    if _is_scaffold_text(issue.intro, "intro"):
        found.append(f"{_intro_where(issue)}: the intro is still the placeholder {issue.intro!r}: write it or delete it")
    found.extend(f"{brief.where}: brief is still the placeholder {brief.body!r}: write it or delete it"
                 for brief in issue.briefs if _is_scaffold_text(brief.body, "briefs"))
    return found


def holds(issue: Issue) -> list[tuple[str, str]]:
    """What keeps the scheduler from starting this issue and `mailer send` (without --allow-draft)
    from sending it, as (reason, line naming file:line): ("draft", …) for `draft = true`, then
    ("placeholder", …) for each of `placeholders`. Empty when nothing does. `build` and `preview`
    show every line as a warning."""
    found = []
    if issue.draft:
        found.append(("draft", f"{where(issue, 'draft')}: draft = true: the scheduler holds it and `mailer send` "
                               "refuses it; remove the line when the issue is ready"))
    found.extend(("placeholder", line) for line in placeholders(issue))
    return found


def _parse_date(value: object, folder_name: str, path: Path, line: int | None) -> date:
    if value is None:
        # The folder name usually starts with the date (issues/2026-11-27-gaia-x).
        try:
            return date.fromisoformat(folder_name[:10])
        except ValueError:
            raise SourceError(path, "missing date (add: date = 2026-11-27)") from None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    raise SourceError(path, f"date must be a date like 2026-11-27, not {value!r}", line)


def _parse_send_at(value: object, zone: ZoneInfo, path: Path, line: int | None) -> datetime | None:
    """send_at is a TOML date-time or an ISO string; without an offset it is read in MAILER_TIMEZONE
    (a wall time the spring change skips means the instant of the jump; a repeated one, its first)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise SourceError(path, f"send_at must be ISO 8601 like 2026-12-01T07:00:00+01:00, not {value!r}", line) from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(0, 0))
    if isinstance(value, time) or not isinstance(value, datetime):
        raise SourceError(path, f"send_at must be a date and time, not {value!r}", line)
    if value.tzinfo is None:
        value = localize(value, zone)
    return value


def _parse_send_local(value: object, path: Path, line: int | None) -> datetime | None:
    """send_local is a wall time without offset or zone (TOML local date-time or an ISO string such as
    "2027-01-14T07:00"): naive, read later in each subscriber's own zone. An offset, a zone name, a
    date without time are errors naming the line."""
    if value is None:
        return None
    example = "write a wall time such as send_local = \"2027-01-14T07:00\""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise SourceError(path, f"send_local must be a wall time without offset or zone, not {text!r}: "
                                    f"{example}", line) from None
        if "T" not in text.upper() and " " not in text:  # fromisoformat reads a bare date as midnight
            raise SourceError(path, f"send_local needs a time, not only a date ({text!r}): {example}", line)
    if not isinstance(value, datetime):
        shown = value.isoformat() if hasattr(value, "isoformat") else repr(value)
        raise SourceError(path, f"send_local must be a date and time, not {shown}: {example}", line)
    if value.tzinfo is not None:
        raise SourceError(path, f"send_local takes no offset or zone ({value.isoformat()}): each subscriber gets the "
                                f"issue at that wall time in their own zone; {example}, or use send_at for one "
                                f"instant for everyone", line)
    return value.replace(microsecond=0)


# What `mailer issue new` writes, per language: `holds` holds the issue while any of it is left as is.
SCAFFOLD_TEXT = {
    "fr": {
        "subject": "Objet de la lettre",
        "preheader": "Une phrase qui donne envie d'ouvrir.",
        "intro": "Quelques mots d'introduction (facultatif), avant la première flèche.",
        "briefs": ("Première brève. Le Markdown en ligne est permis : [un lien](https://example.org), *italique*.",
                   "Deuxième brève."),
        "draft": "# à retirer quand la lettre est prête : tant qu'elle est en brouillon, l'envoi planifié l'ignore",
    },
    "en": {
        "subject": "Subject of the issue",
        "preheader": "One sentence that makes people open it.",
        "intro": "A few words of introduction (optional), before the first arrow.",
        "briefs": ("First brief. Inline Markdown is allowed: [a link](https://example.org), *emphasis*.",
                   "Second brief."),
        "draft": "# remove when the issue is ready: the scheduler skips drafts",
    },
}


def scaffold_issue(settings, slug: str, issue_date: date) -> Path:
    """`mailer issue new`: `issues/<date>-<slug>/` with an issue.toml (`draft = true`) and a
    briefs.txt showing the format. The slug is transliterated to ASCII (python-slugify:
    `trains-et-vélos` → `trains-et-velos`, `李小龙` → `li-xiao-long`); SourceError when nothing is left."""
    clean = slugify(slug, max_length=60, word_boundary=True, replacements=[["’", "'"]])  # both apostrophes alike
    if clean.startswith(f"{issue_date.isoformat()}-"):  # `mailer issue new 2026-12-03-trains`
        clean = clean[len(issue_date.isoformat()) + 1:]
    if not clean:
        raise SourceError(Path(slug), "the slug needs letters or digits")
    folder = settings.issues_dir / f"{issue_date.isoformat()}-{clean}"
    if folder.exists():
        raise SourceError(folder, "already exists")
    folder.mkdir(parents=True)
    texts = SCAFFOLD_TEXT[settings.language]
    briefs = f"{texts['intro']}\n\n" + "".join(f"--> {body}\n" for body in texts["briefs"])
    (folder / ISSUE_FILE).write_text(
        f'subject = "{texts["subject"]}"\npreheader = "{texts["preheader"]}"\ndate = {issue_date.isoformat()}\n'
        f'{texts["draft"]}\ndraft = true\n'
        f'# send_at = {issue_date.isoformat()}T07:00:00+01:00\n', encoding="utf-8")
    (folder / "briefs.txt").write_text(briefs, encoding="utf-8")
    return folder
