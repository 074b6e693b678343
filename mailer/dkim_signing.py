"""DKIM signatures (RFC 6376, RFC 8463) on every message the outbox and SMTP backends write or send.

dkimpy does the DKIM work that is easy to get subtly wrong: relaxed header and body
canonicalisation (`dkim.canonicalization`), choosing the header instances that h= names
(`dkim.hash_headers`, oversigning included) and folding (`dkim.fold`); tests verify every signature
with `dkim.verify`. Two things are ours, because they sit on the per-recipient hot path:

* the private-key operation goes to `cryptography` (OpenSSL): dkimpy's own RSA is pure Python,
  measured here at 10.6 ms per RSA-2048 signature against 0.53 ms through OpenSSL — it alone would
  cut the SMTP throughput fourfold;
* the body hash (bh=) is computed from pieces canonicalised once per issue. A message body is the
  issue's static bytes with per-recipient slots (greeting, unsubscribe URL…) on lines of their own
  (`message.EncodedPart`); relaxed body canonicalisation (RFC 6376 §3.4.4) works line by line, so the
  canonical body is the static pieces' canonical forms (computed once) joined with each slot's
  (computed per recipient, a few hundred bytes). `BodyHasher` falls back to canonicalising the whole
  body when the pieces are not line-aligned, so the result is always what dkimpy computes.

Settings: MAILER_DKIM_PRIVATE_KEY (PEM file: RSA ≥ 1024 bits, 2048 advised, or Ed25519),
MAILER_DKIM_SELECTOR, MAILER_DKIM_DOMAIN (default: the From domain). `check_settings` runs at
configuration load and raises `ConfigError` in one line naming the setting.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy, compress_whitespace, strip_trailing_lines, \
    strip_trailing_whitespace

from .addresses import ascii_domain
from .errors import ConfigError, InvalidAddress

__all__ = ["DkimKey", "DkimSigner", "BodyHasher", "load_private_key", "check_settings", "signer_for",
           "dkim_warnings", "generate_key", "txt_record_value", "selector_problem", "SIGNED_HEADERS"]

# RFC 6376 §5.4.1 recommends these; each is listed twice in h= ("oversigning", §8.15): a copy of any
# of them added after signing (a second From or Subject that some clients display) breaks the signature.
SIGNED_HEADERS = (b"from", b"reply-to", b"to", b"subject", b"date", b"message-id", b"list-id",
                  b"list-unsubscribe", b"list-unsubscribe-post", b"mime-version", b"content-type")
_H_TAG = SIGNED_HEADERS + SIGNED_HEADERS
# h= folded to lines under 78 characters (FWS is allowed around each ':', RFC 6376 §3.5)
def _fold_names(names: Sequence[bytes], width: int = 72) -> bytes:
    lines, line = [], b""
    for name in names:
        if line and len(line) + len(name) + 1 > width:
            lines.append(line)
            line = b""
        line += name + b":"
    return b"\r\n ".join([*lines, line])[:-1]


_H_FOLDED = _fold_names(_H_TAG)
_POLICY = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers MUST NOT consider signatures with shorter keys valid
ADVISED_RSA_BITS = 2048  # RFC 8301 §3.2: signers SHOULD use at least 2048 bits
# RFC 6376 §3.1: selector = sub-domain *( "." sub-domain ); sub-domain as in RFC 5321 (LDH labels).
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class DkimKeyError(ValueError):
    """The private key file cannot be used (message says why, without the key)."""


@dataclass(frozen=True)
class DkimKey:
    """A loaded private key: `kind` is "rsa" or "ed25519", `bits` the RSA modulus size (256 for Ed25519)."""

    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    kind: str
    bits: int

    @property
    def algorithm(self) -> bytes:
        """The a= tag: rsa-sha256 (RFC 6376 §3.3) or ed25519-sha256 (RFC 8463 §3)."""
        return b"rsa-sha256" if self.kind == "rsa" else b"ed25519-sha256"

    @property
    def public_key_b64(self) -> str:
        """The p= value: base64 of the DER SubjectPublicKeyInfo for RSA (RFC 6376 §3.6.1), of the
        32 raw key bytes for Ed25519 (RFC 8463 §4.2)."""
        public = self.private.public_key()
        if self.kind == "rsa":
            raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        else:
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a SHA-256 digest of the canonical headers (PKCS#1 v1.5 for RSA; Ed25519 signs the
        digest itself, RFC 8463 §3)."""
        if self.kind == "rsa":
            return self.private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self.private.sign(digest)


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
        private = serialization.load_pem_private_key(data, password=None)
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
    raise DkimKeyError(f"{path} holds a {kind} key; DKIM signs with RSA (RFC 6376) or Ed25519 (RFC 8463)")


def selector_problem(selector: str) -> str | None:
    """Why `selector` cannot be a DKIM selector (RFC 6376 §3.1: dot-separated LDH labels), or None."""
    if not selector:
        return "is empty"
    if len(selector) > 63 * 4 or not all(_LABEL.fullmatch(label) for label in selector.split(".")):
        return ("is not a DKIM selector: letters, digits and hyphens in dot-separated labels of at most 63 "
                "characters, no hyphen at either end (RFC 6376 §3.1), e.g. mailer2026")
    return None


