"""Email address validation and normalisation — the one owner of "is this an address, and which one".

`email-validator` decides (syntax, IDN, no DNS lookups). It costs ~46 µs an address, 46 s per
million, so `parse_address` first tries a *fast path* that only ever ACCEPTS, and only addresses of a
shape the validator provably accepts unchanged: a plain ASCII dot-atom local part and an ASCII
LDH domain with a letters-only TLD that is not special-use. Everything else goes to the validator.
`tests/test_addresses.py` checks the fast path's verdicts against the validator's on hostile inputs.

Configured sender-side addresses (From, Reply-To, the unsubscribe mailbox) go through
`parse_mailbox` / `header_address`: the same validator, but they must be writable in a header and an
SMTP envelope without SMTPUTF8 (RFC 6531), so the domain is given in its IDNA A-label form
(`idna`, UTS #46 mapping) and a non-ASCII local part is refused.

Domains' owners: `organizational_domain` (RFC 7489 §3.2, through the Public Suffix List that the
`publicsuffixlist` package bundles: no network, ever) and `aligned` (RFC 7489 §3.1 identifier
alignment), the one rule every DMARC/SPF/DKIM alignment check asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import email_validator
import idna
from publicsuffixlist import PublicSuffixList

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
    if len(local) > 64:
        return None
    lowered = _FAST_DOMAINS.get(domain)
    if lowered is None:  # a list holds a few thousand distinct domains: each is judged once
        lowered = _fast_domain(domain)
        if len(_FAST_DOMAINS) >= 1 << 16:
            _FAST_DOMAINS.clear()
        _FAST_DOMAINS[domain] = lowered
    if not lowered:
        return None
    given = local + "@" + lowered
    return given.lower(), given


_FAST_DOMAINS: dict[str, str] = {}  # domain as written → lower-cased, or "" when the fast path declines it


def _fast_domain(domain: str) -> str:
    """The lower-cased `domain` (already of the fast shape), or "" when the validator must judge it:
    a `--` (an IDNA A-label or worse) or a special-use name."""
    domain = domain.lower()
    if "--" in domain or ("." + domain).endswith(_SPECIAL_USE_SUFFIXES):
        return ""
    return domain


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


@dataclass(frozen=True)
class Mailbox:
    """A configured `Name <address>`: display name as written, address in its ASCII form."""

    display_name: str
    address: str  # local@a-label.domain: what headers and the SMTP envelope carry


def ascii_domain(domain: str) -> str:
    """A domain name in IDNA 2008 A-label form (`médiathèque.fr` → `xn--mdiathque-d1a.fr`).

    UTS #46 mapping (case folding, width and compatibility forms), STD3 host-name rules (letters,
    digits, hyphens). Raises InvalidAddress with the reason when the name cannot be converted.
    """
    try:
        return idna.encode(domain, uts46=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidAddress(f"{domain!r} is not a valid domain name ({exc})") from None


def header_address(raw: str) -> str:
    """Validate an address that we put in headers and the SMTP envelope; return its ASCII form.

    The domain is converted to IDNA (`lettre@médiathèque-exemple.fr` →
    `lettre@xn--mdiathque-exemple-xsbn.fr`). A non-ASCII local part (`élodie@…`) could only be sent
    with the SMTPUTF8 extension (RFC 6531), which mailer does not use: InvalidAddress says so.
    """
    text = raw.strip() if raw else ""
    if not text:
        raise InvalidAddress("empty address")
    try:
        result = email_validator.validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except email_validator.EmailNotValidError as exc:
        raise InvalidAddress(f"{text!r}: {exc}") from None
    if result.ascii_email is None:
        raise InvalidAddress(f"{text!r}: the part before @ is not ASCII, which needs SMTPUTF8 (RFC 6531); "
                             f"mailer sends without it: use an ASCII address")
    return result.ascii_email


def parse_mailbox(raw: str) -> Mailbox:
    """`Name <address>`, `"Name, with comma" <address>` or a bare `address` → Mailbox.

    The display name is everything before the last `<`, as written (surrounding double quotes and
    their backslash escapes removed); the header writer quotes or RFC 2047-encodes it as needed.
    Raises InvalidAddress (see `header_address`).
    """
    text = raw.strip() if raw else ""
    name, address = "", text
    if text.endswith(">") and "<" in text:
        name, _, address = text[:-1].rpartition("<")
        name = name.strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
    elif "<" in text or ">" in text:
        raise InvalidAddress(f"{text!r}: write it as Name <address> or a bare address")
    return Mailbox(display_name=" ".join(name.split()), address=header_address(address))


@lru_cache(maxsize=1)
def _public_suffixes() -> PublicSuffixList:
    # The list bundled with the package (ICANN and private sections, as DMARC implementations use it);
    # an unknown TLD is a public suffix of one label (the PSL's default "*" rule).
    return PublicSuffixList()


def organizational_domain(domain: str) -> str | None:
    """RFC 7489 §3.2: the public suffix (longest Public Suffix List match, wildcard and exception rules
    included) plus one label; lower case, no final dot (`news.example.org` → `example.org`,
    `a.example.co.uk` → `example.co.uk`). None when `domain` is itself a public suffix (`co.uk`) or empty:
    it has no organizational domain and aligns with nothing."""
    name = domain.strip().rstrip(".").lower()
    if not name:
        return None
    return _public_suffixes().privatesuffix(name)


def aligned(domain: str, from_domain: str, strict: bool = False) -> bool:
    """DMARC identifier alignment (RFC 7489 §3.1.1 DKIM, §3.1.2 SPF) of `domain` (a signature's d=, an
    envelope sender's domain) with the From domain: strict mode wants the same name (case and final
    dot aside); relaxed mode the same organizational domain (`organizational_domain`)."""
    a, b = domain.strip().rstrip(".").lower(), from_domain.strip().rstrip(".").lower()
    if strict or a == b:  # identical names align in both modes
        return bool(a) and a == b
    org = organizational_domain(a)
    return org is not None and org == organizational_domain(b)


def split_mailboxes(text: str) -> list[tuple[str, str]]:
    """A comma-separated list of RFC 5322 mailboxes as a person types them (`a@example.org`,
    `Ünï <you@example.com>`, `"Dupont, Jean" <j@example.org>`: display names may be non-ASCII, and
    quoted ones may hold commas) → [(display name, address)], by the stdlib's `getaddresses`. The
    addresses are not validated here (`parse_address` does); InvalidAddress for an entry with none."""
    from email.utils import getaddresses
    pairs = getaddresses([text])
    if not pairs or any(not address for _, address in pairs):
        raise InvalidAddress(f"{text!r} is not a list of addresses (ADDR or Name <ADDR>, separated by commas)")
    return pairs
