"""What each column of an imported file means: header names, `--map`, and the layout of a file.

Header names are compared normalised (`values.normalise_name`: case, accents, spaces, dashes and
underscores do not matter: `E-mail`, `Adresse e-mail`, `EMAIL_ADDRESS` all match), and columns that
are no field of ours are kept as attributes under their normalised name (`Ville` → `ville`); the
import's summary lists them. `--map SOURCE=TARGET` sends a column to a field or to an attribute of
another name (`--map Ville=city`), or drops it (`--map Notes=`). A recognised export of another tool
(`formats`) decides its own columns first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ...errors import InvalidOption, MailerError
from ...statuses import SUBSCRIBER_STATUSES
from .formats import EXPORT_FORMATS, SUBSCRIPTION_FLAGS, UNSURE, UNSURE_NOTE, USED, StatusRule, boolean_status
from .values import normalise_name

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
    status_note: str = ""                                             # how statuses were decided, for the summary

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
            raise InvalidOption(f"--map {spec!r}: write COLUMN=FIELD (e.g. --map Ville=city), or COLUMN= to ignore it")
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
            raise InvalidOption(f"--map: no column {source!r} in the header ({', '.join(h.strip() for h in header)})")
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
                    raise InvalidOption(f"--map: two columns for {target!r}")
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
                if field_name == "name" and name == "nom" and "last_name" not in layout.fields and (
                        "first_name" in layout.fields or present & set(SYNONYMS["first_name"])):
                    continue  # "Prénom" + "Nom": Nom is the family name (below)
                assign(field_name, index)
                break
    if "last_name" not in layout.fields and "first_name" in layout.fields and "nom" in first_index \
            and first_index["nom"] not in taken:
        assign("last_name", first_index["nom"])
    if export_format is None and "status" not in layout.fields:
        for index, name in enumerate(names):  # a true/false subscription column gives the status
            if index not in taken and name in SUBSCRIPTION_FLAGS and first_index[name] == index:
                when_true, when_false = SUBSCRIPTION_FLAGS[name]
                layout.status_rule = boolean_status((name,), when_true, when_false)(first_index, "")
                layout.status_note = (f"status from column {header[index].strip()!r}: true, yes or 1 → {when_true}; "
                                      f"false, no, 0 or empty → {when_false}")
                taken.add(index)
                break
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
    if variant == UNSURE:
        layout.status_note = UNSURE_NOTE
    if export_format is not None and export_format.status_at is not None:
        layout.status_at = {kind: first_index[column] for kind, column in export_format.status_at(variant or "").items()
                            if column in first_index}
    return layout


def merged_attributes(current: dict, new: dict) -> dict:
    """`new` over `current`, where a current key that normalises to a new one is replaced (an older
    import's `Ville` by this one's `ville`)."""
    replaced = set(new)
    return {**{key: value for key, value in current.items() if normalise_name(key) not in replaced}, **new}
