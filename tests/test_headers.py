"""Header fields holding free text read back exactly, checked against the standard parsers.

Oracles: `email.parser.BytesParser(policy=policy.default)` (what modern Python clients use) and
the compat path `email.header.decode_header` + `make_header` on the unfolded raw value (what older
tools do; for addresses after `email.utils.parseaddr`). Values are generated (seeded) so that
spaces fall on every possible fold point, with the shapes editors and subscribers really type.
"""

from __future__ import annotations

import email
import random
import re
import shutil
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesParser
from email.utils import parseaddr
from pathlib import Path

import pytest

from mailer.headers import clean_display_name, clean_header_value, mailboxes, phrase_and_tail, unstructured
from mailer.content.issue import load_issue
from mailer.mime import MessageFactory
from mailer.web.preview import build_issue
from mailer.content.render import Recipient, render_issue

CASES = Path(__file__).parent / "cases"
URL = "https://lettre.example.org/u/abc"

WORDS = {
    "fr": "écoles Lyon rentrée régionales Données ouvertes trains de nuit « petits » modèles été l’école "
          "Côte-d’Azur œuvre naïve Noël ça déjà où ÉDITION SPÉCIALE".split(),
    "de": "Straße Grüße Übermäßig Fußgängerübergänge Öffentlichkeit schön Maß Bürgermeisterwahl".split(),
    "vi": "Nguyễn Văn An Trần Thị Hương Hà Nội tiếng Việt người đẹp".split(),
    "cjk": "東京 新闻 李小龙 日本語のテキスト 한국어 뉴스레터 中文".split(),
    "emoji": "🚆 🎉 👩‍💻 🇫🇷 ❤️ 🔥".split(),
    "ascii": "Hello world news of the week a b c 2026 x".split(),
    "punct": [",", ";", ":", "!", "?", "\"quoted\"", "'", "(note)", "<tag>", "a@b", "\\", "=?", "?=",
              "=?utf-8?q?faux?=", "=?iso-8859-1?b?Zm9v?=", "_", "=", "%%x%%", "[x]"],
    "space": ["\u00a0", "\u202f", "\u2009"],
}


def _random_value(rng: random.Random) -> str:
    kinds = list(WORDS)
    pieces = []
    for _ in range(rng.randint(1, 22)):
        kind = rng.choice(kinds)
        if rng.random() < 0.03:
            pieces.append(rng.choice(["x", "é", "東"]) * rng.randint(60, 130))  # a word longer than a line
        else:
            pieces.append(rng.choice(WORDS[kind]))
    separators = [" "] * 12 + ["  ", "\t", " \u00a0", ""]
    text = "".join(piece + rng.choice(separators) for piece in pieces)
    if rng.random() < 0.2:
        text = rng.choice([" ", "  ", "\t"]) + text
    if rng.random() < 0.2:
        text += rng.choice([" ", "  "])
    return text


