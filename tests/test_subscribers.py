"""The managed list on SQLite and PostgreSQL: statuses, history, the messy-CSV import, export round trip."""

from __future__ import annotations

import io

import pytest
import sqlalchemy as sa

import mailer.subscribers.importer.parse as import_parse
from mailer.errors import InvalidAddress, MailerError, NotFound
from mailer.store.schema import metadata
from mailer.store import HEAD_REVISION, current_revision, open_store
from mailer.subscribers import (add_subscriber, count_subscribers, export_csv, import_csv, iter_subscribers,
                                remove_subscriber, set_subscriber_status, show_subscriber)


def _statuses(store) -> dict[str, str]:
    return {row.email_given: row.status for row, _ in iter_subscribers(store)}


def test_migrations_create_exactly_the_schema(empty_db_url):
    store = open_store(empty_db_url)  # an empty database: every migration runs
    try:
        assert current_revision(store.engine) == HEAD_REVISION
        inspector = sa.inspect(store.engine)
        for table in metadata.sorted_tables:
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
            # and the same indexes on the same columns (the partial ones of revision 0008 included)
            indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(table.name)
                       if not ix.get("duplicates_constraint") and not ix["name"].startswith(("uq_", "pk_"))}
            assert indexes == {ix.name: [c.name for c in ix.columns] for ix in table.indexes}, table.name
    finally:
        store.close()


def test_add_is_case_insensitive_and_keeps_what_was_given(store):
    subscriber_id, created = add_subscriber(store, "  Camille.Martin@Example.ORG ", name="Camille")
    assert created
    again, created_again = add_subscriber(store, "camille.martin@example.org", name="Camille Martin")
    assert (again, created_again) == (subscriber_id, False)
    view = show_subscriber(store, "CAMILLE.MARTIN@EXAMPLE.ORG")
    assert view.email == "Camille.Martin@example.org"  # local part as given, domain normalised
    assert view.name == "Camille Martin" and view.status == "active"
    assert count_subscribers(store) == 1


def test_invalid_addresses_are_refused_with_the_reason(store):
    for bad in ("", "pas-une-adresse", "a@b", "x@example..org", "moi@localhost"):
        with pytest.raises(InvalidAddress):
            add_subscriber(store, bad)
    assert count_subscribers(store) == 0


def test_every_status_transition_is_recorded(store):
    add_subscriber(store, "a@example.org", status="pending", source="web")
    transitions = [("active", "confirm"), ("unsubscribed", "one-click"), ("active", "resubscribe"),
                   ("bounced", "hard bounce"), ("active", "fixed mailbox"), ("complained", "spam report")]
    for status, reason in transitions:
        assert set_subscriber_status(store, "a@example.org", status, source="test", reason=reason)
    assert not set_subscriber_status(store, "a@example.org", "complained", source="test")  # no-op
    view = show_subscriber(store, "a@example.org")
    history = [(e["old_status"], e["new_status"], e["reason"]) for e in view.events]
    assert history[0] == (None, "pending", "")
    assert history[1:] == [(old, new, reason) for (old, _), (new, reason) in
                           zip([("pending", "")] + transitions[:-1], transitions)]
    assert view.unsubscribed_at is not None


def test_operator_cannot_reactivate_a_suppressed_person(store):
    add_subscriber(store, "parti@example.org")
    remove_subscriber(store, "parti@example.org")
    with pytest.raises(MailerError, match="only they can resubscribe"):
        add_subscriber(store, "parti@example.org")
    assert show_subscriber(store, "parti@example.org").status == "unsubscribed"
    with pytest.raises(NotFound):
        remove_subscriber(store, "inconnu@example.org")


