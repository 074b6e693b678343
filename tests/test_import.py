"""The CSV import as lists really arrive: broken quotes, any encoding, other tools' exports, odd headers.

Every test runs on SQLite and PostgreSQL (the `store` fixture). Inputs are generated in the shape
the real thing has; the oracle is a standard parser (`csv.reader`), the text we encoded, or the
documented meaning of a provider's column.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
import shutil
from pathlib import Path

import pytest

import mailer.subscribers.importer.parse as parse
from mailer.errors import MailerError
from mailer.subscribers.importer import ImportStopped, import_csv
from mailer.subscribers.importer.encoding import guess_code_page
from mailer.subscribers import (add_subscriber, count_subscribers, iter_subscribers, remove_subscriber,
                                set_subscriber_status, show_subscriber)

DATA = Path(__file__).parent / "data" / "imports"
FIRST = ("Camille", "Léa", "Hugo", "Chloé", "Zoé", "Inès", "Raphaël", "Anaïs", "Jérôme", "Hélène", "François",
         "Noémie", "Maëlle", "Benoît", "Cécile", "Théo", "Éloïse", "Jo", "Björn", "José", "Ümit", "Agnès", "Clémence")
LAST = ("Martin", "Dubois", "Lefèvre", "Müller", "N'Diaye", "O'Brien", "Le Gall", "Guérin", "Noël", "Œuvray",
        "Çelik", "Brontë", "Núñez", "Straße", "Lætitia", "Dupré")


def people(count: int, seed: int = 1) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"person{i}.{rng.randrange(10**6)}@example.org", f"{rng.choice(FIRST)} {rng.choice(LAST)}")
            for i in range(count)]


def names(store) -> dict[str, str]:
    return {row.email_given: row.name for row, _ in iter_subscribers(store)}


def statuses(store) -> dict[str, str]:
    return {row.email_given: row.status for row, _ in iter_subscribers(store)}


@pytest.fixture(params=["in-process", "helper-process"])
def both_paths(request, monkeypatch):
    """Big files are parsed by a helper process: run through both paths."""
    if request.param == "helper-process":
        monkeypatch.setattr(parse, "PARALLEL_MIN_BYTES", 0)
    return request.param


# ----- 9.13: quotes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_an_unclosed_quote_is_reported_where_it_opens_and_every_row_counts(store, tmp_path, where, delimiter):
    rows = people(300)
    broken = {"start": 0, "middle": 150, "end": 299}[where]
    lines = [delimiter.join(("email", "name", "city"))]
    for index, (address, name) in enumerate(rows):
        shown = f'"{name}' if index == broken else name  # a quote opened, never closed
        lines.append(delimiter.join((address, shown, "Lyon")))
    path = tmp_path / "liste.csv"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")

    report = import_csv(store, path)

    assert (report.added, report.rejected) == (299, 1)
    assert report.rows == 300  # every physical row accounted for
    (rejection,) = report.rejections
    assert rejection.line == broken + 2 and "unterminated quote" in rejection.reason
    expected = {address: name for index, (address, name) in enumerate(rows) if index != broken}
    assert names(store) == expected


def test_a_quote_closed_thousands_of_lines_later_swallows_nobody(store, tmp_path, both_paths):
    """The reported case: a quote opened on line 3, closed by a stray quote on line 5129 (past the
    csv module's 128 KB field limit): 1 row rejected at line 3, the 5,127 others imported."""
    rows = people(5128, seed=2)
    lines = ["email,name,notes"]
    for index, (address, name) in enumerate(rows):
        if index == 1:
            lines.append(f'{address},"{name},')                    # line 3: opens, never closes
        elif index == 5127:
            lines.append(f'{address},{name},dit "bonjour" en partant')  # line 5129: a stray quote
        else:
            lines.append(f"{address},{name},rien à signaler, vraiment rien ici pour allonger")
    path = tmp_path / "export.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    report = import_csv(store, path)

    assert (report.added, report.rejected) == (5127, 1)
    assert report.rejections[0].line == 3
    assert "runs into line 4" in report.rejections[0].reason
    assert count_subscribers(store) == 5127


def test_stray_quotes_inside_fields_are_text(store, tmp_path):
    path = tmp_path / "liste.csv"
    path.write_text('email,name\na@example.org,Jo "Jojo" Smith\nb@example.org,5" screen\nc@example.org,Zoé\n',
                    encoding="utf-8")
    report = import_csv(store, path)
    assert (report.added, report.rejected) == (3, 0)
    assert names(store) == {"a@example.org": 'Jo "Jojo" Smith', "b@example.org": '5" screen', "c@example.org": "Zoé"}


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_files_a_standard_writer_produces_read_back_exactly(store, tmp_path, delimiter):
    """Generated files with quoted fields spanning lines, quotes, delimiters and CR LF inside values:
    valid CSV, so nothing may be rejected, and every value must equal what csv.reader reads."""
    rng = random.Random(delimiter)
    pieces = ["ligne", "deux", f"a{delimiter}b", 'dit "oui"', "\r\n", "\n", "« guillemets »", "x@y.z est là", "  "]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(["email", "name", "notes", "city"])
    for address, name in people(200, seed=3):
        notes = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6))).strip()
        writer.writerow([address, name, notes, rng.choice(["Paris", f"Aix{delimiter} centre", ""])])
    path = tmp_path / "export.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")

    report = import_csv(store, path)

    oracle = list(csv.reader(io.StringIO(buffer.getvalue(), newline=""), delimiter=delimiter))[1:]
    assert (report.added, report.rejected) == (200, 0)
    for address, name, notes, city in oracle:
        view = show_subscriber(store, address)
        expected = {key: value for key, value in (("notes", notes.strip()), ("city", city.strip())) if value}
        assert (view.name, view.attributes) == (" ".join(name.split()), expected)