def _generated(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    values = [_random_value(rng) for _ in range(count)]
    # every fold point: the same accented subject at every length around a line
    base = "écoles Lyon écoles rentrée régionales Données ouvertes à la une été 2026 Noël "
    values += [(base * 3)[:length] for length in range(1, 200)]
    return values


def _parse(field: bytes) -> email.message.EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(field + b"\r\nbody\r\n")
    assert not message.defects
    return message


def _compat_raw(field: bytes, name: str) -> str:
    message = email.message_from_bytes(field + b"\r\nbody\r\n", policy=policy.compat32)
    return re.sub(r"\r?\n(?=[ \t])", "", message[name])  # unfold (RFC 5322 §2.2.3)


def _compat_decode(value: str) -> str:
    return str(make_header(decode_header(value)))


def _check_lines(field: bytes, phrase: bool = False) -> None:
    """CRLF only; lines ≤ 998 always, ≤ 76 when they hold an encoded word (RFC 2047 §2), and ≤ 78 unless one word cannot fit: a single ASCII word, or
    (in a phrase, see `headers._encoded_phrase`) an encoded run of more than 45 bytes."""
    assert field.endswith(b"\r\n") and b"\n" not in field[:-2].replace(b"\r\n ", b"")
    for line in field[:-2].split(b"\r\n"):
        assert len(line) <= 998
        long_words = []
        for word in re.findall(rb"=\?utf-8\?[qb]\?[^?]*\?=", line):
            if len(word) > 75:
                assert phrase, word
                ((decoded, _),) = decode_header(word.decode("ascii"))
                assert len(decoded) > 45, word  # could not be one word of 75 characters
                long_words.append(word)
        if long_words == [] and b"=?utf-8?" in line:  # RFC 2047 §2: a line holding an encoded word
            assert len(line) <= 76, line
        if len(line) > 78 and not long_words:
            assert b" " not in line.strip()[line.index(b":") + 2 if line[:1] != b" " else 0:], line


def test_clean_header_value_keeps_no_break_spaces_and_drops_controls():
    assert clean_header_value("  a\tb \r\n c\x00d\x1b\u2028e\u0085  ") == "a b c d e"
    assert clean_header_value("Question\u202f? «\u00a0oui\u00a0»") == "Question\u202f? «\u00a0oui\u00a0»"


def test_the_example_subject_reads_back_with_its_spaces():
    subject = "écoles Lyon écoles rentrée régionales Données"
    field = unstructured("Subject", subject)
    assert str(_parse(field)["Subject"]) == subject
    assert _compat_decode(_compat_raw(field, "Subject")) == subject


@pytest.mark.parametrize("seed", range(4))
def test_generated_subjects_round_trip_through_both_parsers(seed):
    for value in _generated(1000, seed):
        expected = clean_header_value(value)
        field = unstructured("Subject", value)
        _check_lines(field)
        parsed = _parse(field)["Subject"]
        assert str(parsed) == expected, (value, field)
        assert _compat_decode(_compat_raw(field, "Subject")) == expected, (value, field)


@pytest.mark.parametrize("seed", range(4))
def test_generated_display_names_round_trip_through_both_parsers(seed, sample_size):
    for index, value in enumerate(_generated(sample_size(1000), 100 + seed)):
        value = value[:150]  # names are at most 200 characters once stored (`subscribers.clean_text`)
        address = f"reader.{index}@example.org"
        expected = clean_display_name(value)
        field = phrase_and_tail("To", value, f"<{address}>")
        _check_lines(field, phrase=True)
        (parsed,) = _parse(field)["To"].addresses
        assert (parsed.display_name, parsed.addr_spec) == (expected, address), (value, field)
        name, addr = parseaddr(_compat_raw(field, "To"))
        assert (_compat_decode(name) if name else "", addr) == (expected, address), (value, field)


def test_an_address_list_keeps_each_name_with_its_address():
    entries = [("Bernard, Hugo", "<hugo@example.org>"), ("Rédaction ; Lyon", "<redac@example.org>"),
               ("", "<nobody@example.org>"), ("李小龙 " * 12, "<li@example.org>")]
    field = mailboxes("Reply-To", entries)
    _check_lines(field, phrase=True)
    parsed = _parse(field)["Reply-To"].addresses
    assert [(a.display_name, f"<{a.addr_spec}>") for a in parsed] == [
        (clean_display_name(name), tail) for name, tail in entries]


@pytest.mark.parametrize("name", ["Léa Dubois-Martin", "Nguyễn Thị Minh Khai", "李小龙", "Bernard, Hugo",
                                  "Zoé 🚆 Lefèvre", "Jürgen Groß-Übermaß", "O'Brien, Siobhán", "김민준",
                                  "Dr. Émile « Mimile » d'Arçon de la Tour-Mézières"])
def test_real_names_stay_within_78_characters_a_line(name):
    field = phrase_and_tail("To", name, "<reader.with.a.long.address@lettre.example.org>")
    assert max(len(line) for line in field.split(b"\r\n")) <= 78, field
    _check_lines(field, phrase=True)
    assert _parse(field)["To"].addresses[0].display_name == name


def _factory(settings, ref) -> MessageFactory:
    return MessageFactory(render_issue(load_issue(ref, settings.issues_dir, settings.zone), settings))


def test_every_free_text_header_of_a_built_message_reads_back(project, make_settings, sample_size):
    settings = make_settings(MAILER_FROM='"Rédaction du « Fil », Lyon" <lettre@example.org>',
                             MAILER_REPLY_TO='"Bernard, Hugo" <hugo@example.org>',
                             MAILER_NAME="Les Actualités régionales")
    shutil.copytree(CASES / "accented-subject" / "issue", project / "issues" / "2026-12-03-accented")
    factory = _factory(settings, "accented")
    names = _generated(sample_size(300), 7)
    for index, name in enumerate(names):
        data = factory.build(Recipient(email=f"r{index}@example.org", name=name, unsubscribe_url=URL))
        header_block = data.partition(b"\r\n\r\n")[0] + b"\r\n"
        for field in re.split(rb"\r\n(?! )", header_block)[:-1]:
            _check_lines(field + b"\r\n", phrase=field.startswith((b"From", b"To", b"Reply-To", b"List-Id")))
        message = email.message_from_bytes(data, policy=policy.default)
        assert message["Subject"] == "écoles Lyon écoles rentrée régionales Données"
        assert message["From"].addresses[0].display_name == "Rédaction du « Fil », Lyon"
        assert message["Reply-To"].addresses[0].display_name == "Bernard, Hugo"
        assert message["To"].addresses[0].display_name == clean_display_name(name)
        assert message["To"].addresses[0].addr_spec == f"r{index}@example.org"
        assert str(message["List-Id"]).startswith("Les Actualités régionales <")
        compat = email.message_from_bytes(data, policy=policy.compat32)
        assert _compat_decode(re.sub(r"\r?\n(?=[ \t])", "", compat["Subject"])) == message["Subject"]


def test_mailer_build_of_the_accented_subject_case(project, settings, tmp_path):
    shutil.copytree(CASES / "accented-subject" / "issue", project / "issues" / "2026-12-03-accented")
    build_issue(settings, "accented", tmp_path / "out")
    message = BytesParser(policy=policy.default).parsebytes((tmp_path / "out" / "email.eml").read_bytes())
    assert message["Subject"] == "écoles Lyon écoles rentrée régionales Données"


# ----- long configured values: no header line over RFC 5322's 998 characters ----------------------------
def _long_host(rng: random.Random, length: int) -> str:
    """A DNS name of about `length` characters (labels of at most 63), ending in example.org."""
    labels = []
    while sum(len(label) + 1 for label in labels) + len("example.org") < length:
        labels.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(1, 63))))
    return ".".join([*labels, "example.org"])[-length:].lstrip(".-0123456789") or "example.org"


