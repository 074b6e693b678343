"""`mailer dkim keygen` and `mailer doctor`: thin commands over `dkim_signing` and `doctor`."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import click

from ..config import load_settings
from ..errors import ConfigError
from .main import handle_errors, main

_VERDICT = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}


@main.group()
def dkim() -> None:
    """DKIM keys (RFC 6376) for signing with the outbox and smtp backends."""


@dkim.command("keygen")
@click.option("--selector", default=None, help="DKIM selector (default: mailerYYYYMM, so the next rotation gets a new one).")
@click.option("--domain", default=None, help="Signing domain (default: MAILER_DKIM_DOMAIN, else the From domain).")
@click.option("--type", "kind", type=click.Choice(["rsa", "ed25519"]), default="rsa", show_default=True,
              help="Key type: RSA 2048 (verified everywhere) or Ed25519 (RFC 8463).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Where to write the private key (default: dkim/SELECTOR._domainkey.DOMAIN.pem); never overwritten.")
@handle_errors
def dkim_keygen(selector: str | None, domain: str | None, kind: str, out: Path | None) -> None:
    """Write a new private key (mode 0600) and print the DNS TXT record to publish."""
    from ..dkim_signing import generate_key, keygen_domain
    try:
        settings = load_settings()
    except ConfigError:  # the DKIM settings may name the key about to be made: read the others
        settings = load_settings(dkim_private_key="", dkim_selector="", dkim_domain="")
    selector = selector or settings.dkim_selector or f"mailer{date.today():%Y%m}"
    domain = domain or settings.dkim_domain or (settings.sender_domain if settings.sender_email else "")
    if not domain:
        raise ConfigError("no domain to make a key for: pass --domain or set MAILER_FROM")
    domain = keygen_domain(domain)  # EXAMPLE.ORG. and example.org: one file name, one record name
    if out is None:
        out = settings.root / "dkim" / f"{selector}._domainkey.{domain}.pem"
    made = generate_key(out, selector, domain, kind)
    size = f"RSA {made.key.bits}" if made.key.kind == "rsa" else "Ed25519"
    click.echo(f"wrote {made.path} ({size} private key, mode 0600: keep it secret, back it up)")
    click.echo("publish this DNS TXT record:")
    click.echo(f"  name:  {made.record_name}")
    click.echo(f"  value: {made.record_value}")
    chunks = [made.record_value[i:i + 250] for i in range(0, len(made.record_value), 250)]
    click.echo("  zone file: " + f"{made.record_name}. IN TXT ( " + " ".join(f'"{c}"' for c in chunks) + " )")
    click.echo("then set:")
    click.echo(f"  MAILER_DKIM_PRIVATE_KEY={made.path}")
    click.echo(f"  MAILER_DKIM_SELECTOR={selector}")
    if settings.sender_email and domain != settings.sender_domain:
        click.echo(f"  MAILER_DKIM_DOMAIN={domain}")
    click.echo("and check with: mailer doctor")


@main.command()
@click.option("--nameserver", default=None, metavar="HOST[:PORT]",
              help="DNS server to ask (default: MAILER_DNS_NAMESERVER, else the system's resolver).")
@click.option("--dns-timeout", type=float, default=5.0, show_default=True, help="Seconds per DNS lookup.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: {ok, checks: [{name, status, message, fix}]}.")
@handle_errors
def doctor(nameserver: str | None, dns_timeout: float, as_json: bool) -> None:
    """Is this configuration ready for a real send? One verdict a line (settings, DKIM, SPF, DMARC,
    one-click unsubscribe, secret key), each with a fix; exit 1 when any check fails."""
    from ..doctor import run_doctor
    report = run_doctor(load_settings(), nameserver=nameserver, dns_timeout=dns_timeout)
    if as_json:
        click.echo(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    else:
        for check in report.checks:
            click.echo(f"{_VERDICT[check.status]} {check.name:<15} {check.message}")
            if check.fix and check.status in ("fail", "warn"):
                click.echo(f"     {'':<15} fix: {check.fix}")
        failed = sum(check.status == "fail" for check in report.checks)
        click.echo("ready for a real send" if not failed else f"{failed} check(s) failed: not ready for a real send")
    sys.exit(0 if report.ok else 1)