# ----- 9.14 + 10.6: encodings, and all or nothing ------------------------------------------------------------
def test_the_excel_export_that_turns_windows_1252_at_line_8002(store, tmp_path):
    path = tmp_path / "excel-export.csv"
    shutil.copy(DATA / "excel-late-encoding.csv", path)
    report = import_csv(store, path)
    assert (report.added, report.rejected) == (8001, 0)
    assert show_subscriber(store, "rene.leger@example.org").name == "René Léger"
    assert "Windows-1252" in report.summary()


def _ascii_rows(count: int) -> list[str]:
    return [f"reader{i:05d}@example.org,Reader {i}" for i in range(count)]


@pytest.mark.parametrize("position", ["line 2", "middle", "last line"])
def test_where_the_windows_1252_line_is_does_not_change_the_outcome(store, tmp_path, position):
    rows = _ascii_rows(3000)
    at = {"line 2": 0, "middle": 1500, "last line": 3000}[position]
    rows.insert(at, "rene.leger@example.org,René Léger")
    path = tmp_path / "liste.csv"
    path.write_bytes(("email,name\r\n" + "\r\n".join(rows) + "\r\n").encode("cp1252"))
    report = import_csv(store, path)
    assert (report.added, report.rejected) == (3001, 0)
    assert show_subscriber(store, "rene.leger@example.org").name == "René Léger"
    assert "Windows-1252" in report.encoding


