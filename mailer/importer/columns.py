"""What each column of an imported file means: header names, `--map`, and the export formats of other tools.

Header names are compared normalised (`normalise_name`: case, accents, spaces, dashes and
underscores do not matter: `E-mail`, `Adresse e-mail`, `EMAIL_ADDRESS` all match), and columns that
are no field of ours are kept as attributes under their normalised name (`Ville` → `ville`); the
import's summary lists them. `--map SOURCE=TARGET` sends a column to a field or to an attribute of
another name (`--map Ville=city`), or drops it (`--map Notes=`).

Exports of other newsletter tools are recognised by their headers (`EXPORT_FORMATS`), so that the
people they list keep their status, their name and their time zone. Column names and status values
as these tools document or write them:

* Mailchimp audience exports (`subscribed_…`, `unsubscribed_…`, `cleaned_…`, `nonsubscribed_members_export`):
  "Email Address", "First Name", "Last Name", MEMBER_RATING, OPTIN_TIME, CONFIRM_TIME, TIMEZONE, …;
  the unsubscribed file adds UNSUB_TIME, UNSUB_REASON…, the cleaned one CLEAN_TIME…. Which file it is
  decides the status: unsubscribed (complained when UNSUB_REASON names abuse or spam), cleaned →
  bounced, non-subscribed (never opted in) → pending. Times are read as UTC.
* Substack subscriber exports: email, active_subscription, expiry, email_disabled, created_at (and
  name, type, stripe_connected_customer_id in some versions); email_disabled = true → unsubscribed.
* Buttondown subscriber exports (API vocabulary, docs.buttondown.com): email or email_address,
  subscriber_type or type, creation_date, notes, metadata, tags; the unsubscribers export has
  unsubscription_date. Types: regular, premium, trialed, unpaid, gifted, churning, paused, past_due →
  active; unactivated → pending; unsubscribed, removed → unsubscribed; undeliverable, spammy,
  malformed, disposable, blocked → bounced; complained → complained.
* listmonk (`subscribers.csv` of its admin): uuid, email, name, attributes (a JSON object),
  status (enabled → active; disabled, blocklisted → unsubscribed), created_at, updated_at.
* Ghost members exports (`members-csv`): id, email, name, note, subscribed_to_emails,
  complimentary_plan, stripe_customer_id, created_at, deleted_at, labels, tiers/products;
  subscribed_to_emails = false → unsubscribed.
* mailer's own `subscribers export`: its status and dates are used, `source` is ignored.
"""

from __future__ import annotations

import json
import re
import unicodedata
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Callable, Iterable, Sequence

from ..errors import MailerError
from ..schema import SUBSCRIBER_STATUSES

FIELDS = ("email", "name", "first_name", "last_name", "language", "lists", "status", "created_at", "timezone")

# Normalised header names of each field, in any file.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "email": ("email", "e_mail", "mail", "courriel", "adresse", "address", "email_address", "e_mail_address",
              "adresse_email", "adresse_e_mail", "adresse_mail", "adresse_electronique", "mel"),
    "name": ("name", "nom", "full_name", "fullname", "nom_complet", "display_name", "prenom_nom", "nom_prenom"),
    "first_name": ("first_name", "firstname", "prenom", "given_name", "fname"),
    "last_name": ("last_name", "lastname", "surname", "family_name", "nom_de_famille", "lname"),
    "language": ("language", "langue", "lang", "locale", "preferred_language"),
    "lists": ("lists", "listes", "list", "liste"),
    "status": ("status", "statut", "subscription_status"),
    "created_at": ("created_at", "created", "date_created", "creation_date", "subscribed_at", "date_inscription",
                   "date_d_inscription", "signup_date"),
    "timezone": ("timezone", "time_zone", "tz", "fuseau_horaire"),
}
EMAIL_NAMES = frozenset(SYNONYMS["email"])

# Status words of generic files (normalised), in English and French.
STATUS_WORDS = {
    **{status: status for status in SUBSCRIBER_STATUSES},
    "actif": "active", "active_subscriber": "active", "subscribed": "active", "abonne": "active",
    "inscrit": "active", "confirmed": "active", "confirme": "active", "enabled": "active",
    "en_attente": "pending", "unconfirmed": "pending", "non_confirme": "pending", "unactivated": "pending",
    "desabonne": "unsubscribed", "desinscrit": "unsubscribed", "opted_out": "unsubscribed",
    "optout": "unsubscribed", "opt_out": "unsubscribed", "blocklisted": "unsubscribed", "blacklisted": "unsubscribed",
    "cleaned": "bounced", "undeliverable": "bounced", "hard_bounce": "bounced", "rebond": "bounced",
    "spam": "complained", "abuse": "complained", "spam_complaint": "complained", "plainte": "complained",
}
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


