"""DKIM signing: every message the smtp and outbox backends hand over, and `mailer build`'s .eml, verifies
with dkimpy against the key `mailer dkim keygen` published (a DNS function handed to the verifier, no
network); a message changed after signing does not; a bad key is a one-line error before anything leaves."""

from __future__ import annotations

import base64
import hashlib
import os
import random
from email import message_from_bytes, policy
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mailer.sending import dispatch
from mailer.sending.prepare import send_warnings
from mailer.dkim_signer import BodyHasher
from mailer.dkim_signing import DkimKeyError, dkim_warnings, generate_key, txt_record_value, load_private_key
from mailer.errors import ConfigError
from mailer.content.issue import load_issue
from mailer.mime import MessageFactory
from mailer.content.render import Recipient, render_issue
from mailer.subscribers import add_subscriber

from .cli_support import invoke
from .conftest import BASE_ENV, EXAMPLE_ISSUE
from .smtp_server import start_server

SELECTOR = "mailer202611"


def make_key(project: Path, kind: str, name: str = "dkim.pem", selector: str = SELECTOR, domain: str = "example.org"):
    return generate_key(project / name, selector, domain, kind)


def dns_for(*keys):
    """A dkimpy dnsfunc answering each generated key's TXT record, nothing else."""
    table = {(key.record_name + ".").encode("ascii"): key.record_value.encode("ascii") for key in keys}

    def dnsfunc(name, timeout=5):  # noqa: ANN001, ANN202
        return table.get(name)
    return dnsfunc


def _db_url(store) -> str:  # noqa: ANN001
    return store.engine.url.render_as_string(hide_password=False)


def dkim_env(key, **extra) -> dict[str, str]:
    return {"MAILER_DKIM_PRIVATE_KEY": str(key.path), "MAILER_DKIM_SELECTOR": key.record_name.split(".")[0], **extra}


def signature_tags(message: bytes) -> dict[bytes, bytes]:
    parsed = message_from_bytes(message, policy=policy.compat32)
    return dkim.util.parse_tag_value(parsed["DKIM-Signature"].encode("ascii"))


# ----- through the real backends ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_smtp_send_signs_every_message(kind, project, make_settings, sqlite_store):
    key = make_key(project, kind)
    server = start_server()
    try:
        settings = make_settings(database_url=_db_url(sqlite_store), MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1", MAILER_SMTP_PORT=str(server.port),
                                 MAILER_SMTP_TLS="none", **dkim_env(key))
        for address, name in (("zoe@example.net", "Zoé  Durand"), ("a.b+tag@example.net", ""),
                              ("u@example.net", "Ünïcødé Nåme")):
            add_subscriber(sqlite_store, address, name=name)
        report = dispatch.send_issue(settings, sqlite_store, EXAMPLE_ISSUE)
        assert report.counts["sent"] == 3
        received = server.handler.messages
    finally:
        server.stop()
    assert len(received) == 3
    for item in received:
        assert item.data.startswith(b"DKIM-Signature: ")
        assert dkim.verify(item.data, dnsfunc=dns_for(key)), item.data[:400]
        tags = signature_tags(item.data)
        assert tags[b"a"] == (b"rsa-sha256" if kind == "rsa" else b"ed25519-sha256")
        assert tags[b"c"] == b"relaxed/relaxed" and tags[b"d"] == b"example.org" and tags[b"s"] == SELECTOR.encode()
        signed = [name.strip() for name in tags[b"h"].split(b":")]
        for header in (b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
                       b"list-unsubscribe-post", b"list-id", b"mime-version", b"content-type"):
            assert signed.count(header) == 2, header  # signed and oversigned
        field = item.data[:item.data.index(b"\r\n", item.data.index(b" b=")) + 2]
        while item.data[len(field):len(field) + 1] == b" ":  # the signature's continuation lines
            field = item.data[:item.data.index(b"\r\n", len(field)) + 2]
        assert all(len(line) <= 78 for line in field.split(b"\r\n"))


