"""The export formats of other newsletter tools, recognised by their headers (`EXPORT_FORMATS`), so
that the people they list keep their status, their name and their time zone. Column names and status values
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
         "type": USED, "unsubscription_date": USED, "source": ""},
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