# ----- the export formats of other tools --------------------------------------------------------------
StatusRule = Callable[[list[str]], str | None]  # cells → status (None: none said); ValueError: reject the row
USED = "(used)"  # a column a format reads for the status or its date: neither a field nor an attribute


@dataclass(frozen=True)
class ExportFormat:
    key: str
    label: str
    detect: Callable[[frozenset[str], str], str | None]  # (normalised headers, file name) → variant or None
    columns: dict[str, str]                              # normalised header → field, USED, or "" to ignore
    status: Callable[[dict[str, int], str], StatusRule | None] | None = None  # (column indexes, variant) → rule
    status_at: Callable[[str], dict[str, str]] | None = None  # variant → {"active"|"suppressed": column}
    json_attributes: tuple[str, ...] = ()                # columns holding a JSON object of attributes


def _cell(cells: list[str], index: int | None) -> str:
    return cells[index].strip() if index is not None and index < len(cells) else ""


def _mailchimp_variant(headers: frozenset[str], filename: str) -> str | None:
    if "email_address" not in headers or not headers & {"member_rating", "optin_time", "leid", "euid", "confirm_time"}:
        return None
    if "unsub_time" in headers:
        return "unsubscribed"
    if "clean_time" in headers:
        return "cleaned"
    if normalise_name(filename).startswith(("nonsubscribed", "non_subscribed")):
        return "non-subscribed"
    return "subscribed"


_ABUSE = re.compile(r"abuse|spam|complain", re.IGNORECASE)


def _mailchimp_status(index: dict[str, int], variant: str) -> StatusRule:
    constant = {"subscribed": "active", "cleaned": "bounced", "non-subscribed": "pending"}.get(variant)
    if constant:
        return lambda cells: constant
    reason = index.get("unsub_reason")
    return lambda cells: "complained" if _ABUSE.search(_cell(cells, reason)) else "unsubscribed"


def _substack_variant(headers: frozenset[str], filename: str) -> str | None:
    if "email" in headers and "email_disabled" in headers and headers & {
            "active_subscription", "expiry", "stripe_connected_customer_id", "first_payment_at", "plan"}:
        return ""
    return None


def _boolean_status(column: str, when_true: str, when_false: str, also_suppressed_when_set: str = ""):
    def rule_for(index: dict[str, int], variant: str) -> StatusRule:
        position, deleted = index.get(column), index.get(also_suppressed_when_set)

        def rule(cells: list[str]) -> str | None:
            if deleted is not None and _cell(cells, deleted):
                return "unsubscribed"
            flag = truthy(_cell(cells, position))
            if flag is None:
                raise ValueError(f"{column} is {_cell(cells, position)!r}, not true or false")
            return when_true if flag else when_false
        return rule
    return rule_for


BUTTONDOWN_TYPES = {
    **dict.fromkeys(("regular", "premium", "trialed", "unpaid", "gifted", "churning", "paused", "past_due"), "active"),
    "unactivated": "pending", "unsubscribed": "unsubscribed", "removed": "unsubscribed",
    **dict.fromkeys(("undeliverable", "spammy", "malformed", "disposable", "blocked"), "bounced"),
    "complained": "complained",
}


def _buttondown_variant(headers: frozenset[str], filename: str) -> str | None:
    if not headers & {"email", "email_address"}:
        return None
    if "unsubscription_date" in headers:
        return "unsubscribers"
    if "subscriber_type" in headers or ("creation_date" in headers and headers & {"type", "metadata", "notes"}):
        return "subscribers"
    return None


def _buttondown_status(index: dict[str, int], variant: str) -> StatusRule | None:
    if variant == "unsubscribers":
        return lambda cells: "unsubscribed"
    column = index.get("subscriber_type", index.get("type"))
    if column is None:
        return None

    def rule(cells: list[str]) -> str | None:
        kind = normalise_name(_cell(cells, column))
        if not kind:
            return None
        if kind not in BUTTONDOWN_TYPES:
            raise ValueError(f"unknown Buttondown subscriber type {kind!r}")
        return BUTTONDOWN_TYPES[kind]
    return rule