def test_outbox_send_and_build_are_signed(project, make_settings, sqlite_store):
    key = make_key(project, "rsa")
    settings = make_settings(database_url=_db_url(sqlite_store), **dkim_env(key, MAILER_BOUNCE_ADDRESS="bounces@example.org"))
    for i in range(3):
        add_subscriber(sqlite_store, f"reader{i}@example.net", name=f"Lecteur {i}")
    assert dispatch.send_issue(settings, sqlite_store, EXAMPLE_ISSUE).counts["sent"] == 3
    files = sorted((settings.outbox_dir).rglob("*.eml"))
    assert len(files) == 3
    for path in files:  # the VERP Return-Path the outbox puts on top is outside the signature
        assert path.read_bytes().startswith(b"Return-Path: <bounces+")
        assert dkim.verify(path.read_bytes(), dnsfunc=dns_for(key))
    result = invoke(["build", EXAMPLE_ISSUE, "--out", "built"], project, dkim_env(key))
    assert result.returncode == 0, result.stderr
    assert dkim.verify((project / "built" / "email.eml").read_bytes(), dnsfunc=dns_for(key))


# ----- tampering ----------------------------------------------------------------------------------
@pytest.fixture
def signed(project, make_settings):
    key = make_key(project, "rsa")
    settings = make_settings(**dkim_env(key))
    factory = MessageFactory(render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings))
    recipient = Recipient(email="zoe@example.net", name="Zoé Durand", unsubscribe_url="https://lettre.example.org/u/tok1")
    return key, factory.build(recipient, "<m1@example.org>")


@pytest.mark.parametrize("change", [
    (b"Subject: ", b"Subject: URGENT "),
    (b"https://lettre.example.org/u/tok1", b"https://evil.example.net/u/tok1"),  # List-Unsubscribe and body
    (b"To: ", b"To: x"),
    (b"\r\n\r\n", b"\r\nFrom: Someone Else <ceo@example.org>\r\n\r\n"),  # a second From: oversigned
    (b"\r\n\r\n", b"\r\nSubject: second subject\r\n\r\n"),
    (b"</body>", b"</b0dy>"),  # one byte in the body
], ids=["subject", "unsubscribe-url", "to", "added-from", "added-subject", "body"])
def test_a_change_after_signing_fails_verification(signed, change):
    key, message = signed
    assert dkim.verify(message, dnsfunc=dns_for(key))
    old, new = change
    head, sep, body = message.partition(b"\r\n\r\n")
    if old == b"\r\n\r\n":
        tampered = head + new + body
    elif old == b"</body>":
        tampered = head + sep + body.replace(old, new, 1)
    else:
        tampered = message.replace(old, new)
    assert tampered != message
    assert not dkim.verify(tampered, dnsfunc=dns_for(key))


def test_a_refolded_header_still_verifies(signed):
    # relaxed/relaxed: a relay that re-folds a header or changes whitespace does not break the signature
    key, message = signed
    assert dkim.verify(message.replace(b"List-Unsubscribe-Post: ", b"List-Unsubscribe-Post:\t  "), dnsfunc=dns_for(key))


def test_another_key_does_not_verify(signed, project):
    key, message = signed
    other = make_key(project, "rsa", name="other.pem")
    assert not dkim.verify(message, dnsfunc=dns_for(other))


# ----- the body hash against dkimpy's own canonicalisation ----------------------------------------
_ALPHABET = "aé z\t  =.-_/:ü€😀<>&\"'"


def _random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(n))


