"""Every fixed string of emails and pages, in the two shipped languages (MAILER_LANGUAGE).

Longer than ~400 lines because it is one table per language of every fixed string (the two must
stay side by side, key for key, for translators and for the tests that compare them), followed by
the few language rules that format them (dates, « au » contractions, one full stop per sentence)."""

from __future__ import annotations

import re
from datetime import date

STRINGS: dict[str, dict[str, str]] = {
    "fr": {
        "unsubscribe": "Se désabonner",
        "view_online": "Voir la version en ligne",
        "read_more": "Lire la suite",
        "why_received": "Vous recevez cette lettre parce que vous êtes abonné·e {a_name}.",
        "hello": "Bonjour {name},",
        "links_tracked": "Les liens de cette lettre passent par notre serveur, qui compte les clics pour mesurer "
                         "l'intérêt de chaque sujet (rien d'autre n'est enregistré).",
        "links_opens_tracked": "Les liens de cette lettre passent par notre serveur, qui compte les clics ; une "
                               "image invisible compte les ouvertures (rien d'autre n'est enregistré).",
        "opens_tracked": "Une image invisible de cette lettre compte les ouvertures (rien d'autre n'est "
                         "enregistré ; les liens mènent directement à leur page).",
        "in_this_issue": "Au sommaire",
        "archive": "Archives",
        "issue_of": "Lettre du {date}",
        "unsubscribe_text": "Se désabonner en un clic\u00a0:",
        "view_online_text": "Version en ligne\u00a0:",
        "archive_text": "Lettres précédentes\u00a0:",
        "test_prefix": "[TEST] ",
        "confirm_subject": "Confirmez votre abonnement {a_name}",
        "welcome_subject": "Bienvenue {a_name}",
        # ----- web pages and notices (mailer/web/app.py, mailer/sending/notices.py) -----
        "web_unsubscribe_title": "Se désabonner de la lettre «\u00a0{name}\u00a0»",
        "web_unsubscribe_question": "Ne plus recevoir «\u00a0{name}\u00a0» à l’adresse {email}\u00a0?",
        "web_unsubscribe_button": "Me désabonner",
        "web_unsubscribed_title": "Vous êtes désabonné·e",
        "web_unsubscribed_body": "{email} ne recevra plus «\u00a0{name}\u00a0».",
        "web_resubscribe_prompt": "Une erreur\u00a0? Vous pouvez vous réabonner d’un clic.",
        "web_resubscribe_button": "Me réabonner",
        "web_resubscribed_title": "Vous êtes de nouveau abonné·e",
        "web_resubscribed_body": "{email} recevra de nouveau «\u00a0{name}\u00a0».",
        "web_bounced_body": "Nos envois à {email} ont échoué\u00a0: nous avons cessé d’écrire à cette adresse.",
        "web_complained_body": "Vous avez signalé «\u00a0{name}\u00a0» comme indésirable\u00a0: nous ne vous écrivons plus.",
        "web_test_title": "Ceci était un message de test",
        "web_test_body": "Ce lien vient d’un envoi de test ou d’un aperçu\u00a0: il ne désabonne personne.",
        "web_invalid_link_title": "Lien invalide",
        "web_invalid_link_body": "Ce lien est incomplet ou a été modifié. Copiez-le en entier depuis l’email.",
        "web_unknown_link_title": "Lien inconnu",
        "web_unknown_link_body": "Aucun abonnement ne correspond à ce lien\u00a0; il a peut-être été supprimé.",
        "web_subscribe_title": "S’abonner à la lettre «\u00a0{name}\u00a0»",
        "web_subscribe_intro": "Recevez «\u00a0{name}\u00a0» par email. Vous pourrez vous désabonner en un clic, à tout moment.",
        "web_email_label": "Adresse email",
        "web_name_label": "Prénom ou nom (facultatif)",
        "web_honeypot_label": "Laissez ce champ vide",
        "web_subscribe_button": "M’abonner",
        "web_subscribe_privacy": "Votre adresse ne sert qu’à vous envoyer la lettre. Un email de confirmation vous sera envoyé.",
        "web_invalid_email": "Cette adresse email n’est pas valide\u00a0: vérifiez-la.",
        "web_check_inbox_title": "Vérifiez votre boîte de réception",
        "web_check_inbox_body": "Si l’adresse {email} n’est pas déjà inscrite, un email avec un lien de confirmation est en route. Cliquez sur ce lien pour terminer votre abonnement.",
        "web_rate_limited_title": "Trop de tentatives",
        "web_rate_limited_body": "Patientez une minute avant de réessayer.",
        "web_confirmed_title": "Abonnement confirmé",
        "web_confirmed_body": "Merci\u00a0! {email} recevra désormais «\u00a0{name}\u00a0».",
        "web_confirm_title": "Confirmer votre abonnement",
        "web_confirm_body": "Recevoir «\u00a0{name}\u00a0» à l’adresse {email}\u00a0? Confirmez d’un clic sur le bouton.",
        "web_confirm_again_title": "Confirmer votre réabonnement",
        "web_confirm_again_body": "Vous vous étiez désabonné·e de la lettre «\u00a0{name}\u00a0». Confirmez pour recevoir de nouveau la lettre à {email}.",
        "web_confirm_button": "Confirmer mon abonnement",
        "web_confirm_stale_title": "Lien expiré",
        "web_confirm_stale_body": "Ce lien de confirmation n’est plus valable. Abonnez-vous de nouveau pour en recevoir un autre.",
        "web_subscribe_link": "S’abonner",
        "web_feed_link": "Flux Atom",
        "web_edition_invite": "Recevez les prochaines lettres par email\u00a0:",
        "web_archive_title": "Archives — {name}",
        "web_archive_empty": "Aucune lettre n’a encore été envoyée.",
        "web_not_found_title": "Page introuvable",
        "web_not_found_body": "Cette page n’existe pas ou n’est pas encore publiée.",
        "web_error_title": "Une erreur est survenue",
        "web_error_body": "Réessayez dans quelques instants.",
        "notice_confirm_intro": "Pour recevoir «\u00a0{name}\u00a0», confirmez votre adresse en cliquant sur le bouton ci-dessous.",
        "notice_confirm_intro_text": "Pour recevoir «\u00a0{name}\u00a0», confirmez votre adresse en ouvrant ce lien\u00a0:",
        "notice_confirm_button": "Confirmer mon abonnement",
        "notice_confirm_text": "Confirmez votre abonnement\u00a0:",
        "notice_confirm_ignore": "Vous n’avez rien demandé\u00a0? Ignorez ce message\u00a0: vous ne recevrez rien d’autre.",
        "notice_why_confirm": "Vous recevez ce message parce que quelqu’un (vous, espérons-le) a demandé à abonner cette adresse à la lettre «\u00a0{name}\u00a0».",
        "notice_welcome_intro": "Votre abonnement à la lettre «\u00a0{name}\u00a0» est confirmé\u00a0: la prochaine lettre arrivera dans cette boîte.",
        "notice_welcome_archive": "En attendant, les lettres précédentes sont en ligne\u00a0:",
        "notice_welcome_archive_text": "Les lettres précédentes\u00a0: {url}",
        "notice_unsubscribe_text": "Se désabonner en un clic\u00a0:",
        # ----- the editor's preview (mailer/web/preview.py, templates/preview.html.j2) -----
        "preview_title": "Aperçu",
        "preview_briefs_one": "{count}\u00a0brève",
        "preview_briefs_many": "{count}\u00a0brèves",
        "preview_html_size": "{size}\u00a0Ko de HTML",
        "preview_preheader": "pré-en-tête\u00a0:",
        "preview_reloads": "se met à jour à chaque enregistrement d’un fichier",
        "preview_cannot_build": "Impossible de construire cette lettre\u00a0:",
        "preview_warnings": "Avertissements",
        "preview_no_warning": "Aucun.",
        "preview_desktop": "Ordinateur · 600\u00a0px",
        "preview_mobile": "Mobile · 375\u00a0px",
        "preview_desktop_frame": "Aperçu sur ordinateur",
        "preview_mobile_frame": "Aperçu sur mobile",
        "preview_text_part": "Version texte",
        "preview_headers": "En-têtes",
        "preview_download_eml": "Télécharger le fichier .eml",
        "preview_audience": "destinataires\u00a0: {count}\u00a0abonné·es actifs",
        "preview_segment": "segment\u00a0:",
        "preview_list": "liste",
        # ----- the editor's Reports pages (mailer/web/preview.py, templates/reports.html.j2, web/charts.py) -----
        "reports_title": "Rapports",
        "reports_none": "Aucune lettre n’a encore été envoyée.",
        "reports_sent_issues": "Lettres envoyées, les plus récentes d’abord",
        "reports_issue": "Lettre",
        "reports_status": "État",
        "reports_started": "Début de l’envoi",
        "reports_finished": "Fin de l’envoi",
        "reports_figures_of": "Chiffres de {issue}",
        "reports_recipients": "Destinataires",
        "reports_sent": "Envoyés",
        "reports_failed": "En échec",
        "reports_skipped": "Écartés",
        "reports_queued": "En attente",
        "reports_bounced": "Rejetés (bounces)",
        "reports_soft_bounced": "Rejets temporaires",
        "reports_complained": "Plaintes",
        "reports_complaint_rate": "Taux de plaintes (limite 0,30 %)",
        "reports_over_limit": "au-delà de 0,3 %",
        "reports_unsubscribed": "Désabonnements",
        "reports_opens": "Ouvertures (peu fiables : Apple Mail Privacy Protection)",
        "reports_clicks_unique": "Clics (uniques)",
        "reports_clicks_value": "{total} ({unique})",
        "reports_scanners": "clics de robots d’analyse de liens exclus : {count}",
        "reports_clicks": "Clics",
        "reports_link": "Lien",
        "reports_unique": "Uniques",
        "reports_not_tracked": "Le suivi des clics était désactivé pour cette lettre (MAILER_TRACK_CLICKS, ou track_clicks = true dans issue.toml).",
        "reports_deliveries": "Envois pendant la diffusion",
        "reports_deliveries_per": "Envois par tranche de {step} ({zone})",
        "reports_deliveries_desc": "{count} messages envoyés entre {start} et {end} ({zone}).",
        "reports_deliveries_none": "Rien n’a encore été envoyé.",
        "reports_deliveries_table": "Les envois sous forme de tableau",
        "reports_interval": "Tranche commençant à ({zone})",
        "reports_sent_in": "Envoyés",
        "reports_growth": "Croissance de la liste",
        "reports_growth_title": "Croissance de la liste : abonné·es actifs par semaine",
        "reports_growth_desc": "De {first} abonné·es actifs la semaine du {start} à {last} la semaine du {end}.",
        "reports_growth_none": "Aucun abonné pour l’instant.",
        "reports_growth_table": "La croissance sous forme de tableau",
        "reports_week_of": "Semaine du",
        "reports_active": "Abonné·es actifs",
        "reports_unit_s": "{n} s",
        "reports_unit_min": "{n} min",
        "reports_unit_h": "{n} h",
        "reports_unit_day": "{n} jour",
        "reports_unit_days": "{n} jours",
        "reports_complaint_warning": "Attention : le taux de plaintes ({rate}) dépasse la limite de Gmail et Yahoo ({limit}, règles des expéditeurs en masse, 2024) : n’écrivez qu’aux personnes qui l’ont demandé, rendez le désabonnement évident.",
        # where a send stands (`sending.report.SendState`: `mailer report` and the Reports page)
        "state_finished": "envoi terminé",
        "state_sending": "envoi en cours",
        "state_paused": "en pause",
        "state_paused_why": "en pause ({reason})",
        "state_waves_scheduled": "vagues programmées",
        "state_waves_scheduled_why": "vagues programmées (prochaine vague : {zone} à {at})",
        "state_missed_waves": "vagues manquées",
        "state_missed_waves_why": "vagues manquées ({zones} : mailer send --release-missed)",
        "state_frozen": "destinataires figés, rien d’envoyé",
    },
    "en": {
        "unsubscribe": "Unsubscribe",
        "view_online": "View this email in your browser",
        "read_more": "Read more",
        "why_received": "You are receiving this email because you subscribed to {name}.",
        "hello": "Hello {name},",
        "links_tracked": "Links in this email go through our server, which counts clicks to learn which topics "
                         "interest readers (nothing else is recorded).",
        "links_opens_tracked": "Links in this email go through our server, which counts clicks; an invisible "
                               "image counts opens (nothing else is recorded).",
        "opens_tracked": "An invisible image in this email counts opens (nothing else is recorded; links lead "
                         "straight to their page).",
        "in_this_issue": "In this issue",
        "archive": "Archive",
        "issue_of": "Issue of {date}",
        "unsubscribe_text": "Unsubscribe in one click:",
        "view_online_text": "Web version:",
        "archive_text": "Past issues:",
        "test_prefix": "[TEST] ",
        "confirm_subject": "Confirm your subscription to {name}",
        "welcome_subject": "Welcome to {name}",
        # ----- web pages and notices (mailer/web/app.py, mailer/sending/notices.py) -----
        "web_unsubscribe_title": "Unsubscribe from {name}",
        "web_unsubscribe_question": "Stop sending {name} to {email}?",
        "web_unsubscribe_button": "Unsubscribe me",
        "web_unsubscribed_title": "You are unsubscribed",
        "web_unsubscribed_body": "{email} will no longer receive {name}.",
        "web_resubscribe_prompt": "Was that a mistake? You can subscribe again in one click.",
        "web_resubscribe_button": "Subscribe me again",
        "web_resubscribed_title": "You are subscribed again",
        "web_resubscribed_body": "{email} will receive {name} again.",
        "web_bounced_body": "Our messages to {email} bounced, so we stopped writing to this address.",
        "web_complained_body": "You marked {name} as spam, so we no longer write to you.",
        "web_test_title": "This was a test message",
        "web_test_body": "This link comes from a test send or a preview: it does not unsubscribe anyone.",
        "web_invalid_link_title": "Invalid link",
        "web_invalid_link_body": "This link is incomplete or was altered. Copy the whole link from the email.",
        "web_unknown_link_title": "Unknown link",
        "web_unknown_link_body": "No subscription matches this link; it may have been deleted.",
        "web_subscribe_title": "Subscribe to {name}",
        "web_subscribe_intro": "Get {name} by email. You can unsubscribe in one click at any time.",
        "web_email_label": "Email address",
        "web_name_label": "Name (optional)",
        "web_honeypot_label": "Leave this field empty",
        "web_subscribe_button": "Subscribe",
        "web_subscribe_privacy": "We only use your address to send you the newsletter. You will get a confirmation email.",
        "web_invalid_email": "This email address is not valid; please check it.",
        "web_check_inbox_title": "Check your inbox",
        "web_check_inbox_body": "If {email} is not subscribed yet, an email with a confirmation link is on its way. Click that link to complete your subscription.",
        "web_rate_limited_title": "Too many attempts",
        "web_rate_limited_body": "Please wait a minute before trying again.",
        "web_confirmed_title": "Subscription confirmed",
        "web_confirmed_body": "Thank you! {email} will now receive {name}.",
        "web_confirm_title": "Confirm your subscription",
        "web_confirm_body": "Receive {name} at {email}? Press the button to confirm.",
        "web_confirm_again_title": "Confirm your new subscription",
        "web_confirm_again_body": "You had unsubscribed from {name}. Confirm to receive it again at {email}.",
        "web_confirm_button": "Confirm my subscription",
        "web_confirm_stale_title": "Link expired",
        "web_confirm_stale_body": "This confirmation link is no longer valid. Subscribe again to get a new one.",
        "web_subscribe_link": "Subscribe",
        "web_feed_link": "Atom feed",
        "web_edition_invite": "Get the next issues by email:",
        "web_archive_title": "{name} archive",
        "web_archive_empty": "No issue has been sent yet.",
        "web_not_found_title": "Page not found",
        "web_not_found_body": "This page does not exist or is not published yet.",
        "web_error_title": "Something went wrong",
        "web_error_body": "Please try again in a moment.",
        "notice_confirm_intro": "To receive {name}, please confirm your address with the button below.",
        "notice_confirm_intro_text": "To receive {name}, please confirm your address by opening this link:",
        "notice_confirm_button": "Confirm my subscription",
        "notice_confirm_text": "Confirm your subscription:",
        "notice_confirm_ignore": "Didn't ask for this? Ignore this email: you will not hear from us again.",
        "notice_why_confirm": "You are receiving this email because someone (hopefully you) asked to subscribe this address to {name}.",
        "notice_welcome_intro": "Your subscription to {name} is confirmed: the next issue will land in this inbox.",
        "notice_welcome_archive": "Meanwhile, past issues are online:",
        "notice_welcome_archive_text": "Past issues: {url}",
        "notice_unsubscribe_text": "Unsubscribe in one click:",
        # ----- the editor's preview (mailer/web/preview.py, templates/preview.html.j2) -----
        "preview_title": "Preview",
        "preview_briefs_one": "{count} brief",
        "preview_briefs_many": "{count} briefs",
        "preview_html_size": "{size} KB HTML",
        "preview_preheader": "preheader:",
        "preview_reloads": "reloads when a file changes",
        "preview_cannot_build": "Cannot build this issue:",
        "preview_warnings": "Build warnings",
        "preview_no_warning": "None.",
        "preview_desktop": "Desktop · 600 px",
        "preview_mobile": "Mobile · 375 px",
        "preview_desktop_frame": "Desktop preview",
        "preview_mobile_frame": "Mobile preview",
        "preview_text_part": "Text part",
        "preview_headers": "Headers",
        "preview_download_eml": "Download the .eml",
        "preview_audience": "audience: {count} active subscribers",
        "preview_segment": "segment:",
        "preview_list": "list",
        # ----- the editor's Reports pages (mailer/web/preview.py, templates/reports.html.j2, web/charts.py) -----
        "reports_title": "Reports",
        "reports_none": "No issue has been sent yet.",
        "reports_sent_issues": "Sent issues, newest first",
        "reports_issue": "Issue",
        "reports_status": "Status",
        "reports_started": "Send started",
        "reports_finished": "Send finished",
        "reports_figures_of": "Figures of {issue}",
        "reports_recipients": "Recipients",
        "reports_sent": "Sent",
        "reports_failed": "Failed",
        "reports_skipped": "Skipped",
        "reports_queued": "Queued",
        "reports_bounced": "Bounced",
        "reports_soft_bounced": "Soft bounces",
        "reports_complained": "Complained",
        "reports_complaint_rate": "Complaint rate (limit 0.30 %)",
        "reports_over_limit": "over 0.3 %",
        "reports_unsubscribed": "Unsubscribed",
        "reports_opens": "Opens (unreliable: Apple Mail Privacy Protection)",
        "reports_clicks_unique": "Clicks (unique)",
        "reports_clicks_value": "{total} ({unique})",
        "reports_scanners": "likely scanners excluded: {count}",
        "reports_clicks": "Clicks",
        "reports_link": "Link",
        "reports_unique": "Unique",
        "reports_not_tracked": "Click tracking was off for this issue (MAILER_TRACK_CLICKS, or track_clicks = true in issue.toml).",
        "reports_deliveries": "Deliveries during the send",
        "reports_deliveries_per": "Deliveries per {step} ({zone})",
        "reports_deliveries_desc": "{count} messages sent between {start} and {end} ({zone}).",
        "reports_deliveries_none": "Nothing has been sent yet.",
        "reports_deliveries_table": "Deliveries as a table",
        "reports_interval": "Interval starting ({zone})",
        "reports_sent_in": "Sent",
        "reports_growth": "List growth",
        "reports_growth_title": "List growth: active subscribers per week",
        "reports_growth_desc": "From {first} active subscribers in the week of {start} to {last} in the week of {end}.",
        "reports_growth_none": "No subscribers yet.",
        "reports_growth_table": "List growth as a table",
        "reports_week_of": "Week of",
        "reports_active": "Active subscribers",
        "reports_unit_s": "{n} s",
        "reports_unit_min": "{n} min",
        "reports_unit_h": "{n} h",
        "reports_unit_day": "{n} day",
        "reports_unit_days": "{n} days",
        "reports_complaint_warning": "Warning: the complaint rate ({rate}) is over Gmail's and Yahoo's limit of {limit} (bulk-sender rules, 2024): mail only people who asked for it, make unsubscribing obvious.",
        "state_finished": "finished",
        "state_sending": "sending",
        "state_paused": "paused",
        "state_paused_why": "paused ({reason})",
        "state_waves_scheduled": "waves scheduled",
        "state_waves_scheduled_why": "waves scheduled (next wave: {zone} at {at})",
        "state_missed_waves": "missed waves",
        "state_missed_waves_why": "missed waves ({zones}: mailer send --release-missed)",
        "state_frozen": "frozen",
    },
}