LISTMONK_STATUSES = {"enabled": "active", "disabled": "unsubscribed", "blocklisted": "unsubscribed"}


def _listmonk_status(index: dict[str, int], variant: str) -> StatusRule:
    column = index["status"]

    def rule(cells: list[str]) -> str | None:
        value = _cell(cells, column).lower()
        if value not in LISTMONK_STATUSES:
            raise ValueError(f"unknown listmonk status {value!r} (enabled, disabled or blocklisted)")
        return LISTMONK_STATUSES[value]
    return rule


def _own_variant(headers: frozenset[str], filename: str) -> str | None:
    return "" if {"email", "status", "source", "confirmed_at", "unsubscribed_at"} <= headers else None


EXPORT_FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat(
        "mailchimp", "Mailchimp", _mailchimp_variant,
        {"email_address": "email", "first_name": "first_name", "last_name": "last_name", "timezone": "timezone",
         "optin_time": "created_at", "confirm_time": USED, "unsub_time": USED, "clean_time": USED},
        status=_mailchimp_status,
        status_at=lambda variant: {"unsubscribed": {"suppressed": "unsub_time"},
                                   "cleaned": {"suppressed": "clean_time"}}.get(variant, {"active": "confirm_time"})),
    ExportFormat(
        "substack", "Substack", _substack_variant,
        {"email": "email", "name": "name", "created_at": "created_at", "email_disabled": USED},
        status=_boolean_status("email_disabled", "unsubscribed", "active")),
    ExportFormat(
        "buttondown", "Buttondown", _buttondown_variant,
        {"email": "email", "email_address": "email", "creation_date": "created_at", "subscriber_type": USED,
         "type": USED, "unsubscription_date": USED},
        status=_buttondown_status, status_at=lambda variant: {"suppressed": "unsubscription_date"},
        json_attributes=("metadata",)),
    ExportFormat(
        "listmonk", "listmonk",
        lambda headers, filename: "" if {"uuid", "email", "name", "attributes", "status"} <= headers else None,
        {"email": "email", "name": "name", "status": USED, "created_at": "created_at", "uuid": "", "updated_at": ""},
        status=_listmonk_status, json_attributes=("attributes",)),
    ExportFormat(
        "ghost", "Ghost",
        lambda headers, filename: "" if {"email", "subscribed_to_emails"} <= headers else None,
        {"email": "email", "name": "name", "created_at": "created_at", "subscribed_to_emails": USED,
         "deleted_at": USED},
        status=_boolean_status("subscribed_to_emails", "active", "unsubscribed", "deleted_at")),
    ExportFormat(
        "mailer", "mailer export", _own_variant,
        {"source": "", "confirmed_at": USED, "unsubscribed_at": USED},
        status_at=lambda variant: {"active": "confirmed_at", "suppressed": "unsubscribed_at"}),
)


# ----- the layout: which column holds what ----------------------------------------------------------------
@dataclass
class Layout:
    """Column indexes of the fields (None: absent), the attribute columns, and how statuses are read."""

    width: int
    fields: dict[str, int] = field(default_factory=dict)
    attributes: list[tuple[int, str]] = field(default_factory=list)   # (column, attribute name)
    json_attributes: list[int] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)                  # header names, as given
    format_label: str = ""
    status_rule: StatusRule | None = None
    status_at: dict[str, int] = field(default_factory=dict)           # "active" / "suppressed" → column
    has_header: bool = True

    def index(self, name: str) -> int | None:
        return self.fields.get(name)


def looks_like_header(cells: Sequence[str]) -> bool:
    return any(normalise_name(cell) in EMAIL_NAMES for cell in cells) or not any("@" in cell for cell in cells)


def parse_map(specs: Iterable[str]) -> dict[str, str]:
    """`--map SOURCE=TARGET` options → {normalised source: target} (target: a field, an attribute
    name, or "" to ignore the column). Raises MailerError on a malformed one."""
    mapping: dict[str, str] = {}
    for spec in specs:
        source, equals, target = spec.partition("=")
        if not equals or not normalise_name(source):
            raise MailerError(f"--map {spec!r}: write COLUMN=FIELD (e.g. --map Ville=city), or COLUMN= to ignore it")
        target = target.strip()
        mapping[normalise_name(source)] = "" if target in ("", "-") else (
            target if target in FIELDS else normalise_name(target) or target)
    return mapping