def test_body_hash_equals_dkimpy_on_generated_recipients(project, make_settings, sample_size):
    """Oracle: dkimpy canonicalising the whole built body; values with runs of spaces and tabs, trailing
    spaces, non-ASCII, empty and long values."""
    key = make_key(project, "ed25519")
    settings = make_settings(**dkim_env(key))
    factory = MessageFactory(render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings))
    assert factory._body_hasher.aligned  # the fast path is the one exercised
    rng = random.Random(14)
    policy_ = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    for i in range(sample_size(150)):
        name = _random_text(rng, rng.choice([0, 1, 5, 40, 200]))
        recipient = Recipient(email=f"r{i}@example.net", name=name,
                              unsubscribe_url=f"https://lettre.example.org/u/{'x' * rng.randint(1, 300)}")
        message = factory.build(recipient, f"<m{i}@example.org>")
        body = message.partition(b"\r\n\r\n")[2]
        expected = base64.b64encode(hashlib.sha256(policy_.canonicalize_body(body)).digest())
        assert signature_tags(message)[b"bh"].replace(b" ", b"") == expected, name
        assert dkim.verify(message, dnsfunc=dns_for(key))


# ----- the signature: our header hash against dkimpy's, on generated messages ------------------------
_NAMES = ["", "Zoé  Durand", "a\tb", "  lead and trail  ", "Ünïcødé Nåme " * 6, "=?utf-8?q?not_a_word?=",
          "O'Brien, \"Jr.\"", "x" * 90, "日本語の名前", "émile\u00a0zola", "😀 " * 20]
_SUBJECTS = ["", "[TEST] ", "Plain  ascii\twith\truns   ", "Très long sujet accentué « guillemets » " * 3,
             "x" * 120 + " ", "=?iso-8859-1?q?fake?= ", "😀 émoji "]


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_signatures_verify_and_equal_dkimpys_whole_head_hash(kind, project, make_settings):
    """Every shape the factory writes (folded To and Subject, RFC 2047 encoded words, runs of spaces and
    tabs, long unsubscribe URLs, From with a non-ASCII display name) verifies with dkimpy, and the fast
    path (fixed fields canonicalised once) gives byte for byte the signature of the general path, which
    hands the whole head to dkimpy's `rfc822_parse` and `hash_headers` (both algorithms are deterministic)."""
    key = make_key(project, kind)
    rng = random.Random(1406)
    senders = ["Le Fil du jeudi <lettre@example.org>", "Rédaction « Le Fil » <lettre@example.org>",
               "lettre@example.org"]
    checked = 0
    for index, (sender, subject) in enumerate((s, p) for s in senders for p in _SUBJECTS):
        settings = make_settings(**dkim_env(key, MAILER_FROM=sender,
                                            MAILER_REPLY_TO="Courrier des lecteurs <courrier@example.org>"
                                            if index % 2 else ""))
        factory = MessageFactory(render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings),
                                 subject_prefix=subject)
        assert factory._head_hasher.usable
        for i in range(6):
            name = rng.choice(_NAMES) if i < 4 else _random_text(rng, rng.choice([3, 60, 200]))
            recipient = Recipient(email=f"r{i}.{index}@example.net", name=name,
                                  unsubscribe_url=f"https://lettre.example.org/u/{'t' * rng.randint(1, 400)}")
            message = factory.build(recipient, f"<m{i}.{index}@example.org>", "Thu, 26 Nov 2026 07:00:00 +0000")
            assert dkim.verify(message, dnsfunc=dns_for(key)), message[:1200]
            stamp = int(signature_tags(message)[b"t"])
            unsigned = message[message.index(b"\r\nDate: ") + 2:]
            assert factory.signer.sign(unsigned, now=stamp) == message
            checked += 1
    assert checked == len(senders) * len(_SUBJECTS) * 6


def test_a_repeated_signed_field_takes_dkimpys_path(project, make_settings):
    """A fixed header that repeats a signed name (h= then picks instances bottom-up): the whole head
    goes through dkimpy, and the message still verifies."""
    key = make_key(project, "ed25519")
    settings = make_settings(**dkim_env(key))
    rendered = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
    factory = MessageFactory(rendered, extra_headers={"Subject": "a second subject"})
    assert not factory._head_hasher.usable
    message = factory.build(Recipient(email="z@example.net", name="Zoé", unsubscribe_url="https://lettre.example.org/u/t"),
                            "<r@example.org>")
    assert dkim.verify(message, dnsfunc=dns_for(key))


