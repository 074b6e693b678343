"""The delivery ledger alone, PostgreSQL next to SQLite: prints figures (not a timed test).

    .venv/bin/python bench/bench_ledger.py [--recipients 200000] [--batch 1000] [--postgres-url URL]

`--recipients` active subscribers in a fresh SQLite file and in a fresh PostgreSQL schema (bulk SQL, not
timed), then on each, on one connection: the freeze (`freeze_recipients`: the recipient rows and their
statistics), then claims of `--batch` rows, each recorded sent with one provider id (a SendGrid
request), until the queue is empty, with the heartbeat (`renew_claims`) after every 20th claim. Printed
per step: wall time, and CPU seconds of the work wherever it runs: this process's, plus PostgreSQL's
server process for this connection (read from /proc when the server is on this machine), since SQLite
does all of it in this process. The floor is SQLite's figure of the same run; CPU is the figure a
loaded machine does not inflate (wall time waits for a core). Targets (issue 12): the send path on
PostgreSQL within 1.5 x SQLite; this bench shows the ledger's share of it, `bench_sendgrid.py --database
both` the whole send.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sendgrid import bulk_subscribers, database  # noqa: E402

from mailer.store import open_store  # noqa: E402

STEPS = ("freeze", "claim", "record", "heartbeat")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu(pid: int | None) -> float | None:
    """CPU seconds of a local PostgreSQL server process, None when it cannot be read (a remote server)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(kind: str, db_url: str, recipients: int, batch: int) -> dict[str, tuple[float, float | None]]:
    """{step: (wall seconds, CPU seconds or None)} of one engine."""
    store = open_store(db_url)
    totals = {step: [0.0, 0.0] for step in STEPS}
    readable = True
    try:
        bulk_subscribers(store, recipients)
        with store.engine.connect() as conn:
            pid = None if store.is_sqlite else conn.connection.driver_connection.info.backend_pid

            def timed(step: str, call):
                nonlocal readable
                wall, cpu, server = time.perf_counter(), own_cpu(), server_cpu(pid)
                with conn.begin():
                    result = call()
                after = server_cpu(pid)
                totals[step][0] += time.perf_counter() - wall
                totals[step][1] += own_cpu() - cpu + ((after - server) if after is not None and server is not None else 0)
                readable = readable and after is not None
                return result

            def freeze() -> int:
                issue = store.ensure_issue(conn, slug="ledger-bench", subject="Bench", list_name=None, web_html=None,
                                           issue_date=None)
                store.update_issue(conn, issue.id, status="sending")
                store.freeze_recipients(conn, issue.id, None)
                return issue.id

            issue_id = timed("freeze", freeze)
            claims = 0
            while rows := timed("claim", lambda: store.claim_deliveries(conn, issue_id, "bench-worker", batch)):
                claims += 1
                if claims % 20 == 0:
                    timed("heartbeat", lambda: store.renew_claims(conn, "bench-worker"))
                outcome = [{"id": row.delivery_id, "status": "sent", "provider_message_id": f"request-{claims}"}
                           for row in rows]
                timed("record", lambda: store.finish_deliveries(conn, "bench-worker", outcome))
            counts = store.delivery_counts(conn, issue_id)
        if counts["sent"] != recipients:
            raise SystemExit(f"{kind}: {counts['sent']:,} of {recipients:,} recorded sent: {counts}")
    finally:
        store.close()
    return {step: (wall, cpu if readable else None) for step, (wall, cpu) in totals.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="rows per claim (a SendGrid request's recipients)")
    parser.add_argument("--postgres-url", default=os.environ.get("MAILER_BENCH_DATABASE_URL")
                        or os.environ.get("MAILER_TEST_DATABASE_URL"), help="PostgreSQL server (a fresh schema, dropped)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    (root / "subscribers").mkdir()
    try:
        figures = {}
        for kind in ("sqlite", "postgresql") if args.postgres_url else ("sqlite",):
            with database(kind, root, args.postgres_url) as db_url:
                figures[kind] = run(kind, db_url, args.recipients, args.batch)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if "postgresql" not in figures:
        print("PostgreSQL skipped: give --postgres-url or set MAILER_BENCH_DATABASE_URL (SQLite alone below)")
        figures["postgresql"] = {step: (float("nan"), None) for step in STEPS}
    per = 1e6 / args.recipients
    print(f"\nthe ledger, {args.recipients:,} recipients, claims of {args.batch:,} "
          f"(us per recipient; CPU = this process + PostgreSQL's server process)")
    print(f"  {'step':10} {'sqlite wall':>12} {'sqlite CPU':>11} {'pg wall':>9} {'pg CPU':>8}   pg / sqlite (CPU)")
    for step in (*STEPS, "all"):
        rows = {kind: ((sum(f[0] for f in figures[kind].values()),
                        None if any(f[1] is None for f in figures[kind].values()) else sum(f[1] for f in figures[kind].values()))
                       if step == "all" else figures[kind][step]) for kind in figures}
        (sw, sc), (pw, pc) = rows["sqlite"], rows["postgresql"]
        ratio = f"{pc / sc:5.2f} x" if pc is not None and sc else "n/a (no local PostgreSQL server)"
        print(f"  {step:10} {sw * per:12.1f} {sc * per:11.1f} {pw * per:9.1f} "
              f"{pc * per if pc is not None else float('nan'):8.1f}   {ratio}")
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: wall times wait for a core on a shared "
          f"machine; compare CPU, and PostgreSQL with SQLite of the same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
