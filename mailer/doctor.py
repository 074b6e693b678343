"""`mailer doctor`: is this configuration ready for a real send? One verdict per check, with a fix.

What bulk senders must have since February 2024 (Gmail: "Email sender guidelines",
support.google.com/a/answer/81126; Yahoo: "Sender Best Practices", senders.yahooinc.com/best-practices):
SPF and DKIM for the sending domain, a DMARC record (p=none is accepted) aligned with the From
domain, one-click unsubscribe (RFC 8058) for marketing mail, and a complaint rate under 0.3 %.
The checks here cover what the configuration and DNS can show:

  from, postal_address, base_url, secret_key   settings a real send needs (config's own rules)
  dkim     the key in MAILER_DKIM_PRIVATE_KEY is the one published at SELECTOR._domainkey.DOMAIN
  spf      one SPF record at the envelope sender's domain, authorising the relay: the include a
           provider documents (include:sendgrid.net; a hosted SMTP relay's, known by its host, such as
           include:amazonses.com for email-smtp.*.amazonaws.com; or MAILER_SPF_INCLUDE), else the SMTP
           host's addresses. Every fix that is a record is the whole record, ready to publish.
  dmarc    a record at _dmarc.DOMAIN (or its organizational domain), its policy, and alignment with
           From (relaxed: the same organizational domain, by the Public Suffix List)
  one_click  POST List-Unsubscribe=One-Click to BASE/u/PROBE answers 200 (the probe token names
           subscriber 0, which `mailer serve` answers without unsubscribing anyone)

What depends on the provider is asked of it (`registry.Provider`): whether it signs DKIM itself
(`own_dkim`: then its domain authentication record is what is checked), whether it uses its own
envelope sender (`own_envelope`: DMARC alignment is then its business), and what SPF must authorise
(`spf_include`, or the addresses of the relay its `relay_host_setting` names); a provider that
reaches nobody (`delivers=False`, the outbox) skips SPF.

DNS goes through dnspython, to the system's resolver or MAILER_DNS_NAMESERVER / --nameserver
HOST[:PORT]. SPF is evaluated by pyspf (the reference check_host(), RFC 7208: syntax errors,
the 10-lookup and void-lookup limits, include/redirect), its lookups routed to the same resolver;
a record using `exists:`, `ptr` or macros depends on the real sender and connection, so a
non-pass there is a warning ("cannot be evaluated here"), not a failure.

Longer than ~400 lines because it is one concern (the verdicts) with the DNS and SPF helpers only
those verdicts use; each check's message and fix stay next to its probe.
"""

from __future__ import annotations

import base64
import contextvars
import ipaddress
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Collection, Literal

import dns.exception
import dns.resolver
import spf
from cryptography.hazmat.primitives import serialization

