"""Signed, opaque tokens for unsubscribe and confirmation links.

A token carries a subscriber id (and optionally an issue id) and an HMAC-SHA256 tag keyed with the
secret key and the token's purpose, so an unsubscribe token can never confirm a subscription and a
changed byte is always caught. No email address is ever in a URL. Tokens do not expire: an
unsubscribe link must keep working in a years-old email.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from dataclasses import dataclass

from .errors import MailerError

TAG_BYTES = 12
_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
PURPOSES = ("unsubscribe", "confirm")


class InvalidToken(MailerError):
    """A token that was not made by us with this key and purpose."""

    exit_code = 4


@dataclass(frozen=True)
class TokenData:
    purpose: str
    subscriber_id: int
    issue_id: int | None = None


def _tag(key: bytes, purpose: str, payload: bytes) -> bytes:
    return hmac.digest(key, purpose.encode("ascii") + b"\0" + payload, "sha256")[:TAG_BYTES]


def make_token(key: bytes, purpose: str, subscriber_id: int, issue_id: int | None = None) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    payload = subscriber_id.to_bytes(8, "big")
    if issue_id is not None:
        payload += issue_id.to_bytes(4, "big")
    return base64.urlsafe_b64encode(payload + _tag(key, purpose, payload)).rstrip(b"=").decode("ascii")


def read_token(key: bytes, purpose: str, token: str) -> TokenData:
    """Verify and decode; raises InvalidToken for anything forged, truncated or malformed."""
    if not _SHAPE.fullmatch(token or ""):  # base64url only: one token, one spelling
        raise InvalidToken("invalid link")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("invalid link") from None
    if len(raw) not in (8 + TAG_BYTES, 12 + TAG_BYTES):
        raise InvalidToken("invalid link")
    payload, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(key, purpose, payload)):
        raise InvalidToken("invalid link")
    issue_id = int.from_bytes(payload[8:12], "big") if len(payload) == 12 else None
    return TokenData(purpose=purpose, subscriber_id=int.from_bytes(payload[:8], "big"), issue_id=issue_id)


def message_id(key: bytes, issue_slug: str, subscriber_id: int, domain: str) -> str:
    """A Message-ID that is the same for every attempt at one delivery, so a receiving server that
    deduplicates by Message-ID drops a copy resent after a crash; opaque (no ids visible)."""
    digest = hmac.digest(key, f"msgid\0{issue_slug}\0{subscriber_id}".encode("utf-8"), "sha256").hex()[:24]
    return f"<{digest}@{domain}>"
