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

import mailer.importer.parse as parse
from mailer.errors import MailerError
from mailer.importer import ImportStopped, import_csv
from mailer.importer.encoding import guess_code_page
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


@pytest.mark.parametrize("position", ["line 2", "middle", "last line"])
def test_a_file_pasted_from_utf8_and_windows_1252_reads_each_line_right(store, tmp_path, position):
    rows = [f"u{i}@example.org,Zoé Lefèvre {i}".encode("utf-8") for i in range(2000)]
    at = {"line 2": 0, "middle": 1000, "last line": 2000}[position]
    rows.insert(at, "rene.leger@example.org,René Léger – l’œuvre".encode("cp1252"))
    path = tmp_path / "colle.csv"
    path.write_bytes(b"email,name\n" + b"\n".join(rows) + b"\n")
    report = import_csv(store, path)
    assert report.added == 2001
    assert show_subscriber(store, "rene.leger@example.org").name == "René Léger – l’œuvre"
    assert show_subscriber(store, "u7@example.org").name == "Zoé Lefèvre 7"
    assert any(f"lines {at + 2} are not UTF-8" in warning for warning in report.warnings)


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


def test_a_stop_half_way_says_what_was_written_and_a_rerun_finishes(store, tmp_path, both_paths):
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
    assert any("time zone not understood on 1 row(s) (first: line 4, 'Mars/Olympus')" in w for w in first.warnings)
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
    assert any("language not understood on 1 row(s) (first: line 4, 'klingon')" in w for w in report.warnings)


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
