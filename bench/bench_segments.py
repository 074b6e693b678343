"""Segment benchmark: what a segment costs the audience count and the freeze (prints figures).

    .venv/bin/python bench/bench_segments.py [--size 100000] [--database-url URL]

Fills a fresh database with `size` active subscribers (languages, a `city` attribute, comma-separated
`tags`, numeric `age` text, list memberships), then times, each next to its floor measured in the
same run (the same count without a segment): counting the audience of a few segments and freezing
one (INSERT … SELECT into the ledger). With --database-url postgresql+psycopg://… it runs in a fresh
schema of that database.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from tempfile import TemporaryDirectory
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from mailer.store import open_store  # noqa: E402
from mailer.store.schema import list_members, subscribers  # noqa: E402
from mailer.segments import parse  # noqa: E402

SEGMENTS = [
    'language = "en"',
    'city in ("Lyon", "Paris") and joined >= 2026-01-01',
    'tags has "premium" or lists has "vip"',
    'age >= 18 and not (city = "lille") and name contains "ma"',
]


def fill(store, size: int) -> None:  # noqa: ANN001
    rng = random.Random(1)
    base = datetime(2025, 6, 1, tzinfo=timezone.utc)
    rows, members = [], []
    for i in range(1, size + 1):
        rows.append({"id": i, "email": f"p{i}@example.org", "email_given": f"p{i}@example.org",
                     "name": rng.choice(["Marie Martin", "Sam Taylor", "Léa", ""]), "language": rng.choice(["fr", "en", ""]),
                     "status": "active", "source": "bench",
                     "attributes": {"city": rng.choice(["Lyon", "Paris", "Lille", "Nice"]),
                                    "tags": rng.choice(["premium, vip", "news", "premium", ""]),
                                    "age": str(rng.randint(12, 90))},
                     "created_at": base + timedelta(hours=rng.randint(0, 24 * 400)), "updated_at": base})
        if rng.random() < 0.1:
            members.append({"list_name": "vip", "subscriber_id": i})
    with store.begin() as conn:
        for start in range(0, size, 5000):
            conn.execute(subscribers.insert(), rows[start:start + 5000])
        if members:
            conn.execute(list_members.insert(), members)


def timed(func) -> tuple[float, object]:  # noqa: ANN001
    started = time.perf_counter()
    result = func()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        url, admin, schema = args.database_url, None, None
        if url:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            admin = sa.create_engine(url)
            with admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            url = f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}')}"
        else:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = open_store(url)
        try:
            fill(store, args.size)
            print(f"{store.engine.dialect.name}, {args.size:,} active subscribers")
            with store.engine.connect() as conn:
                floor, everyone = timed(lambda: store.count_unfrozen(conn, None, None))
                print(f"  floor: count without a segment             {floor * 1000:8.1f} ms  ({everyone:,})")
                for text in SEGMENTS:
                    segment = parse(text, "Europe/Paris")
                    seconds, count = timed(lambda: store.count_unfrozen(conn, None, None, segment))
                    print(f"  count {text[:40]:40s} {seconds * 1000:8.1f} ms  ({count:,}; {seconds / floor:.1f}x floor)")
            segment = parse(SEGMENTS[3], "Europe/Paris")
            with store.begin() as conn:
                issue = store.ensure_issue(conn, slug="bench", subject="b", list_name=None, web_html=None,
                                           issue_date=None)
                seconds, frozen = timed(lambda: store.freeze_recipients(conn, issue.id, None, segment))
            with store.begin() as conn:
                issue2 = store.ensure_issue(conn, slug="bench2", subject="b", list_name=None, web_html=None,
                                            issue_date=None)
                floor, everyone = timed(lambda: store.freeze_recipients(conn, issue2.id, None))
            print(f"  freeze with segment 4: {seconds * 1000:.0f} ms ({frozen:,} rows); floor, everyone: "
                  f"{floor * 1000:.0f} ms ({everyone:,} rows)")
        finally:
            store.close()
            if admin is not None:
                with admin.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


if __name__ == "__main__":
    main()
