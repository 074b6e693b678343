"""Segments: the parser's errors, and the SQL of the store against a second implementation.

The oracle is `segments.matches`, a plain-Python evaluation of the same AST; generated subscribers
(accents, mixed case, JSON lists and comma-separated tags, numbers and dates written as text, SQL
metacharacters in values) and a few hundred generated expressions must select exactly the same
people through SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from mailer import segments as seg
from mailer.store.schema import subscribers
from mailer.segments import SegmentError, parse

ZONE = "Europe/Paris"
INJECTIONS = ["'); DROP TABLE subscribers;--", "O'Brien", 'say "hi"', "back\\slash", "100%", "a_b", "%", "_",
              "\\", "' OR '1'='1", "Robert'); DELETE FROM deliveries; --"]
CITIES = ["Lyon", "lyon", "LYON", "Paris", "paris", "Zürich", "zürich", "Saint-Étienne", "SAINT-ÉTIENNE", "Москва",
          "москва", "Ελλάδα", ""]
TAG_TEXTS = ["premium", "Premium, vip", "vip,  premium ", '"premium","news"', "news", "premiums", "", "pre mium"]
NUMBERS = ["42", " 7 ", "3.5", "abc", "1e3", "-2", "+18", "18", "0018", "4 2", "1.", 42, 18.0, 7, -3]
DAYS = ["2026-03-01", "2026-03-01T10:00:00Z", "01/03/2026", "2025-12-31", "2026-06-01", "2027-1-01", 20260301]
NAMES = ["Jean Dupont", "jean", "Éloïse", "ÉLOÏSE Martin", "O'Brien", "", "Zoë", "Дмитрий", "100% Bio", "a_b"]


def _person(rng: random.Random, index: int) -> dict:
    base = datetime(2025, 12, 31, 22, 30, tzinfo=timezone.utc)  # 23:30 in Paris: the day boundary nearby
    attributes: dict = {}
    if rng.random() < 0.7:
        attributes["city"] = rng.choice(CITIES)
    if rng.random() < 0.6:
        attributes["tags"] = rng.choice([*TAG_TEXTS, ["Premium", "vip"], ["news"], [], [42, "premium"], 7])
    if rng.random() < 0.6:
        attributes["age"] = rng.choice(NUMBERS)
    if rng.random() < 0.5:
        attributes["renewal"] = rng.choice(DAYS)
    if rng.random() < 0.4:
        attributes["note"] = rng.choice(INJECTIONS)
    if rng.random() < 0.1:
        attributes["city"] = None  # JSON null: not "existing"
    return {
        "email": f"p{index}@{rng.choice(['example.org', 'EXAMPLE.org', 'mail.fr', 'gmail.com'])}".lower(),
        "name": rng.choice(NAMES),
        "language": rng.choice(["fr", "en", "de", ""]),
        "source": rng.choice(["import", "web", "cli", ""]),
        "created_at": base + timedelta(minutes=rng.choice([0, 29, 31, 60, 24 * 60, 60 * 24 * 70, -60 * 24 * 3])),
        "confirmed_at": rng.choice([None, base + timedelta(days=rng.randint(-5, 200))]),
        "attributes": attributes,
        "lists": set(rng.sample(["vip", "news", "Vip"], rng.randint(0, 2))),
    }


def _quote(text: str) -> str:
    quote = '"' if "'" in text or rng_quote() else "'"
    return quote + text.replace(quote, quote * 2) + quote


_QUOTE_RNG = random.Random(5)


def rng_quote() -> bool:
    return _QUOTE_RNG.random() < 0.5


def _atom(rng: random.Random) -> str:
    text_value = lambda: _quote(rng.choice([*CITIES, *INJECTIONS, *NAMES, "fr", "EN", "example.org", "premium", "VIP"]))  # noqa: E731
    kind = rng.randrange(12)
    if kind == 0:
        return f"{rng.choice(['language', 'name', 'email', 'domain', 'source'])} {rng.choice(['=', '!='])} {text_value()}"
    if kind == 1:
        field = rng.choice(["city", "note", "name", "language", "tags"])
        values = ", ".join(text_value() for _ in range(rng.randint(1, 3)))
        return f"{field} {rng.choice(['in', 'not in'])} ({values})"
    if kind == 2:
        return f"tags has {_quote(rng.choice(['premium', 'PREMIUM', 'vip', 'news', 'pre mium', '42', '']))}"
    if kind == 3:
        return f"lists has {_quote(rng.choice(['vip', 'Vip', 'news', 'none']))}"
    if kind == 4:
        return f"exists {rng.choice(['city', 'tags', 'age', 'renewal', 'note', 'name', 'lists', 'confirmed', 'language'])}"
    if kind == 5:
        return f"age {rng.choice(seg.COMPARISONS)} {rng.choice(['42', '7', '18', '-2', '3.5', '1000', '0'])}"
    if kind == 6:
        return f"age in ({', '.join(rng.sample(['42', '7', '18', '3.5', '-2'], rng.randint(1, 3)))})"
    if kind == 7:
        day = rng.choice(["2025-12-31", "2026-01-01", "2026-03-01", "2026-03-11", "2027-01-01"])
        return f"{rng.choice(['joined', 'confirmed'])} {rng.choice(seg.COMPARISONS)} {day}"
    if kind == 8:
        moment = rng.choice(["2025-12-31T23:30", "2026-01-01T00:00:00+01:00", "2025-12-31T22:59Z"])
        return f"joined {rng.choice(seg.COMPARISONS)} {moment}"
    if kind == 9:
        return f"renewal {rng.choice(seg.COMPARISONS)} {rng.choice(['2026-03-01', '2026-01-01', '2026-06-01'])}"
    if kind == 10:
        needle = rng.choice(["ly", "É", "é", "%", "_", "'", "\\", "DROP", "a_b", "0%"])
        return f"{rng.choice(['name', 'city', 'note', 'email', 'tags'])} {rng.choice(['contains', 'not contains'])} {_quote(needle)}"
    return f"city {rng.choice(['=', '!='])} {text_value()}"


def _expression(rng: random.Random, depth: int = 0) -> str:
    if depth >= 3 or rng.random() < 0.4:
        return _atom(rng)
    roll = rng.random()
    if roll < 0.15:
        return f"not ({_expression(rng, depth + 1)})"
    joiner = rng.choice([" and ", " or ", " AND ", " or "])
    parts = [_expression(rng, depth + 1) for _ in range(rng.randint(2, 3))]
    text = joiner.join(parts)
    return f"({text})" if rng.random() < 0.5 else text


def _load(store, people: list[dict]) -> dict[int, dict]:
    by_id = {}
    with store.begin() as conn:
        for person in people:
            sid = store.insert_subscriber(conn, email=person["email"], email_given=person["email"], status="active",
                                          name=person["name"], language=person["language"], source=person["source"],
                                          attributes=person["attributes"], lists=sorted(person["lists"]))
            conn.execute(subscribers.update().where(subscribers.c.id == sid).values(
                created_at=person["created_at"], confirmed_at=person["confirmed_at"]))
            by_id[sid] = person
    return by_id


def test_sql_matches_the_python_oracle_on_generated_expressions(store, sample_size) -> None:
    rng = random.Random(20261129)
    people = _load(store, [_person(rng, i) for i in range(160)])
    sizes = []
    with store.engine.connect() as conn:
        expressions = sample_size(320)
        for _ in range(expressions):
            text = _expression(rng)
            segment = parse(text, ZONE)
            expected = sorted(sid for sid, person in people.items() if seg.matches(segment, person))
            got = store.segment_members(conn, segment)
            assert got == expected, f"segment {text!r}: SQL {len(got)} people, Python {len(expected)}"
            sizes.append(len(got))
    # the generated expressions are not all trivial: many select some people, but not everyone
    assert sum(1 for size in sizes if 0 < size < len(people)) > expressions * 15 // 32


@pytest.mark.parametrize("value", INJECTIONS + ["100%", "_", "x\\'y"])
def test_injection_attempts_match_literally_and_change_nothing(store, value: str) -> None:
    people = _load(store, [
        {"email": "a@example.org", "name": value, "language": "fr", "source": "", "attributes": {"note": value},
         "created_at": datetime(2026, 1, 5, tzinfo=timezone.utc), "confirmed_at": None, "lists": set()},
        {"email": "b@example.org", "name": "Other", "language": "fr", "source": "", "attributes": {"note": "other"},
         "created_at": datetime(2026, 1, 5, tzinfo=timezone.utc), "confirmed_at": None, "lists": set()},
    ])
    first = min(people)
    quoted = '"' + value.replace('"', '""') + '"'
    with store.engine.connect() as conn:
        assert store.segment_members(conn, parse(f"note = {quoted}")) == [first]
        assert store.segment_members(conn, parse(f"name = {quoted} and note in ({quoted})")) == [first]
        assert store.segment_members(conn, parse(f"name contains {quoted}")) == [first]
        assert store.segment_members(conn, parse(f"note != {quoted}")) == [max(people)]
    with store.engine.connect() as conn:  # the table is still there, whole
        assert conn.execute(sa.select(sa.func.count()).select_from(subscribers)).scalar_one() == 2


def test_percent_and_underscore_are_not_wildcards(store) -> None:
    people = _load(store, [
        {"email": f"{i}@example.org", "name": name, "language": "", "source": "", "attributes": {},
         "created_at": datetime(2026, 1, 5, tzinfo=timezone.utc), "confirmed_at": None, "lists": set()}
        for i, name in enumerate(["100% bio", "1000 bio", "a_b", "axb"])])
    ids = sorted(people)
    with store.engine.connect() as conn:
        assert store.segment_members(conn, parse('name contains "0%"')) == [ids[0]]
        assert store.segment_members(conn, parse('name contains "a_b"')) == [ids[2]]
        assert store.segment_members(conn, parse("name contains '_'")) == [ids[2]]


@pytest.mark.parametrize(("text", "column", "reason"), [
    ('city = "Lyon" and', 18, "expected a field name, found the end of the segment"),
    ('city = ', 8, "expected a value"),
    ('city = "Lyon', 8, "string not closed"),
    ('(city = "Lyon" or language = "en"', 34, "expected ')' to close the '(' of column 1"),
    ('city == "Lyon"', 7, "expected a value"),
    ('language = en', 12, "expected a value, found 'en' (quote text: \"en\")"),
    ('language > "en"', 10, "compares dates and numbers; language is text"),
    ('joined >= "2026"', 11, "joined is a date"),
    ('name = 42', 8, "name is text: quote the value"),
    ('city = "a" city = "b"', 12, "expected `and`, `or` or the end"),
    ('status = "active"', 1, "status is not a segment field"),
    ('age >= 18 and renewal < 2026-13-01', 25, "2026-13-01 is no date"),
    ('tags has 3', 10, "`has` takes a quoted string"),
    ('city in ("a", 2)', 15, "all be strings or all numbers"),
    ('lists = "vip"', 7, "lists has \"NAME\""),
    ('note = "a\u0000b"', 10, "control character U+0000"),
    ('', 1, "empty segment"),
    ('city ~ "x"', 6, "unexpected '~'"),
])
def test_syntax_and_type_errors_name_the_column(text: str, column: int, reason: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse(text)
    assert caught.value.column == column, caught.value
    assert reason in caught.value.reason
    assert "\n" not in str(caught.value)
    assert caught.value.caret().splitlines()[1] == " " * (column - 1) + "^"


def test_precedence_and_binds_tighter_than_or() -> None:
    root = parse('language = "en" or city = "Lyon" and not exists tags').root
    assert isinstance(root, seg.Or) and isinstance(root.items[1], seg.And)
    assert isinstance(root.items[1].items[1], seg.Not)


def test_unknown_attribute_is_named_with_a_suggestion() -> None:
    segment = parse('language = "fr" and citty = "Lyon"')
    with pytest.raises(SegmentError) as caught:
        seg.check_fields(segment, ["city", "tags"])
    assert caught.value.column == 21
    assert "unknown field 'citty': did you mean 'city'?" in caught.value.reason
    seg.check_fields(parse('city = "Lyon" and first_name = "x"'), ["city"])  # known: no error


def test_a_date_is_the_whole_day_in_the_newsletters_zone(store) -> None:
    # 23:30 on 31 December UTC is already 1 January in Paris
    people = _load(store, [{"email": "late@example.org", "name": "", "language": "", "source": "", "attributes": {},
                            "created_at": datetime(2025, 12, 31, 23, 30, tzinfo=timezone.utc), "confirmed_at": None,
                            "lists": set()}])
    with store.engine.connect() as conn:
        assert store.segment_members(conn, parse("joined = 2026-01-01", ZONE)) == list(people)
        assert store.segment_members(conn, parse("joined < 2026-01-01", ZONE)) == []
        assert store.segment_members(conn, parse("joined = 2026-01-01", "UTC")) == []