_WS = [" ", "  ", "\t", " \t ", "\r\n ", "\r\n\t", "  \r\n  "]


def test_head_hasher_equals_dkimpy_on_generated_fields():
    """HeadHasher (fixed fields canonicalised once, skipping dkimpy's regular expressions where they
    change nothing) against dkimpy's `hash_headers` over the whole head, on values with every kind of
    whitespace: runs, tabs, folding with spaces or tabs, leading and trailing."""
    from mailer.dkim_signer import HeadHasher, _POLICY, _H_TAG
    rng = random.Random(77)

    def value() -> bytes:
        words = [rng.choice(["a", "é", "=?utf-8?q?x?=", "<u@x>", "b,c", ""]) for _ in range(rng.randint(0, 6))]
        text = "".join(rng.choice(_WS) + word for word in words) + rng.choice(["", " ", "\t", "  "])
        return text.encode("utf-8")

    fixed_names = [b"From", b"Subject", b"List-Id", b"MIME-Version", b"Content-Type", b"X-Other"]
    dynamic_names = [b"Date", b"To", b"Message-ID", b"List-Unsubscribe"]
    for _ in range(400):
        fixed = b"".join(name + b":" + value() + b"\r\n" for name in rng.sample(fixed_names, rng.randint(0, 6)))
        fields = [name + b":" + value() + b"\r\n" for name in dynamic_names]
        hasher = HeadHasher(fixed, dynamic_names)
        assert hasher.usable
        ours = _Collect()
        hasher.update(ours, fields)
        headers, _ = dkim.rfc822_parse(b"".join(fields) + fixed + b"\r\n")
        theirs = _Collect()
        for name, canonical in dkim.select_headers(_POLICY.canonicalize_headers(headers), _H_TAG):
            theirs.update(name + b":" + canonical)
        assert ours.data == theirs.data, (fixed, fields)


class _Collect:
    def __init__(self) -> None:
        self.data = b""

    def update(self, data: bytes) -> None:
        self.data += data


@pytest.mark.parametrize("pieces", [
    (b"a  b \r\n", "s", b"c\r\n\r\n\r\n"),       # aligned; trailing empty lines dropped at the end only
    (b"a", "s", b"c\r\n"),                        # slot in the middle of a line: fallback
    ("s", b"tail  \r\n"),                          # slot first
    (b"head\r\n", "s"),                            # slot last
    (b"only static \t\r\n\r\n",),
], ids=["aligned", "mid-line", "slot-first", "slot-last", "static"])
def test_body_hasher_any_pieces(pieces):
    hasher = BodyHasher(pieces)
    policy_ = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    for fill in (b"x\r\n", b"  y \t \r\n", b"\r\n", b"no line end", b""):
        body = b"".join(p if isinstance(p, bytes) else fill for p in pieces)
        expected = base64.b64encode(hashlib.sha256(policy_.canonicalize_body(body)).digest())
        assert hasher.body_hash({"s": fill}) == expected, (pieces, fill)


# ----- bad configuration --------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pem(key, encryption=None) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption or serialization.NoEncryption())