from . import links
from .addresses import aligned, organizational_domain
from .config import Settings, secret_key_problem
from .errors import ConfigError
from .registry import provider_settings

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One verdict: `name` (stable identifier), `status`, what was found, and how to fix it."""

    name: str
    status: Status
    message: str
    fix: str = ""


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return all(check.status != "fail" for check in self.checks)

    def as_json(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}


# ----- DNS ----------------------------------------------------------------------------------------
class DnsFailure(Exception):
    """The resolver gave no usable answer (timeout, SERVFAIL, refused): not the same as "no record"."""


class Dns:
    """TXT and address lookups through dnspython. `nameserver` is HOST[:PORT] (default port 53);
    None uses the system's resolver. `timeout` is seconds per lookup, in total."""

    def __init__(self, nameserver: str | None = None, timeout: float = 5.0) -> None:
        self.resolver = dns.resolver.Resolver(configure=not nameserver)
        if nameserver:
            host, port = parse_nameserver(nameserver)
            self.resolver.nameservers = [host]
            self.resolver.port = port
        self.resolver.timeout = self.resolver.lifetime = timeout
        self.spf_seen: list[tuple[str, str]] = []  # (domain, TXT) read by the running SPF evaluation

    def _query(self, name: str, rdtype: str):
        try:
            return list(self.resolver.resolve(name, rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            raise DnsFailure(f"no answer for {name} {rdtype} within {self.resolver.lifetime:g} s") from None
        except dns.resolver.NoNameservers as exc:
            raise DnsFailure(f"no server answered {name} {rdtype} ({exc.msg if hasattr(exc, 'msg') else exc})") from None
        except dns.exception.DNSException as exc:
            raise DnsFailure(f"{name} {rdtype}: {exc}") from None

    def txt(self, name: str) -> list[str]:
        """Each TXT record's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2); [] when none."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self._query(name, "TXT")]

    def addresses(self, name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address(r.address) for rdtype in ("A", "AAAA") for r in self._query(name, rdtype)]

    def mx_hosts(self, name: str) -> list[str]:
        return [r.exchange.to_text(omit_final_dot=True) for r in self._query(name, "MX")]


def parse_nameserver(value: str) -> tuple[str, int]:
    """`HOST[:PORT]` or `[IPV6]:PORT` → (address, port). Raises ConfigError."""
    text = value.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        port = int(port)
        ipaddress.ip_address(host)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError(f"nameserver {value!r}: expected an IP address and optional port, e.g. 127.0.0.1:5353") from None
    return host, port


def tags(record: str) -> dict[str, str]:
    """A tag=value list (DKIM RFC 6376 §3.2, DMARC RFC 7489 §6.4) as a dict; whitespace removed from values."""
    out: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            out.setdefault(name.strip().lower(), "".join(value.split()))
    return out


# ----- checks -------------------------------------------------------------------------------------
def check_settings(settings: Settings) -> list[Check]:
    checks = []
    if settings.sender_email:
        checks.append(Check("from", "ok", f"From: {settings.from_address}"))
    else:
        checks.append(Check("from", "fail", "MAILER_FROM is missing",
                            "set MAILER_FROM='Name <newsletter@your-domain>' (an address at a domain you control)"))
    if settings.postal_address:
        checks.append(Check("postal_address", "ok", "postal address set"))
    else:
        checks.append(Check("postal_address", "fail", "MAILER_POSTAL_ADDRESS is missing",
                            "set MAILER_POSTAL_ADDRESS to the sender's postal address (CAN-SPAM and Yahoo want it)"))
    problem = settings.base_url_problem
    if problem and settings.allow_private_base_url:
        checks.append(Check("base_url", "warn", f"MAILER_BASE_URL {settings.base_url} {problem} "
                                                f"(MAILER_ALLOW_PRIVATE_BASE_URL: an intranet setup)",
                            "recipients outside your network cannot unsubscribe: use a public https URL"))
    elif problem:
        checks.append(Check("base_url", "fail", f"MAILER_BASE_URL {settings.base_url} {problem}",
                            "serve `mailer serve` behind https on a public name and set MAILER_BASE_URL to it "
                            "(RFC 8058 one-click needs an https URI)"))
    else:
        checks.append(Check("base_url", "ok", f"MAILER_BASE_URL {settings.base_url} is https and public"))
    problem = secret_key_problem(settings.secret_key)
    if problem:
        head, _, advice = problem.partition("; ")
        checks.append(Check("secret_key", "fail", head, advice))
    else:
        checks.append(Check("secret_key", "ok", "MAILER_SECRET_KEY is long and random-looking"))
    return checks


def _published_key_matches(record: dict[str, str], kind: str, ours_b64: str) -> bool:
    published = base64.b64decode(record.get("p", "") + "==", validate=False) if record.get("p") else b""
    ours = base64.b64decode(ours_b64)
    if published == ours:
        return True
    if kind == "rsa":  # RFC 6376 says SPKI; some publish the bare PKCS#1 key: compare the numbers
        try:
            theirs = serialization.load_der_public_key(published)
        except ValueError:
            try:
                theirs = serialization.load_der_public_key(_pkcs1_to_spki(published))
            except ValueError:
                return False
        mine = serialization.load_der_public_key(ours)
        return theirs.public_numbers() == mine.public_numbers()  # type: ignore[union-attr]
    return False


def _pkcs1_to_spki(pkcs1: bytes) -> bytes:
    """Wrap a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (rsaEncryption OID, NULL parameters)."""
    def der_len(n: int) -> bytes:
        if n < 0x80:
            return bytes([n])
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return bytes([0x80 | len(raw)]) + raw
    algorithm = bytes.fromhex("300d06092a864886f70d0101010500")
    bit_string = b"\x03" + der_len(len(pkcs1) + 1) + b"\x00" + pkcs1
    body = algorithm + bit_string
    return b"\x30" + der_len(len(body)) + body


def check_dkim(settings: Settings, resolver: Dns) -> Check:
    provider = settings.provider
    own = provider.own_dkim
    if own is not None:  # the provider signs with its domain authentication's key (SendGrid)
        domain = settings.sender_domain
        record = f"{own.selector}._domainkey.{domain}"
        try:
            found = resolver.txt(record)
        except DnsFailure as exc:
            return Check("dkim", "fail", f"DNS: {exc}", "check the resolver (--nameserver) and the domain's DNS")
        if found:
            return Check("dkim", "ok", f"{provider.shown} signs; its domain authentication record {record} exists "
                                       f"({provider.shown}'s own verification is not checked here)")
        return Check("dkim", "warn", f"{provider.shown} signs, but no {record} record: without {provider.shown} domain "
                                     f"authentication it signs as {own.fallback_domain}, not aligned with {domain}",
                     own.setup)
    if not settings.dkim_private_key:
        return Check("dkim", "fail", "messages are not DKIM-signed (MAILER_DKIM_PRIVATE_KEY is not set)",
                     "mailer dkim keygen --domain YOUR-DOMAIN, publish the TXT record it prints, "
                     "then set MAILER_DKIM_PRIVATE_KEY and MAILER_DKIM_SELECTOR")
    from .dkim_signing import dkim_warnings
    check = _check_dkim_record(settings, resolver)
    warnings = dkim_warnings(settings)  # shown whatever DNS says, as build, send and send --test show them
    if check.status == "fail" and warnings:
        return Check(check.name, check.status, f"{check.message}; also: " + "; ".join(warnings), check.fix)
    return check


def _check_dkim_record(settings: Settings, resolver: Dns) -> Check:
    from .dkim_signing import dkim_warnings, signer_for, txt_record_value
    signer = signer_for(settings)
    assert signer is not None
    name = f"{signer.selector}._domainkey.{signer.domain}"
    publish = f'publish TXT {name} "{txt_record_value(signer.key)}"'
    try:
        records = [r for r in resolver.txt(name) if "p=" in r or r.lower().startswith("v=dkim1")]
    except DnsFailure as exc:
        return Check("dkim", "fail", f"DNS: {exc}", "check the resolver (--nameserver) and the domain's DNS servers")
    if not records:
        return Check("dkim", "fail", f"no DKIM key published at {name}", publish)
    if len(records) > 1:
        return Check("dkim", "fail", f"{len(records)} DKIM records at {name}: verifiers may pick either",
                     f"keep only one: {publish}")
    record = tags(records[0])
    # RFC 6376 §3.6.1: what makes verifiers discard a key record, or refuse our rsa-sha256 signatures
    if "v" in record and record["v"] != "DKIM1":
        return Check("dkim", "fail", f"{name} has v={record['v']}: verifiers discard a key record whose v= is not "
                                     "DKIM1 (RFC 6376 §3.6.1)", publish)
    services = [service.lower() for service in record.get("s", "*").split(":")]
    if "*" not in services and "email" not in services:
        return Check("dkim", "fail", f"{name} has s={record['s']}: the key is not for email (s= must be * or "
                                     "include email, RFC 6376 §3.6.1)", publish)
    if signer.key.kind == "rsa" and "h" in record and "sha256" not in record["h"].lower().split(":"):
        return Check("dkim", "fail", f"{name} has h={record['h']}: verifiers refuse the rsa-sha256 signatures mailer "
                                     "makes (RFC 6376 §3.6.1)", publish)
    if not record.get("p"):
        return Check("dkim", "fail", f"the key at {name} is revoked (empty p=)", publish)
    if record.get("k", "rsa") != signer.key.kind:
        return Check("dkim", "fail", f"{name} publishes a k={record.get('k', 'rsa')} key, MAILER_DKIM_PRIVATE_KEY is "
                                     f"{signer.key.kind}", publish)
    try:
        matches = _published_key_matches(record, signer.key.kind, signer.key.public_key_b64)
    except ValueError:
        matches = False
    if not matches:
        return Check("dkim", "fail", f"the key published at {name} is not the public half of MAILER_DKIM_PRIVATE_KEY",
                     publish + " (or point MAILER_DKIM_PRIVATE_KEY at the key that record was made from)")
    warnings = dkim_warnings(settings)
    if "y" in record.get("t", "").split(":"):
        warnings.append(f"{name} has t=y (testing): verifiers may treat signatures as unsigned; remove it")
    kind = f"{signer.key.kind.upper()} {signer.key.bits}" if signer.key.kind == "rsa" else "Ed25519"
    if signer.key.kind == "ed25519":
        warnings.append("Ed25519 alone: not every receiver verifies Ed25519 signatures (RFC 8463) yet; RSA 2048 is "
                        "what every receiver verifies")
    if warnings:
        return Check("dkim", "warn", f"{name} matches the {kind} key; " + "; ".join(warnings))
    return Check("dkim", "ok", f"{name} publishes the {kind} key in MAILER_DKIM_PRIVATE_KEY")


def envelope_domain(settings: Settings) -> str:
    """The domain SPF is checked for: the envelope sender's (MAILER_BOUNCE_ADDRESS when set, else From)."""
    bounce = getattr(settings, "bounce_address", "") or ""
    return bounce.rpartition("@")[2].strip(">").lower() if "@" in bounce else settings.sender_domain


def _spf_record(resolver: Dns, domain: str) -> list[str]:
    return [r for r in resolver.txt(domain) if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]


# pyspf resolves through a module-level `DNSLookup(name, qtype, strict, timeout)`; this one sends each
# lookup of an evaluation running under `_spf_dns` to that evaluation's `Dns` (the configured server).
_SPF_DNS: contextvars.ContextVar["Dns | None"] = contextvars.ContextVar("mailer_spf_dns", default=None)
_PYSPF_LOOKUP = spf.DNSLookup
# Addresses no honest record authorises all of (TEST-NET-3, benchmarking, reserved): a record that
# passes them all (+all, a redirect= to one, ip4:0.0.0.0/0) authorises every server.
_ANY_SERVER = tuple(ipaddress.ip_address(a) for a in ("203.0.113.254", "198.18.255.254", "240.0.0.254"))
_UNEVALUABLE = re.compile(r"(?i)(?:^|\s)[-+~?]?(?:exists:|ptr\b)|%\{")


def _pyspf_lookup(name, qtype, strict=True, timeout=30):  # noqa: ANN001, ANN201 - pyspf's signature
    resolver = _SPF_DNS.get()
    if resolver is None:
        return _PYSPF_LOOKUP(name, qtype, strict, timeout)
    try:
        answers = resolver._query(name, qtype)
    except DnsFailure as exc:
        raise spf.TempError(str(exc)) from None
    out = []
    for rdata in answers:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            resolver.spf_seen.append((name.lower().rstrip("."), b"".join(rdata.strings).decode("utf-8", "replace")))
            out.append(((name, qtype), rdata.strings))
    return out


spf.DNSLookup = _pyspf_lookup


@dataclass(frozen=True)
class SpfResult:
    """pyspf's check_host() (RFC 7208 §4) for one address: `result` is pass, fail, softfail, neutral,
    none, permerror or temperror; `explanation` pyspf's reason (names the broken term or include);
    `records` every (domain, TXT) it read, includes and redirects included."""

    result: str
    explanation: str
    records: tuple[tuple[str, str], ...]

    @property
    def unevaluable(self) -> list[str]:
        """Terms whose outcome depends on the real sender or connection (exists:, ptr, macros)."""
        return [term for _, text in self.records if text.lower().startswith("v=spf1")
                for term in text.split()[1:] if _UNEVALUABLE.search(" " + term)]


def evaluate_spf(resolver: Dns, ip, domain: str, sender: str = "") -> SpfResult:
    """RFC 7208 check_host() by pyspf (the reference implementation: the 10-lookup and void-lookup
    limits of §4.6.4, syntax errors as permerror per §4.6, redirect= and include: as §5.2/§6.1),
    every lookup through `resolver`."""
    resolver.spf_seen = []
    token = _SPF_DNS.set(resolver)
    try:
        result, _code, explanation = spf.query(i=str(ip), s=sender or f"postmaster@{domain}", h=domain,
                                               timeout=resolver.resolver.lifetime).check()
    finally:
        _SPF_DNS.reset(token)
    return SpfResult(result, explanation, tuple(resolver.spf_seen))


@dataclass(frozen=True)
class SpfNeed:
    """What SPF must authorise for the configured provider: an `include` (a provider's documented
    domain) or the relay's `addresses`; `relay` names it in messages, `setting` the variable to
    correct, `note` what cannot be known from here."""

    relay: str
    include: str = ""
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    setting: str = ""
    note: str = ""

    def terms(self, missing: Collection = ()) -> str:
        """SPF mechanisms (RFC 7208 §5) authorising what is `missing` (default: everything)."""
        if self.include:
            return f"include:{self.include}"
        return " ".join(f"ip{ip.version}:{ip}" for ip in (missing or self.addresses))


def spf_need(settings: Settings) -> tuple[str, str, str]:
    """(include, who, where): the include SPF must name for this provider — its own (`spf_include`),
    the operator's (the provider's `spf_include_setting`, MAILER_SPF_INCLUDE) or a hosted relay's
    documented one (the provider's `hosted_relays`, matched on the relay host) — with the provider's
    name and where it came from; ("", "", "") when SPF must authorise the relay's addresses."""
    provider = settings.provider
    if provider.spf_include:
        return provider.spf_include, provider.shown, ""
    if provider.spf_include_setting:
        chosen = getattr(settings, provider.spf_include_setting, "")
        if chosen:
            return chosen, "your relay", provider_settings()[provider.spf_include_setting].env
    host = getattr(settings, provider.relay_host_setting, "") if provider.relay_host_setting else ""
    for relay in provider.hosted_relays:
        if host and relay.matches(host):
            return relay.include, relay.name, f"{provider_settings()[provider.relay_host_setting].env} {host}"
    return "", "", ""


def _spf_need(settings: Settings, resolver: Dns) -> SpfNeed | Check:
    provider = settings.provider
    include, who, where = spf_need(settings)
    if include:
        return SpfNeed(f"{who} (include:{include}" + (f", for {where})" if where else ")"), include=include)
    host = getattr(settings, provider.relay_host_setting)
    variable = provider_settings()[provider.relay_host_setting].env
    override = (provider_settings()[provider.spf_include_setting].env if provider.spf_include_setting
                else "")
    note = ("a relay whose outbound servers are not its submission address cannot be checked from here"
            + (f": set {override} to the include: your relay documents" if override else ""))
    try:
        try:
            addresses = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            addresses = resolver.addresses(host)
    except DnsFailure as exc:
        return Check("spf", "fail", f"DNS: {exc}", f"check {variable} and the resolver")
    if not addresses:
        return Check("spf", "fail", f"the {provider.shown} host {host} has no address in DNS", f"check {variable}")
    return SpfNeed(host, addresses=tuple(dict.fromkeys(addresses)), setting=variable, note=note)


def _publish(name: str, value: str, replacing: str = "") -> str:
    """A fix that is a DNS record: `publish TXT NAME "VALUE"` (pasteable), naming the record it replaces."""
    return f'publish TXT {name} "{value}"' + (f' in place of "{replacing}"' if replacing else "")


def spf_with(record: str, terms: str) -> str:
    """`record` with `terms` (mechanisms) placed first after `v=spf1`, so they are evaluated before any
    mechanism that refuses (RFC 7208 §4.6.2: the first match wins) and before a redirect=."""
    head, _, rest = record.partition(" ")
    return " ".join(part for part in (head, terms, rest.strip()) if part)


def check_spf(settings: Settings, resolver: Dns) -> Check:
    domain = envelope_domain(settings)
    try:
        records = _spf_record(resolver, domain)
    except DnsFailure as exc:
        return Check("spf", "fail", f"DNS: {exc}", "check the resolver (--nameserver) and the domain's DNS servers")
    provider = settings.provider
    if not provider.delivers:
        return Check("spf", "skip", f"SPF at {domain}: {' | '.join(records) or 'none'} (the {provider.name} backend "
                                    f"sends nothing)")
    if not (provider.spf_include or provider.relay_host_setting):
        if not records:
            return Check("spf", "fail", f"no SPF record at {domain}",
                         f"publish an SPF record at {domain} naming the servers {provider.shown} sends from")
        return Check("spf", "skip", f"SPF at {domain}: {records[0]} (the {provider.name} backend names no relay or "
                                    f"include to check)")
    need = _spf_need(settings, resolver)
    if not records:
        if isinstance(need, Check):
            return Check("spf", "fail", f"no SPF record at {domain}; and {need.message}", need.fix)
        return Check("spf", "fail", f"no SPF record at {domain}", _publish(domain, f"v=spf1 {need.terms()} ~all"))
    if len(records) > 1:
        return Check("spf", "fail", f"{len(records)} SPF records at {domain}: a permanent error (RFC 7208 §4.5)",
                     "merge them into one v=spf1 record")
    record = records[0]
    probes = [evaluate_spf(resolver, ip, domain) for ip in _ANY_SERVER]
    if all(probe.result == "pass" for probe in probes):
        return Check("spf", "fail", f"{domain}'s SPF authorises every server on the Internet "
                                    f"(+all, or a record it includes or redirects to): {record}",
                     "end every record it uses with ~all or -all, and list only your relays")
    broken = next((probe for probe in probes if probe.result in ("permerror", "temperror")
                   and not _UNEVALUABLE.search(probe.explanation)), None)
    if broken is not None and broken.result == "permerror":
        return Check("spf", "fail", f"{domain}'s SPF is a permanent error (RFC 7208 §4.6): receivers treat it as "
                                    f"no SPF at all: {broken.explanation}",
                     f"fix the record at {domain} (or the one it includes/redirects to): {broken.explanation}")
    if broken is not None:
        return Check("spf", "fail", f"DNS while evaluating SPF: {broken.explanation}",
                     "check the resolver and the included domains")
    if isinstance(need, Check):
        return need
    if need.include:
        covered = any(name == need.include for name, _ in probes[0].records)
        results, missing = [probes[0]], ()
    else:
        results = [evaluate_spf(resolver, ip, domain) for ip in need.addresses]
        missing = tuple(ip for ip, result in zip(need.addresses, results) if result.result != "pass")
        covered = not missing
        need = SpfNeed(f"{need.relay} ({', '.join(f'{ip}: {r.result}' for ip, r in zip(need.addresses, results))})",
                       addresses=need.addresses, setting=need.setting, note=need.note)
    for result in results:
        if result.result in ("permerror", "temperror") and not _UNEVALUABLE.search(result.explanation):
            return Check("spf", "fail", f"{domain}'s SPF, for {need.relay}: {result.result}: {result.explanation}",
                         f"fix the record at {domain} (or the one it includes/redirects to): {result.explanation}")
    unevaluable = sorted({term for result in results for term in result.unevaluable})
    if any(result.result in ("permerror", "temperror") for result in results):  # on a macro-built name
        unevaluable = unevaluable or sorted({r.explanation.rpartition(": ")[2] for r in results})
    fix = _publish(domain, spf_with(record, need.terms(missing)), replacing=record)
    note = f" ({need.note})" if need.note else ""
    if not covered and unevaluable:
        return Check("spf", "warn", f"{domain}'s SPF uses {' '.join(unevaluable)}, which cannot be evaluated here "
                                    f"(its outcome depends on the real envelope sender and connection): {record}",
                     f"send a test to a mailbox and read its Authentication-Results (spf=pass), or {fix}")
    if not covered:
        return Check("spf", "fail", f"{domain}'s SPF does not authorise {need.relay}: {record}{note}", fix)
    depends = f" (depends on the real sender: {' '.join(unevaluable)})" if unevaluable else ""
    return Check("spf", "ok", f"{domain}'s SPF authorises {need.relay}{depends}")


def check_dmarc(settings: Settings, resolver: Dns) -> Check:
    domain = settings.sender_domain
    found_at, records = None, []
    try:
        # the From domain, then its organizational domain (RFC 7489 §6.6.3), never a public suffix
        for candidate in dict.fromkeys(name for name in (domain, organizational_domain(domain)) if name):
            records = [r for r in resolver.txt(f"_dmarc.{candidate}") if r.lower().replace(" ", "").startswith("v=dmarc1")]
            if records:
                found_at = candidate
                break
    except DnsFailure as exc:
        return Check("dmarc", "fail", f"DNS: {exc}", "check the resolver (--nameserver) and the domain's DNS servers")
    publish = f'publish TXT _dmarc.{domain} "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"'
    if not records:
        return Check("dmarc", "fail", f"no DMARC record at _dmarc.{domain}: Gmail and Yahoo require one from bulk senders",
                     publish + " (then move to p=quarantine once the reports show only your own mail)")
    if len(records) > 1:
        return Check("dmarc", "fail", f"{len(records)} DMARC records at _dmarc.{found_at}: receivers ignore both "
                                      f"(RFC 7489 §6.6.3)", "keep only one")
    record = tags(records[0])
    policy = record.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return Check("dmarc", "fail", f"_dmarc.{found_at} has no valid p= tag: {records[0]}", publish)
    # DMARC passes when SPF or DKIM passes for a domain aligned with From (RFC 7489 §3.1, §4.2): SPF's is
    # the envelope sender's (Return-Path: MAILER_BOUNCE_ADDRESS, else From), DKIM's the signature's d=.
    strict_dkim = record.get("adkim", "r").lower() == "s"
    strict_spf = record.get("aspf", "r").lower() == "s"
    notes: list[str] = []
    provider = settings.provider
    if provider.own_dkim is None and not provider.own_envelope:  # else its own signature and Return-Path
        from .dkim_signing import signer_for
        signer = signer_for(settings) if settings.dkim_private_key else None
        envelope = envelope_domain(settings)
        spf_aligned = aligned(envelope, domain, strict=strict_spf)
        dkim_aligned = signer is not None and aligned(signer.domain, domain, strict=strict_dkim)
        dkim_fix = spf_fix = ""
        if signer is None:
            dkim_fix = "sign with DKIM (mailer dkim keygen, MAILER_DKIM_PRIVATE_KEY)"
        elif not dkim_aligned:
            dkim_fix = (f"set MAILER_DKIM_DOMAIN={domain} (and publish its key)"
                        + (" or relax adkim (adkim=r)" if strict_dkim and aligned(signer.domain, domain) else ""))
            notes.append(f"DKIM signs as d={signer.domain}, not aligned with From {domain} "
                         f"({'strict' if strict_dkim else 'relaxed'} adkim)")
        if not spf_aligned:
            spf_fix = (f"use a MAILER_BOUNCE_ADDRESS at {domain}"
                       + (" or relax aspf (aspf=r)" if strict_spf and aligned(envelope, domain) else ""))
            notes.append(f"the envelope sender's domain {envelope} (MAILER_BOUNCE_ADDRESS) is not aligned with From "
                         f"{domain} ({'strict' if strict_spf else 'relaxed'} aspf): SPF does not count for DMARC")
        if not spf_aligned and not dkim_aligned:
            return Check("dmarc", "fail", "DMARC cannot pass: neither SPF nor DKIM is aligned with From: "
                                          + "; ".join(notes or [f"no DKIM signature and SPF for {envelope}"]),
                         "; or ".join(fix for fix in (dkim_fix, spf_fix) if fix))
        if notes:
            return Check("dmarc", "warn", f"DMARC passes through {'SPF' if spf_aligned else 'DKIM'} only: "
                                          + "; ".join(notes)
                                          + (" (forwarding breaks SPF)" if spf_aligned else ""),
                         dkim_fix or spf_fix)
    where = f"_dmarc.{found_at}" + ("" if found_at == domain else f" (for {domain})")
    if policy == "none":
        return Check("dmarc", "warn", f"{where}: p=none, monitoring only (accepted by Gmail and Yahoo)",
                     "once the aggregate reports (rua=) show only your own mail passing, move to p=quarantine")
    return Check("dmarc", "ok", f"{where}: p={policy}")


def check_one_click(settings: Settings, timeout: float = 10.0) -> Check:
    if not settings.secret_key:
        return Check("one_click", "fail", "MAILER_SECRET_KEY is not set: no link can be checked",
                     "set MAILER_SECRET_KEY (the same as `mailer serve` uses)")
    url = links.unsubscribe_url(settings.base_url, settings.secret_key.encode("utf-8"), links.TEST_SUBSCRIBER_ID)
    shown = links.unsubscribe_prefix(settings.base_url) + "…"
    request = urllib.request.Request(url, data=b"List-Unsubscribe=One-Click", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
            return None

    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check("one_click", "fail", f"POST {shown}: cannot connect ({reason})",
                     "run `mailer serve` where MAILER_BASE_URL points (behind an https proxy)")
    if 200 <= status < 300:
        return Check("one_click", "ok", f"POST {shown} (RFC 8058 one-click, probe token) answered {status}")
    if 300 <= status < 400:
        fix = "answer the POST itself: receivers do not follow redirects for one-click (RFC 8058 §3.2)"
    elif status == 400:
        fix = "the server there does not accept this MAILER_SECRET_KEY's links: run `mailer serve` with the same key"
    elif status in (404, 405):
        fix = "this is not `mailer serve`: route MAILER_BASE_URL/u/ to it"
    else:
        fix = "see the server's log"
    return Check("one_click", "fail", f"POST {shown} answered {status}, RFC 8058 expects 200", fix)


CHECKS = ("from", "postal_address", "base_url", "secret_key", "dkim", "spf", "dmarc", "one_click")


def run_doctor(settings: Settings, *, nameserver: str | None = None, dns_timeout: float = 5.0,
               http_timeout: float = 10.0, only: Collection[str] = CHECKS) -> Report:
    """The checks named in `only` (default: all of CHECKS), in that order. `nameserver` (HOST[:PORT])
    overrides MAILER_DNS_NAMESERVER; timeouts are seconds. Never raises for what it finds (a failed
    check is a `fail` verdict); ConfigError for a malformed nameserver."""
    resolver = Dns(nameserver or settings.dns_nameserver or None, dns_timeout)
    checks = check_settings(settings)
    dns_checks = {"dkim": check_dkim, "spf": check_spf, "dmarc": check_dmarc}
    for name, check in dns_checks.items():
        if name in only:
            checks.append(check(settings, resolver) if settings.sender_email else
                          Check(name, "skip", "needs MAILER_FROM (its domain is what is checked)"))
    if "one_click" in only:
        checks.append(check_one_click(settings, http_timeout))
    return Report(tuple(check for check in checks if check.name in only))
