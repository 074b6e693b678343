"""Settings are checked when they are loaded, before anything is built or sent.

Kinds covered, each with generated inputs and an independent oracle:
- control characters and line breaks (every C0, DEL, every C1 including U+0085, U+2028/2029, CRLF
  variants, Bcc injections) in every setting, from the environment and from mailer.toml: one line
  naming the setting (and the file's line) and the code point — oracle: `unicodedata.category`;
- values that ARE accepted however odd (quotes, commas, `<>`, emoji, bidi marks, long) never add a
  header: real builds parsed back by the standard `email` parser (policy.default);
- List-Id: an ASCII dot-atom id in `<>` and a phrase that round-trips, for many generated names;
- internationalised domains: IDNA in every header and URL (oracle: the `idna` package), a one-line
  refusal where no conversion exists or SMTPUTF8 would be needed; a real outbox send;
- MAILER_SECRET_KEY strength for real backends and `serve`; MAILER_BASE_URL must be https and public
  for real backends, at every entry point (send, --test, worker, scheduler, CLI), with the override.
"""

from __future__ import annotations

import email
import ipaddress
import os
import random
import re
import shutil
import string
import subprocess
import threading
import unicodedata
from dataclasses import replace
from email import policy
from pathlib import Path
from urllib.parse import unquote, urlsplit

from email.header import decode_header, make_header

import idna
import pytest

from mailer.sending import dispatch
from mailer.config import (
    ENV_VARS, PUBLISHED_KEYS, SCHEDULE_KEYS, Settings, base_url_problem, load_settings, normalise_base_url,
    require_secret_key, secret_key_for, secret_key_problem, setting_default,
)
from mailer.errors import ConfigError
from mailer.content.issue import load_issue
from mailer.mime import MessageFactory
from mailer.web.preview import build_issue
from mailer.content.render import Recipient, render_issue
from mailer.scheduling.runtime import run_scheduler
from mailer.store import open_store
from mailer.subscribers import add_subscriber

from .cli_support import MAILER
from .conftest import BASE_ENV, EXAMPLE_ISSUE, REPO

CASES = Path(__file__).parent / "cases"

# ----- oracles -------------------------------------------------------------------------------------


def forbidden(ch: str) -> bool:
    """Second implementation of "may not be in a setting": Unicode categories, not a regex."""
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs")


DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+")
EXPECTED_HEADERS = {"date", "from", "subject", "list-id", "to", "message-id", "list-unsubscribe",
                    "list-unsubscribe-post", "mime-version", "content-type"}


def parse(eml: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(eml, policy=policy.default)


def header_block(eml: bytes) -> bytes:
    return eml.partition(b"\r\n\r\n")[0]


def display_name(eml: bytes, field: str) -> str:
    """The display name of From/Reply-To as an RFC 2047 decoder reads it (blanks between encoded words
    dropped, RFC 2047 §6.2: `email.header.decode_header`), checked against policy.default's reading,
    which keeps those blanks in address headers (so only the blanks may differ there)."""
    raw = re.search(rb"(?m)^" + field.encode() + rb": ((?:[^\r\n]*)(?:\r\n [^\r\n]*)*)", header_block(eml)).group(1)
    phrase = raw.replace(b"\r\n ", b" ").decode("ascii").rpartition("<")[0].strip()
    parsed = parse(eml)[field].addresses[0].display_name
    if "=?" not in phrase:
        return parsed
    decoded = str(make_header(decode_header(phrase)))
    assert "".join(decoded.split()) == "".join(parsed.split()), (decoded, parsed)
    return decoded


def owned_header_lines(eml: bytes) -> list[bytes]:
    """The physical lines of From, Reply-To and List-Id (the headers that carry configured values)."""
    fields = re.findall(rb"(?m)^(?:From|Reply-To|List-Id): [^\r\n]*(?:\r\n [^\r\n]*)*", header_block(eml))
    return [line for field in fields for line in field.split(b"\r\n")]


def assert_only_expected_headers(eml: bytes, reply_to: bool = False) -> email.message.EmailMessage:
    """No header beyond the ones mailer writes, each once, every header line ASCII and ≤ 998 octets."""
    message = parse(eml)
    names = [name.lower() for name in message.keys()]
    assert sorted(names) == sorted(EXPECTED_HEADERS | ({"reply-to"} if reply_to else set())), names
    for line in header_block(eml).split(b"\r\n"):
        assert line.isascii() and len(line) <= 998 and b"\r" not in line and b"\n" not in line
    for name in names:
        assert not message[name].defects, (name, message[name].defects)
    return message


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in BASE_ENV.items() if k not in names}


