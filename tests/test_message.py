"""The per-recipient MIME message, `mailer build`, and the tokens in its links."""

from __future__ import annotations

import dataclasses
import email
import random
import re
import smtplib
from email import policy
from email.header import decode_header, make_header
from html import unescape as html_unescape

import pytest

from mailer import tokens
from mailer.config import load_settings
from mailer.errors import ConfigError, InvalidAddress
from mailer.content.issue import load_issue
from mailer.content.markup import french_typography
from mailer.mime import MessageFactory, Stuffed, stuffed_join
from mailer.web.preview import SAMPLE_EMAIL, build_issue
from mailer.content.render import Recipient, Template, render_issue

from .conftest import BASE_ENV, EXAMPLE_ISSUE, write_issue

LONG_TOKEN_URL = "https://lettre.example.org/u/" + "A1b2C3d4" * 12  # 125 characters


def _factory(settings, ref=EXAMPLE_ISSUE, **kwargs) -> MessageFactory:
    return MessageFactory(render_issue(load_issue(ref, settings.issues_dir, settings.zone), settings), **kwargs)


def _parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)


def test_message_parses_back_with_both_parts_and_every_header(settings):
    factory = _factory(settings)
    recipient = Recipient(email="camille@example.org", name="Camille Martin", unsubscribe_url=LONG_TOKEN_URL, subscriber_id=7)
    data = factory.build(recipient, "<abc123@example.org>")
    message = _parse(data)
    assert message.get_content_type() == "multipart/alternative"
    text_part, html_part = message.iter_parts()
    assert (text_part.get_content_type(), html_part.get_content_type()) == ("text/plain", "text/html")
    assert text_part.get_content_charset() == html_part.get_content_charset() == "utf-8"
    assert message["Subject"] == "Données ouvertes, trains de nuit et «\u00a0petits\u00a0» modèles"  # typeset
    assert message["From"].addresses[0].addr_spec == "lettre@example.org"
    assert message["To"].addresses[0].display_name == "Camille Martin"
    assert message["List-Unsubscribe"] == f"<{LONG_TOKEN_URL}>, <mailto:unsubscribe@example.org?subject=unsubscribe>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == "Le Fil du jeudi <le-fil-du-jeudi.example.org>"
    assert message["Message-ID"] == "<abc123@example.org>"
    assert message["Date"] and message["MIME-Version"] == "1.0"
    rendered = factory.email
    html, text = rendered.personalise(recipient)
    assert text_part.get_content().replace("\r\n", "\n") == text
    assert html_part.get_content().replace("\r\n", "\n") == html


def test_raw_bytes_are_crlf_with_short_lines(settings):
    data = _factory(settings).build(Recipient(email="a@example.org", name="Zoé", unsubscribe_url=LONG_TOKEN_URL))
    assert b"\n" not in data.replace(b"\r\n", b"")
    header_block, _, body = data.partition(b"\r\n\r\n")
    assert max(len(line) for line in body.split(b"\r\n")) <= 78
    assert max(len(line) for line in header_block.split(b"\r\n")) <= 998
    assert LONG_TOKEN_URL.encode() in header_block  # never RFC 2047-encoded, never split
    for encoded_word in re.findall(rb"=\?utf-8\?[qb]\?[^?]*\?=", header_block):
        assert len(encoded_word) <= 75


@pytest.mark.parametrize("name", ["Élodie « Lo » Ñúñez", "李小龙", "a" * 150, "=?utf-8?q?faux?=", "Jo =3D %%x%%"])
def test_any_name_survives_quoted_printable_slots(settings, name):
    factory = _factory(settings)
    recipient = Recipient(email="x@example.org", name=name, unsubscribe_url=LONG_TOKEN_URL)
    message = _parse(factory.build(recipient))
    text_part, html_part = message.iter_parts()
    expected_html, expected_text = factory.email.personalise(recipient)
    assert text_part.get_content().replace("\r\n", "\n") == expected_text
    assert html_part.get_content().replace("\r\n", "\n") == expected_html
    assert message["To"].addresses[0].display_name == " ".join(name.split())  # `=?` included, read back as typed


def test_crlf_in_a_name_cannot_inject_headers(settings):
    factory = _factory(settings)
    data = factory.build(Recipient(email="x@example.org", name="Eve\r\nBcc: victim@example.net\r\n",
                                   unsubscribe_url=LONG_TOKEN_URL))
    message = _parse(data)
    assert message["Bcc"] is None
    assert b"\r\nBcc:" not in data.partition(b"\r\n\r\n")[0]
    assert "Eve Bcc: victim@example.net" == message["To"].addresses[0].display_name