# Ways a UTF-8 line goes bad: a stray byte, a line pasted from a Windows-1252 file, a cut sequence.
_BAD_BYTES = [b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xe9t\xe9", b"\xf0\x9f", b"\xc0\xaf"]


def _utf8_file_with_bad_lines(folder: Path, count: int, bad_at: list[int], seed: int, plain_rest: bool = False):
    """A UTF-8 file of `count` rows whose data rows at indexes `bad_at` hold a byte that is not
    UTF-8, somewhere in the name; (path, the names a correct import stores, {line: (byte, column)})."""
    rng = random.Random(seed)
    lines, expected, bad = [b"email,name"], {}, {}
    for index, (address, name) in enumerate(people(count, seed)):
        if plain_rest and index not in bad_at:
            name = f"Reader {index}"
        data = f"{address},{name}".encode()
        if index in bad_at:
            cut = rng.randrange(len(address) + 2, len(data) + 1)
            while cut < len(data) and 0x80 <= data[cut] < 0xC0:
                cut += 1  # not inside a character
            data = data[:cut] + rng.choice(_BAD_BYTES) + data[cut:]
            text = data.decode("utf-8", "surrogateescape")
            column = next(i for i, c in enumerate(text) if "\udc80" <= c <= "\udcff") + 1
            bad[len(lines) + 1] = (ord(text[column - 1]) - 0xDC00, column)
        else:
            expected[address] = name
        lines.append(data)
    path = folder / "liste.csv"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path, expected, bad


@pytest.mark.parametrize("where", ["line 2", "middle", "last line", "several lines", "every 50th line"])
def test_a_utf8_file_with_bytes_that_are_not_utf8_rejects_exactly_those_rows(store, tmp_path, where, both_paths):
    count = 3000
    bad_at = {"line 2": [0], "middle": [1500], "last line": [count - 1], "several lines": [4, 7, 10, 2222, 2999],
              "every 50th line": list(range(3, count, 50))}[where]
    path, expected, bad = _utf8_file_with_bad_lines(tmp_path, count, bad_at, seed=len(where))

    report = import_csv(store, path)

    assert names(store) == expected  # the rows that are valid UTF-8, exactly as written; nothing garbled
    assert (report.added, report.rejected) == (count - len(bad_at), len(bad_at))
    assert {r.line: r.reason for r in report.rejections} == {
        line: f"not valid UTF-8 (byte 0x{byte:02X} at column {column})" for line, (byte, column) in bad.items()}
    assert report.encoding == f"UTF-8 ({len(bad_at)} line{'s' if len(bad_at) > 1 else ''} not valid UTF-8: rejected)"
    shown = sorted(bad)[:5]
    named = (f"line {shown[0]} is" if len(bad) == 1 else
             f"lines {', '.join(map(str, shown))} and {len(bad) - 5} more are" if len(bad) > 5 else
             f"lines {', '.join(map(str, shown[:-1]))} and {shown[-1]} are")
    assert report.warnings[0].startswith(f"{named} not valid UTF-8")
    assert f"rejected {len(bad_at)}" in report.summary()


@pytest.mark.parametrize("line", [6, 8002])
def test_one_stray_byte_on_a_line_of_utf8_accents_in_an_otherwise_ascii_file(store, tmp_path, line):
    """The review's case: the only non-ASCII line is UTF-8 with a stray 0xFF. Once read as
    iso8859-13 ("LoĆÆc LefĆØvre") or Windows-1252 ("ZoÃ« GarÃ§on") depending on the line."""
    rows = [f"reader{i}@example.org,Reader {i}" for i in range(9999)]
    rows.insert(line - 2, "zoe@example.org,Zoë Garçon")
    data = ("email,name\n" + "\n".join(rows) + "\n").encode().replace("Garçon".encode(), "Garçon".encode() + b"\xff")
    path = tmp_path / "liste.csv"
    path.write_bytes(data)
    report = import_csv(store, path)
    assert (report.added, report.rejected) == (9999, 1)
    assert report.rejections[0].line == line
    assert report.rejections[0].reason == "not valid UTF-8 (byte 0xFF at column 27)"
    assert report.rejections[0].value == "zoe@example.org"
    assert all("Ã" not in name and "Ć" not in name for name in names(store).values())


def test_a_header_that_is_not_utf8_in_a_utf8_file_imports_nobody(store, tmp_path):
    path = tmp_path / "liste.csv"
    path.write_bytes(b"email,Pr\xe9nom\nzoe@example.org,Zo\xc3\xab\n")
    with pytest.raises(MailerError, match=r"liste.csv:1: the header is not valid UTF-8 \(byte 0xE9\)"):
        import_csv(store, path)
    assert count_subscribers(store) == 0


def test_a_multi_line_row_names_the_line_of_its_bad_byte(store, tmp_path):
    path = tmp_path / "liste.csv"
    path.write_bytes('email,name,notes\na@example.org,Zoë,"one\ntwo \xff"\nb@example.org,Noël,\n'
                     .encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    report = import_csv(store, path)
    assert names(store) == {"b@example.org": "Noël"}
    assert report.rejections[0].reason == "not valid UTF-8 (byte 0xFF at line 3, column 5)"


@pytest.mark.parametrize("position", ["line 2", "middle", "last line"])
@pytest.mark.parametrize("garbage", ["nul bytes", "random bytes"])
def test_binary_data_anywhere_imports_nobody_and_names_the_line(store, tmp_path, position, garbage, both_paths):
    rng = random.Random(position + garbage)
    blob = bytes(rng.randrange(256) for _ in range(600))
    if garbage == "nul bytes":
        blob = b"\x00\x00" + blob
    else:
        blob = bytes(b for b in blob if b not in (0, 10, 13))
    rows = [line.encode() for line in _ascii_rows(20000)]
    at = {"line 2": 0, "middle": 10000, "last line": 20000}[position]
    rows.insert(at, b"x@example.org," + blob)
    path = tmp_path / "casse.csv"
    path.write_bytes(b"email,name\n" + b"\n".join(rows) + b"\n")
    with pytest.raises(MailerError) as caught:
        import_csv(store, path)
    message = str(caught.value)
    assert f"casse.csv:{at + 2}:" in message and "nothing imported" in message
    assert "\n" not in message
    assert count_subscribers(store) == 0


ENCODED_NAMES = ["Zoé Lefèvre", "Hélène Noël", "Jérôme Œuvray", "François Çelik", "Benoît Dupré", "Maëlle Brontë",
                 "Agnès à Noël", "Léa l’Été", "Cécile « Cé »", "Anaïs Müller"]


@pytest.mark.parametrize("codec, delimiter, newline, extra", [
    ("utf-8", ",", "\n", "€ œ ’"),
    ("utf-8-sig", ";", "\r\n", "€ œ ’"),         # Excel "CSV UTF-8"
    ("utf-16", "\t", "\r\n", "€ œ ’"),           # Excel "Unicode text": UTF-16 LE with BOM, tabs
    ("utf-16-be-bom", "\t", "\r\n", "€ œ ’"),
    ("utf-16-le", "\t", "\r\n", "€ œ ’"),        # UTF-16 without a byte-order mark
    ("cp1252", ";", "\r\n", "€ œ ’"),            # French Excel on Windows
    ("latin-1", ",", "\n", ""),
    ("mac_roman", ",", "\r", "€ œ ’"),           # old Mac Excel: CR line ends
    ("cp850", ";", "\r\n", ""),                  # DOS
    ("iso8859_15", ";", "\n", "€ œ"),
])
def test_each_encoding_reads_back_the_names_that_were_written(store, tmp_path, codec, delimiter, newline, extra):
    rows = [delimiter.join(("email", "name"))]
    expected = {}
    plain_codec = "utf-16-be" if codec == "utf-16-be-bom" else codec
    writable = [name for name in ENCODED_NAMES if _encodable(f"{name} {extra}", plain_codec)]
    assert len(writable) >= 7
    for index, name in enumerate(writable):
        full = f"{name} {extra}".strip()
        address = f"p{index}@example.org"
        expected[address] = full
        rows.append(delimiter.join((address, full)))
    text = newline.join(rows) + newline
    if codec == "utf-16-be-bom":
        data = codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    else:
        data = text.encode(codec)
    path = tmp_path / "liste.csv"
    path.write_bytes(data)

    report = import_csv(store, path)

    assert (report.added, report.rejected) == (len(writable), 0)
    assert names(store) == expected
    label = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8 with BOM", "utf-16": "UTF-16 LE", "utf-16-be-bom": "UTF-16 BE",
             "utf-16-le": "UTF-16 LE (no byte-order mark)", "cp1252": "Windows-1252", "latin-1": "Windows-1252", "mac_roman": "Mac Roman", "cp850": "cp850",
             "iso8859_15": "ISO-8859-15"}[codec]
    assert label in report.encoding


def _encodable(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def test_the_guess_on_a_single_short_line_of_each_code_page():
    for text, codec in [("René Léger", "cp1252"), ("René Léger", "mac_roman"), ("René Léger", "cp850"),
                        ("Łódź Gdańsk", "cp1250"), ("Москва Привет", "cp1251"), ("Ça va", "mac_roman")]:
        data = f"x@example.org,{text}\r\n".encode(codec)
        assert data.decode(guess_code_page(data)).endswith(f",{text}\r\n"), (text, codec)


def test_forced_encoding_is_used_and_checked(store, tmp_path):
    path = tmp_path / "liste.csv"
    path.write_bytes("email,name\na@example.org,Zoé\nb@example.org,Noël\n".encode("cp1252"))
    with pytest.raises(MailerError, match=r"liste.csv:2: not valid UTF-8 \(--encoding\) \(byte 0xe9\); nothing imported"):
        import_csv(store, path, encoding="utf-8")
    assert count_subscribers(store) == 0
    with pytest.raises(MailerError, match="unknown encoding"):
        import_csv(store, path, encoding="klingon")
    report = import_csv(store, path, encoding="latin-1")
    assert names(store) == {"a@example.org": "Zoé", "b@example.org": "Noël"}
    assert report.encoding == "ISO-8859-1 (--encoding)"


def test_a_stop_half_way_says_what_was_written_and_a_rerun_finishes(store, tmp_path, both_paths, monkeypatch):
    monkeypatch.setattr(parse, "IMPORT_BATCH", 5000)  # several transactions in a small file
    rows = _ascii_rows(12000)
    path = tmp_path / "grande.csv"
    path.write_text("email,name\n" + "\n".join(rows) + "\n", encoding="utf-8")
    calls = []

    def interrupt(done: int) -> None:  # the caller's progress hook: Ctrl-C lands after the first batch
        calls.append(done)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with pytest.raises(ImportStopped) as caught:
        import_csv(store, path, progress=interrupt)
    written = count_subscribers(store)
    assert written == parse.IMPORT_BATCH
    assert f"written before that: added {written}, " in str(caught.value)
    assert caught.value.exit_code == 130
    again = import_csv(store, path)
    assert (again.added, again.unchanged) == (12000 - written, written)


# ----- 10.5: exports of other tools ----------------------------------------------------------------------
def test_the_mailchimp_unsubscribed_and_cleaned_exports(store, tmp_path):
    for name in ("unsubscribed_members_export.csv", "cleaned_members_export.csv"):
        shutil.copy(DATA / name, tmp_path / name)
    unsubscribed = import_csv(store, tmp_path / "unsubscribed_members_export.csv")
    cleaned = import_csv(store, tmp_path / "cleaned_members_export.csv")
    jo, old = show_subscriber(store, "jo.smith@example.org"), show_subscriber(store, "bounce.old@example.org")
    assert (jo.status, jo.name) == ("unsubscribed", "Jo Smith")
    assert (old.status, old.name) == ("bounced", "Old Address")
    assert jo.unsubscribed_at.isoformat() == "2024-06-01T09:00:00+00:00"  # UNSUB_TIME, not the import date
    assert jo.events[0]["reason"] == "import of Mailchimp unsubscribed export line 2"
    assert "Mailchimp (unsubscribed export)" in unsubscribed.summary()
    assert "Mailchimp (cleaned export)" in cleaned.summary()
    assert unsubscribed.counts_line().startswith("added 1 (1 as unsubscribed)")


MAILCHIMP_BASE = ["Email Address", "First Name", "Last Name", "Address", "Phone Number", "Birthday", "MEMBER_RATING",
                  "OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME", "CONFIRM_IP", "LATITUDE", "LONGITUDE", "GMTOFF", "DSTOFF",
                  "TIMEZONE", "CC", "REGION"]
MAILCHIMP_TAIL = {
    "subscribed": ["LAST_CHANGED", "LEID", "EUID", "NOTES", "TAGS"],
    "unsubscribed": ["UNSUB_TIME", "UNSUB_CAMPAIGN_TITLE", "UNSUB_CAMPAIGN_ID", "UNSUB_REASON", "UNSUB_REASON_OTHER",
                     "LEID", "EUID", "NOTES", "TAGS"],
    "cleaned": ["CLEAN_TIME", "CLEAN_CAMPAIGN_TITLE", "CLEAN_CAMPAIGN_ID", "LEID", "EUID", "NOTES", "TAGS"],
    "nonsubscribed": ["LAST_CHANGED", "LEID", "EUID", "NOTES", "TAGS"],
}


def _mailchimp_file(folder: Path, kind: str, rows: list[dict]) -> Path:
    header = MAILCHIMP_BASE + MAILCHIMP_TAIL[kind]
    path = folder / f"{kind}_members_export_3f1c2a.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, header, restval="", quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({"MEMBER_RATING": "2", "OPTIN_TIME": "2023-05-01 10:00:00",
                             "CONFIRM_TIME": "2023-05-01 10:05:00", "LEID": "33996392", "TAGS": '"Lecteurs"', **row})
    return path


