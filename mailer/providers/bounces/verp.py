"""VERP envelope senders: `bounces+TOKEN@domain`, one per delivery, so a bounce names its delivery.

With `MAILER_BOUNCE_ADDRESS = bounces@example.org`, each message of an issue is sent (SMTP `MAIL
FROM`, the outbox's `Return-Path:`) from `bounces+TOKEN@example.org`, TOKEN being
`tokens.make_bounce_token(key, subscriber id, issue id)`: signed and encrypted (AES-SIV), so a bounce
addressed to a forged or altered token matches no one. Receiving servers send bounces to the envelope
sender (RFC 5321 §4.5.5, §6.1); the mailbox behind `bounces@example.org` must accept the `+` detail
(Postfix `recipient_delimiter = +`, Exim `local_part_suffix = +*`, Gmail/Fastmail do by default).
Test sends and notices (no delivery) use the plain bounce address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...addresses import parse_address
from ...config import Settings, secret_key_for
from ...errors import ConfigError, InvalidAddress
from ...links import is_test_subscriber
from ...tokens import InvalidToken, TokenData, make_bounce_token, read_bounce_token

_TOKEN = re.compile(r"[A-Za-z2-7]{47}")


@dataclass(frozen=True)
class Verp:
    """The bounce address split once (`local`, `domain`, ASCII) and the token key."""

    local: str
    domain: str
    key: bytes

    @classmethod
    def parse(cls, address: str, key: bytes, setting: str = "MAILER_BOUNCE_ADDRESS") -> "Verp":
        """ConfigError naming `setting` unless `address` is a plain ASCII `local@domain` whose local part
        has no `+` (the separator) and leaves room for the 48-character `+TOKEN` (64-octet limit)."""
        try:
            parsed = parse_address(address)
        except InvalidAddress as exc:
            raise ConfigError(f"{setting}: {exc}") from None
        local, _, domain = parsed.given.rpartition("@")
        if "+" in local or not local.isascii() or not domain.isascii():
            raise ConfigError(f"{setting} {address!r}: the local part must be ASCII without '+' "
                              f"(bounces@your-domain: '+TOKEN' is added per delivery)")
        if len(local) + 48 > 64:
            raise ConfigError(f"{setting} {address!r}: local part too long for a VERP token (at most 16 characters)")
        return cls(local, domain.lower(), key)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Verp | None":
        """None when MAILER_BOUNCE_ADDRESS is unset (envelope sender = the From address)."""
        if not settings.bounce_address.strip():
            return None
        return cls.parse(settings.bounce_address.strip(), secret_key_for(settings))

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"

    def sender(self, subscriber_id: int | None, issue_id: int | None) -> str:
        """`local+TOKEN@domain` for a delivery; the plain address when either id is missing or the
        subscriber is the test-send one (`links.TEST_SUBSCRIBER_ID`: no delivery to bounce)."""
        if subscriber_id is None or issue_id is None or is_test_subscriber(subscriber_id):
            return self.address
        return f"{self.local}+{make_bounce_token(self.key, subscriber_id, issue_id)}@{self.domain}"

    def find(self, text: str) -> list[TokenData]:
        """Every delivery named by a valid `local+TOKEN@domain` address in `text` (header lines), in
        order of appearance, without repeats; forged or altered tokens are left out."""
        pattern = re.compile(rf"(?<![A-Za-z0-9._%+-]){re.escape(self.local)}\+([A-Za-z2-7]{{47}})@{re.escape(self.domain)}"
                             rf"(?![A-Za-z0-9.-]*[A-Za-z0-9-])", re.IGNORECASE)
        found: list[TokenData] = []
        for token in dict.fromkeys(match.group(1).lower() for match in pattern.finditer(text or "")):
            try:
                data = read_bounce_token(self.key, token)
            except InvalidToken:
                continue
            found.append(data)
        return found

    def read(self, address: str) -> TokenData | None:
        """The delivery an address names, or None: not ours, no token, or a token that fails
        verification (forged, altered, another key). Compared case-insensitively."""
        local, _, domain = address.strip().strip("<>").rpartition("@")
        if domain.lower().rstrip(".") != self.domain or "+" not in local:
            return None
        base, _, token = local.partition("+")
        if base.lower() != self.local.lower() or not _TOKEN.fullmatch(token):
            return None
        try:
            return read_bounce_token(self.key, token)
        except InvalidToken:
            return None