def toml_string(value: str) -> str:
    """A TOML basic string holding exactly `value` (every non-printable-ASCII character escaped)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04X}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08X}")
    return '"' + "".join(out) + '"'


TOML_KEYS = {attr: ("schedule", key) for key, attr in SCHEDULE_KEYS.items()}
TOML_KEYS.update({"from_address": ("", "from")})


def write_toml(project: Path, attr: str, value: str) -> tuple[int, str]:
    """mailer.toml with `attr` set to `value` on a known line; returns (line, key as written)."""
    table, key = TOML_KEYS.get(attr, ("", attr))
    lines = ["# written by tests/test_config.py", "# (the key under test comes below)"]
    if table:
        lines.append(f"[{table}]")
    lines.append(f"{key} = {toml_string(value)}")
    (project / "mailer.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines), (f"[{table}].{key}" if table else key)


# ----- 1. control characters and line breaks in every setting ---------------------------------------

CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)] + ["\u2028", "\u2029"]
BREAKS = ["\r\n", "\n\r", "\r\r\n", "\r\n ", "\r\n\t", "\r\nBcc: victim@example.net", "\nBcc: victim@example.net\n",
          "\r\n\r\n<p>body</p>", "\u2028Bcc: victim@example.net", "\x85Bcc: victim@example.net"]
# A valid value for each setting that reaches a header or URL (+ the secret key, which signs URLs).
HEADER_SAMPLES = {
    "MAILER_NAME": "Le Fil du jeudi",
    "MAILER_FROM": "Le Fil du jeudi <lettre@example.org>",
    "MAILER_REPLY_TO": "Rédaction <redaction@example.org>",
    "MAILER_BASE_URL": "https://lettre.example.org",
    "MAILER_UNSUBSCRIBE_MAILTO": "desabonnement@example.org",
    "MAILER_LIST_ID": "Le Fil <lettre.example.org>",
    "MAILER_POSTAL_ADDRESS": "12 rue des Exemples, 75011 Paris",
    "MAILER_SECRET_KEY": "Vb1x9QkZr2mT7yLw4cHs8dJf3gNp6uKe0aYo",
}
STRING_SETTINGS = [var for var, attr in ENV_VARS.items() if isinstance(setting_default(attr), (str, Path))]


def insert(value: str, bad: str, where: str) -> str:
    middle = len(value) // 2
    return {"start": bad + value, "middle": value[:middle] + bad + value[middle:], "end": value + bad}[where]


def check_refusal(message: str, value: str, label: str) -> None:
    first = next(i for i, ch in enumerate(value) if forbidden(ch))
    assert "\n" not in message and not any(forbidden(ch) for ch in message), repr(message)
    assert label in message, (label, message)
    if 0xD800 <= ord(value[first]) <= 0xDFFF:
        assert "not valid UTF-8" in message
    else:
        assert f"U+{ord(value[first]):04X}" in message and f"at character {first + 1}" in message, message


@pytest.mark.parametrize("var", list(HEADER_SAMPLES))
def test_every_control_character_and_line_break_is_refused_from_the_environment(project, var):
    sample, tried = HEADER_SAMPLES[var], 0
    for bad in CONTROLS + BREAKS:
        for where in ("start", "middle", "end"):
            value = insert(sample, bad, where)
            with pytest.raises(ConfigError) as caught:
                load_settings(project, env={**BASE_ENV, var: value})
            check_refusal(str(caught.value), value, var)
            tried += 1
    assert tried == 3 * (67 + len(BREAKS))


@pytest.mark.parametrize("var", list(HEADER_SAMPLES))
def test_every_control_character_and_line_break_is_refused_from_mailer_toml_with_its_line(project, var):
    attr = ENV_VARS[var]
    for bad in CONTROLS + BREAKS:
        for where in ("start", "middle", "end"):
            value = insert(HEADER_SAMPLES[var], bad, where)
            line, key = write_toml(project, attr, value)
            with pytest.raises(ConfigError) as caught:
                load_settings(project, env=env_without(var))
            check_refusal(str(caught.value), value, f"mailer.toml:{line}: {key}")


@pytest.mark.parametrize("var", [v for v in STRING_SETTINGS if v not in HEADER_SAMPLES])
def test_every_other_string_setting_refuses_line_breaks_too(project, var):
    """Paths, database URL, SMTP and SendGrid credentials, cron…: a trailing CR from a Windows-edited
    file would otherwise surface later as a baffling error (or, in an API key, a broken header)."""
    attr = ENV_VARS[var]
    for bad in ("\r", "\n", "\r\n", "\x00", "\t", "\x1b", "\x85", "\u2028"):
        value = f"value{bad}"
        with pytest.raises(ConfigError) as caught:
            load_settings(project, env={**BASE_ENV, var: value})
        check_refusal(str(caught.value), value, var)
        line, key = write_toml(project, attr, value)
        with pytest.raises(ConfigError) as caught:
            load_settings(project, env=env_without(var))
        check_refusal(str(caught.value), value, f"mailer.toml:{line}: {key}")
        (project / "mailer.toml").unlink()


def test_a_crlf_mailer_toml_from_windows_is_read_without_carriage_returns(project):
    """CRLF line ends are TOML newlines: nothing of them may end up in a value (List-Unsubscribe intact)."""
    text = ('name = "Le Fil du jeudi"\r\nfrom = "Le Fil <lettre@example.org>"\r\n'
            'base_url = "https://lettre.example.org/"\r\nunsubscribe_mailto = "stop@example.org"\r\n'
            'postal_address = "12 rue des Exemples, 75011 Paris"\r\nlist_id = "lettre.example.org"\r\n')
    (project / "mailer.toml").write_text(text, encoding="utf-8", newline="")
    settings = load_settings(project, env={"MAILER_SECRET_KEY": BASE_ENV["MAILER_SECRET_KEY"]})
    message = assert_only_expected_headers(build_issue(settings, EXAMPLE_ISSUE, write=False).eml)
    unsubscribe = str(message["List-Unsubscribe"])
    assert re.fullmatch(r"<https://lettre\.example\.org/u/[A-Za-z0-9_-]+>, <mailto:stop@example\.org\?subject=unsubscribe>",
                        unsubscribe), unsubscribe
    assert str(message["List-Id"]) == "Le Fil du jeudi <lettre.example.org>"


def test_undecodable_bytes_in_the_environment_are_one_line(project):
    """A Latin-1 env file: Python hands the bytes over as lone surrogates; say so, do not crash later.
    (A real process: the decoding at start-up is what this checks.)"""
    env = {k.encode(): v.encode() for k, v in os.environ.items() if not k.startswith(("MAILER_", "SENDGRID_"))}
    env.update({k.encode(): v.encode() for k, v in BASE_ENV.items()})
    env[b"MAILER_NAME"] = b"Caf\xe9 des sciences"
    result = subprocess.run([*MAILER, "build", EXAMPLE_ISSUE], cwd=project, env=env, capture_output=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "MAILER_NAME" in lines[0] and "byte 0xE9" in lines[0] and "not valid UTF-8" in lines[0]


@pytest.fixture
def run(project: Path, cli):
    """`mailer ARGS` in this process (tests/cli_support.py); `drop` unsets those variables."""
    def invoke(*args: str, env: dict | None = None, cwd: Path | None = None, drop: tuple[str, ...] = (),
               check_exit: int | None = 0):
        return cli(*args, extra_env={**(env or {}), **dict.fromkeys(drop)}, cwd=cwd, check_exit=check_exit)

    invoke.project = project
    return invoke


@pytest.mark.parametrize("var, value", [
    ("MAILER_BASE_URL", "https://lettre.example.org\r\nBcc: victim@example.net"),
    ("MAILER_BASE_URL", "https://lettre.example.org\r"),  # a Windows-edited env file
    ("MAILER_UNSUBSCRIBE_MAILTO", "stop@example.org\nBcc: victim@example.net"),
    ("MAILER_UNSUBSCRIBE_MAILTO", "stop@example.org\r"),
    ("MAILER_NAME", "=?utf-8?q?Le_Fil=0D=0ABcc:_victim@example.net?="),  # an encoded CR LF the email package would decode
    ("MAILER_FROM", "=?utf-8?b?DQpCY2M6IHZpY3RpbUBleGFtcGxlLm5ldA==?= <lettre@example.org>"),
])
def test_the_cli_refuses_injections_in_one_line_before_writing_or_sending_anything(run, project, var, value):
    run("subscribers", "add", "a@example.org")
    for args in (("build", EXAMPLE_ISSUE, "--out", "sortie"), ("send", EXAMPLE_ISSUE, "--yes")):
        result = run(*args, env={var: value}, check_exit=2)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and var in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    assert not (project / "sortie").exists() and not (project / "outbox").exists()
    assert "never been sent" in run("status", EXAMPLE_ISSUE, check_exit=4).stderr


# ----- 2. what is accepted never adds a header ------------------------------------------------------

FRAGMENTS = ["Bcc: victim@example.net", ":", ";", ",", '"', "\\", "<", ">", "(", ")", "[x]", "@", "é", "«", "»",
             "\u00a0", "日本語", "Ελληνικά", "📰", "👩\u200d💻", "\u202e", "\u200f", "  ", "x" * 90, "Zoé " * 12,
             "= ?", "?=", "'", "%0D%0A", "\\r\\n", "café", "Œuvre", "ß", "İ"]


def odd_name(rng: random.Random) -> str:
    name = " ".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 5))).strip()
    name = name.strip('"') or "x"
    return name if name.strip() else "x"


def test_odd_but_valid_names_never_add_a_header_and_round_trip(project, settings, sample_size):
    """200 generated names, display names and List-Id phrases through a real build, parsed back."""
    rng = random.Random(2919)
    rendered = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
    recipient = Recipient(email="lecteur@example.org", name=odd_name(rng),
                          unsubscribe_url=f"{settings.base_url}/u/abc")
    for _ in range(sample_size(200)):
        name, sender, editor, phrase = (odd_name(rng) for _ in range(4))
        env = {**BASE_ENV, "MAILER_NAME": name,
               "MAILER_FROM": f'"{sender.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}" '
                              f"<lettre@example.org>",
               "MAILER_REPLY_TO": f"{editor} <redaction@example.org>",
               "MAILER_POSTAL_ADDRESS": odd_name(rng)}
        if rng.random() < 0.5:
            env["MAILER_LIST_ID"] = f"{phrase} <lettre.example.org>"
        try:
            configured = load_settings(project, env=env)
        except ConfigError as exc:  # only what the rules refuse: '=?' (never generated here)
            pytest.fail(f"refused {env}: {exc}")
        eml = MessageFactory(replace(rendered, settings=configured)).build(recipient, "<x@example.org>")
        message = assert_only_expected_headers(eml, reply_to=True)
        assert display_name(eml, "From") == " ".join(sender.split())
        assert message["From"].addresses[0].addr_spec == "lettre@example.org"
        assert display_name(eml, "Reply-To") == " ".join(editor.split())
        expected_phrase = " ".join((phrase if "MAILER_LIST_ID" in env else name).split())
        assert str(message["List-Id"]) == f"{expected_phrase} <{configured.list_id_value}>"


# ----- 3. List-Id (RFC 2919) -------------------------------------------------------------------------

NAME_PIECES = ["Les Actualités", "Le « Fil » d'Ariane", "北京新闻", "ニュース", "뉴스레터", "Привет, мир", "Ελληνικά νέα",
               "📰🎉", "L'œuvre & Cie", '"Quoted"', "<angle>", "Straße", "İstanbul", "عربي", "עברית", "x" * 200,
               "=?utf-8?q?x?=", "Café—Crème", "Ünïcödé", "\u00a0nbsp\u00a0", "A.B.C.", "semi;colon", "🇫🇷", "ǅemal",
               "naïve façade", "Ø", "ĳ", "Ⅻ", "Å", "ﬁ"]


def list_id_parts(eml: bytes) -> tuple[bytes, str, str]:
    """(raw unfolded header value, decoded phrase, id) — the id taken from the RAW bytes."""
    raw = re.search(rb"\r\nList-Id: (.*?)\r\n(?! )", eml, re.S).group(1).replace(b"\r\n ", b" ")
    match = re.fullmatch(rb"(.*) ?<([^<>]*)>", raw)
    assert match, raw
    decoded = str(parse(eml)["List-Id"])
    phrase, _, rest = decoded.rpartition(" <")
    assert rest == match.group(2).decode("ascii") + ">"
    return raw, phrase, match.group(2).decode("ascii")


def test_list_id_of_the_accented_case_is_an_encoded_phrase_and_an_ascii_id(tmp_path, run):
    folder = tmp_path / "case"
    shutil.copytree(CASES / "accented-list-name", folder)
    run("build", "issue", "--out", "out", cwd=folder, drop=tuple(BASE_ENV),
        env={"MAILER_TEMPLATES_DIR": str(REPO / "templates")})
    eml = (folder / "out" / "email.eml").read_bytes()
    raw, phrase, ident = list_id_parts(eml)
    assert ident == "les-actualites.example.org" and phrase == "Les Actualités"
    assert raw.endswith(b" <les-actualites.example.org>") and b"=?utf-8?" in raw


def test_list_id_for_many_generated_names(project, settings, sample_size):
    rng = random.Random(2369)
    rendered = render_issue(load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone), settings)
    recipient = Recipient(email="lecteur@example.org", unsubscribe_url=f"{settings.base_url}/u/abc")
    names = NAME_PIECES + [" ".join(rng.sample(NAME_PIECES, rng.randint(2, 4))) for _ in range(sample_size(200))]
    for name in names:
        if "=?" in name:
            with pytest.raises(ConfigError, match="MAILER_NAME contains '=\\?'"):
                load_settings(project, env={**BASE_ENV, "MAILER_NAME": name})
            continue
        configured = load_settings(project, env={**BASE_ENV, "MAILER_NAME": name})
        eml = MessageFactory(replace(rendered, settings=configured)).build(recipient, "<x@example.org>")
        raw, phrase, ident = list_id_parts(eml)
        assert DOT_ATOM.fullmatch(ident) and len(ident) <= 255 and ident.endswith(".example.org"), ident
        assert phrase == " ".join(name.split()), (name, phrase)
        for line in owned_header_lines(eml):
            if b"=?" in line:
                assert len(line) <= 76, line  # RFC 2047 §2
        assert_only_expected_headers(eml)


def test_list_id_transliterates_and_falls_back():
    cases = {"Les Actualités": "les-actualites", "Straße & Œuvres": "strasse-oeuvres", "北京新闻": "bei-jing-xin-wen",
             "📰🎉": "newsletter", "Привет мир": "privet-mir"}
    for name, label in cases.items():
        settings = load_settings(Path("/nonexistent-mailer-root"), env={**BASE_ENV, "MAILER_NAME": name})
        assert settings.list_id_value == f"{label}.example.org"
    long = load_settings(Path("/nonexistent-mailer-root"), env={**BASE_ENV, "MAILER_NAME": "mot " * 100})
    assert len(long.list_id_value.partition(".")[0]) <= 63 and DOT_ATOM.fullmatch(long.list_id_value)


@pytest.mark.parametrize("value, phrase, ident", [
    ("lettre.example.org", "Le Fil du jeudi", "lettre.example.org"),
    ("<lettre.example.org>", "Le Fil du jeudi", "lettre.example.org"),
    ("Le Fil <lettre.example.org>", "Le Fil", "lettre.example.org"),
    ('"Le Fil, édition" <lettre.example.org>', "Le Fil, édition", "lettre.example.org"),
    ("fil.médiathèque-exemple.fr", "Le Fil du jeudi", "fil.xn--mdiathque-exemple-xsbn.fr"),
])
def test_a_configured_list_id_is_used(project, value, phrase, ident):
    settings = load_settings(project, env={**BASE_ENV, "MAILER_LIST_ID": value})
    assert (settings.list_id_phrase, settings.list_id_value) == (phrase, ident)
    eml = build_issue(settings, EXAMPLE_ISSUE, write=False).eml
    assert str(parse(eml)["List-Id"]) == f"{phrase} <{ident}>"


@pytest.mark.parametrize("value", ["lettre", "lettre example.org", "lettre..example.org", ".lettre.example.org",
                                   "lettre.example.org.", "lettre@example.org", "<lettre.example.org", "a.💌",
                                   "Le Fil <>", "x." + "a" * 260, "lettre.(example).org"])
def test_a_configured_list_id_that_is_not_a_dot_atom_is_refused(project, value):
    with pytest.raises(ConfigError) as caught:
        load_settings(project, env={**BASE_ENV, "MAILER_LIST_ID": value})
    assert str(caught.value).startswith("MAILER_LIST_ID") and "\n" not in str(caught.value)


# ----- 4. internationalised domains ----------------------------------------------------------------

IDN_DOMAINS = ["médiathèque-exemple.fr", "bücher.example.com", "straße.de", "пример.рф", "例え.jp", "مثال.eg",
               "ÉCOLE.fr", "ｅｘａｍｐｌｅ.org", "xn--mdiathque-exemple-xsbn.fr", "δοκιμή.gr", "उदाहरण.भारत", "çà.fr"]


def test_the_idn_sender_case_builds_and_sends_through_the_outbox(tmp_path, run):
    folder = tmp_path / "case"
    shutil.copytree(CASES / "idn-sender", folder)
    env = {"MAILER_TEMPLATES_DIR": str(REPO / "templates")}
    run("build", "issue", "--out", "out", cwd=folder, drop=tuple(BASE_ENV), env=env)
    ascii_domain = "xn--mdiathque-exemple-xsbn.fr"
    assert idna.decode(ascii_domain) == "médiathèque-exemple.fr"
    for eml in [(folder / "out" / "email.eml").read_bytes()]:
        message = assert_only_expected_headers(eml)
        assert message["From"].addresses[0].addr_spec == f"lettre@{ascii_domain}"
        assert message["From"].addresses[0].display_name == "Médiathèque"
        assert message["Message-ID"].endswith(f"@{ascii_domain}>")
        assert list_id_parts(eml)[2] == f"le-fil-du-jeudi.{ascii_domain}"
        https, mailto = re.fullmatch(r"<(.*)>, <(.*)>", str(message["List-Unsubscribe"])).groups()
        assert urlsplit(https).hostname == f"lettres.{ascii_domain}"
        assert mailto == f"mailto:unsubscribe@{ascii_domain}?subject=unsubscribe"
        html = message.get_body(("html",)).get_content()
        hosts = {urlsplit(url).hostname for url in re.findall(r'href="(https?://[^"]+)"', html)}
        assert f"lettres.{ascii_domain}" in hosts and all(h.isascii() for h in hosts)

    # a real send through the outbox (needs a secret key only for real backends; the outbox makes one)
    run("subscribers", "add", "lecteur@example.org", cwd=folder, drop=tuple(BASE_ENV), env=env)
    run("send", "issue", "--yes", cwd=folder, drop=tuple(BASE_ENV), env=env)
    assert '"status": "sent"' in run("status", "issue", "--json", cwd=folder, drop=tuple(BASE_ENV), env=env).stdout
    sent = list((folder / "outbox" / "issue").glob("*.eml"))
    assert len(sent) == 1
    assert parse(sent[0].read_bytes())["From"].addresses[0].domain == ascii_domain


@pytest.mark.parametrize("domain", IDN_DOMAINS)
def test_idn_domains_become_a_labels_in_every_header_and_url(project, domain):
    expected = idna.encode(domain, uts46=True).decode("ascii")
    settings = load_settings(project, env={**BASE_ENV, "MAILER_FROM": f"Équipe <lettre@{domain}>",
                                           "MAILER_REPLY_TO": f"redaction@{domain}",
                                           "MAILER_BASE_URL": f"https://lettres.{domain}/archives/été/"})
    assert settings.sender_domain == expected and settings.base_url.startswith(f"https://lettres.{expected}/")
    assert unquote(urlsplit(settings.base_url).path) == "/archives/été"
    eml = build_issue(settings, EXAMPLE_ISSUE, write=False).eml
    message = assert_only_expected_headers(eml, reply_to=True)
    assert message["From"].addresses[0].domain == expected
    assert message["Reply-To"].addresses[0].domain == expected
    assert message["Message-ID"].endswith(f"@{expected}>")
    assert list_id_parts(eml)[2].endswith("." + expected)
    assert f"@{expected}?subject=unsubscribe" in str(message["List-Unsubscribe"])
    assert urlsplit(str(message["List-Unsubscribe"])[1:].partition(">")[0]).hostname == f"lettres.{expected}"


@pytest.mark.parametrize("var, value, words", [
    ("MAILER_FROM", "Élodie <élodie@example.org>", "SMTPUTF8"),
    ("MAILER_REPLY_TO", "rédaction@example.org", "SMTPUTF8"),
    ("MAILER_UNSUBSCRIBE_MAILTO", "désinscription@example.org", "SMTPUTF8"),
    ("MAILER_FROM", "Lettre <lettre@💌.fr>", "MAILER_FROM"),
    ("MAILER_FROM", "lettre@a..fr", "MAILER_FROM"),
    ("MAILER_FROM", "lettre@-tiret.fr", "MAILER_FROM"),
    ("MAILER_FROM", "lettre@" + "é" * 64 + ".fr", "MAILER_FROM"),
    ("MAILER_FROM", "Le Fil, du jeudi lettre@example.org", "MAILER_FROM"),
    ("MAILER_BASE_URL", "https://💌.fr", "invalid host"),
    ("MAILER_BASE_URL", "https://a..fr", "invalid host"),
    ("MAILER_BASE_URL", "https://xn--zz.fr", "invalid host"),
    ("MAILER_BASE_URL", "https://sous_tiret.example.org", "invalid host"),
])
def test_domains_and_addresses_that_cannot_be_converted_are_refused_in_one_line(project, var, value, words):
    with pytest.raises(ConfigError) as caught:
        load_settings(project, env={**BASE_ENV, var: value})
    message = str(caught.value)
    assert message.startswith(var) and words in message and "\n" not in message


def test_a_non_ascii_local_part_stops_send_before_anything_is_started(run, project):
    run("subscribers", "add", "a@example.org")
    result = run("send", EXAMPLE_ISSUE, "--yes", env={"MAILER_FROM": "Élodie <élodie@example.org>"}, check_exit=2)
    assert len(result.stderr.strip().splitlines()) == 1 and "SMTPUTF8" in result.stderr
    assert "never been sent" in run("status", EXAMPLE_ISSUE, check_exit=4).stderr


# ----- 5. base URL: syntax, and https + public for real backends ----------------------------------

@pytest.mark.parametrize("value, normalised", [
    ("https://Lettre.Example.ORG/", "https://lettre.example.org"),
    ("https://lettre.example.org:8443/lettre/", "https://lettre.example.org:8443/lettre"),
    ("  https://lettre.example.org  ", "https://lettre.example.org"),
    ("HTTPS://lettre.example.org", "https://lettre.example.org"),
    ("https://[2001:DB8::1]:8000/", "https://[2001:db8::1]:8000"),
    ("https://lettres.médiathèque-exemple.fr/été", "https://lettres.xn--mdiathque-exemple-xsbn.fr/%C3%A9t%C3%A9"),
])
def test_base_url_is_normalised_to_ascii(project, value, normalised):
    assert load_settings(project, env={**BASE_ENV, "MAILER_BASE_URL": value}).base_url == normalised


@pytest.mark.parametrize("value", [
    "lettre.example.org", "ftp://lettre.example.org", "javascript:alert(1)", "https://user:pw@lettre.example.org",
    "https://user@lettre.example.org", "https://lettre.example.org/?utm=x", "https://lettre.example.org/#top",
    "https:///chemin", "https://lettre.example.org:99999", "https://lettre.example.org:port",
    "https://lettre example.org", "https://lettre.example.org/a b", "https://lettre.example.org\\@evil.example",
    "https://[zz::1]/", "https://lettre.example.org/<script>", 'https://lettre.example.org/"',
    "https://lettre.example.org/\u00a0",
])
def test_malformed_base_urls_are_refused_in_one_line(project, value):
    with pytest.raises(ConfigError) as caught:
        load_settings(project, env={**BASE_ENV, "MAILER_BASE_URL": value})
    assert str(caught.value).startswith("MAILER_BASE_URL") and "\n" not in str(caught.value)


# Oracle for IP literals: ranges of the IANA special-purpose registries, written out here.
NON_PUBLIC_NETWORKS = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                       "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
                       "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "::1/128", "::/128", "fe80::/10", "fc00::/7",
                       "2001:db8::/32", "3fff::/20", "ff00::/8", "::ffff:10.0.0.0/104", "::ffff:127.0.0.0/104"]
PUBLIC_IPS = ["192.0.0.9", "8.8.8.8", "1.1.1.1", "9.9.9.9", "93.184.216.34", "151.101.1.69", "2606:4700:4700::1111",
              "2001:4860:4860::8888", "2a00:1450:4007:80f::200e", "::ffff:8.8.8.8"]
PRIVATE_NAMES = ["localhost", "LOCALHOST", "localhost.", "app.localhost", "intranet", "mailer", "serveur.local",
                 "lettre.internal", "lettre.lan", "nas.home.arpa", "lettre.test", "lettre.invalid", "abc.onion",
                 "lettre.example", "lettre.corp", "box.home", "pc.localdomain", "127.1", "0x7f.0.0.1", "2130706433",
                 "10.1", "1.2.3.04", "0177.0.0.1", "lettre.intranet"]
PUBLIC_NAMES = ["lettre.example.org", "example.com", "news.sub.domain.co.uk", "médiathèque-exemple.fr",
                "xn--mdiathque-exemple-xsbn.fr", "lettre.example.org:8443", "a.io", "lettre.paris", "x.example.org."]


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.count(":") == 1 else host


def sample_ips(rng: random.Random) -> list[tuple[str, bool]]:
    out = [(ip, True) for ip in PUBLIC_IPS]
    for net in map(ipaddress.ip_network, NON_PUBLIC_NETWORKS):
        for _ in range(5):
            out.append((str(net[rng.randrange(net.num_addresses)]), False))
    for _ in range(50):  # random addresses in 8.0.0.0/8 (Level 3 / Google space): public
        out.append((f"8.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", True))
    return out


def test_public_base_url_verdicts_for_many_shapes():
    rng = random.Random(8058)
    shapes = [(name, True) for name in PUBLIC_NAMES] + [(name, False) for name in PRIVATE_NAMES] + sample_ips(rng)
    checked = 0
    for host, public in shapes:
        for scheme in ("https", "http"):
            try:
                url = normalise_base_url(f"{scheme}://{url_host(host)}/lettre")
            except ValueError:
                assert not public, host  # numeric shapes the URL parser refuses outright are refused too
                continue
            verdict = base_url_problem(url)
            assert (verdict is None) == (public and scheme == "https"), (url, verdict)
            checked += 1
    assert checked > 2 * 150


@pytest.fixture
def smtp_settings(project, make_settings, db_url):
    def factory(**env):
        values = {"MAILER_BACKEND": "smtp", "MAILER_SMTP_HOST": "127.0.0.1", "MAILER_SMTP_PORT": "9",
                  "MAILER_SMTP_TLS": "none", **env}
        return make_settings(database_url=db_url, **values)
    return factory


BAD_FOR_REAL_BACKENDS = ["http://localhost:8000", "https://localhost", "http://lettre.example.org",
                         "https://127.0.0.1:8000", "https://[::1]", "https://192.168.1.10", "https://lettre.local",
                         "https://intranet", "https://10.0.0.5/lettre", "https://[fd00::5]", "https://lettre.internal"]


@pytest.mark.parametrize("url", BAD_FOR_REAL_BACKENDS)
def test_every_entry_point_refuses_a_private_base_url_with_a_real_backend(smtp_settings, url):
    settings = smtp_settings(MAILER_BASE_URL=url)
    store = open_store(settings.database_url)
    add_subscriber(store, "a@example.org")
    stop = threading.Event()
    stop.set()
    entry_points = {
        "send": lambda: dispatch.send_issue(settings, store, EXAMPLE_ISSUE),
        "send --test": lambda: dispatch.send_test(settings, EXAMPLE_ISSUE, ["moi@example.org"]),
        "worker": lambda: dispatch.work_queue(settings, store, stop=stop, once=True),
        "scheduler": lambda: run_scheduler(settings, stop=stop),
    }
    for name, call in entry_points.items():
        with pytest.raises(ConfigError) as caught:
            call()
        message = str(caught.value)
        assert "MAILER_BASE_URL" in message and "MAILER_ALLOW_PRIVATE_BASE_URL" in message and "\n" not in message, name
    with store.engine.connect() as conn:
        assert store.issue_row(conn, EXAMPLE_ISSUE) is None  # nothing frozen, nothing started
    store.close()
    # the outbox (local use) takes it; so does a real backend with the explicit override
    replace(settings, backend="outbox").require_for_send()
    smtp_settings(MAILER_BASE_URL=url, MAILER_ALLOW_PRIVATE_BASE_URL="1").require_for_send()


def test_the_override_lets_an_intranet_send_go_through_a_real_smtp_server(project, make_settings, db_url):
    from .smtp_server import start_server

    server = start_server()
    try:
        settings = make_settings(database_url=db_url, MAILER_BACKEND="smtp", MAILER_SMTP_HOST="127.0.0.1",
                                 MAILER_SMTP_PORT=str(server.port), MAILER_SMTP_TLS="none",
                                 MAILER_BASE_URL="http://lettre.intranet:8000", MAILER_ALLOW_PRIVATE_BASE_URL="1")
        store = open_store(settings.database_url)
        add_subscriber(store, "a@example.org")
        report = dispatch.send_issue(settings, store, EXAMPLE_ISSUE)
        store.close()
        assert report.counts["sent"] == 1
        message = server.handler.messages[0].parse()
        assert str(message["List-Unsubscribe"]).startswith("<http://lettre.intranet:8000/u/")
    finally:
        server.stop()


def test_cli_send_with_a_localhost_base_url_and_smtp_is_one_line(run):
    run("subscribers", "add", "a@example.org")
    result = run("send", EXAMPLE_ISSUE, "--yes", check_exit=2,
                 env={"MAILER_BACKEND": "smtp", "MAILER_SMTP_HOST": "127.0.0.1", "MAILER_BASE_URL": "http://localhost:8000"})
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MAILER_BASE_URL http://localhost:8000 is not https" in lines[0]
    assert "MAILER_ALLOW_PRIVATE_BASE_URL=1" in lines[0]
    worker = run("worker", "--once", check_exit=2, env={"MAILER_BACKEND": "sendgrid", "SENDGRID_API_KEY": "SG.x",
                                                         "MAILER_BASE_URL": "https://192.168.0.10"})
    assert "non-public address" in worker.stderr and len(worker.stderr.strip().splitlines()) == 1


# ----- 6. the secret key ----------------------------------------------------------------------------

def random_key(rng: random.Random, kind: str) -> str:
    data = rng.randbytes(32)
    if kind == "urlsafe":  # what secrets.token_urlsafe(32) returns, from a seeded source
        import base64
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    if kind == "hex16":
        return data[:16].hex()
    if kind == "hex32":
        return data.hex()
    import base64
    return base64.b64encode(data).decode()


def weak_keys(rng: random.Random) -> list[str]:
    alphabet = string.ascii_letters + string.digits + "-_"
    keys = [ch * n for ch in "a0Z-x" for n in (32, 40, 64)]
    for _ in range(60):  # a short pattern repeated past 32 characters
        pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 16)))
        keys.append(pattern * (64 // len(pattern) + 1))
    for size in range(2, 8):  # few distinct characters
        letters = rng.sample(alphabet, size)
        keys += ["".join(rng.choice(letters) for _ in range(rng.randint(32, 64))) for _ in range(10)]
    runs = [string.ascii_lowercase + string.digits, string.digits + string.ascii_uppercase, string.ascii_lowercase[::-1] * 2]
    keys += [random_key(rng, "urlsafe")[:20] + run[:12] + random_key(rng, "urlsafe")[:10] for run in runs]
    for word in ("changeme", "secret", "Password", "EXAMPLE", "default", "sample", "insecure", "placeholder",
                 "qwerty", "azerty", "letmein", "mailer", "change-me"):
        base = random_key(rng, "urlsafe")
        cut = rng.randrange(len(base))
        keys.append(base[:cut] + word + base[cut:])
    keys += sorted(PUBLISHED_KEYS) + ["my-super-secret-key-for-production-2024", "this is the newsletter key, ok?!"]
    return keys


def test_weak_keys_are_refused_and_generated_keys_accepted():
    rng = random.Random(1948)
    weak = weak_keys(rng)
    assert len(weak) > 150
    for key in weak:
        problem = secret_key_problem(key)
        assert problem and problem.startswith("MAILER_SECRET_KEY") and key not in problem, key
        assert "secrets.token_urlsafe(32)" in problem
    for length in range(1, 32):
        assert "at least 32" in secret_key_problem(random_key(rng, "urlsafe")[:length])
    refused = [key for kind in ("urlsafe", "hex16", "hex32", "b64") for key in (random_key(rng, kind) for _ in range(5000))
               if secret_key_problem(key)]
    assert refused == []  # 0 of 20,000 generated keys refused


WEAK_EXAMPLES = ["Le-Fil-du-jeudi-Le-Fil-du-jeudi-", "test-secret-key-0123456789", "changeme" * 4, ""]
REAL_BACKENDS = [{"MAILER_BACKEND": "smtp", "MAILER_SMTP_HOST": "127.0.0.1"},
                 {"MAILER_BACKEND": "sendgrid", "SENDGRID_API_KEY": "SG.x"}]


def test_weak_or_missing_key_stops_every_real_backend_without_echoing_it(project):
    for backend in REAL_BACKENDS:
        for key in WEAK_EXAMPLES:
            settings = load_settings(project, env={**BASE_ENV, **backend, "MAILER_SECRET_KEY": key})
            for check in (settings.require_for_send, lambda: secret_key_for(settings), lambda: require_secret_key(settings)):
                with pytest.raises(ConfigError) as caught:
                    check()
                assert "MAILER_SECRET_KEY" in str(caught.value) and (not key or key not in str(caught.value))


def test_weak_key_on_the_command_line_is_one_line_for_send_test_worker_and_serve(run):
    run("subscribers", "add", "a@example.org")
    commands = [("send", EXAMPLE_ISSUE, "--yes"), ("send", EXAMPLE_ISSUE, "--test", "moi@example.org"),
                ("worker", "--once"), ("schedule", "run")]
    for index, args in enumerate(commands):
        key = WEAK_EXAMPLES[index % len(WEAK_EXAMPLES)]
        result = run(*args, env={**REAL_BACKENDS[index % 2], "MAILER_SECRET_KEY": key}, check_exit=2)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "MAILER_SECRET_KEY" in lines[0] and "token_urlsafe" in lines[0], result.stderr
        assert not key or key not in result.stderr
    for key in ("", "changeme" * 4):  # serve: whatever the backend, even with a leftover demo key file
        (Path(run.project) / "subscribers" / ".secret_key").write_text("demo-file-key\n", encoding="ascii")
        result = run("serve", "--port", "9", env={"MAILER_SECRET_KEY": key, "MAILER_BACKEND": "outbox"}, check_exit=2)
        assert len(result.stderr.strip().splitlines()) == 1 and "MAILER_SECRET_KEY" in result.stderr
    assert "never been sent" in run("status", EXAMPLE_ISSUE, check_exit=4).stderr


def test_the_outbox_key_file_is_for_the_outbox_only(project, make_settings):
    outbox = make_settings(MAILER_SECRET_KEY="")
    generated = secret_key_for(outbox)
    assert len(generated) >= 43 and (project / "subscribers" / ".secret_key").is_file()
    assert secret_key_for(make_settings(MAILER_SECRET_KEY="")) == generated  # stable across runs
    assert secret_key_for(make_settings(MAILER_SECRET_KEY="court")) == b"court"  # demos may use any key
    sendgrid = make_settings(MAILER_SECRET_KEY="", MAILER_BACKEND="sendgrid", SENDGRID_API_KEY="SG.x")
    with pytest.raises(ConfigError, match="MAILER_SECRET_KEY is missing"):
        secret_key_for(sendgrid)  # the leftover demo file is never used to sign real links
    with pytest.raises(ConfigError, match="MAILER_SECRET_KEY is missing"):
        require_secret_key(outbox)  # what `serve` calls: links people follow need the real key
    strong = make_settings(MAILER_BACKEND="sendgrid", SENDGRID_API_KEY="SG.x")
    assert secret_key_for(strong) == require_secret_key(strong) == BASE_ENV["MAILER_SECRET_KEY"].encode()


@pytest.mark.parametrize("value, url", [
    ("mailto:Stop+News@Médiathèque-exemple.fr", "mailto:Stop+News@xn--mdiathque-exemple-xsbn.fr?subject=unsubscribe"),
    ("stop?now@example.org", "mailto:stop%3Fnow@example.org?subject=unsubscribe"),
    ("a%b#c&d=e@example.org", "mailto:a%25b%23c%26d%3De@example.org?subject=unsubscribe"),
])
def test_the_unsubscribe_mailbox_is_an_ascii_rfc_6068_uri(project, value, url):
    """RFC 6068 §2: `?`, `%`, `#`, `&`, `=` in the address are percent-encoded; the domain is IDNA."""
    settings = load_settings(project, env={**BASE_ENV, "MAILER_UNSUBSCRIBE_MAILTO": value})
    assert settings.unsubscribe_mailto_url == url
    message = parse(build_issue(settings, EXAMPLE_ISSUE, write=False).eml)
    assert str(message["List-Unsubscribe"]).endswith(f", <{url}>")
    address = unquote(url[len("mailto:"):].partition("?")[0])
    assert address.rpartition("@")[0] == value.removeprefix("mailto:").rpartition("@")[0]


@pytest.mark.parametrize("url", ["http://lettre.example.org", "https://192.168.1.10", "https://localhost:8000"])
def test_build_warns_about_a_base_url_recipients_cannot_open(make_settings, url):
    settings = make_settings(MAILER_BASE_URL=url)
    warnings = build_issue(settings, EXAMPLE_ISSUE, write=False).warnings
    assert any(w.startswith(f"MAILER_BASE_URL is {url}: it {base_url_problem(url)}") for w in warnings), warnings
    assert not build_issue(make_settings(), EXAMPLE_ISSUE, write=False).warnings


def test_errors_from_mailer_toml_name_the_file_line_and_key(project):
    (project / "mailer.toml").write_text('name = "Le Fil"\n\n[schedule]\ntimezone = "Europe/Pariss"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mailer\.toml:4: \[schedule\]\.timezone: unknown time zone"):
        load_settings(project, env=env_without("MAILER_TIMEZONE"))
    (project / "mailer.toml").write_text('backend = "smtp"\nbase_url = "http://localhost:8000"\n'
                                         'allow_private_base_url = true\nsmtp_host = "127.0.0.1"\n', encoding="utf-8")
    settings = load_settings(project, env=env_without("MAILER_BASE_URL"))
    assert settings.allow_private_base_url and settings.base_url_problem == "is not https"
    settings.require_for_send()  # the override, from the file


@pytest.mark.parametrize("written", ["2.5", "0.9", "true", "\"two\"", "-1", "65"])
def test_a_count_in_mailer_toml_that_is_no_whole_number_in_range_is_refused_with_its_line(project, written):
    """`send_processes = 0.9` used to become 0 (automatic), `2.5` 2 and `true` 1, silently, while the
    same values in MAILER_SEND_PROCESSES were refused: every count of mailer.toml is a whole number or
    a one-line error naming the file, line and key."""
    (project / "mailer.toml").write_text(f"# counts\nsend_processes = {written}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{project / 'mailer.toml'}:2: send_processes")) as caught:
        load_settings(project, env=dict(BASE_ENV))
    assert "\n" not in str(caught.value)
    (project / "mailer.toml").write_text("send_processes = 2.0\nbatch_size = 500\n", encoding="utf-8")
    settings = load_settings(project, env=dict(BASE_ENV))
    assert (settings.send_processes, settings.batch_size) == (2, 500)