BAD_KEYS = {
    "missing": (lambda p: p / "nope.pem", "cannot read"),
    "not-pem": (lambda p: _write(p / "k.pem", b"not a key"), "not a PEM private key"),
    "garbage-pem": (lambda p: _write(p / "k.pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
                    "not a usable PEM private key"),
    "ec": (lambda p: _write(p / "k.pem", _pem(ec.generate_private_key(ec.SECP256R1()))), "holds an EC key; DKIM signs with RSA (RFC 6376) or Ed25519"),
    "encrypted": (lambda p: _write(p / "k.pem", _pem(rsa.generate_private_key(65537, 2048),
                                                      serialization.BestAvailableEncryption(b"pw"))), "encrypted"),
    "directory": (lambda p: (p / "keys").mkdir() or (p / "keys"), "cannot read"),
}


@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_a_bad_key_is_one_line_naming_the_setting_and_nothing_is_sent(case, project, sqlite_store):
    make, reason = BAD_KEYS[case]
    path = make(project)
    add_subscriber(sqlite_store, "reader@example.net")
    env = dict(MAILER_DKIM_PRIVATE_KEY=str(path), MAILER_DKIM_SELECTOR=SELECTOR, MAILER_DATABASE_URL=_db_url(sqlite_store))
    result = invoke(["send", EXAMPLE_ISSUE, "--yes"], project, env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MAILER_DKIM_PRIVATE_KEY") and reason in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "outbox").exists() or not any((project / "outbox").rglob("*.eml"))


@pytest.mark.parametrize("env, message", [
    ({"MAILER_DKIM_SELECTOR": SELECTOR}, "MAILER_DKIM_SELECTOR is set but MAILER_DKIM_PRIVATE_KEY is not"),
    ({"MAILER_DKIM_PRIVATE_KEY": "KEY"}, "MAILER_DKIM_PRIVATE_KEY is set but MAILER_DKIM_SELECTOR is not"),
    ({"MAILER_DKIM_PRIVATE_KEY": "KEY", "MAILER_DKIM_SELECTOR": "bad_selector"}, "MAILER_DKIM_SELECTOR 'bad_selector' is not"),
    ({"MAILER_DKIM_PRIVATE_KEY": "KEY", "MAILER_DKIM_SELECTOR": "-x"}, "is not a DKIM selector"),
    ({"MAILER_DKIM_PRIVATE_KEY": "KEY", "MAILER_DKIM_SELECTOR": "a..b"}, "is not a DKIM selector"),
    ({"MAILER_DKIM_PRIVATE_KEY": "KEY", "MAILER_DKIM_SELECTOR": "s", "MAILER_DKIM_DOMAIN": "not a domain"},
     "MAILER_DKIM_DOMAIN 'not a domain' is not a domain"),
    ({"MAILER_DKIM_DOMAIN": "example.org"}, "MAILER_DKIM_DOMAIN is set but"),
    ({"MAILER_DKIM_PRIVATE_KEY": "KEY", "MAILER_DKIM_SELECTOR": "s", "MAILER_FROM": ""}, "no domain to sign for"),
])
def test_settings_errors(env, message, project, make_settings):
    key = make_key(project, "ed25519")
    env = {name: str(key.path) if value == "KEY" else value for name, value in env.items()}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        make_settings(**env)
    assert "\n" not in str(info.value)


def test_selector_and_domain_accepted(project, make_settings):
    key = make_key(project, "ed25519")
    settings = make_settings(**dkim_env(key, MAILER_DKIM_SELECTOR="news-2026.eu", MAILER_DKIM_DOMAIN="Exämple.org"))
    from mailer.dkim_signing import signer_for
    assert signer_for(settings).domain == "xn--exmple-cua.org"


def test_warnings_short_rsa_unaligned_domain_sendgrid_readable(project, make_settings, sqlite_store):
    short = rsa.generate_private_key(65537, 1024)
    path = _write(project / "short.pem", _pem(short))
    path.chmod(0o644)
    settings = make_settings(MAILER_DKIM_PRIVATE_KEY=str(path), MAILER_DKIM_SELECTOR="s",
                             MAILER_DKIM_DOMAIN="other-domain.net", MAILER_BACKEND="sendgrid", SENDGRID_API_KEY="SG.x")
    text = " | ".join(dkim_warnings(settings))
    assert "1024 bits" in text and "not aligned" in text and "SendGrid signs" in text and "chmod 600" in text
    shown = send_warnings(make_settings(MAILER_DKIM_PRIVATE_KEY=str(path), MAILER_DKIM_SELECTOR="s",
                                        database_url=_db_url(sqlite_store)), sqlite_store, EXAMPLE_ISSUE)
    assert any("1024 bits" in warning for warning in shown)  # what `mailer send` prints before it asks
    good = make_key(project, "rsa")
    assert dkim_warnings(make_settings(**dkim_env(good, MAILER_DKIM_DOMAIN="mail.example.org"))) == []  # relaxed-aligned


def test_every_command_that_signs_prints_the_dkim_warnings(project, tmp_path):
    """build, send --test and doctor print what a real send prints before it asks (one owner: dkim_warnings)."""
    short = rsa.generate_private_key(65537, 1024)
    path = _write(project / "short.pem", _pem(short))
    path.chmod(0o644)
    env = dict(BASE_ENV, MAILER_DKIM_PRIVATE_KEY=str(path), MAILER_DKIM_SELECTOR="s", MAILER_DKIM_DOMAIN="other-domain.net",
               MAILER_OUTBOX_DIR=str(tmp_path / "outbox"))
    words = ("1024 bits", "other-domain.net is not aligned", "chmod 600")
    for args in (["build", EXAMPLE_ISSUE], ["send", EXAMPLE_ISSUE, "--test", "editor@example.net"]):
        result = invoke(args, project, env)
        assert result.returncode == 0, result.stderr
        assert all(word in result.stderr for word in words), (args, result.stderr)
    from mailer.config import load_settings
    from mailer.doctor import run_doctor
    from .dns_server import DnsZone
    with DnsZone({}) as zone:  # no key published: the verdict fails, and still says what a send would warn
        [check] = run_doctor(load_settings(project, env=env), nameserver=zone.address, dns_timeout=1.0, only=("dkim",)).checks
    assert check.status == "fail" and all(word in check.message for word in words), check


# ----- keygen -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_keygen_writes_a_private_key_and_prints_the_record(kind, project):
    args = ["dkim", "keygen", "--selector", "news1", "--type", kind]
    result = invoke(args, project)
    assert result.returncode == 0, result.stderr
    path = project / "dkim" / "news1._domainkey.example.org.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert "name:  news1._domainkey.example.org" in result.stdout
    value = next(line.split("value: ", 1)[1] for line in result.stdout.splitlines() if "value: " in line)
    loaded = load_private_key(path)
    assert value == txt_record_value(loaded) and f"k={kind}" in value
    # the printed record verifies what mailer signs with that key
    settings_env = {"MAILER_DKIM_PRIVATE_KEY": str(path), "MAILER_DKIM_SELECTOR": "news1"}
    built = invoke(["build", EXAMPLE_ISSUE, "--out", "b"], project, settings_env)
    assert built.returncode == 0, built.stderr
    assert dkim.verify((project / "b" / "email.eml").read_bytes(),
                       dnsfunc=lambda name, timeout=5: value.encode() if name == b"news1._domainkey.example.org." else None)
    before = path.read_bytes()
    again = invoke(args, project)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert path.read_bytes() == before


def test_keygen_domain_spellings_make_one_file_name(project):
    result = invoke(["dkim", "keygen", "--selector", "s1", "--type", "ed25519", "--domain", "EXAMPLE.ORG."], project)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (project / "dkim").iterdir()] == ["s1._domainkey.example.org.pem"]
    assert "name:  s1._domainkey.example.org" in result.stdout and "MAILER_DKIM_DOMAIN" not in result.stdout
    again = invoke(["dkim", "keygen", "--selector", "s1", "--type", "ed25519", "--domain", "example.org"], project)
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1  # the same file: never overwritten


# ----- signatures made ahead by the signing processes ---------------------------------------------
def _prepared_factory(project, make_settings, kind):
    key = make_key(project, kind)
    settings = make_settings(**dkim_env(key))
    factory = MessageFactory(render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings))
    recipients = [Recipient(email=f"r{i}@example.net", name=name, unsubscribe_url=f"https://lettre.example.org/u/t{i}")
                  for i, name in enumerate(_NAMES * 3)]
    return key, factory, [(recipient, f"<p{i}@example.org>") for i, recipient in enumerate(recipients)]


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_signatures_made_ahead_in_signing_processes_verify(kind, project, make_settings):
    """With a spare core, `prepare` hands the per-recipient bytes to signing processes; `build` then returns
    what the sending process would have signed itself (same bytes for the same t=), and dkimpy verifies it."""
    from mailer.dkim_signer import spare_cores
    if spare_cores() < 1:
        pytest.skip("one core: signing stays in the sending process")
    key, factory, messages = _prepared_factory(project, make_settings, kind)
    date = "Thu, 26 Nov 2026 07:00:00 +0000"
    assert factory.prepare(messages, date) == len(messages)
    for recipient, message_id in messages:
        message = factory.build(recipient, message_id, date)
        assert dkim.verify(message, dnsfunc=dns_for(key)), message[:600]
        unsigned = message[message.index(b"\r\nDate: ") + 2:]
        assert factory.signer.sign(unsigned, now=int(signature_tags(message)[b"t"])) == message
    assert not factory._ready  # every prepared message was taken


