"""The fast import and export paths against naive second implementations, on SQLite and PostgreSQL.

The import writes with raw driver statements (executemany / COPY) in transactions of many rows and
the export reads cells the database formatted; here a plain, row-by-row reading of the same rules
(email-validator alone for the addresses, a set for duplicates, the README's rules for people who
are already known) and a plain export through `iter_subscribers` say what the result must be.
"""

from __future__ import annotations

import csv
import io
import json
import random

import pytest

import mailer.subscribers.importer.parse as parse
from mailer.addresses import validator_verdict
from mailer.subscribers import (EXPORT_COLUMNS, add_subscriber, erase_subscriber, export_csv, import_csv,
                                iter_subscribers, remove_subscriber)
from mailer.statuses import SUBSCRIBER_STATUSES
from mailer.subscribers.service import set_subscriber_status

FIRST = ("Zoé", "Jean", "Anaïs", "Björn", "Noël", "O'Brien", "Lætitia", "Ümit")
DOMAINS = ("example.org", "Example.COM", "exämple.fr", "xn--bcher-kva.de", "sub.example.co.uk", "пример.рф")


def _address(rng: random.Random, i: int) -> str:
    """Mostly plain addresses, and every kind the validator judges differently."""
    local = f"{rng.choice(('jean', 'Marie', 'x', 'a.b', 'first+tag', 'o_k'))}{i}"
    domain = rng.choice(DOMAINS)
    kind = rng.random()
    if kind < 0.70:
        text = f"{local}@{domain}"
    else:
        text = rng.choice((
            f'"{local} q"@{domain}', f"{local}..x@{domain}", f"{local}@", f"zoé{i}@{domain}", f"{local}@localhost",
            f"{'l' * 64}{i}@{domain}", f"{local}@{'d' * 63}.fr", f"{local}@{'d' * 64}.fr", f"{local}@x.local",
            f"{local}@-bad.fr", "", "n/a", f"{local}!x@{domain}", f"  {local}@{domain.upper()} ", f"{local}@{domain}.",
            f"{local}@[127.0.0.1]", f"{local}@exa mple.org"))
    return text


def _generated_file(rng: random.Random, rows: int, known: list[str]) -> list[tuple[str, str, str]]:
    out, earlier = [], []
    for i in range(rows):
        roll = rng.random()
        if roll < 0.05 and earlier:
            email = rng.choice(earlier).swapcase()       # a duplicate in another case
        elif roll < 0.15 and known:
            email = rng.choice(known)                     # someone already in the list
        else:
            email = _address(rng, i)
            earlier.append(email.strip())
        out.append((email, f"{rng.choice(FIRST)} {i}", rng.choice(("Lyon", "Paris", ""))))
    return out


def _naive_import(rows: list[tuple[str, str, str]], before: dict[str, str], erased: set[str]) -> dict:
    """The rules, row by row: what the import must report and leave behind."""
    seen: set[str] = set()
    counts = {"added": 0, "updated": 0, "unchanged": 0, "rejected": 0}
    kept: dict[str, int] = {}
    rejected_lines: list[int] = []
    after = dict(before)
    for line, (email, _name, _city) in enumerate(rows, 2):
        if not email.strip():
            counts["rejected"] += 1
            rejected_lines.append(line)
            continue
        verdict = validator_verdict(email)
        if verdict is None or verdict.key in seen:
            counts["rejected"] += 1
            rejected_lines.append(line)
            continue
        seen.add(verdict.key)
        if verdict.key in erased:
            kept["erased"] = kept.get("erased", 0) + 1
        elif verdict.key not in before:
            counts["added"] += 1
            after[verdict.key] = "active"
        elif before[verdict.key] != "active":
            kept[before[verdict.key]] = kept.get(before[verdict.key], 0) + 1
        else:
            counts["updated"] += 1  # added by hand: no import digest yet
    line = (f"added {counts['added']}, updated {counts['updated']}, unchanged 0, rejected {counts['rejected']}")
    total = sum(kept.values())
    if len(kept) == 1:
        line += f"; {total} more left {next(iter(kept))} (an import never re-activates anyone)"
    elif kept:
        line += (f"; {total} more left as they were: "
                 + ", ".join(f"{n} {status}" for status, n in sorted(kept.items()))
                 + " (an import never re-activates anyone)")
    return {"line": line, "rejected_lines": rejected_lines, "after": after, "added": counts["added"]}