def test_mailchimp_exports_of_every_kind(store, tmp_path):
    add_subscriber(store, "deja.actif@example.org", name="Déjà Actif")
    subscribed = _mailchimp_file(tmp_path, "subscribed", [
        {"Email Address": "ana@example.org", "First Name": "Ana", "Last Name": "Lima", "TIMEZONE": "America/Sao_Paulo"},
        {"Email Address": "bo@example.org", "First Name": "Bo", "TIMEZONE": "europe/paris"},
        {"Email Address": "cy@example.org", "Last Name": "Cyr", "TIMEZONE": "Mars/Olympus"},
    ])
    unsubscribed = _mailchimp_file(tmp_path, "unsubscribed", [
        {"Email Address": "deja.actif@example.org", "UNSUB_TIME": "2024-01-02 03:04:05",
         "UNSUB_REASON": "I no longer want to receive these emails"},
        {"Email Address": "plainte@example.org", "First Name": "Pat", "UNSUB_REASON": "Abuse complaint",
         "UNSUB_TIME": "2024-01-02 03:04:05"},
    ])
    cleaned = _mailchimp_file(tmp_path, "cleaned", [
        {"Email Address": "ancienne@example.org", "First Name": "Ann", "CLEAN_TIME": "2023-03-01 09:00:00"},
    ])
    nonsubscribed = _mailchimp_file(tmp_path, "nonsubscribed", [{"Email Address": "client@example.org"}])

    first = import_csv(store, subscribed)
    for path in (unsubscribed, cleaned, nonsubscribed):
        import_csv(store, path)

    assert statuses(store) == {
        "deja.actif@example.org": "unsubscribed", "ana@example.org": "active", "bo@example.org": "active",
        "cy@example.org": "active", "plainte@example.org": "complained", "ancienne@example.org": "bounced",
        "client@example.org": "pending",  # never opted in: not mailed
    }
    ana = show_subscriber(store, "ana@example.org")
    assert ana.name == "Ana Lima"
    assert ana.attributes["timezone"] == "America/Sao_Paulo" and ana.attributes["first_name"] == "Ana"
    assert show_subscriber(store, "bo@example.org").attributes["timezone"] == "Europe/Paris"
    assert "timezone" not in show_subscriber(store, "cy@example.org").attributes
    assert any("time zone not understood on 1 row (first: line 4, 'Mars/Olympus')" in w for w in first.warnings)
    assert show_subscriber(store, "deja.actif@example.org").name == "Déjà Actif"
    assert "Mailchimp (subscribed export)" in first.summary()