def test_a_signing_process_that_dies_leaves_the_sending_process_to_sign(project, make_settings, monkeypatch):
    """A killed signing process (OOM killer, an operator): the messages it held are signed in the sending
    process instead, and later ones too; a different Date than prepared is signed afresh."""
    from mailer import dkim_signer
    if dkim_signer.spare_cores() < 1:
        pytest.skip("one core: signing stays in the sending process")
    monkeypatch.setattr(dkim_signer, "_POOL", None)  # a pool of this test's own
    key, factory, messages = _prepared_factory(project, make_settings, "ed25519")
    date = "Thu, 26 Nov 2026 07:00:00 +0000"
    first = factory.build(messages[0][0], messages[0][1], date)  # signed here: nothing prepared
    factory.prepare(messages[1:3], date)
    assert factory.build(messages[1][0], messages[1][1], "Fri, 27 Nov 2026 07:00:00 +0000").count(b"Fri, 27 Nov") == 1
    pool = dkim_signer._POOL
    pool._executor.submit(int).result()
    for process in list(pool._executor._processes.values()):
        os.kill(process.pid, 9)
    factory.prepare(messages[3:], date)  # handed to dead processes (or refused at once): signed here
    built = [first] + [factory.build(recipient, message_id, date) for recipient, message_id in messages[2:]]
    assert all(dkim.verify(message, dnsfunc=dns_for(key)) for message in built)
    assert pool.broken and dkim_signer.signing_pool() is None and factory.prepare(messages, date) == 0
    pool.close()