@pytest.mark.parametrize("helper", [False, True], ids=["in-process", "helper-process"])
def test_import_of_a_generated_file_agrees_with_a_naive_importer(store, tmp_path, monkeypatch, helper):
    monkeypatch.setattr(parse, "IMPORT_BATCH", 300)  # several transactions
    if helper:
        monkeypatch.setattr(parse, "PARALLEL_MIN_BYTES", 0)
    rng = random.Random(12)
    before: dict[str, str] = {}
    known = []
    for i in range(60):
        address = f"known{i}@example.org"
        add_subscriber(store, address, name="Avant")
        before[address] = "active"
        known.append(address.upper() if i % 2 else address)
    for i in range(0, 60, 4):
        remove_subscriber(store, f"known{i}@example.org")
        before[f"known{i}@example.org"] = "unsubscribed"
    set_subscriber_status(store, "known1@example.org", "bounced", source="test")
    before["known1@example.org"] = "bounced"
    erased = set()
    for i in (2, 6):  # known2 is active, known6 … erase both: tombstones only
        erase_subscriber(store, f"known{i}@example.org")
        erased.add(f"known{i}@example.org")
        del before[f"known{i}@example.org"]
    rows = _generated_file(rng, 1500, known)
    path = tmp_path / "liste.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["email", "name", "city"])
        writer.writerows(rows)
    expected = _naive_import(rows, before, erased)
    assert expected["added"] > 1000 and len(expected["rejected_lines"]) > 100  # the file reaches every rule

    if helper:  # the helper must really parse: falling back to parsing here would hide a broken helper
        monkeypatch.setattr(parse, "parsed_items", None)
    report = import_csv(store, path)
    assert report.counts_line() == expected["line"]
    assert [r.line for r in report.rejections] == expected["rejected_lines"]
    statuses = {row.email: row.status for row, _ in iter_subscribers(store)}
    assert statuses == expected["after"]

    again = import_csv(store, path)  # nothing changed: every row the first import wrote is unchanged now
    assert (again.added, again.updated, again.rejected) == (0, 0, len(expected["rejected_lines"]))
    assert again.unchanged == report.added + report.updated


def _naive_cells(store, status=None) -> list[list[str]]:
    """The export's header and cells, one Core row at a time (what `export` wrote before it was made fast)."""
    rows = list(iter_subscribers(store, status))
    names = sorted({name for row, _ in rows for name in (row.attributes or {})})

    def iso(value):
        if value is None:
            return ""
        return (value if value.tzinfo else value.replace(tzinfo=__import__("datetime").timezone.utc)
                ).astimezone(__import__("datetime").timezone.utc).isoformat(timespec="seconds")

    cells = [[*EXPORT_COLUMNS, "lists", *names]]
    for row, lists in rows:
        attributes = row.attributes or {}
        cells.append([row.email_given, row.name, row.language, row.status, row.source, iso(row.created_at),
                      iso(row.confirmed_at), iso(row.unsubscribed_at), " ".join(sorted(lists)),
                      *("" if attributes.get(name) is None else attributes[name] if isinstance(attributes[name], str)
                        else json.dumps(attributes[name], ensure_ascii=False) for name in names)])
    return cells


def _naive_export(store, status=None) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(_naive_cells(store, status))
    return out.getvalue()