# ----- the body hash --------------------------------------------------------------------------------
def _canonical_lines(data: bytes) -> bytes:
    """Relaxed body canonicalisation of whole lines, without the end-of-body rule."""
    return compress_whitespace(strip_trailing_whitespace(data))


class BodyHasher:
    """bh= for bodies made of static bytes and slots (`pieces`: bytes, or a slot name as str).

    `body_hash(fills)` takes each slot's encoded bytes (a whole number of CRLF-terminated lines) and
    returns the base64 SHA-256 of the relaxed canonical body, equal to dkimpy's for the joined body.
    Static pieces are canonicalised and the hash state up to the first slot computed once."""

    def __init__(self, pieces: Sequence[bytes | str]) -> None:
        merged: list[bytes | str] = []
        for piece in pieces:
            if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] += piece
            elif piece != b"":
                merged.append(piece)
        self.pieces = tuple(merged)
        # line-aligned: every slot starts a line and the body ends with static bytes
        self.aligned = bool(merged) and isinstance(merged[-1], bytes) and all(
            isinstance(prev, bytes) and prev.endswith(b"\r\n")
            for prev, piece in zip(merged, merged[1:]) if isinstance(piece, str)) and not isinstance(merged[0], str)
        if not self.aligned:
            return
        canonical: list[bytes | str] = []
        for index, piece in enumerate(merged):
            if isinstance(piece, str):
                canonical.append(piece)
                continue
            piece = _canonical_lines(piece)
            if index == len(merged) - 1:
                piece = strip_trailing_lines(piece)
            canonical.append(piece)
        first_slot = next((i for i, piece in enumerate(canonical) if isinstance(piece, str)), len(canonical))
        self._prefix = hashlib.sha256(b"".join(canonical[:first_slot]))  # type: ignore[arg-type]
        self._rest = tuple(canonical[first_slot:])
        self._constant = None if first_slot < len(canonical) else base64.b64encode(self._prefix.digest())

    def body_hash(self, fills: dict[str, bytes]) -> bytes:
        if not self.aligned:
            body = b"".join(piece if isinstance(piece, bytes) else fills[piece] for piece in self.pieces)
            return base64.b64encode(hashlib.sha256(_POLICY.canonicalize_body(body)).digest())
        if self._constant is not None:
            return self._constant
        hasher = self._prefix.copy()
        for piece in self._rest:
            if isinstance(piece, bytes):
                hasher.update(piece)
            else:
                fill = fills[piece]
                if not fill.endswith(b"\r\n"):  # not whole lines: the slot would join the next line
                    body = b"".join(p if isinstance(p, bytes) else fills[p] for p in self.pieces)
                    return base64.b64encode(hashlib.sha256(_POLICY.canonicalize_body(body)).digest())
                hasher.update(_canonical_lines(fill))
        return base64.b64encode(hasher.digest())


# ----- the signer -----------------------------------------------------------------------------------
class DkimSigner:
    """Signs with one key as `d=domain; s=selector`, relaxed/relaxed, h= = SIGNED_HEADERS oversigned."""

    def __init__(self, key: DkimKey, domain: str, selector: str) -> None:
        self.key = key
        self.domain = domain
        self.selector = selector
        ids = b" d=" + domain.encode("ascii") + b"; s=" + selector.encode("ascii") + b";"
        if len(ids) > 78:
            ids = ids.replace(b"; s=", b";\r\n s=")
        self._fixed = (b"v=1; a=" + key.algorithm + b"; c=relaxed/relaxed;\r\n" + ids + b"\r\n h=" + _H_FOLDED
                       + b";\r\n t=")

    def signature(self, head: bytes, body_hash: bytes, now: float | None = None) -> bytes:
        """The `DKIM-Signature:` field (CRLF-terminated) for a message whose header block is `head`
        (CRLF line ends, no blank line) and whose relaxed body hash (base64) is `body_hash`."""
        value = self._fixed + str(int(time.time() if now is None else now)).encode("ascii") \
            + b"; bh=" + body_hash + b";\r\n b="
        headers, _ = dkim.rfc822_parse(head + b"\r\n")
        hasher = hashlib.sha256()
        dkim.hash_headers(hasher, _POLICY, _POLICY.canonicalize_headers(headers), _H_TAG,
                          (b"DKIM-Signature", b" " + value), None)
        signature = base64.b64encode(self.key.sign_digest(hasher.digest()))
        return b"DKIM-Signature: " + value + dkim.fold(signature, namelen=3) + b"\r\n"

    def sign(self, message: bytes, now: float | None = None) -> bytes:
        """`message` (CRLF line ends) with a DKIM-Signature field on top: the general path."""
        head, separator, body = message.partition(b"\r\n\r\n")
        if not separator:
            head, body = message.rstrip(b"\r\n"), b""
        body_hash = base64.b64encode(hashlib.sha256(_POLICY.canonicalize_body(body)).digest())
        return self.signature(head + b"\r\n", body_hash, now) + message


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
    """DMARC identifier alignment (RFC 7489 §3.1.1): equal domains, or in relaxed mode one a
    subdomain of the other (an approximation of "same organisational domain" that needs no public
    suffix list; it never calls two unrelated registrable domains aligned)."""
    a, b = dkim_domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if a == b:
        return True
    return not strict and (a.endswith("." + b) or b.endswith("." + a)) and "." in min(a, b, key=len)


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
