"""Local-time waves benchmark: what `send_local` adds to a freeze, a claim and a scheduler rescan.

    .venv/bin/python bench/bench_waves.py [--subscribers 100000] [--zones 60] [--database-url URL]

Imports N subscribers spread over Z zones (plus 10 % without a zone), then, on two issues of the same
audience (one ordinary, one `send_local` whose waves are all released):
- the freeze: `freeze_recipients` alone (floor) vs. freeze + `assign_due` (one UPDATE per zone);
- claims of 500 rows until the queue is empty: ordinary claims (floor) vs. wave claims;
- the rescan's reads: `audience_zones` (before the freeze) and `wave_rows` (after), per call.
Figures, not a timed test. With --database-url postgresql+psycopg://… the run gets a fresh schema in
that database, dropped at the end.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
import zoneinfo
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mailer.sending import waves  # noqa: E402
from mailer.store import open_store, utcnow  # noqa: E402
from mailer.subscribers import import_csv  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--zones", type=int, default=60)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-waves-"))
    url = args.database_url or f"sqlite:///{work / 'bench.db'}"
    schema = None
    if url.startswith("postgresql"):
        schema = f"bench_waves_{uuid.uuid4().hex[:8]}"
        with sa.create_engine(args.database_url).begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}')}"
    try:
        run(args, url, work)
    finally:
        if schema:
            with sa.create_engine(args.database_url).begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def run(args: argparse.Namespace, url: str, work: Path) -> None:
    rng = random.Random(13)
    zones = rng.sample(sorted(z for z in zoneinfo.available_timezones() if "/" in z and not z.startswith("Etc")),
                       args.zones)
    path = work / "people.csv"
    with path.open("w", encoding="utf-8") as out:
        out.write("email,timezone\n")
        for i in range(args.subscribers):
            out.write(f"p{i}@example.org,{rng.choice(zones) if rng.random() > 0.1 else ''}\n")
    store = open_store(url)
    import_csv(store, path)
    wall = datetime.now().replace(microsecond=0) - timedelta(days=2)  # every wave has passed…
    default = ZoneInfo("Europe/Paris")

    def timed(func):
        start = time.perf_counter()
        result = func()
        return time.perf_counter() - start, result

    figures = {}
    ids = {}
    for name in ("plain", "local"):
        with store.begin() as conn:
            row = store.ensure_issue(conn, slug=name, subject=name, list_name=None, web_html="", issue_date=None)
            ids[name] = row.id
            figures[f"freeze {name}"], _ = timed(lambda: store.freeze_recipients(conn, row.id, None))
            if name == "local":
                assign, _ = timed(lambda: waves.assign_due(store, conn, row.id, wall, default))
                figures["assign_due"] = assign
                store.update_issue(conn, row.id, send_local=wall.isoformat(), frozen_at=utcnow())
                store.release_waves(conn, row.id)  # …and --release-missed/--now let claims take them all
    for name, grace in (("plain", None), ("local", 60.0)):
        claims = 0
        start = time.perf_counter()
        while True:
            with store.begin() as conn:
                rows = store.claim_deliveries(conn, ids[name], f"bench-{name}", 500, grace)
            if not rows:
                break
            claims += 1
        figures[f"claims {name}"] = time.perf_counter() - start
    with store.engine.connect() as conn:
        figures["audience_zones"], _ = timed(lambda: store.audience_zones(conn, None))
        figures["wave_rows"], _ = timed(lambda: store.wave_rows(conn, ids["local"]))
    store.close()
    n = args.subscribers
    print(f"{n} subscribers, {args.zones} zones, {url.split(':')[0].split('+')[0]}")
    print(f"freeze:   ordinary {figures['freeze plain']:.2f} s (floor); local-time + assign_due "
          f"{figures['freeze local'] + figures['assign_due']:.2f} s "
          f"(×{(figures['freeze local'] + figures['assign_due']) / figures['freeze plain']:.1f})")
    print(f"claims:   ordinary {figures['claims plain']:.2f} s (floor, {n / figures['claims plain']:.0f} rows/s); "
          f"waves {figures['claims local']:.2f} s ({n / figures['claims local']:.0f} rows/s, "
          f"×{figures['claims local'] / figures['claims plain']:.2f})")
    print(f"rescan:   audience_zones {figures['audience_zones'] * 1000:.0f} ms, wave_rows "
          f"{figures['wave_rows'] * 1000:.0f} ms per call (every MAILER_SCHEDULE_RESCAN seconds, until sent)")


if __name__ == "__main__":
    main()