def test_long_base_urls_and_domains_give_header_lines_within_998_that_parse_and_verify(
        project, make_settings, tmp_path):
    """Generated base URL lengths up to the maximum and long sender domains: every header line of what the
    outbox writes is at most 998 characters, List-Unsubscribe reads back (policy.default) as exactly its
    two URLs, and the DKIM signature verifies. One character more is a config-load error naming the setting."""
    import dkim
    from mailer.config import MAX_BASE_URL
    from mailer.errors import ConfigError
    from mailer.sending import dispatch
    from mailer.subscribers import add_subscriber
    from .conftest import EXAMPLE_ISSUE
    from .test_dkim import dkim_env, dns_for, make_key

    from mailer.store import open_store
    rng = random.Random(14)
    lengths = [40, rng.randint(80, 500), rng.randint(500, MAX_BASE_URL - 1), MAX_BASE_URL]
    for round_, length in enumerate(lengths):
        domain = _long_host(rng, rng.choice([20, 120, 240]))
        prefix = "https://lettre.example.org/"
        base = prefix + "".join(rng.choice("abcdefghij/-_") for _ in range(length - len(prefix))).replace("//", "/a")
        base = base.rstrip("/")[:length].ljust(length, "z")
        key = make_key(project, "rsa", name=f"k{round_}.pem", domain=domain)
        outbox = tmp_path / f"outbox{round_}"
        store = open_store(f"sqlite:///{tmp_path / f'round{round_}.db'}")
        add_subscriber(store, "zoe@example.net", name="Zoé")
        settings = make_settings(database_url=str(store.engine.url), MAILER_BASE_URL=base,
                                 MAILER_FROM=f"Le Fil <lettre@{domain}>", MAILER_BOUNCE_ADDRESS=f"bounces@{domain}",
                                 MAILER_OUTBOX_DIR=str(outbox), **dkim_env(key))
        assert len(settings.base_url) == length
        try:
            dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        finally:
            store.close()
        [path] = outbox.rglob("*.eml")
        raw = path.read_bytes()
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert max(len(line) for line in head.split(b"\r\n")) <= 998, (length, len(domain))
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        urls = re.findall(r"<([^<>]+)>", str(parsed["List-Unsubscribe"]))
        assert len(urls) == 2 and urls[0].startswith(settings.base_url + "/u/") and urls[1] == settings.unsubscribe_mailto_url
        assert parsed["Message-ID"].endswith(f"@{domain}>") and f"@{domain}>" in parsed["Return-Path"]
        assert dkim.verify(raw, dnsfunc=dns_for(key)), (length, len(domain))
    too_long = "https://lettre.example.org/" + "a" * (MAX_BASE_URL + 1 - len("https://lettre.example.org/"))
    with pytest.raises(ConfigError) as caught:
        make_settings(MAILER_BASE_URL=too_long)
    assert "MAILER_BASE_URL" in str(caught.value) and f"at most {MAX_BASE_URL}" in str(caught.value)