_FR_MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
              "septembre", "octobre", "novembre", "décembre")
_FR_DAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December")
_FR_SHORT_MONTHS = ("janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.", "nov.", "déc.")
_EN_SHORT_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_EN_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


_FR_ARTICLE = re.compile(r"(le|la|les)\s+(?=\S)|(l['’])(?=\w)", re.IGNORECASE)
_FR_A = {"le": "au ", "la": "à la ", "les": "aux "}


def french_a(name: str) -> str:
    """« à » followed by a title, contracted as French grammar requires: « au Fil du jeudi »,
    « à la Croix », « aux Échos », « à l’Équipe », « à Mediapart ». Only a leading article that is a
    word of its own counts (« Lesbos Hebdo » stays « à Lesbos Hebdo »); the article itself is written
    in lower case, as inside a sentence (in capitals when the whole title is: « AU FIL »; « LA Weekly »
    is an acronym and stays « à LA Weekly »). (Grevisse, Le Bon Usage § 580: the article of a title
    contracts with à and de.)"""
    match = _FR_ARTICLE.match(name)
    if match is None:
        return f"à {name}"
    article, rest = match.group(1) or match.group(2), name[match.end():]
    shouting = article.isupper() and rest.isupper()
    if match.group(1) and article.isupper() and not shouting:
        return f"à {name}"  # « LA Weekly »: an acronym, not an article
    if match.group(2):
        contracted = "à " + article.lower()
    else:
        contracted = _FR_A[article.lower()].rstrip()
    return f"{contracted.upper() if shouting else contracted}{'' if match.group(2) else ' '}{rest}"


