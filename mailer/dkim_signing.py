"""DKIM (RFC 6376, RFC 8463) for every message the outbox and SMTP backends write or send: the key,
the settings, the warnings and `mailer dkim keygen`; the per-recipient signer is `dkim_signer`.

Settings: MAILER_DKIM_PRIVATE_KEY (PEM file: RSA ≥ 1024 bits, 2048 advised, or Ed25519),
MAILER_DKIM_SELECTOR, MAILER_DKIM_DOMAIN (default: the From domain). `check_settings` runs at
configuration load and raises `ConfigError` in one line naming the setting.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .addresses import aligned as addresses_aligned, ascii_domain
from .dkim_signer import DkimKey, DkimSigner
from .errors import ConfigError, InvalidAddress

__all__ = ["load_private_key", "check_settings", "signer_for",
           "dkim_warnings", "generate_key", "txt_record_value", "selector_problem"]

MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers MUST NOT consider signatures with shorter keys valid
ADVISED_RSA_BITS = 2048  # RFC 8301 §3.2: signers SHOULD use at least 2048 bits
# RFC 6376 §3.1: selector = sub-domain *( "." sub-domain ); sub-domain as in RFC 5321 (LDH labels).
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class DkimKeyError(ValueError):
    """The private key file cannot be used (message says why, without the key)."""


def txt_record_value(key: DkimKey) -> str:
    """The DNS TXT value to publish at `selector._domainkey.domain` (RFC 6376 §3.6.1)."""
    return f"v=DKIM1; k={key.kind}; p={key.public_key_b64}"


def load_private_key(path: Path) -> DkimKey:
    """Read a PEM private key (PKCS#8 or PKCS#1, unencrypted). Raises DkimKeyError: unreadable,
    not PEM, encrypted, a key type DKIM does not define, or an RSA key under 1024 bits."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise DkimKeyError(f"{path} is not a PEM private key (expected '-----BEGIN PRIVATE KEY-----')")
    try:
        private = _parsed_pem(data)
    except TypeError:
        raise DkimKeyError(f"{path} is encrypted; DKIM signing needs an unencrypted key (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DkimKeyError(f"{path} is not a usable PEM private key ({str(exc).splitlines()[0]})") from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise DkimKeyError(f"{path} is an RSA key of {private.key_size} bits; receivers ignore DKIM keys under "
                               f"{MIN_RSA_BITS} bits (RFC 8301 §3.2): make one with `mailer dkim keygen`")
        return DkimKey(private, "rsa", private.key_size)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return DkimKey(private, "ed25519", 256)
    kind = type(private).__name__.removeprefix("_").replace("PrivateKey", "")
    raise DkimKeyError(f"{path} holds {_article(kind)} {kind} key; DKIM signs with RSA (RFC 6376) or Ed25519 (RFC 8463)")


@functools.lru_cache(maxsize=8)
def _parsed_pem(data: bytes):  # noqa: ANN202 - one of cryptography's private key types
    """The key in these PEM bytes, parsed once per process: OpenSSL checks an RSA key's consistency
    at each parse (tens of ms of CPU for 2048 bits), and the key is read at configuration load and
    again by the signer. Keyed by the bytes, so a replaced key file is parsed afresh; key objects
    are immutable. Parse errors are not kept (raised again at the next try)."""
    return serialization.load_pem_private_key(data, password=None)


def _article(word: str) -> str:
    """"a" or "an" before `word` as it is read aloud: an EC, an RSA, an X25519, an Ed448, a DSA, a DH
    (an initialism is read letter by letter: A, E, F, H, I, L, M, N, O, R, S, X sound a vowel)."""
    if word[:2].isupper():
        return "an" if word[0] in "AEFHILMNORSX" else "a"
    return "an" if word[:1].lower() in "aeiou" else "a"


def selector_problem(selector: str) -> str | None:
    """Why `selector` cannot be a DKIM selector (RFC 6376 §3.1: dot-separated LDH labels), or None."""
    if not selector:
        return "is empty"
    if len(selector) > 63 * 4 or not all(_LABEL.fullmatch(label) for label in selector.split(".")):
        return ("is not a DKIM selector: letters, digits and hyphens in dot-separated labels of at most 63 "
                "characters, no hyphen at either end (RFC 6376 §3.1), e.g. mailer2026")
    return None
# ----- settings -------------------------------------------------------------------------------------
def _key_path(settings) -> Path:
    path = Path(settings.dkim_private_key)
    return path if path.is_absolute() else settings.root / path
def _dkim_domain(settings) -> str:
    return settings.dkim_domain or settings.sender_domain
def check_settings(settings, where=lambda attr: attr) -> DkimSigner | None:
    """Validate the DKIM settings; the signer, or None when DKIM is not configured.

    Raises ConfigError (one line naming the setting): a key without a selector or the reverse, a bad
    selector, a bad domain, a key file that is missing, unreadable, not PEM, encrypted, of another
    type than RSA/Ed25519, or RSA under 1024 bits; or a key and no domain (no MAILER_FROM either)."""
    key_setting, selector = str(settings.dkim_private_key or ""), settings.dkim_selector
    if not key_setting and not selector:
        if settings.dkim_domain:
            raise ConfigError(f"{where('dkim_domain')} is set but MAILER_DKIM_PRIVATE_KEY and MAILER_DKIM_SELECTOR "
                              f"are not: set both to sign (mailer dkim keygen makes the key)")
        return None
    if not key_setting:
        raise ConfigError(f"{where('dkim_selector')} is set but MAILER_DKIM_PRIVATE_KEY is not: "
                          f"set it to the PEM file (mailer dkim keygen makes one)")
    if not selector:
        raise ConfigError(f"{where('dkim_private_key')} is set but MAILER_DKIM_SELECTOR is not: set it to the "
                          f"selector whose TXT record publishes the key (SELECTOR._domainkey.DOMAIN)")
    problem = selector_problem(selector)
    if problem:
        raise ConfigError(f"{where('dkim_selector')} {selector!r} {problem}")
    domain = settings.dkim_domain
    if domain:
        try:
            domain = ascii_domain(domain.strip().rstrip("."))
        except InvalidAddress as exc:
            raise ConfigError(f"{where('dkim_domain')} {settings.dkim_domain!r} is not a domain: {exc}") from None
    elif not settings.sender_email:
        raise ConfigError(f"{where('dkim_private_key')} is set but there is no domain to sign for: set MAILER_FROM "
                          f"(the signing domain defaults to its domain) or MAILER_DKIM_DOMAIN")
    try:
        key = load_private_key(_key_path(settings))
    except DkimKeyError as exc:
        raise ConfigError(f"{where('dkim_private_key')}: {exc}") from None
    return DkimSigner(key, domain or settings.sender_domain, selector)
_SIGNERS: dict[tuple, DkimSigner | None] = {}
def signer_for(settings) -> DkimSigner | None:
    """The signer for `settings` (validated at load), loaded once per key file and its mtime."""
    if not settings.dkim_private_key:
        return None
    path = _key_path(settings)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    cache_key = (str(path), stamp, settings.dkim_selector, settings.dkim_domain, settings.sender_domain)
    if cache_key not in _SIGNERS:
        _SIGNERS[cache_key] = check_settings(settings)
    return _SIGNERS[cache_key]


def aligned(dkim_domain: str, from_domain: str, strict: bool = False) -> bool:
    """DMARC identifier alignment of a signature's d= with the From domain (RFC 7489 §3.1.1): strict
    wants the same domain, relaxed the same organizational domain (Public Suffix List). The rule is
    `addresses.aligned`'s, the one every alignment check asks."""
    return addresses_aligned(dkim_domain, from_domain, strict)


def dkim_warnings(settings) -> list[str]:
    """What is legal but weakens delivery: an RSA key under 2048 bits, a signing domain not aligned
    with the From domain (DMARC), DKIM settings with a backend that signs itself (`Provider.own_dkim`:
    SendGrid), a key file others can read."""
    signer = signer_for(settings)
    if signer is None:
        return []
    warnings = []
    provider = settings.provider
    if provider.own_dkim is not None:
        warnings.append(f"MAILER_DKIM_* is not used with the {provider.name} backend: {provider.shown} signs with the "
                        f"key of its domain authentication ({provider.own_dkim.setup})")
    if signer.key.kind == "rsa" and signer.key.bits < ADVISED_RSA_BITS:
        warnings.append(f"MAILER_DKIM_PRIVATE_KEY is an RSA key of {signer.key.bits} bits; use {ADVISED_RSA_BITS} "
                        f"(RFC 8301 §3.2): mailer dkim keygen --selector NEW, publish, then switch")
    if settings.sender_email and not aligned(signer.domain, settings.sender_domain):
        warnings.append(f"MAILER_DKIM_DOMAIN {signer.domain} is not aligned with the From domain "
                        f"{settings.sender_domain}: DMARC ignores this signature (RFC 7489 §3.1.1), and Gmail "
                        f"and Yahoo want an aligned one from bulk senders")
    try:
        if _key_path(settings).stat().st_mode & 0o077:
            warnings.append(f"MAILER_DKIM_PRIVATE_KEY {_key_path(settings)} can be read by other users: chmod 600 it")
    except OSError:
        pass
    return warnings
# ----- keygen ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratedKey:
    path: Path
    key: DkimKey
    record_name: str  # selector._domainkey.domain
    record_value: str  # v=DKIM1; k=…; p=…
def keygen_domain(value: str) -> str:
    """The signing domain as keys, records and file names spell it: ASCII (IDNA), lower case, no final
    dot (`EXAMPLE.ORG.` → `example.org`). Raises ConfigError naming --domain."""
    try:
        return ascii_domain(value.strip().rstrip("."))
    except InvalidAddress as exc:
        raise ConfigError(f"--domain {value!r} is not a domain: {exc}") from None
def generate_key(path: Path, selector: str, domain: str, kind: str = "rsa", bits: int = ADVISED_RSA_BITS) -> GeneratedKey:
    """Write a new private key to `path` (PKCS#8 PEM, mode 0600, created exclusively: an existing file
    is never overwritten) and return the TXT record to publish. Raises ConfigError."""
    problem = selector_problem(selector)
    if problem:
        raise ConfigError(f"--selector {selector!r} {problem}")
    domain = keygen_domain(domain)
    if kind == "rsa":
        if bits < ADVISED_RSA_BITS:
            raise ConfigError(f"--bits {bits}: DKIM RSA keys should have at least {ADVISED_RSA_BITS} bits (RFC 8301)")
        private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(65537, bits)
        key = DkimKey(private, "rsa", bits)
    elif kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
        key = DkimKey(private, "ed25519", 256)
    else:
        raise ConfigError(f"--type {kind!r}: rsa or ed25519")
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite a key (choose another --out, or "
                          f"a new --selector to rotate)") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return GeneratedKey(path, key, f"{selector}._domainkey.{domain}", txt_record_value(key))