def test_crlf_in_an_address_is_refused(settings):
    with pytest.raises(InvalidAddress):
        _factory(settings).build(Recipient(email="x@example.org\r\nBcc: y@example.org", unsubscribe_url=LONG_TOKEN_URL))


def test_crlf_in_settings_is_a_config_error(project):
    with pytest.raises(ConfigError, match="MAILER_FROM contains a line break"):
        load_settings(project, env={**BASE_ENV, "MAILER_FROM": "Eve <e@example.org>\nBcc: x@example.org"})


def test_long_non_ascii_subject_is_folded_in_short_encoded_words(project, settings):
    subject = "Édition spéciale : « les données ouvertes », les trains de nuit, l'école sans écrans et bien plus encore"
    write_issue(project, "2026-12-03-long", {"b.txt": "--> x y z\n"}, toml=f'subject = "{subject}"\n')
    data = _factory(settings, "long").build(Recipient(email="x@example.org", unsubscribe_url=LONG_TOKEN_URL))
    header_block = data.partition(b"\r\n\r\n")[0]
    assert all(len(w) <= 75 for w in re.findall(rb"=\?utf-8\?[qb]\?[^?]*\?=", header_block))
    assert _parse(data)["Subject"] == french_typography(subject)


def test_test_subject_prefix(settings):
    message = _parse(_factory(settings, subject_prefix="[TEST] ").build(
        Recipient(email="x@example.org", unsubscribe_url=LONG_TOKEN_URL)))
    assert message["Subject"].startswith("[TEST] Données ouvertes")


def test_build_writes_html_text_and_a_complete_eml(settings, tmp_path):
    result = build_issue(settings, "donnees-ouvertes", tmp_path / "out")
    out = tmp_path / "out"
    html = (out / "email.html").read_text(encoding="utf-8")
    text = (out / "email.txt").read_text(encoding="utf-8")
    message = _parse((out / "email.eml").read_bytes())
    assert message["To"].addresses[0].addr_spec == SAMPLE_EMAIL
    assert message["Message-ID"].endswith("@example.org>")
    unsubscribe = message["List-Unsubscribe"].split(">")[0].lstrip("<")
    assert unsubscribe in html and unsubscribe in text
    assert "Bonjour Camille," in text  # the first name of the sample reader "Camille Exemple"
    assert result.warnings == ()


def test_tokens_round_trip_and_reject_tampering():
    key = b"k" * 32
    token = tokens.make_token(key, "unsubscribe", 123456, issue_id=42)
    assert tokens.read_token(key, "unsubscribe", token) == tokens.TokenData("unsubscribe", 123456, 42)
    assert "@" not in token and len(token) < 40
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(key, "confirm", token)  # another purpose
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(b"other key", "unsubscribe", token)
    for index in range(len(token)):
        flipped = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1:]
        with pytest.raises(tokens.InvalidToken):
            tokens.read_token(key, "unsubscribe", flipped)
    for bad in ("", "x", token[:-2], token + "AAAA", "!!!!", "a" * 200):
        with pytest.raises(tokens.InvalidToken):
            tokens.read_token(key, "unsubscribe", bad)


def test_message_id_is_stable_per_delivery_and_on_the_sender_domain():
    key = b"k" * 32
    first = tokens.message_id(key, "2026-11-26-x", 5, "example.org")
    assert first == tokens.message_id(key, "2026-11-26-x", 5, "example.org")
    assert first != tokens.message_id(key, "2026-11-26-x", 6, "example.org")
    assert re.fullmatch(r"<[0-9a-f]{24}@example\.org>", first)


@pytest.mark.parametrize("language,subject,expected", [
    ("fr", "Question ? « Oui » : l'école ; enfin !", "Question\u202f? «\u00a0Oui\u00a0»\u00a0: l’école\u202f; enfin\u202f!"),
    ("fr", "Trains de nuit : « complet » !" * 3, ("Trains de nuit\u00a0: «\u00a0complet\u00a0»\u202f!" * 3)),
    ("en", "Question ? « Oui » : l'école !", "Question ? « Oui » : l'école !"),
])
def test_subject_and_preheader_get_the_body_typography_and_still_read_back(project, make_settings, language,
                                                                           subject, expected):
    settings = make_settings(MAILER_LANGUAGE=language)
    write_issue(project, "2026-12-03-typo", {"b.txt": "--> Texte : oui !\n"},
                toml=f'subject = "{subject}"\npreheader = "{subject}"\ndate = 2026-12-03\n')
    factory = _factory(settings, "typo")
    data = factory.build(Recipient(email="x@example.org", unsubscribe_url=LONG_TOKEN_URL))
    assert _parse(data)["Subject"] == expected
    compat = email.message_from_bytes(data, policy=policy.compat32)["Subject"]
    assert str(make_header(decode_header(re.sub(r"\r\n(?=[ \t])", "", compat)))) == expected
    html, _ = factory.email.personalise(Recipient(email="x@example.org", unsubscribe_url=LONG_TOKEN_URL))
    assert html_unescape(re.search(r"<title>(.*?)</title>", html).group(1)) == expected
    assert expected in html_unescape(html.split("<body")[1][:3000])  # the preheader (mj-preview)