def _one_full_stop(template: str, text: str) -> str:
    """`text` (`template` filled in) with one full stop at its end where a value that ends the sentence
    brought its own (an abbreviation: « 30 nov. », a name such as "Acme Inc."): never « nov.. »."""
    if text.endswith("..") and not text.endswith("...") and not template.endswith(".."):
        return text[:-1]
    return text


class Phrase(str):
    """A fixed string. `format` fills it in as `str.format` does, then ends the sentence with one
    full stop (`_one_full_stop`); every caller gets it, in Python and in templates (`t.key.format(…)`)."""

    __slots__ = ()

    def format(self, *args: object, **kwargs: object) -> str:  # type: ignore[override]
        return _one_full_stop(self, str.format(self, *args, **kwargs))


for _table in STRINGS.values():
    _table.update({_key: Phrase(_value) for _key, _value in _table.items()})


def strings(language: str, name: str | None = None) -> dict[str, str]:
    """The fixed strings of `language`. With the newsletter's `name`, the strings that need a
    grammatical form of it (`{a_name}`: « au Fil du jeudi ») have it filled in, so every string
    is then formatted with `name` alone."""
    table = STRINGS[language]
    if name is None:
        return table
    a_name = (french_a(name) if language == "fr" else f"to {name}").replace("{", "{{").replace("}", "}}")
    return {key: Phrase(_one_full_stop(value, value.replace("{a_name}", a_name))) for key, value in table.items()}


def decimal(value: float, language: str, digits: int = 1) -> str:
    """`23,1` in French, `23.1` in English (no locale dependency)."""
    text = f"{value:.{digits}f}"
    return text.replace(".", ",") if language == "fr" else text


def long_date(value: date, language: str) -> str:
    """`jeudi 26 novembre 2026` / `Thursday 26 November 2026` (no locale dependency)."""
    if language == "fr":
        day = "1er" if value.day == 1 else str(value.day)
        return f"{_FR_DAYS[value.weekday()]} {day}\u00a0{_FR_MONTHS[value.month - 1]} {value.year}"
    return f"{_EN_DAYS[value.weekday()]} {value.day} {_EN_MONTHS[value.month - 1]} {value.year}"


def short_date(value: date, language: str, *, year: bool = False) -> str:
    """`14 janv.` / `14 Jan` (with `year`: `14 janv. 2027` / `14 Jan 2027`), for chart axes."""
    months = _FR_SHORT_MONTHS if language == "fr" else _EN_SHORT_MONTHS
    text = f"{value.day}\u00a0{months[value.month - 1]}"
    return f"{text} {value.year}" if year else text