def test_purge_erases_data_but_blocks_reimport(store, tmp_path):
    add_subscriber(store, "efface@example.org", name="À effacer", attributes={"ville": "Nice"})
    remove_subscriber(store, "efface@example.org", purge=True)
    with pytest.raises(NotFound):
        show_subscriber(store, "efface@example.org")
    assert list(iter_subscribers(store)) == []
    csv_path = tmp_path / "retour.csv"
    csv_path.write_text("email,name\nefface@example.org,Revenu\n", encoding="utf-8")
    report = import_csv(store, csv_path)
    assert report.added == 0 and report.suppressed_kept == 1
    with pytest.raises(MailerError, match="erased"):
        add_subscriber(store, "efface@example.org")


MESSY_CSV = (
    "\ufeffE-mail;Nom;Langue;Ville;Notes\r\n"
    "camille.martin@example.org;Camille Martin;fr;Lyon;\r\n"
    "\r\n"
    "CAMILLE.MARTIN@example.org;Camille (doublon);fr;Lyon;\r\n"
    "\"hugo.bernard@example.org\";\"Bernard; Hugo\";fr;Paris;\"a dit « oui »\"\r\n"
    "pas-une-adresse;Personne;fr;;\r\n"
    ";Sans adresse;fr;;\r\n"
    "parti@example.org;Parti Depuis;fr;Lille;\r\n"
    "ines@exämple.fr;Inès;fr;Rennes;\r\n"
    "  jo.smith@example.com  ;Jo Smith;en;London;\"multi\r\nligne\"\r\n"
    "dernier@example.net;Dernier;fr;Brest;\r\n"
)


@pytest.fixture(params=["in-process", "helper-process"])
def import_path(request, monkeypatch):
    """Big files are parsed by a helper process: run the import tests through both paths."""
    if request.param == "helper-process":
        monkeypatch.setattr(import_parse, "PARALLEL_MIN_BYTES", 0)
    return request.param


@pytest.mark.slow  # > 2 s with the helper process
def test_messy_real_world_csv(store, tmp_path, import_path):
    add_subscriber(store, "parti@example.org", name="Ancien nom")
    remove_subscriber(store, "parti@example.org")
    path = tmp_path / "messy.csv"
    path.write_bytes(MESSY_CSV.encode("utf-8"))

    dry = import_csv(store, path, dry_run=True)
    assert (dry.added, dry.rejected) == (5, 3)
    assert count_subscribers(store) == 1  # dry run wrote nothing

    report = import_csv(store, path)
    assert (report.added, report.updated, report.rejected) == (5, 0, 3)
    assert report.kept == {"unsubscribed": 1}
    rejected = {(r.line, r.reason.split(" ")[0]) for r in report.rejections}
    assert (4, "duplicate") in rejected
    assert any(line == 6 for line, _ in rejected)      # bad syntax, with its line number
    assert (7, "empty") in rejected
    statuses = _statuses(store)
    assert statuses["parti@example.org"] == "unsubscribed"  # never resurrected
    assert statuses["jo.smith@example.com"] == "active"
    hugo = show_subscriber(store, "hugo.bernard@example.org")
    assert hugo.name == "Bernard; Hugo" and hugo.attributes == {"ville": "Paris", "notes": "a dit « oui »"}
    assert show_subscriber(store, "jo.smith@example.com").attributes["notes"] == "multi\r\nligne"
    assert show_subscriber(store, "ines@exämple.fr").status == "active"
    assert show_subscriber(store, "parti@example.org").name == "Ancien nom"  # a suppressed person is left alone
    assert report.summary().startswith("added 5, updated 0, unchanged 0, rejected 3; 1 more left unsubscribed")

    again = import_csv(store, path)
    assert (again.added, again.updated, again.unchanged, again.suppressed_kept) == (0, 0, 5, 1)


def test_resubscribe_flag_reactivates_unsubscribed_but_never_complained(store, tmp_path, import_path):
    for address, status in (("parti@example.org", "unsubscribed"), ("plainte@example.org", "complained"),
                            ("rebond@example.org", "bounced")):
        add_subscriber(store, address)
        set_subscriber_status(store, address, status, source="test")
    path = tmp_path / "retour.csv"
    path.write_text("email\nparti@example.org\nplainte@example.org\nrebond@example.org\n", encoding="utf-8")
    plain = import_csv(store, path)
    assert plain.resubscribed == 0 and _statuses(store) == {
        "parti@example.org": "unsubscribed", "plainte@example.org": "complained", "rebond@example.org": "bounced"}
    report = import_csv(store, path, resubscribe=True)
    assert report.resubscribed == 1
    assert _statuses(store) == {"parti@example.org": "active", "plainte@example.org": "complained",
                                "rebond@example.org": "bounced"}