def test_export_agrees_with_a_row_by_row_export(store, tmp_path):
    rng = random.Random(5)
    values = ["Lyon", "Saint-Étienne", "a, b", 'dit "oui"', "ligne1\nligne2", 42, 1.5, True, None, [1, "é"],
              {"x": "ü", "y": [1, 2]}, "", "\u00a0espace", "日本"]
    for i in range(400):
        attributes = {name: rng.choice(values) for name in rng.sample(["ville", "note", "score", "x-y", "é"], rng.randrange(0, 4))}
        lists = rng.sample(["hebdo", "Premium", "évènements", "zeta", "Alpha"], rng.randrange(0, 3))
        add_subscriber(store, f"Person{i}@Example.org", name=rng.choice(("", "Zoé « Z »", "O'Brien, Jo")),
                       language=rng.choice(("", "fr", "en")), attributes=attributes, lists=lists,
                       status=rng.choice(("active", "active", "pending")))
    for i in range(0, 400, 7):
        remove_subscriber(store, f"person{i}@example.org")
    for i in range(3, 400, 50):
        erase_subscriber(store, f"person{i}@example.org")  # tombstones are nobody: not exported
    for status in (None, "active", "unsubscribed", "bounced"):
        out = io.StringIO()
        count = export_csv(store, out, status)
        assert out.getvalue() == _naive_export(store, status), status
        assert count == len(list(csv.reader(io.StringIO(out.getvalue(), newline="")))) - 1


def test_export_pages_of_a_list_with_holes_in_its_ids_are_the_reference_pages_in_pages_no_larger_than_asked(store):
    """The export reads a range of ids a page: ranges with nobody in them (people deleted) are skipped, and ranges holding list members or non-string attributes are completed;
    the cells are those of the row-by-row reference (`_export_pages_core`), in the same order."""
    from itertools import chain

    from mailer.store.bulk import _export_pages_core
    rng = random.Random(9)
    for i in range(90):
        attributes = rng.choice(({}, {"ville": "Lyon"}, {"ville": "a, b", "score": 7}, {"score": [1, "x"]}))
        add_subscriber(store, f"p{i}@example.org", attributes=attributes,
                       lists=rng.sample(["hebdo", "Premium"], rng.randrange(0, 2)) if i % 3 == 0 else ())
    for i in range(0, 90, 11):
        remove_subscriber(store, f"p{i}@example.org")
    erase_subscriber(store, "p50@example.org")
    with store.engine.begin() as conn:  # a hole of 25 ids nobody has (six empty pages' worth)
        for table, column in (("list_members", "subscriber_id"), ("subscriber_events", "subscriber_id"),
                              ("subscribers", "id")):
            conn.exec_driver_sql(f"DELETE FROM {table} WHERE {column} BETWEEN 20 AND 44")
    names = store.attribute_names()
    assert names == ["score", "ville"]
    for status in (None, "active", "unsubscribed"):
        pages = list(store.export_pages(names, status, batch=4))
        assert all(0 < len(page) <= 4 for page in pages)
        expected = list(chain.from_iterable(_export_pages_core(store, names, status, 4)))
        assert list(chain.from_iterable(pages)) == expected and expected, status