# ----- DMARC alignment: organizational domains by the Public Suffix List (RFC 7489 §3.2) -------------------
def _psl_rules() -> tuple[set[str], set[str], set[str]]:
    """(normal, wildcard, exception) rules read straight from the Public Suffix List file the library bundles."""
    import publicsuffixlist
    normal, wildcard, exception = set(), set(), set()
    text = (Path(publicsuffixlist.__file__).parent / "public_suffix_list.dat").read_text(encoding="utf-8")
    for line in text.splitlines():
        rule = line.strip().split(" ")[0]
        if not rule or rule.startswith("//"):
            continue
        rule = rule.encode("idna").decode("ascii").lower() if not rule.startswith(("*", "!")) else rule
        if rule.startswith("!"):
            exception.add(rule[1:])
        elif rule.startswith("*."):
            wildcard.add(rule[2:])
        else:
            normal.add(rule)
    return normal, wildcard, exception


def _oracle_org(domain: str, rules) -> str | None:
    """RFC 7489 §3.2 by the letter, with publicsuffix.org's algorithm: the longest matching rule (a wildcard
    matches one more label; an exception rule wins and its suffix is the rule minus its first label;
    no match: the TLD), then one more label; None when the domain is no longer than its public suffix."""
    normal, wildcard, exception = rules
    labels = domain.split(".")
    tails = [".".join(labels[-n:]) for n in range(1, len(labels) + 1)]  # tails[n - 1]: the last n labels
    exceptions = [n for n in range(1, len(labels) + 1) if tails[n - 1] in exception]
    if exceptions:
        suffix_len = max(exceptions) - 1
    else:
        suffix_len = max([1] + [n for n in range(1, len(labels) + 1) if tails[n - 1] in normal]
                         + [n for n in range(2, len(labels) + 1) if tails[n - 2] in wildcard])
    return ".".join(labels[-(suffix_len + 1):]) if len(labels) > suffix_len else None


