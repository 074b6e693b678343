"""Email address validation and normalisation — the one owner of "is this an address, and which one".

`email-validator` decides (syntax, IDN, no DNS lookups). It costs ~46 µs an address, 46 s per
million, so `parse_address` first tries a *fast path* that only ever ACCEPTS, and only addresses of a
shape the validator provably accepts unchanged: a plain ASCII dot-atom local part and an ASCII
LDH domain with a letters-only TLD that is not special-use. Everything else goes to the validator.
`tests/test_addresses.py` checks the fast path's verdicts against the validator's on hostile inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import email_validator

from .errors import InvalidAddress

_FAST = re.compile(
    r"([A-Za-z0-9](?:[A-Za-z0-9_+-]|\.(?=[A-Za-z0-9_+-]))*)"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)
_FAST_MATCH = _FAST.fullmatch
# The validator refuses these names and every name under them (`.local`, `.onion`, `.test`…).
_SPECIAL_USE_SUFFIXES = tuple("." + name.lower() for name in email_validator.SPECIAL_USE_DOMAIN_NAMES)


@dataclass(frozen=True)
class Address:
    key: str    # the unique, case-insensitive form (what the store indexes)
    given: str  # trimmed, domain normalised; what we send to and show


def _fast_path(text: str) -> tuple[str, str] | None:
    """(key, given) when `text` is of a shape the validator provably accepts unchanged, else None."""
    if len(text) > 254:
        return None
    match = _FAST_MATCH(text)
    if match is None:
        return None
    local, domain = match.group(1, 2)
    domain = domain.lower()
    if len(local) > 64 or "--" in domain or ("." + domain).endswith(_SPECIAL_USE_SUFFIXES):
        return None
    given = f"{local}@{domain}"
    return given.lower(), given


def address_parts(raw: str) -> tuple[str, str]:
    """`parse_address` as a (key, given) pair, without building an `Address` (the import's hot loop)."""
    text = raw.strip() if raw else ""
    if not text:
        raise InvalidAddress("empty address")
    fast = _fast_path(text)
    if fast is not None:
        return fast
    address = _validate_slow(text)
    return address.key, address.given


def parse_address(raw: str) -> Address:
    """Validate and normalise one address; InvalidAddress says why not, in one line."""
    text = raw.strip() if raw else ""
    if not text:
        raise InvalidAddress("empty address")
    fast = _fast_path(text)
    if fast is not None:
        return Address(key=fast[0], given=fast[1])
    return _validate_slow(text)


@lru_cache(maxsize=4096)
def _validate_slow(text: str) -> Address:
    try:
        result = email_validator.validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except email_validator.EmailNotValidError as exc:
        raise InvalidAddress(f"{text!r}: {exc}") from None
    given = result.ascii_email or result.normalized
    return Address(key=result.normalized.lower(), given=given)


def validator_verdict(text: str) -> Address | None:
    """The validator alone (no fast path): for tests and for auditing the fast path."""
    try:
        return _validate_slow.__wrapped__(text.strip())
    except InvalidAddress:
        return None
