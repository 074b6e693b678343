"""Erasure (GDPR art. 17): what an erased person's data becomes, wherever it is or arrives later.

The one owner of these rules (README, "Privacy: what mailer keeps, and what `--purge` erases"):

* `erase_subscriber` (`subscribers remove --purge`): the row becomes a tombstone (`tombstone_key`:
  a SHA-256 of the normalised address, so no import brings them back); their history and ledger rows
  stay, their address (any spelling) and name replaced by `[erased]` (`person_redactor`); provider
  events about them keep what happened and when (`anonymised_event`); outbox files go;
* events about them arriving later, from a webhook or a bounce mailbox, are stored the same way
  (`anonymised_event`, applied by `feedback.record_provider_events`, which finds them by id or by
  address through `erased_keys`) and change nothing.

Our own code: the rules are this product's promise, and no library knows which words of a bounce
are a person's. A remote server's words may write the address in any form (bare, <angle>, quoted,
upper case, IDN, the local part alone, with the name): once the person is erased their name is no
longer known, so an event keeps none of those words, only the status codes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import idna

from ..addresses import parse_address
from ..errors import InvalidAddress, NotFound
from ..statuses import SUPPRESSED_STATUSES, TOMBSTONE_PREFIX
from ..store import Store


def tombstone_key(key: str) -> str:
    """The anonymous stand-in for an erased address (stored in place of the email)."""
    return TOMBSTONE_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


ERASED = "[erased]"
# Anything shaped like an address, its local part an atom or quoted (SMTP replies quote them, outbox
# paths and errors hold them).
_ADDRESS_LIKE = re.compile(r"""(?:"[^"\r\n]*"|[^\s<>"'(),;:/\[\]\\]+)@[^\s<>"'(),;:/\[\]\\]+""")
# What an erased person's provider events keep: what happened and when, nothing about who or where
# (no address, IP, user agent, clicked URL, SMTP reply, message id).
PROVIDER_EVENT_KEPT_FIELDS = ("event", "timestamp", "type", "sg_event_id", "mailer_issue", "mailer_subscriber",
                              "asm_group_id", "bounce_classification")
# The words of a provider's reason an erased person's event keeps: SMTP reply codes (550) and RFC 3463
# enhanced status codes (5.1.1), never part of an address, a number or an IP address.
_STATUS_CODE = re.compile(r"(?<![\w.@%+-])(?:[245]\.\d{1,3}\.\d{1,3}|[245]\d\d)(?![\w@%+-]|\.\d)")


def redact_addresses(text: str) -> str:
    """`text` with every address-like word (`local@domain`, `"quoted local"@domain`) replaced by
    `[erased]`."""
    return _ADDRESS_LIKE.sub(ERASED, text) if "@" in text else text


def person_redactor(forms: Iterable[str], name: str = "") -> Callable[[str], str]:
    """What erasing one person does to the text of their history and ledger rows (README: "every
    address in them replaced by `[erased]`"): a function of a str returning it with

    * each address of `forms` (the ways it was written), in any case, its domain in Unicode or IDNA
      (`xn--`) form, its local part bare or quoted, `@` or `%40` between;
    * any other address-like word (`redact_addresses`);
    * the local part of `forms` standing alone (a sendmail-style `jane.doe... User unknown`), when
      it has 3 characters or more;
    * `name` (any case, any spacing), when it has 3 characters or more;

    replaced by `[erased]`.
    """
    addresses: set[str] = set()
    words: set[str] = set()
    for form in forms:
        local, at, domain = form.strip().rpartition("@")
        if not at or not local or not domain:
            continue
        local = local[1:-1] if len(local) > 1 and local[0] == local[-1] == '"' else local
        domains = {domain, *_idna_forms(domain)}
        addresses.update(f'"?{re.escape(local)}"?(?:@|%40){re.escape(d)}' for d in domains)
        if len(local) >= 3:
            words.add(re.escape(local))
    name = " ".join(name.split())
    if len(name) >= 3:
        words.add(r"\s+".join(re.escape(part) for part in name.split(" ")))
    known = re.compile("|".join(sorted(addresses, key=len, reverse=True)), re.IGNORECASE) if addresses else None
    alone = (re.compile(r"(?<![\w.+-])(?:" + "|".join(sorted(words, key=len, reverse=True)) + r")(?![\w+-]|\.\w)",
                        re.IGNORECASE) if words else None)

    def redact(text: str) -> str:
        if known is not None:
            text = known.sub(ERASED, text)
        text = redact_addresses(text)
        return alone.sub(ERASED, text) if alone is not None else text
    return redact


def _idna_forms(domain: str) -> set[str]:
    """`domain` in IDNA ASCII and Unicode form (whichever it is not), when it converts."""
    found = set()
    for convert in (lambda d: idna.encode(d, uts46=True).decode("ascii"), lambda d: idna.decode(d)):
        try:
            found.add(convert(domain))
        except (idna.IDNAError, UnicodeError, ValueError):
            continue
    return found


def anonymised_payload(payload: Mapping[str, Any]) -> dict:
    """A provider event's raw payload reduced to PROVIDER_EVENT_KEPT_FIELDS (scalars only, addresses redacted)."""
    kept: dict = {"erased": True}
    for name in PROVIDER_EVENT_KEPT_FIELDS:
        value = payload.get(name)
        if isinstance(value, str):
            kept[name] = redact_addresses(value)
        elif isinstance(value, (int, float, bool)):
            kept[name] = value
    return kept


def anonymised_event(reason: str, payload: Mapping[str, Any] | None) -> tuple[str, dict]:
    """What a provider event about an erased person keeps, as (reason, payload): of the reason, the
    status codes it gives, in their order (`5.1.1 550 [erased]`; "" when it was empty), since a
    remote server's words may hold the address in any form, or the name, which are no longer known;
    of the payload, the fields of `anonymised_payload`. Every path that stores such an event applies
    it: the erasure (events stored before) and `feedback.record_provider_events` (webhooks and bounce
    mailboxes, after)."""
    codes = list(dict.fromkeys(_STATUS_CODE.findall(reason or "")))
    kept = " ".join([*codes, ERASED]) if (reason or "").strip() else ""
    return kept, anonymised_payload(payload if isinstance(payload, Mapping) else {})


def erased_keys(address: str) -> set[str]:
    """The tombstones (`tombstone_key`) an address of a provider event may stand for: as given, and
    normalised (`parse_address`: case, IDNA domain; `Name <address>` read as the address; a quoted
    dot-atom local part unquoted)."""
    text = address.strip()
    keys = {tombstone_key(text)}
    if "<" in text:
        text = parseaddr(text)[1] or text
    local, at, domain = text.rpartition("@")
    if at and len(local) > 1 and local[0] == local[-1] == '"':
        text = f"{local[1:-1]}@{domain}"
    try:
        keys.add(tombstone_key(parse_address(text).key))
    except InvalidAddress:
        pass
    return keys


@dataclass(frozen=True)
class ErasureReport:
    email: str
    already_erased: bool
    events: int            # history lines kept, address-like words redacted
    deliveries: int        # ledger rows kept, paths and errors redacted
    provider_events: int   # webhook events kept, anonymised
    files: int             # outbox files deleted
    compacted: bool        # database files rewritten without the freed data (SQLite)

    def summary(self) -> str:
        head = (f"{self.email} was already erased; checked again" if self.already_erased
                else f"erased {self.email}")
        text = (f"{head}: {self.events} history events and {self.deliveries} deliveries kept without the address, "
                f"{self.provider_events} webhook events anonymised, {self.files} outbox files deleted; "
                f"an anonymous tombstone keeps the address from being imported again")
        if not self.compacted:
            text += " (warning: another process held the database; run `mailer subscribers remove --purge` again later)"
        return text


def erase_subscriber(store: Store, email: str, *, source: str = "cli", reason: str = "",
                     outbox_dir: Path | None = None) -> ErasureReport:
    """Erase every copy of a person's data this product made, keeping an anonymous tombstone (a
    SHA-256 of the normalised address in place of the address) so no import brings them back:

    * the subscriber row: address, name, language, attributes, lists, source;
    * their history (`subscriber_events`) and ledger rows (`deliveries`): kept for the counts, with
      their address (any spelling), any other address-like word and their name in reasons, errors and
      outbox paths replaced by `[erased]` (`person_redactor`);
    * webhook events and bounce reports (`provider_events`) naming them or their address: reduced to
      what happened and when (`anonymised_event`; those arriving later too, `feedback`);
    * outbox files written for them (issues, test sends, confirmation and welcome emails);
    * on SQLite, the freed pages and the write-ahead log (VACUUM, checkpoint), so the address is
      not left in the database file's free space.

    Idempotent: erasing an erased address checks everything again. Raises NotFound for an address
    never seen. What stays elsewhere (provider logs, backups, delivered mail) is listed in the README.
    """
    from ..providers.outbox import person_files

    address = parse_address(email)
    erased = tombstone_key(address.key)
    forms = sorted({address.key, address.given, email.strip()})
    with store.begin() as conn:
        row = store.subscriber_by_email(conn, address.key)
        already = row is None
        if row is None:
            row = store.subscriber_by_email(conn, erased)
            if row is None:
                raise NotFound(f"no subscriber {address.given}")
        if row.status not in SUPPRESSED_STATUSES:
            store.set_status(conn, row.id, "unsubscribed", source=source, reason=reason or "erased on request")
        forms = sorted({*forms, row.email, row.email_given} - {erased})
        redact = person_redactor(forms, row.name or "")
        counts = store.erase_person(conn, row.id, email_keys=forms, tombstone=erased, redact=redact,
                                    anonymise=anonymised_event, source=source,
                                    reason=redact(reason) or "erased on request")
    files = 0
    if outbox_dir is not None:
        root = outbox_dir.resolve()
        candidates = set(person_files(outbox_dir, row.id, forms))
        for recorded in counts["paths"]:  # the ledger's own record of where the outbox put them
            path = Path(recorded)
            if path.suffix in (".eml", ".tmp") and path.resolve().is_relative_to(root):
                candidates.add(path)
        for path in candidates:
            try:
                path.unlink()
                files += 1
            except FileNotFoundError:
                pass
    compacted = store.compact()
    return ErasureReport(email=address.given if already else row.email_given, already_erased=already, events=counts["events"],
                         deliveries=counts["deliveries"], provider_events=counts["provider_events"], files=files,
                         compacted=compacted)
