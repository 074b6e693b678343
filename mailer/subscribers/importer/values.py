"""Cell values as exports write them: header names, languages, time zones, dates, booleans, JSON objects.

Each function takes the raw text of one cell and returns the value the store keeps, or None when the
text is not one (the caller reports it).
"""

from __future__ import annotations

import json
import re
import unicodedata
import zoneinfo
from datetime import datetime, timezone
from functools import lru_cache

_TRUE = frozenset(("true", "yes", "y", "1", "oui", "vrai", "t"))
_FALSE = frozenset(("false", "no", "n", "0", "non", "faux", "f", ""))

# Language names an export may hold instead of a code (normalised), for the common European languages.
_LANGUAGE_NAMES = {
    "french": "fr", "francais": "fr", "english": "en", "anglais": "en", "german": "de", "deutsch": "de",
    "allemand": "de", "spanish": "es", "espanol": "es", "espagnol": "es", "italian": "it", "italiano": "it",
    "italien": "it", "dutch": "nl", "nederlands": "nl", "neerlandais": "nl", "portuguese": "pt",
    "portugues": "pt", "portugais": "pt",
}
_LANGUAGE_TAG = re.compile(r"([a-z]{2,3})(?:_[a-z0-9]{1,8})*")


def clean_text(value: str, limit: int = 200) -> str:
    """One line, no control characters (names end up in headers and pages)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in value or "").split())[:limit]


def normalise_name(text: str) -> str:
    """A header or attribute name as compared and stored: case-folded, accents dropped, every run
    of spaces, dashes, dots or underscores one `_` (`Adresse e-mail` → `adresse_e_mail`)."""
    decomposed = unicodedata.normalize("NFKD", text.strip())
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return re.sub(r"[\W_]+", "_", bare.casefold()).strip("_")


def normalise_language(raw: str) -> str | None:
    """A language value as stored: its ISO 639 code (`fr-FR`, `French`, `Français` → `fr`); "" for
    an empty cell; None when it is no language we can read."""
    key = normalise_name(raw)
    if not key:
        return ""
    if key in _LANGUAGE_NAMES:
        return _LANGUAGE_NAMES[key]
    match = _LANGUAGE_TAG.fullmatch(key)
    return match.group(1) if match else None


@lru_cache(maxsize=1)
def _zones() -> dict[str, str]:
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def normalise_timezone(raw: str) -> str | None:
    """The IANA name of a time zone (`europe/paris` → `Europe/Paris`), "" for an empty cell, None
    when it is none (the tz database of this machine decides)."""
    text = raw.strip()
    if not text:
        return ""
    return _zones().get(text.lower())


def parse_timestamp(raw: str) -> datetime | None:
    """ISO 8601 (`T` or space, `Z` or an offset; naive is UTC), a date, or Go's `time.String()` as
    listmonk writes it (`2024-05-06 07:08:09.123456 +0000 UTC`), as a UTC datetime (what the store
    keeps); None when it is none of those."""
    text = raw.strip()
    if not text:
        return None
    go = _GO_TIME.fullmatch(text)
    if go:
        text = f"{go.group(1)}T{go.group(2)}{(go.group(3) or '')[:7]}{go.group(4)}"
    else:
        text = _LONG_FRACTION.sub(lambda m: m.group(0)[:7], text)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


_GO_TIME = re.compile(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(\.\d+)? ([+-]\d{4})(?: \S+)?(?: m=\S+)?")
_LONG_FRACTION = re.compile(r"\.\d{7,}")


def truthy(raw: str) -> bool | None:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def json_object_cells(raw: str) -> dict[str, str]:
    """The string and number values of a JSON object cell (listmonk attributes, Buttondown metadata),
    keyed by normalised name; anything else is kept as JSON text."""
    text = raw.strip()
    if not text or text in ("{}", "null"):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"": text}
    if not isinstance(value, dict):
        return {"": text}
    out: dict[str, str] = {}
    for key, item in value.items():
        name = normalise_name(str(key))
        if not name or item in (None, ""):
            continue
        out[name] = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
    return out
