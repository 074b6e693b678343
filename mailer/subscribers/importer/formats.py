"""The export formats of other newsletter tools, recognised by their headers (`EXPORT_FORMATS`), so
that the people they list keep their status, their name and their time zone. Column names and status values
as these tools document or write them:

* Mailchimp audience exports (`subscribed_…`, `unsubscribed_…`, `cleaned_…`, `nonsubscribed_members_export`):
  "Email Address", "First Name", "Last Name", MEMBER_RATING, OPTIN_TIME, CONFIRM_TIME, TIMEZONE, …;
  the unsubscribed file adds UNSUB_TIME, UNSUB_REASON…, the cleaned one CLEAN_TIME…. Which file it is
  decides the status: unsubscribed (complained when UNSUB_REASON names abuse or spam), cleaned →
  bounced, non-subscribed (never opted in) → pending; UNSUB_TIME / CLEAN_TIME date the suppression.
  The subscribed and non-subscribed files have the same columns: a file whose name does not say
  which it is adds its new people as pending. Times are read as UTC.
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
  complimentary_plan, stripe_customer_id, created_at, deleted_at, labels, tiers/products; before
  Ghost 3 the flag was `subscribed`. subscribed_to_emails (or subscribed) = false → unsubscribed.
* Any other file with a true/false subscription column (`SUBSCRIPTION_FLAGS`: subscribed, opted_in,
  unsubscribed, abonné, Accepts Email Marketing, Email Opt Out…) and no status column: the column
  gives the status, so nobody who says false/no/0 becomes active (see `columns.build_layout`).
* mailer's own `subscribers export`: its status and dates are used, `source` is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .values import normalise_name, truthy

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
    """The kind of a Mailchimp audience export. The unsubscribed and cleaned files have columns of
    their own (UNSUB_TIME, CLEAN_TIME); the subscribed and non-subscribed ones have the same columns
    (measured on real exports; non-subscribed contacts are e-commerce customers who never opted in),
    so only the name Mailchimp gives the file tells them apart. A file whose name does not say is
    `UNSURE`: its new people are added as pending (not mailed), never guessed active."""
    if "email_address" not in headers or not headers & {"member_rating", "optin_time", "leid", "euid", "confirm_time"}:
        return None
    if "unsub_time" in headers:
        return "unsubscribed"
    if "clean_time" in headers:
        return "cleaned"
    words = normalise_name(filename).split("_")
    if "nonsubscribed" in words or "non_subscribed" in normalise_name(filename):
        return "non-subscribed"
    if "subscribed" in words:
        return "subscribed"
    return UNSURE


UNSURE = "subscribed or non-subscribed"
UNSURE_NOTE = ("new people added as pending (not mailed): Mailchimp's subscribed and non-subscribed exports have "
               "the same columns and this file's name does not say which it is; import it under the name Mailchimp "
               "gave it (subscribed_members_export_….csv) to add them as active")


_ABUSE = re.compile(r"abuse|spam|complain", re.IGNORECASE)


def _mailchimp_status(index: dict[str, int], variant: str) -> StatusRule:
    constant = {"subscribed": "active", "cleaned": "bounced", "non-subscribed": "pending", UNSURE: "pending"}.get(variant)
    if constant:
        return lambda cells: constant
    reason = index.get("unsub_reason")
    return lambda cells: "complained" if _ABUSE.search(_cell(cells, reason)) else "unsubscribed"


def _substack_variant(headers: frozenset[str], filename: str) -> str | None:
    if "email" in headers and "email_disabled" in headers and headers & {
            "active_subscription", "expiry", "stripe_connected_customer_id", "first_payment_at", "plan"}:
        return ""
    return None


def boolean_status(columns: tuple[str, ...], when_true: str, when_false: str, also_suppressed_when_set: str = ""
                   ) -> Callable[[dict[str, int], str], StatusRule]:
    """A status rule reading a true/false column: the first of `columns` (normalised names) the file
    has. `values.truthy` words (true/false, yes/no, 1/0, oui/non…; an empty cell is false); anything
    else rejects the row. A non-empty `also_suppressed_when_set` cell (Ghost's deleted_at) means
    unsubscribed."""
    def rule_for(index: dict[str, int], variant: str) -> StatusRule:
        column = next((name for name in columns if name in index), columns[0])
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


# Generic files: true/false columns that say whether someone is subscribed (normalised names), and
# the statuses they mean (true, false). Shopify "Accepts Email Marketing", Salesforce "Email Opt Out" /
# HasOptedOutOfEmail, HubSpot "Unsubscribed from all email", and the obvious English and French names.
SUBSCRIPTION_FLAGS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("subscribed", "is_subscribed", "subscribed_to_emails", "subscribed_to_newsletter",
                     "newsletter_subscribed", "email_subscribed", "opted_in", "opt_in", "optin", "is_opted_in",
                     "email_opt_in", "accepts_marketing", "accepts_email_marketing", "abonne", "est_abonne",
                     "abonne_newsletter", "abonne_a_la_newsletter", "inscrit", "inscrit_newsletter"),
                    ("active", "unsubscribed")),
    **dict.fromkeys(("unsubscribed", "is_unsubscribed", "opted_out", "opt_out", "optout", "email_opt_out",
                     "hasoptedoutofemail", "do_not_email", "unsubscribed_from_all_email", "email_disabled",
                     "desabonne", "desinscrit"),
                    ("unsubscribed", "active")),
}


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
    if "subscriber_type" in headers or ({"type", "creation_date"} <= headers and headers & {
            "metadata", "referrer_url", "secondary_id", "utm_source", "utm_medium", "utm_campaign"}):
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


def _ghost_variant(headers: frozenset[str], filename: str) -> str | None:
    """Ghost members exports: `subscribed_to_emails` since Ghost 3, `subscribed` before (with the
    same id, note, complimentary_plan, stripe_customer_id, deleted_at, labels columns)."""
    if "email" not in headers:
        return None
    if "subscribed_to_emails" in headers:
        return ""
    if "subscribed" in headers and (headers & {"complimentary_plan", "stripe_customer_id"}
                                    or {"note", "labels", "deleted_at"} <= headers):
        return ""
    return None


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
        status=boolean_status(("email_disabled",), "unsubscribed", "active")),
    ExportFormat(
        "buttondown", "Buttondown", _buttondown_variant,
        {"email": "email", "email_address": "email", "creation_date": "created_at", "subscriber_type": USED,
         "type": USED, "unsubscription_date": USED, "source": ""},
        status=_buttondown_status, status_at=lambda variant: {"suppressed": "unsubscription_date"},
        json_attributes=("metadata",)),
    ExportFormat(
        "listmonk", "listmonk",
        lambda headers, filename: "" if {"uuid", "email", "name", "attributes", "status"} <= headers else None,
        {"email": "email", "name": "name", "status": USED, "created_at": "created_at", "uuid": "", "updated_at": ""},
        status=_listmonk_status, json_attributes=("attributes",)),
    ExportFormat(
        "ghost", "Ghost", _ghost_variant,
        {"email": "email", "name": "name", "created_at": "created_at", "subscribed_to_emails": USED,
         "subscribed": USED, "deleted_at": USED},
        status=boolean_status(("subscribed_to_emails", "subscribed"), "active", "unsubscribed", "deleted_at")),
    ExportFormat(
        "mailer", "mailer export", _own_variant,
        {"source": "", "confirmed_at": USED, "unsubscribed_at": USED},
        status_at=lambda variant: {"active": "confirmed_at", "suppressed": "unsubscribed_at"}),
)