def test_alignment_against_the_rfc7489_definition_on_generated_pairs():
    """Oracle: organizational domains computed from the raw list file; relaxed alignment is equal
    organizational domains (both defined), strict is equal names. Pairs from real rules of every kind
    (ICANN, private, wildcard, exception), with shared and different registrable labels."""
    from mailer.addresses import aligned, organizational_domain
    rules = _psl_rules()
    normal, wildcard, exception = rules
    rng = random.Random(int(os.environ.get("MAILER_TEST_SEED", "7489")))
    ascii_rules = lambda pool: sorted(r for r in pool if r.isascii())  # noqa: E731
    suffixes = (rng.sample(ascii_rules(normal), 60) + [f"{rng.choice(['x', 'city'])}.{w}" for w in rng.sample(ascii_rules(wildcard), 10)]
                + rng.sample(ascii_rules(exception), min(10, len(exception))) + ["co.uk", "org", "github.io", "notatld"])
    label = lambda: rng.choice(["news", "mail", "example", "a", "b-2", "lettre"])  # noqa: E731
    seen = {True: 0, False: 0}
    for _ in range(600):
        suffix = rng.choice(suffixes)
        base = [label() for _ in range(rng.randint(0, 3))]
        a = ".".join([*base, suffix])
        other = rng.choice([suffix, rng.choice(suffixes)])
        b = ".".join([*rng.choice([base[-1:], base, [label()], [label(), *base[-1:]], []]), other]).strip(".")
        if not a or not b:
            continue
        org_a, org_b = _oracle_org(a, rules), _oracle_org(b, rules)
        assert organizational_domain(a) == org_a, (a, organizational_domain(a), org_a)
        expected = a == b or (org_a is not None and org_a == org_b)
        assert aligned(a, b) == expected == aligned(b.upper() + ".", a), (a, b, org_a, org_b)
        assert aligned(a, b, strict=True) == (a == b)
        seen[expected] += 1
    assert min(seen.values()) > 50, seen


def test_the_reviewers_alignment_cases(project, make_settings):
    from mailer.addresses import aligned
    assert aligned("mail.example.org", "news.example.org")  # relaxed: same organizational domain
    assert not aligned("co.uk", "example.co.uk")  # a public suffix aligns with nothing
    assert not aligned("example.co.uk", "other.co.uk")
    key = make_key(project, "rsa")
    sibling = make_settings(**dkim_env(key, MAILER_FROM="Le Fil <lettre@news.example.org>",
                                       MAILER_DKIM_DOMAIN="mail.example.org"))
    assert not any("not aligned" in w for w in dkim_warnings(sibling))
    suffix = make_settings(**dkim_env(key, MAILER_FROM="Le Fil <lettre@example.co.uk>", MAILER_DKIM_DOMAIN="co.uk"))
    assert any("co.uk is not aligned" in w for w in dkim_warnings(suffix))


def test_a_key_file_replaced_in_a_running_process_is_read_afresh(project):
    """Keys are parsed once per process (the parse checks an RSA key, tens of ms): a key file replaced
    (a rotation) gives the new key at the next load, and a broken one its error, every time."""
    first, second = make_key(project, "rsa", name="first.pem"), make_key(project, "ed25519", name="second.pem")
    path = project / "first.pem"
    assert txt_record_value(load_private_key(path)) == first.record_value
    path.write_bytes((project / "second.pem").read_bytes())
    assert txt_record_value(load_private_key(path)) == second.record_value
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    for _ in range(2):
        with pytest.raises(DkimKeyError, match="is not a usable PEM private key"):
            load_private_key(path)