def test_substack_export(store, tmp_path):
    path = tmp_path / "substack.csv"
    path.write_text(
        "email,active_subscription,expiry,email_disabled,created_at\n"
        "lecteur@example.org,true,2025-07-06T16:20:44.000Z,false,2018-08-27T15:06:27.713Z\n"
        "parti@example.org,,,true,2019-08-18T13:36:31.230Z\n"
        "gratuit@example.org,,,false,2020-08-06T10:21:25.605Z\n", encoding="utf-8")
    report = import_csv(store, path)
    assert statuses(store) == {"lecteur@example.org": "active", "parti@example.org": "unsubscribed",
                               "gratuit@example.org": "active"}
    assert show_subscriber(store, "lecteur@example.org").created_at.isoformat() == "2018-08-27T15:06:27.713000+00:00"
    assert "Substack export" in report.summary()


def test_buttondown_subscribers_and_unsubscribers_exports(store, tmp_path):
    subscribers_file = tmp_path / "subscribers.csv"
    with subscribers_file.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "subscriber_type", "creation_date", "notes", "metadata", "tags", "referrer_url",
                         "source"])
        for address, kind, metadata in [("regular@example.org", "regular", {"first_name": "Rémi", "city": "Lyon"}),
                                        ("premium@example.org", "premium", {}),
                                        ("pending@example.org", "unactivated", {}),
                                        ("gone@example.org", "unsubscribed", {}),
                                        ("bounce@example.org", "undeliverable", {}),
                                        ("angry@example.org", "complained", {}),
                                        ("odd@example.org", "martian", {})]:
            writer.writerow([address, kind, "2024-03-04T05:06:07Z", "", json.dumps(metadata), "", "", "import"])
    unsubscribers = tmp_path / "unsubscribers.csv"
    unsubscribers.write_text("email,unsubscription_date,unsubscription_reason\n"
                             "regular@example.org,2024-05-06T07:08:09Z,too many emails\n", encoding="utf-8")

    report = import_csv(store, subscribers_file)
    assert statuses(store) == {"regular@example.org": "active", "premium@example.org": "active",
                               "pending@example.org": "pending", "gone@example.org": "unsubscribed",
                               "bounce@example.org": "bounced", "angry@example.org": "complained"}
    assert report.rejections[0].reason == "unknown Buttondown subscriber type 'martian'"
    regular = show_subscriber(store, "regular@example.org")
    assert regular.name == "Rémi" and regular.attributes["city"] == "Lyon"
    assert "Buttondown (subscribers export)" in report.summary() and "columns ignored: source" in report.summary()
    later = import_csv(store, unsubscribers)
    assert statuses(store)["regular@example.org"] == "unsubscribed"
    assert later.counts_line().startswith("added 0, updated 1 (1 now unsubscribed)")


def test_listmonk_export(store, tmp_path):
    path = tmp_path / "subscribers.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["uuid", "email", "name", "attributes", "status", "created_at", "updated_at"])
        writer.writerow(["6a1b", "on@example.org", "Aïcha On", json.dumps({"city": "Nantes", "age": 31}), "enabled",
                         "2024-05-06 07:08:09.123456789 +0200 CEST", "2024-05-06 07:08:09 +0000 UTC"])
        writer.writerow(["6a1c", "off@example.org", "Off", "{}", "disabled", "2024-05-06 07:08:09 +0000 UTC", ""])
        writer.writerow(["6a1d", "block@example.org", "Block", "{}", "blocklisted", "2024-05-06 07:08:09 +0000 UTC", ""])
    report = import_csv(store, path)
    assert statuses(store) == {"on@example.org": "active", "off@example.org": "unsubscribed",
                               "block@example.org": "unsubscribed"}
    on = show_subscriber(store, "on@example.org")
    assert on.attributes == {"city": "Nantes", "age": "31"}
    assert on.created_at.isoformat() == "2024-05-06T05:08:09.123456+00:00"
    assert "listmonk export" in report.summary() and "columns ignored: uuid, updated_at" in report.summary()


