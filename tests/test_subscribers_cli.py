"""`mailer subscribers …` as an operator meets it: choices checked, counts that agree, files not clobbered,
imports that say what they did — through the real command (in this process, tests/cli_support.py;
Ctrl-C during an import in a real process)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time

import pytest

from .cli_support import MAILER, process_env
from .test_cli import run  # noqa: F401 - the `run` fixture


def test_count_and_list_agree_after_remove_and_purge(run):
    for address in ("a@example.org", "b@example.org", "c@example.org"):
        run("subscribers", "add", address)
    run("subscribers", "remove", "b@example.org")
    run("subscribers", "remove", "c@example.org", "--purge")
    for status in (None, "active", "unsubscribed"):
        options = ("--status", status) if status else ()
        listed = run("subscribers", "list", *options).stdout.split()
        assert run("subscribers", "count", *options).stdout == f"{len(listed)}\n", status
    assert run("subscribers", "list").stdout.split() == ["a@example.org", "b@example.org"]
    assert run("subscribers", "count", "--status", "unsubscribed").stdout == "1\n"


@pytest.mark.parametrize("command", [("list", "--status", "actif"), ("count", "--status", "actif"),
                                     ("export", "--status", "actif"),
                                     ("add", "x@example.org", "--language", "english")])
def test_unknown_choices_are_refused_and_the_choices_listed(run, command):
    result = run("subscribers", *command, check_exit=2)
    assert "Invalid value" in result.stderr
    assert ("'pending', 'active', 'unsubscribed', 'bounced', 'complained'" in result.stderr
            if "--status" in command else "'fr', 'en'" in result.stderr)
    assert run("subscribers", "count").stdout == "0\n"


@pytest.mark.parametrize("command", ["list", "count", "export"])
def test_help_lists_the_statuses(run, command):
    assert "[pending|active|unsubscribed|bounced|complained]" in run("subscribers", command, "--help").stdout


def test_uppercase_status_is_accepted(run):
    run("subscribers", "add", "a@example.org")
    assert run("subscribers", "count", "--status", "ACTIVE").stdout == "1\n"


def test_export_keeps_an_existing_file_unless_forced(run, project):
    run("subscribers", "add", "a@example.org")
    target = project / "liste.csv"
    target.write_text("précieux\n", encoding="utf-8")
    refused = run("subscribers", "export", "liste.csv", check_exit=1)
    assert refused.stderr.strip() == "error: liste.csv exists: add --force to replace it"
    assert target.read_text(encoding="utf-8") == "précieux\n"
    run("subscribers", "export", "liste.csv", "--force")
    assert target.read_text(encoding="utf-8").splitlines()[1].startswith("a@example.org,")
    assert sorted(p.name for p in project.glob("*liste.csv*")) == ["liste.csv"]  # no partial file left


def test_import_prints_rejections_where_they_are_and_how_the_file_was_read(run, project):
    (project / "liste.csv").write_bytes(
        'email;name\r\nun@example.org;"Zoé\r\ndeux@example.org;Noël\r\n'.encode("cp1252"))
    result = run("subscribers", "import", "liste.csv")
    assert any(line.startswith("liste.csv:2: rejected 'un@example.org;\"Zoé': unterminated quote")
               for line in result.stderr.splitlines())
    lines = result.stdout.splitlines()
    assert lines[0] == "added 1, updated 0, unchanged 0, rejected 1"
    assert lines[1] == "read as generic CSV, Windows-1252 (detected: the file is not UTF-8), delimiter ';'"
    assert lines[2].startswith("warning: the file is not UTF-8: read as Windows-1252")
    assert run("subscribers", "list", "--format", "json").stdout.count("Noël") == 1


def test_import_of_utf8_with_stray_bytes_rejects_those_rows_and_says_so(run, project):
    rows = [f"r{i}@example.org,Zoë {i}".encode() for i in range(14)]
    for index in (4, 7, 10):
        rows[index] += b"\xff"
    (project / "liste.csv").write_bytes(b"email,name\n" + b"\n".join(rows) + b"\n")
    result = run("subscribers", "import", "liste.csv")  # exit 0: the other rows are in
    rejected = [line for line in result.stderr.splitlines() if ": rejected " in line]
    assert rejected == [f"liste.csv:{line}: rejected 'r{line - 2}@example.org': not valid UTF-8 (byte 0xFF at column "
                        f"{len(f'r{line - 2}@example.org,Zoë {line - 2}') + 1})" for line in (6, 9, 12)]
    lines = result.stdout.splitlines()
    assert lines[0] == "added 11, updated 0, unchanged 0, rejected 3"
    assert lines[1] == "read as generic CSV, UTF-8 (3 lines not valid UTF-8: rejected), delimiter ','"
    assert lines[2].startswith("warning: lines 6, 9 and 12 are not valid UTF-8 like the rest of the file: "
                               "their rows are rejected")
    assert run("subscribers", "count").stdout == "11\n"


def test_import_of_binary_data_is_one_line_and_writes_nothing(run, project):
    (project / "liste.csv").write_bytes(b"email,name\na@example.org,A\n" + b"\x00\x01\x02garbage\xff" * 50)
    result = run("subscribers", "import", "liste.csv", check_exit=1)
    assert result.stderr.startswith("error: liste.csv:3: binary data") and result.stderr.count("\n") == 1
    assert "nothing imported" in result.stderr
    assert run("subscribers", "count").stdout == "0\n"


@pytest.mark.slow  # a real process (SIGINT) importing 250,000 rows
def test_ctrl_c_during_an_import_stops_after_a_batch_and_says_what_was_written(run, project):
    rows = "".join(f"reader{i:06d}@example.org,Reader {i},Lyon\n" for i in range(250_000))
    (project / "grande.csv").write_text("email,name,city\n" + rows, encoding="utf-8")
    run("subscribers", "count")  # creates the database
    database = project / "subscribers" / "subscribers.db"
    process = subprocess.Popen([*MAILER, "subscribers", "import", "grande.csv"], cwd=project, env=process_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sqlite3.connect(database) as conn:
                if conn.execute("SELECT count(*) FROM subscribers").fetchone()[0] > 0:
                    break
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    with sqlite3.connect(database) as conn:
        written = conn.execute("SELECT count(*) FROM subscribers").fetchone()[0]
    assert process.returncode == 130, stderr
    assert 0 < written < 250_000
    assert f"written before that: added {written}, updated 0" in stderr
    assert "Run the same import again to finish" in stderr
    again = run("subscribers", "import", "grande.csv")
    assert again.stdout.startswith(f"added {250_000 - written}, updated 0, unchanged {written}, rejected 0")


def test_add_help_lists_the_languages_and_takes_them_in_any_case(run):
    assert "--language [fr|en]" in run("subscribers", "add", "--help").stdout
    run("subscribers", "add", "a@example.org", "--language", "FR")
    assert '"language": "fr"' in run("subscribers", "list", "--format", "json").stdout


@pytest.mark.parametrize("given, stored", [("Europe/Paris", "Europe/Paris"), ("america/new_york", "America/New_York"),
                                           ("Asia/Kathmandu", "Asia/Kathmandu"), ("UTC", "UTC")])
def test_add_with_a_timezone_stores_its_iana_name(run, given, stored):
    run("subscribers", "add", "tz@example.org", "--timezone", given, "--language", "EN")
    shown = run("subscribers", "list", "--format", "json").stdout
    assert '"timezone": "%s"' % stored in shown and '"language": "en"' in shown, shown


@pytest.mark.parametrize("given", ["Europe/Pariss", "Mars/Olympus", "+01:00", "CET-1", "../etc/passwd", ""])
def test_add_with_an_unknown_timezone_is_one_line_and_adds_nobody(run, given):
    result = run("subscribers", "add", "tz@example.org", "--timezone", given, check_exit=None)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and output.count("\n") == 1, output
    assert "--timezone" in output and "IANA" in output and "Traceback" not in output
    assert run("subscribers", "count").stdout == "0\n"