def test_the_export_text_is_byte_for_byte_what_csv_writer_writes():
    """`export.csv_text` joins cells itself where no cell needs quotes: on cells made of every
    character CSV quoting cares about, one cell a row, ragged rows and non-strings, its text is
    the csv module's."""
    from mailer.subscribers.importer.export import csv_text
    rng = random.Random(3)
    alphabet = ["a", "é", ",", '"', "\r", "\n", " ", "\t", "\\", ";", "日"]
    for _ in range(2000):
        width = rng.randrange(1, 5)
        rows = [["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 4))) for _ in range(width)]
                for _ in range(rng.randrange(1, 6))]
        if rng.random() < 0.2:
            rows.append(rng.choice(([7, None, 1.5], ["a"] * (width + 1))))
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows(rows)
        assert csv_text(rows) == out.getvalue(), rows


def test_the_parser_helper_loads_no_database_layer():
    """The helper process parses only: without SQLAlchemy and the store it needs ~20 MB less memory."""
    import subprocess
    import sys
    probe = parse._HELPER_CODE.replace("_parser_main()", "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                                                          "('sqlalchemy', 'psycopg') or m.startswith('mailer.store')))")
    assert probe != parse._HELPER_CODE
    done = subprocess.run([sys.executable, "-c", probe, str(parse._PACKAGE_ROOT)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_one_person_added_and_the_same_person_imported_are_the_same_row(store, tmp_path):
    """One insert path: `mailer subscribers add` and an import of the same person write the same
    columns (but their source and ids) and the same `created` event (but its reason's line number)."""
    add_subscriber(store, "Zoé.Added@Example.org", name="Zoé", language="fr", source="import",
                   attributes={"city": "Lyon"}, lists=("news",), reason="imported from liste.csv")
    path = tmp_path / "liste.csv"
    path.write_text("email,name,language,city\nZoé.Imported@Example.org,Zoé,fr,Lyon\n", encoding="utf-8")
    assert import_csv(store, path, lists=("news",)).added == 1
    rows = {row.email_given.split("@")[0]: (row, lists) for row, lists in iter_subscribers(store)}
    added, imported = rows["Zoé.Added"], rows["Zoé.Imported"]
    same = ("name", "language", "status", "source", "attributes")
    assert [getattr(added[0], c) for c in same] == [getattr(imported[0], c) for c in same]
    assert sorted(added[1]) == sorted(imported[1]) == ["news"]
    for row, _ in (added, imported):  # an active person: confirmed when created, never unsubscribed
        assert row.confirmed_at is not None and row.unsubscribed_at is None
    assert added[0].import_digest is None and imported[0].import_digest  # only an import row has its digest
    with store.begin() as conn:
        events = {sid: store.person_record(conn, sid)[0] for sid in (added[0].id, imported[0].id)}
    kinds = {sid: [(e["kind"], e["new_status"]) for e in history] for sid, history in events.items()}
    assert kinds[added[0].id] == kinds[imported[0].id] == [("created", "active")]


@pytest.mark.parametrize("names", [("ville", "note"), ("ville", "clé", "a b")], ids=["plain-names", "non-ascii-names"])
def test_an_export_of_odd_values_reads_back_as_the_database_holds_them(store, names):
    """Cells holding every character CSV quoting cares about (and some it does not), people in no list
    (SQLite then writes whole pages itself) and, in the second case, attribute names SQLite's JSON
    paths cannot quote: read back with the csv module, the file is the database's content."""
    rng = random.Random(len(names))
    alphabet = ["a", "Z", "é", "日", ",", '"', "\n", "\t", ";", "'", " ", "\\", "[", "]", "*", "?", "%", "\u00a0"]

    def text(longest: int = 8) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, longest)))

    for i in range(300):
        attributes = {name: rng.choice((text(), text(), 7, None, ["x", ","])) for name in rng.sample(names, rng.randrange(0, len(names) + 1))}
        email = rng.choice((f"p{i}@example.org", f"Zoé{i}@Exämple.fr"))
        add_subscriber(store, email, name=text(20), attributes=attributes)
    out = io.StringIO()
    count = export_csv(store, out)
    assert out.getvalue() == _naive_export(store)
    assert list(csv.reader(io.StringIO(out.getvalue(), newline=""))) == _naive_cells(store)
    assert count == 300
    # A lone CR (old Mac line endings pasted into a field): with a bare "\n" terminator Python 3.11's
    # csv writer leaves it unquoted and the cell splits on reading; CRLF rows (RFC 4180) quote it.
    alphabet.append("\r")
    for i in range(300, 340):
        add_subscriber(store, f"p{i}@example.org", name=text(20), attributes={names[0]: text()})
    out = io.StringIO()
    export_csv(store, out)
    assert out.getvalue() == _naive_export(store)
    assert list(csv.reader(io.StringIO(out.getvalue(), newline=""))) == _naive_cells(store)