def test_ghost_members_export(store, tmp_path):
    path = tmp_path / "members.csv"
    path.write_text(
        "id,email,name,note,subscribed_to_emails,complimentary_plan,stripe_customer_id,created_at,deleted_at,labels,tiers\n"
        "624d,abonne@example.org,Gaëlle Abonnée,,true,false,,2022-04-06T07:42:08.000Z,,\"VIP,Paris\",\n"
        "624e,sans@example.org,Sans Mails,,false,false,,2022-04-06T07:42:08.000Z,,,\n", encoding="utf-8")
    report = import_csv(store, path)
    assert statuses(store) == {"abonne@example.org": "active", "sans@example.org": "unsubscribed"}
    assert show_subscriber(store, "abonne@example.org").attributes == {
        "id": "624d", "complimentary_plan": "false", "labels": "VIP,Paris"}
    assert "Ghost export" in report.summary()


def test_suppressions_only_go_up_and_suppressed_people_are_left_alone(store, tmp_path):
    for address, status in (("u@example.org", "unsubscribed"), ("c@example.org", "complained"),
                            ("b@example.org", "bounced")):
        add_subscriber(store, address, name="Nom d'origine")
        set_subscriber_status(store, address, status, source="test")
    add_subscriber(store, "efface@example.org", name="Effacé")
    remove_subscriber(store, "efface@example.org", purge=True)
    path = tmp_path / "retour.csv"
    path.write_text("email,name,status\nu@example.org,Nouveau,bounced\nc@example.org,Nouveau,unsubscribed\n"
                    "b@example.org,Nouveau,\nefface@example.org,Revenu,\n", encoding="utf-8")
    report = import_csv(store, path)
    assert statuses(store) == {"u@example.org": "bounced", "c@example.org": "complained", "b@example.org": "bounced"}
    assert set(names(store).values()) == {"Nom d'origine"}
    assert report.counts_line() == ("added 0, updated 1 (1 now bounced), unchanged 0, rejected 0; 3 more left as "
                                    "they were: 1 bounced, 1 complained, 1 erased (an import never re-activates anyone)")


# ----- 10.7: headers, --map, summary ---------------------------------------------------------------------
def test_headers_are_compared_without_case_accents_or_separators(store, tmp_path):
    path = tmp_path / "adherents.csv"
    path.write_text("Adresse E-Mail;PRÉNOM;Nom;Langue;Ville;Code_Postal;Fuseau horaire\n"
                    "a@example.org;Zoé;Lefèvre;Français;Lyon;69001;Europe/Paris\n"
                    "b@example.org;Jo;Smith;en-GB;London;;\n"
                    "c@example.org;Kim;Kay;klingon;;;\n", encoding="utf-8")
    report = import_csv(store, path)
    zoe = show_subscriber(store, "a@example.org")
    assert (zoe.name, zoe.language) == ("Zoé Lefèvre", "fr")
    assert zoe.attributes == {"first_name": "Zoé", "last_name": "Lefèvre", "timezone": "Europe/Paris",
                              "ville": "Lyon", "code_postal": "69001"}
    assert show_subscriber(store, "b@example.org").language == "en"
    assert show_subscriber(store, "c@example.org").language == ""
    assert "other columns kept as attributes: ville, code_postal" in report.summary()
    assert any("language not understood on 1 row (first: line 4, 'klingon')" in w for w in report.warnings)


def test_map_joins_two_spellings_of_one_attribute_and_can_drop_a_column(store, tmp_path):
    first = tmp_path / "un.csv"
    first.write_text("email,city\na@example.org,Lyon\n", encoding="utf-8")
    second = tmp_path / "deux.csv"
    second.write_text("Courriel,Ville,Commentaire interne\na@example.org,Paris,à ne pas garder\n"
                      "b@example.org,Nantes,non plus\n", encoding="utf-8")
    import_csv(store, first)
    report = import_csv(store, second, column_map=["Ville=city", "Commentaire interne="])
    assert show_subscriber(store, "a@example.org").attributes == {"city": "Paris"}
    assert show_subscriber(store, "b@example.org").attributes == {"city": "Nantes"}
    assert "columns ignored: Commentaire interne" in report.summary()
    with pytest.raises(MailerError, match=r"--map: no column 'pays' in the header \(Courriel, Ville"):
        import_csv(store, second, column_map=["Pays=country"])
    with pytest.raises(MailerError, match="--map 'Ville': write COLUMN=FIELD"):
        import_csv(store, second, column_map=["Ville"])


def test_an_older_spelling_of_an_attribute_is_replaced_not_duplicated(store, tmp_path):
    add_subscriber(store, "a@example.org", attributes={"Ville": "Lyon", "Âge": "30"})
    path = tmp_path / "maj.csv"
    path.write_text("email,ville\na@example.org,Paris\n", encoding="utf-8")
    import_csv(store, path)
    assert show_subscriber(store, "a@example.org").attributes == {"Âge": "30", "ville": "Paris"}


