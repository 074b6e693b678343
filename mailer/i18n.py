"""Every fixed string of emails and pages, in the two shipped languages (MAILER_LANGUAGE)."""

from __future__ import annotations

from datetime import date

STRINGS: dict[str, dict[str, str]] = {
    "fr": {
        "unsubscribe": "Se désabonner",
        "view_online": "Voir la version en ligne",
        "read_more": "Lire la suite",
        "why_received": "Vous recevez cette lettre parce que vous êtes abonné·e à {name}.",
        "hello": "Bonjour {name},",
        "in_this_issue": "Au sommaire",
        "archive": "Archives",
        "issue_of": "Lettre du {date}",
        "unsubscribe_text": "Se désabonner en un clic :",
        "view_online_text": "Version en ligne :",
        "test_prefix": "[TEST] ",
        "confirm_subject": "Confirmez votre abonnement à {name}",
        "welcome_subject": "Bienvenue dans {name}",
    },
    "en": {
        "unsubscribe": "Unsubscribe",
        "view_online": "View this email in your browser",
        "read_more": "Read more",
        "why_received": "You are receiving this email because you subscribed to {name}.",
        "hello": "Hello {name},",
        "in_this_issue": "In this issue",
        "archive": "Archive",
        "issue_of": "Issue of {date}",
        "unsubscribe_text": "Unsubscribe in one click:",
        "view_online_text": "Web version:",
        "test_prefix": "[TEST] ",
        "confirm_subject": "Confirm your subscription to {name}",
        "welcome_subject": "Welcome to {name}",
    },
}

_FR_MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
              "septembre", "octobre", "novembre", "décembre")
_FR_DAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December")
_EN_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def strings(language: str) -> dict[str, str]:
    return STRINGS[language]


def long_date(value: date, language: str) -> str:
    """`jeudi 26 novembre 2026` / `Thursday 26 November 2026` (no locale dependency)."""
    if language == "fr":
        day = "1er" if value.day == 1 else str(value.day)
        return f"{_FR_DAYS[value.weekday()]} {day}\u00a0{_FR_MONTHS[value.month - 1]} {value.year}"
    return f"{_EN_DAYS[value.weekday()]} {value.day} {_EN_MONTHS[value.month - 1]} {value.year}"