def test_delimiters_and_headerless_files(store, tmp_path):
    (tmp_path / "tab.tsv").write_text("email\tname\nun@example.org\tUn Deux\n", encoding="utf-8")
    (tmp_path / "comma.csv").write_text('deux@example.org,"Deux, Trois",en\n', encoding="utf-8")
    assert import_csv(store, tmp_path / "tab.tsv").added == 1
    assert import_csv(store, tmp_path / "comma.csv").added == 1
    assert show_subscriber(store, "un@example.org").name == "Un Deux"
    deux = show_subscriber(store, "deux@example.org")
    assert (deux.name, deux.language) == ("Deux, Trois", "en")


def test_not_utf8_is_read_in_its_encoding_and_said(store, tmp_path, import_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("email,name\nun@example.org,Hélène\n".encode("latin-1"))
    report = import_csv(store, path)
    assert show_subscriber(store, "un@example.org").name == "Hélène"
    assert "Windows-1252 (detected: the file is not UTF-8)" in report.summary()


def test_imported_suppression_list_applies(store, tmp_path):
    add_subscriber(store, "actif@example.org")
    path = tmp_path / "suppressions.csv"
    path.write_text("email,status\nactif@example.org,unsubscribed\nnouveau@example.org,bounced\n", encoding="utf-8")
    import_csv(store, path)
    assert _statuses(store) == {"actif@example.org": "unsubscribed", "nouveau@example.org": "bounced"}


def test_export_then_import_round_trip_loses_nothing(store, tmp_path, db_url):
    add_subscriber(store, "a@example.org", name="Zoé « Z » d'Arc", language="fr", attributes={"ville": "Paris, 11e"},
                   lists=["premium", "hebdo"])
    add_subscriber(store, "b@example.org", name="Bob", language="en", attributes={"notes": "ligne1\nligne2"})
    add_subscriber(store, "c@example.org", status="pending")
    add_subscriber(store, "d@example.org")
    remove_subscriber(store, "d@example.org")
    first = io.StringIO()
    assert export_csv(store, first) == 4
    path = tmp_path / "export.csv"
    path.write_text(first.getvalue(), encoding="utf-8")

    from mailer.store import open_store
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    report = import_csv(other, path)
    assert report.rejected == 0 and report.added == 4
    second = io.StringIO()
    export_csv(other, second)

    def comparable(text: str) -> list[list[str]]:
        import csv
        rows = list(csv.reader(io.StringIO(text)))
        header = rows[0]
        keep = [i for i, name in enumerate(header) if name not in ("source", "confirmed_at", "unsubscribed_at")]
        return [[row[i] for i in keep] for row in rows]

    assert comparable(second.getvalue()) == comparable(first.getvalue())
    other.close()


def test_list_and_count_filters(store):
    add_subscriber(store, "a@example.org")
    add_subscriber(store, "b@example.org", status="pending")
    assert count_subscribers(store, "active") == 1
    assert count_subscribers(store, "pending") == 1
    assert [row.email_given for row, _ in iter_subscribers(store, "pending")] == ["b@example.org"]
    assert [row.email_given for row, _ in iter_subscribers(store, batch=1)] == ["a@example.org", "b@example.org"]


def test_import_missing_file_and_missing_email_column(store, tmp_path):
    with pytest.raises(NotFound):
        import_csv(store, tmp_path / "absent.csv")
    path = tmp_path / "sans.csv"
    path.write_text("nom,ville\nCamille,Lyon\n", encoding="utf-8")
    with pytest.raises(MailerError, match="no email column"):
        import_csv(store, path)