# ----- DATA's payload: dot-stuffed once per issue, checked against smtplib's own stuffing ------------
def _smtplib_data(message: bytes) -> bytes:
    """What smtplib's own `SMTP.data()` sends for `message` (bytes): `_quote_periods`, then its end-of-data."""
    quoted = smtplib._quote_periods(message)
    return quoted + (b"" if quoted[-2:] == b"\r\n" else b"\r\n") + b".\r\n"


_WIRE_ALPHABET = [b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"\n.\n", b"a", b" ", b"x" * 1500, "é".encode()]


def test_stuffed_join_equals_smtplibs_stuffing_on_generated_pieces():
    """Oracle: smtplib's `_quote_periods` over the joined bytes. Pieces with lines opening with dots, lone CR
    and LF, long lines, empty pieces, a dot split from its line start across pieces; each piece either
    stuffed once ahead (`Stuffed`) or as it comes."""
    rng = random.Random(5321)
    for _ in range(5000):
        pieces = [b"".join(rng.choice(_WIRE_ALPHABET) for _ in range(rng.randrange(0, 5)))
                  for _ in range(rng.randrange(0, 7))]
        mixed = [Stuffed.of(piece) if rng.random() < 0.5 else piece for piece in pieces]
        assert stuffed_join(mixed) == _smtplib_data(b"".join(pieces)), pieces


def _generated_template(rng: random.Random) -> Template:
    """A part with slots between static text holding dot lines, lone CR/LF, long lines, non-ASCII."""
    texts = [".", "..", ".début\n", "\n.\n", "a\rb", "c\nd", "\r\n.", "ligne " * 60, "Zoé", " ", "=", ""]
    pieces = []
    for index in range(rng.randrange(1, 6) * 2 + 1):
        pieces.append(rng.choice(["greeting", "email", "unsubscribe_url"]) if index % 2
                      else "".join(rng.choice(texts) for _ in range(rng.randrange(0, 5))))
    return Template(tuple(pieces))


@pytest.mark.parametrize("signed", [False, True])
def test_smtp_data_is_the_built_message_as_smtplib_would_stuff_it(project, make_settings, signed):
    """`smtp_data` (static pieces stuffed once) against smtplib's stuffing of `build`'s bytes, on generated
    bodies and recipients whose values open lines with dots (each slot opens a quoted-printable line)."""
    from mailer.dkim_signing import generate_key

    env = {}
    if signed:
        key = generate_key(project / "dkim.pem", "sel", "example.org", "ed25519")
        env = {"MAILER_DKIM_PRIVATE_KEY": str(key.path), "MAILER_DKIM_SELECTOR": "sel"}
    settings = make_settings(**env)
    rendered = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
    rng = random.Random(2920)
    for round_ in range(40):
        email_ = rendered if round_ == 0 else dataclasses.replace(
            rendered, text=_generated_template(rng), html=_generated_template(rng))
        factory = MessageFactory(email_)
        for i in range(5):
            local = rng.choice([".dot", "..two", "plain", "a.b"])
            recipient = Recipient(email=f"{local}{i}@example.net", name=rng.choice(["", ".Zoé", "Jean .", "x" * 90]),
                                  unsubscribe_url="https://lettre.example.org/u/" + rng.choice([".x", "y."]) * 20)
            date = "Thu, 26 Nov 2026 07:00:00 +0000"
            built = factory.build(recipient, f"<m{round_}.{i}@example.org>", date)
            if signed:  # the signature's time differs between two calls: compare the message under it
                data = factory.smtp_data(recipient, f"<m{round_}.{i}@example.org>", date)
                head = data.index(b"\r\nDate: ") + 2
                assert data[:head].startswith(b"DKIM-Signature: ")
                assert data[head:] == _smtplib_data(built[built.index(b"\r\nDate: ") + 2:])
            else:
                assert factory.smtp_data(recipient, f"<m{round_}.{i}@example.org>", date) == _smtplib_data(built)