def test_an_import_killed_at_any_moment_leaves_whole_transactions_and_a_rerun_finishes(db_url, tmp_path):
    """SIGKILL (no handler runs) while transactions of several written chunks are open: what stays is
    whole transactions — each person with their `created` event — and the same import finishes the job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mailer.store import open_store
    from mailer.subscribers import count_subscribers

    path = tmp_path / "grande.csv"
    path.write_text("email,name\n" + "\n".join(f"p{i}@example.org,Personne {i}" for i in range(60_000)) + "\n",
                    encoding="utf-8")
    driver = ("import sys; from pathlib import Path; import mailer.subscribers.importer.parse as parse\n"
              "parse.IMPORT_BATCH, parse.WRITE_CHUNK = 10_000, 5000  # two chunks a transaction\n"
              "from mailer.store import open_store; from mailer.subscribers import import_csv\n"
              "import_csv(open_store(sys.argv[1]), Path(sys.argv[2]))\n")
    store = open_store(db_url)
    try:
        for delay in (0.0, 0.3, 0.9):
            process = subprocess.Popen([sys.executable, "-c", driver, db_url, str(path)])
            deadline = time.monotonic() + 120
            while count_subscribers(store) == 0 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            with store.connect() as conn:
                people = store.count_subscribers(conn)
                events = conn.exec_driver_sql("SELECT count(*) FROM subscriber_events").scalar()
            assert people % 10_000 == 0, people  # whole transactions only
            assert events == people
        report = import_csv(store, path)
        assert report.added + report.unchanged == 60_000 and count_subscribers(store) == 60_000
    finally:
        store.close()


@pytest.mark.slow  # a real helper process killed, 150,000 rows (≈ 3 s)
def test_a_parser_helper_killed_half_way_stops_the_import_in_one_line_with_whole_transactions(store, tmp_path,
                                                                                              monkeypatch):
    """The importer receives the helper's chunks in a thread, several ahead: when the helper dies
    (SIGKILL, after the first transaction), what it had sent is written, the import stops with one
    line saying so and what was written, whole transactions only, and a rerun finishes."""
    import os
    import signal

    from mailer.subscribers import ImportStopped, count_subscribers

    monkeypatch.setattr(parse, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(parse, "IMPORT_BATCH", 1000)
    path = tmp_path / "grande.csv"
    path.write_text("email,name\n" + "\n".join(f"p{i}@example.org,Personne {i}" for i in range(150_000)) + "\n",
                    encoding="utf-8")
    killed = []

    def kill_the_helper(done: int) -> None:  # the progress hook runs after each transaction
        if not killed:
            me = os.getpid()
            for task in os.listdir(f"/proc/{me}/task"):
                with open(f"/proc/{me}/task/{task}/children") as children:
                    killed.extend(int(pid) for pid in children.read().split())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(ImportStopped) as caught:
        import_csv(store, path, progress=kill_the_helper)
    message = str(caught.value)
    assert killed and "\n" not in message
    assert "the CSV parser process stopped unexpectedly (exit code -9)" in message
    written = count_subscribers(store)
    assert 0 < written < 150_000 and written % 1000 == 0
    assert f"written before that: added {written}, " in message
    again = import_csv(store, path)
    assert (again.added, again.unchanged) == (150_000 - written, written)


def _generated_people(rng: random.Random, count: int) -> list[dict]:
    """People as `Store.insert_subscriber` takes them, with every status and odd texts."""
    odd = ("", "Zoé", "O'Brien", "日本", "a,b", 'say "hi"', "tab\there", "ß" * 40)
    return [{"email": f"p{i}@example.org", "email_given": f"P{i}@Example.org", "name": rng.choice(odd),
             "language": rng.choice(("", "fr", "en-GB")), "status": rng.choice(SUBSCRIBER_STATUSES),
             "attributes": rng.choice(({}, {"city": rng.choice(odd)}, {"n": 7, "l": ["x", ","], "é": None})),
             "lists": tuple(rng.sample(("news", "jobs", "événements"), rng.randrange(0, 3)))}
            for i in range(count)]


def _import_row(person: dict, prefix: str, line: int | None, dated: bool) -> tuple:
    """`person` as an import row (store.IMPORT_ROW_FIELDS), its address keyed under `prefix`."""
    from datetime import datetime, timezone
    from mailer.store import IMPORT_ROW_FIELDS
    at = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone.utc) if dated else None
    fields = {"line": line, "key": prefix + person["email"], "given": prefix + person["email_given"],
              "name": person["name"], "language": person["language"], "lists": person["lists"],
              "attributes_json": json.dumps(person["attributes"]), "digest": None if line is None else f"d{line}",
              "status": person["status"], "created_at": at, "status_at": at}
    return tuple(fields[name] for name in IMPORT_ROW_FIELDS)


def _written(store, prefix: str) -> list[tuple]:
    """Every column of the people keyed under `prefix` (id aside) as the database holds it (cast to
    text by the database: no type processing on the way out), with their `created` event and lists."""
    import sqlalchemy as sa
    from mailer.store.bulk import IMPORT_INSERT_COLUMNS
    columns = [c.name for c in sa.Table("subscribers", sa.MetaData(), autoload_with=store.engine).columns]
    assert set(columns) == {"id", *IMPORT_INSERT_COLUMNS}  # the insert writes every column
    text = ", ".join(f"CAST({name} AS TEXT)" for name in columns if name != "id")
    with store.engine.connect() as conn:
        people = conn.exec_driver_sql(f"SELECT id, {text} FROM subscribers ORDER BY id").all()
        events = dict(conn.exec_driver_sql(
            "SELECT subscriber_id, CAST(at AS TEXT) || '|' || kind || '|' || coalesce(old_status, '-') || '|' || "
            "new_status || '|' || source || '|' || reason FROM subscriber_events").all())
        lists: dict[int, list[str]] = {}
        for sid, name in conn.exec_driver_sql("SELECT subscriber_id, list_name FROM list_members").all():
            lists.setdefault(sid, []).append(name)
    return [(row[1][len(prefix):], row[2][len(prefix):], *row[3:], events[row[0]], sorted(lists.get(row[0], [])))
            for row in people if row[1].startswith(prefix)]


def test_one_add_the_core_import_and_the_fast_import_write_identical_rows(store):
    """One column list (store.bulk.IMPORT_INSERT_COLUMNS), three writers: `Store.insert_subscriber`
    (one person), the import's reference writer (SQLAlchemy Core) and the engine's fast path (SQLite
    executemany, PostgreSQL COPY) write the same text in every column for generated people: the
    same `now`, dated and undated rows, every status, odd names and attributes."""
    from unittest import mock
    import mailer.store.people as people_module
    from datetime import datetime, timezone
    rng = random.Random(11)
    people = _generated_people(rng, 120)
    now = datetime(2026, 11, 26, 7, 0, 0, 654321, tzinfo=timezone.utc)
    engine = store.engine.dialect.name
    with store.begin() as conn:
        assert store.import_fast_path(conn, "import") == engine  # the fast path this engine takes
        # `Store.insert_subscriber` stamps utcnow(): held at `now` (the store's clock, not the code under test)
        with mock.patch.object(people_module, "utcnow", return_value=now):
            for person in people:
                store.insert_subscriber(conn, email="one." + person["email"], email_given="one." + person["email_given"],
                                        status=person["status"], name=person["name"], language=person["language"],
                                        source="import", attributes=person["attributes"], reason="import",
                                        lists=person["lists"])
        store.insert_imported(conn, [_import_row(p, "core.", None, False) for p in people],
                              source="import", reason="import", now=now, fast=None)
    one = _written(store, "one.")
    assert len(one) == len(people)
    assert one == _written(store, "core.")  # one person: the import's reference writer with one row

    # Import rows proper (the fast paths' only input): a line number in the event's reason, a
    # digest, undated rows and rows dating their creation and status.
    with store.begin() as conn:
        for prefix, fast_path in (("dcore.", None), ("dfast.", engine)):
            store.insert_imported(conn, [_import_row(p, prefix, i + 2, i % 3 == 0) for i, p in enumerate(people)],
                                  source="import", reason="import", now=now, fast=fast_path)
    core, fast = _written(store, "dcore."), _written(store, "dfast.")
    assert len(core) == len(people) and {row[4] for row in core} == set(SUBSCRIBER_STATUSES)
    assert core == fast