def headerless_layout(width: int) -> Layout:
    """A file without a header: email, then name, then language."""
    fields = {name: index for index, name in enumerate(("email", "name", "language")) if index < max(width, 1)}
    return Layout(width=width, fields=fields, has_header=False)


def build_layout(header: Sequence[str], filename: str = "", mapping: dict[str, str] | None = None) -> Layout:
    """Decide what each column of `header` holds: `--map` first, then a recognised export format,
    then the generic names (`SYNONYMS`); the rest are attributes. Raises MailerError when there is
    no email column or a `--map` names a column that is not there."""
    mapping = dict(mapping or {})
    names = [normalise_name(cell) for cell in header]
    present = frozenset(names)
    for source in mapping:
        if source not in present:
            raise MailerError(f"--map: no column {source!r} in the header ({', '.join(h.strip() for h in header)})")
    export_format, variant = None, None
    for candidate in EXPORT_FORMATS:
        variant = candidate.detect(present, filename)
        if variant is not None:
            export_format = candidate
            break
    layout = Layout(width=len(header))
    if export_format is not None:
        layout.format_label = export_format.label + (f" ({variant} export)" if variant else " export")
    # The first column of each name wins; a field takes the first column that names it.
    first_index: dict[str, int] = {}
    for index, name in enumerate(names):
        first_index.setdefault(name, index)
    taken: set[int] = set()

    def assign(field_name: str, index: int) -> None:
        if field_name in layout.fields:
            return
        layout.fields[field_name] = index
        taken.add(index)

    for index, name in enumerate(names):  # --map
        if name in mapping and first_index[name] == index:
            target = mapping[name]
            if target == "":
                layout.ignored.append(header[index].strip())
                taken.add(index)
            elif target in FIELDS:
                if target in layout.fields:
                    raise MailerError(f"--map: two columns for {target!r}")
                assign(target, index)
            else:
                layout.attributes.append((index, target))
                taken.add(index)
    if export_format is not None:
        for index, name in enumerate(names):
            if index in taken or name not in export_format.columns:
                continue
            target = export_format.columns[name]
            if target == USED:
                taken.add(index)
            elif target:
                assign(target, index)
            else:
                taken.add(index)
                layout.ignored.append(header[index].strip())
        layout.json_attributes = [first_index[n] for n in export_format.json_attributes
                                  if n in first_index and first_index[n] not in taken]
        taken.update(layout.json_attributes)
    for field_name, synonyms in SYNONYMS.items():
        if field_name in layout.fields:
            continue
        for index, name in enumerate(names):
            if index not in taken and name in synonyms:
                if field_name == "name" and name == "nom" and ("first_name" in layout.fields or "prenom" in present) \
                        and "last_name" not in layout.fields:
                    continue  # "Prénom" + "Nom": Nom is the family name (below)
                assign(field_name, index)
                break
    if "last_name" not in layout.fields and "first_name" in layout.fields and "nom" in first_index \
            and first_index["nom"] not in taken:
        assign("last_name", first_index["nom"])
    if "email" not in layout.fields:
        raise MailerError(f"no email column in the header ({', '.join(h.strip() for h in header)}); name it "
                          f"'email' or map it with --map COLUMN=email")
    seen_attributes = {name for _, name in layout.attributes}
    for index, name in enumerate(names):
        if index in taken or not name:
            continue
        attribute, suffix = name, 2
        while attribute in seen_attributes or attribute in FIELDS:
            attribute, suffix = f"{name}_{suffix}", suffix + 1
        seen_attributes.add(attribute)
        layout.attributes.append((index, attribute))
    index_of = dict(first_index)
    if export_format is not None and export_format.status is not None:
        layout.status_rule = export_format.status(index_of, variant or "")
    if export_format is not None and export_format.status_at is not None:
        layout.status_at = {kind: first_index[column] for kind, column in export_format.status_at(variant or "").items()
                            if column in first_index}
    return layout


def merged_attributes(current: dict, new: dict) -> dict:
    """`new` over `current`, where a current key that normalises to a new one is replaced (an older
    import's `Ville` by this one's `ville`)."""
    replaced = set(new)
    return {**{key: value for key, value in current.items() if normalise_name(key) not in replaced}, **new}


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