def test_the_summary_counts_every_kind_of_row_once(store, tmp_path):
    add_subscriber(store, "same@example.org")
    path = tmp_path / "l.csv"
    path.write_text("email,name\nsame@example.org,\n", encoding="utf-8")
    import_csv(store, path)  # records its import digest
    add_subscriber(store, "changed@example.org", name="Avant")
    add_subscriber(store, "gone@example.org")
    remove_subscriber(store, "gone@example.org")
    path.write_text("email,name\nnew@example.org,Neuf\nsame@example.org,\nchanged@example.org,Après\n"
                    "gone@example.org,Parti\nnot-an-address,X\nnew@example.org,Doublon\n\n", encoding="utf-8")
    report = import_csv(store, path)
    assert report.counts_line() == ("added 1, updated 1, unchanged 1, rejected 2; 1 more left unsubscribed "
                                    "(an import never re-activates anyone)")
    assert report.rows == 6


def test_an_empty_cell_wipes_nothing(store, tmp_path):
    add_subscriber(store, "a@example.org", name="Zoé Lefèvre", language="fr", attributes={"ville": "Lyon"})
    path = tmp_path / "maj.csv"
    path.write_text("email,name,language,ville,club\na@example.org,,,,échecs\n", encoding="utf-8")
    report = import_csv(store, path)
    zoe = show_subscriber(store, "a@example.org")
    assert report.updated == 1
    assert (zoe.name, zoe.language, zoe.attributes) == ("Zoé Lefèvre", "fr", {"ville": "Lyon", "club": "échecs"})


# ----- statuses said by a true/false column, and Mailchimp files the columns cannot tell apart ----------
def test_an_older_ghost_export_with_subscribed_keeps_unsubscribed_people_unsubscribed(store, tmp_path):
    path = tmp_path / "members.csv"
    path.write_text(
        "id,email,name,note,subscribed,complimentary_plan,stripe_customer_id,created_at,deleted_at,labels\n"
        "5e1a,oui@example.org,Oui,,true,false,,2019-04-06T07:42:08.000Z,,\n"
        "5e1b,non@example.org,Non,,false,false,,2019-04-06T07:42:08.000Z,,\n"
        "5e1c,parti@example.org,Parti,,true,false,,2019-04-06T07:42:08.000Z,2020-01-01T00:00:00.000Z,\n",
        encoding="utf-8")
    report = import_csv(store, path)
    assert statuses(store) == {"oui@example.org": "active", "non@example.org": "unsubscribed",
                               "parti@example.org": "unsubscribed"}
    assert "Ghost export" in report.summary()
    assert "subscribed" not in show_subscriber(store, "oui@example.org").attributes


# (header as written, what "true" means, what "false" means)
SUBSCRIPTION_COLUMNS = [("subscribed", "active", "unsubscribed"), ("Opted In", "active", "unsubscribed"),
                        ("is_subscribed", "active", "unsubscribed"), ("optin", "active", "unsubscribed"),
                        ("Abonné", "active", "unsubscribed"), ("Accepts Email Marketing", "active", "unsubscribed"),
                        ("unsubscribed", "unsubscribed", "active"), ("Email Opt Out", "unsubscribed", "active"),
                        ("Désabonné", "unsubscribed", "active"), ("opted_out", "unsubscribed", "active")]
TRUE_WORDS, FALSE_WORDS = ["true", "TRUE", "yes", "1", "oui", "Y"], ["false", "FALSE", "no", "0", "non", "N", ""]


@pytest.mark.parametrize("header, when_true, when_false", SUBSCRIPTION_COLUMNS)
def test_a_subscription_column_of_a_generic_csv_gives_the_status(store, tmp_path, header, when_true, when_false):
    rng = random.Random(header)
    rows, expected = [], {}
    for index, (address, name) in enumerate(people(60, seed=len(header))):
        flag = rng.choice([True, False])
        word = rng.choice(TRUE_WORDS if flag else FALSE_WORDS)
        rows.append([address, name, word, "Paris"])
        expected[address] = when_true if flag else when_false
    rows.append(["odd@example.org", "Odd", "maybe", ""])
    path = tmp_path / "liste.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        csv.writer(out).writerows([["email", "name", header, "ville"], *rows])

    report = import_csv(store, path)

    assert statuses(store) == expected  # nobody who says false/no/0 is active
    assert report.rejections[0].line == 62 and "'maybe', not true or false" in report.rejections[0].reason
    assert f"status from column {header!r}: true, yes or 1 → {when_true}; false, no, 0 or empty → {when_false}" \
        in report.summary()
    assert "other columns kept as attributes: ville" in report.summary()


def test_a_renamed_mailchimp_export_never_makes_people_active_by_guess(store, tmp_path):
    add_subscriber(store, "deja@example.org", name="Déjà")
    for index, (name, expected) in enumerate([
            ("mc-nonsubscribed.csv", "pending"), ("export.csv", "pending"), ("audience.csv", "pending"),
            ("unsubscribed.csv", "pending"), ("nonsubscribed_members_export_9.csv", "pending"),
            ("subscribed_members_export_1.csv", "active"), ("Subscribed Members Export.csv", "active")]):
        client = f"client{index}@example.org"
        source = _mailchimp_file(tmp_path, "nonsubscribed", [{"Email Address": client},
                                                              {"Email Address": "deja@example.org"}])
        path = tmp_path / name
        source.rename(path)
        report = import_csv(store, path)
        assert statuses(store)[client] == expected, name
        assert statuses(store)["deja@example.org"] == "active"  # a pending file demotes nobody
        unsure = name in ("export.csv", "audience.csv", "unsubscribed.csv")
        assert ("Mailchimp (subscribed or non-subscribed export)" in report.summary()) == unsure, name
        assert ("new people added as pending (not mailed)" in report.summary()) == unsure, name


# ----- the date a suppression happened, for new and existing people --------------------------------------
@pytest.mark.parametrize("kind", ["Mailchimp unsubscribed", "Mailchimp abuse", "Mailchimp cleaned",
                                  "Buttondown unsubscribers", "mailer export"])
def test_the_date_a_file_gives_a_suppression_is_kept_for_new_and_existing_people(store, tmp_path, kind):
    add_subscriber(store, "existing@example.org", name="Existing")
    when, stamp = "2024-06-01 09:00:00", "2024-06-01T09:00:00+00:00"
    rows = [{"Email Address": address} for address in ("existing@example.org", "new@example.org")]
    if kind.startswith("Mailchimp"):
        variant = "cleaned" if kind.endswith("cleaned") else "unsubscribed"
        column = "CLEAN_TIME" if variant == "cleaned" else "UNSUB_TIME"
        extra = {"UNSUB_REASON": "Abuse complaint"} if kind.endswith("abuse") else {}
        path = _mailchimp_file(tmp_path, variant, [{**row, column: when, **extra} for row in rows])
    elif kind.startswith("Buttondown"):
        path = tmp_path / "unsubscribers.csv"
        path.write_text("email,unsubscription_date,unsubscription_reason\n"
                        + "".join(f"{row['Email Address']},2024-06-01T09:00:00Z,\n" for row in rows), encoding="utf-8")
    else:
        path = tmp_path / "export.csv"
        path.write_text("email,name,status,source,confirmed_at,unsubscribed_at\n"
                        + "".join(f"{row['Email Address']},,unsubscribed,cli,,{when}\n" for row in rows),
                        encoding="utf-8")
    import_csv(store, path)
    for address in ("existing@example.org", "new@example.org"):
        person = show_subscriber(store, address)
        assert person.status != "active"
        assert person.unsubscribed_at.isoformat() == stamp, (address, person.unsubscribed_at)


# ----- columns that are empty on every row --------------------------------------------------------------
def test_columns_empty_on_every_row_are_named_and_store_nothing(store, tmp_path):
    path = _mailchimp_file(tmp_path, "subscribed", [
        {"Email Address": f"p{i}@example.org", "First Name": "Ana", "NOTES": "vip" if i == 3 else ""}
        for i in range(5)])
    report = import_csv(store, path)
    summary = report.summary()
    assert "empty columns, not stored: address, phone_number, birthday" in summary
    kept = summary.split("other columns kept as attributes: ")[1].split("\n")[0].split(", ")
    assert "notes" in kept and "member_rating" in kept and not {"address", "phone_number", "birthday"} & set(kept)
    assert set(store.attribute_names()) & {"address", "phone_number", "birthday"} == set()


def test_counts_in_messages_agree_with_their_noun():
    from mailer.subscribers.importer.encoding import line_list
    assert line_list([6]) == ("line 6", "is")
    assert line_list([6, 9]) == ("lines 6 and 9", "are")
    assert line_list([6, 9, 12]) == ("lines 6, 9 and 12", "are")
    assert line_list([1, 2, 3, 4, 5], 12) == ("lines 1, 2, 3, 4, 5 and 7 more", "are")


def test_reimporting_a_mailchimp_export_under_its_own_name_activates_the_pending_never_the_suppressed(store, tmp_path):
    """The README's advice: a Mailchimp export whose name does not say subscribed or non-subscribed adds
    its people as pending; importing it again under the name Mailchimp gave it
    (subscribed_members_export_….csv) makes those pending people active — but nobody unsubscribed,
    bounced or complained since (by the web page, a bounce, another export) comes back."""
    people = [{"Email Address": f"lecteur{i}@example.org", "First Name": f"Nom{i}"} for i in range(6)]
    unsure = _mailchimp_file(tmp_path, "subscribed", people).rename(tmp_path / "mon_export.csv")
    first = import_csv(store, unsure)
    assert set(statuses(store).values()) == {"pending"} and first.added == 6
    remove_subscriber(store, "lecteur0@example.org")  # unsubscribed between the two imports
    import_csv(store, _mailchimp_file(tmp_path, "cleaned", [{**people[1], "CLEAN_TIME": "2024-02-02 10:00:00"}]))
    import_csv(store, _mailchimp_file(tmp_path, "unsubscribed", [{**people[2], "UNSUB_REASON": "Spam",
                                                                 "UNSUB_TIME": "2024-02-03 10:00:00"}]))
    add_subscriber(store, "nouvelle@example.org", status="pending", source="web")  # an unconfirmed sign-up, not in the file

    again = import_csv(store, _mailchimp_file(tmp_path, "subscribed", people))
    assert statuses(store) == {"lecteur0@example.org": "unsubscribed", "lecteur1@example.org": "bounced",
                               "lecteur2@example.org": "complained", "lecteur3@example.org": "active",
                               "lecteur4@example.org": "active", "lecteur5@example.org": "active",
                               "nouvelle@example.org": "pending"}
    assert again.activated == 3 and "3 now active" in again.counts_line(), again.counts_line()
    assert again.kept == {"unsubscribed": 1, "bounced": 1, "complained": 1}
    assert show_subscriber(store, "lecteur3@example.org").events[-1]["new_status"] == "active"
    third = import_csv(store, _mailchimp_file(tmp_path, "subscribed", people))  # idempotent
    assert third.activated == 0 and third.unchanged == 3
