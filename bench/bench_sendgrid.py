"""SendGrid backend benchmark: prints figures (not a timed test).

    .venv/bin/python bench/bench_sendgrid.py [--recipients N] [--latency S] [--processes N] [--workers N]
        [--profile] [--breakdown] [--keep DIR]
        [--tracking 2000] [--track-clicks] [--database sqlite|postgresql|both] [--postgres-url URL] [--scaling N]

A million active subscribers in a fresh SQLite database (bulk SQL insert, not timed as part of the
send), then `mailer.dispatch.send_issue` end to end with the sendgrid backend — freeze, claim,
build one request per 1000 recipients, post with the official client, record the outcomes — against
`tests/sendgrid_server.py --cheap` running in its own process (it parses the JSON and counts, so it
does not compete for this process's GIL), answering each request `--latency` seconds after it
accepted it (default 0.1: SendGrid seen from Europe). Default settings: the requests in flight are
what MAILER_SENDGRID_IN_FLIGHT allows (4000 recipients: 4 requests of 1000).

Every figure is printed next to its target and as a ratio to a FLOOR measured in the same run against
the same server: a sequential loop posting prebuilt plain dicts of 1000 personalizations with the
official client, one request after another (sampled: `--floor-requests`, then per request). Targets
(issue 12): 1,000,000 recipients at 0.1 s latency <= 30 s end to end, peak RSS <= 250 MB; with no
latency <= 1.3 x the floor; <= 30 us of the sending processes' CPU per recipient, printed next to the
floor loop's own CPU per recipient (building dicts, json.dumps, the HTTP client: what any sender pays).
`--processes N` sends as `mailer send --processes N` (the helpers' CPU and peak RSS are counted).

The issue-12 run, one line (SQLite, 100 ms answers, default settings; ~2 minutes with the setup):

    .venv/bin/python bench/bench_sendgrid.py --recipients 1000000 --tracking 0

and the no-delay ratio to the floor: `--recipients 1000000 --latency 0 --tracking 0`. With a delay it also
prints the in-flight floor (the bound's requests posted by bare threads, prebuilt) and the connection figure
(`--handshake S`: a new connection per request against a kept one); see bench/README.md.

`--profile` runs the send under cProfile (every sender thread, each timed by its own CPU clock) and
prints where the CPU goes, grouped by module.
`--tracking N` (default 2000) first prints the CPU per recipient of a personalization (its
substitutions) with click tracking on next to tracking off (the floor; `tracking_cpu.py`);
`--track-clicks` runs the send with MAILER_TRACK_CLICKS and MAILER_TRACK_OPENS on.

PostgreSQL (`--database postgresql`, or `both` to run SQLite then PostgreSQL on the same list against
the same server and print their ratio, and the ratio of their freezes; target issue 12: PostgreSQL <= 1.5 x
SQLite): a fresh schema in
`--postgres-url` (default MAILER_BENCH_DATABASE_URL, else MAILER_TEST_DATABASE_URL), dropped afterwards.
`--scaling N` (N recipients) then measures scale-out: the same frozen list drained by one, then two
`mailer worker --once` processes (each with `--scaling-in-flight` recipients in flight, default one
request of 1000, so the provider's latency is the bottleneck); target: two processes >= 1.6 x one. Its
floor is the provider-bound ideal: requests x latency / (processes x requests in flight each).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from mailer.sending import dispatch  # noqa: E402
from mailer.sending.prepare import prepare_send  # noqa: E402
from mailer.sending.inflight import in_flight_bound, lanes, sending_processes  # noqa: E402
from mailer.config import load_settings  # noqa: E402
from mailer.store import open_store  # noqa: E402

ISSUE = "2026-11-26-donnees-ouvertes"
TARGET_SECONDS = 30.0
FLOOR_CPU: list[float] = []  # the floor loop's CPU per recipient (this process), set by sequential_floor
TARGET_RSS_MB = 250.0
ENV = {
    "MAILER_NAME": "Le Fil du jeudi",
    "MAILER_LANGUAGE": "fr",
    "MAILER_FROM": "Le Fil du jeudi <lettre@example.org>",
    "MAILER_BASE_URL": "https://lettre.example.org",
    "MAILER_POSTAL_ADDRESS": "12 rue des Exemples, 75011 Paris",
    "MAILER_SECRET_KEY": secrets.token_urlsafe(32),  # mailer refuses weak or published keys
    "MAILER_TIMEZONE": "Europe/Paris",
    "MAILER_BACKEND": "sendgrid",
    "SENDGRID_API_KEY": "SG.bench",
    "MAILER_BATCH_SIZE": os.environ.get("MAILER_BATCH_SIZE", "0"),  # 0: the backend's own (default settings)
}


class Breakdown:
    """Wall and CPU time (this thread) spent in the send loop's steps, by wrapping them in memory."""

    STEPS = (("mailer.store", "Store", ("claim_deliveries", "finish_deliveries", "record_sent", "requeue_ids")),
             ("mailer.sending.dispatch", "Sender", ("_process", "_record", "_send_with_retries")),
             ("mailer.providers.sendgrid", "SendGridBackend", ("send_batch", "_post")),
             ("python_http_client.client", "Client", ("_make_request",)))

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        import importlib
        for module_name, class_name, methods in self.STEPS:
            cls = getattr(importlib.import_module(module_name), class_name)
            for method in methods:
                self._wrap(cls, method, f"{class_name}.{method}")
        # per recipient steps: counted in bulk through their batch-level callers
        import json as json_module
        self._wrap(json_module, "dumps", "json.dumps (inside the sendgrid library)")

    def _wrap(self, owner, name: str, label: str) -> None:
        import functools
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.wall[label] += time.perf_counter() - wall
                self.cpu[label] += time.thread_time() - cpu
                self.calls[label] += 1
        setattr(owner, name, timed)
        self._originals = getattr(self, "_originals", [])
        self._originals.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)

    def print(self, batches: int) -> None:
        # this process's own batches: helper processes (--processes, automatic for large sends) are not
        # wrapped, so their requests must not dilute these figures
        batches = self.calls.get("Sender._process") or batches
        print(f"\nwhere the time goes in this process ({batches:,} batches; wall / CPU of the calling thread, "
              f"ms per 1000-recipient batch):")
        for label in sorted(self.wall, key=lambda k: -self.wall[k]):
            print(f"  {1000 * self.wall[label] / batches:7.1f} / {1000 * self.cpu[label] / batches:6.1f} ms  "
                  f"{self.calls[label]:>6,} calls  {label}")
        derived = {
            "building personalizations + static part (send_batch - _post)":
                self.wall["SendGridBackend.send_batch"] - self.wall["SendGridBackend._post"],
            "dispatch: recipients (tokens, Message-IDs) and bookkeeping (_process - send - record)":
                self.wall["Sender._process"] - self.wall["Sender._send_with_retries"] - self.wall["Sender._record"],
            "HTTP exchange incl. server time (_make_request)": self.wall["Client._make_request"],
        }
        for label, seconds in derived.items():
            print(f"  {1000 * seconds / batches:7.1f} ms  {label}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_project(root: Path) -> None:
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "issues" / ISSUE, root / "issues" / ISSUE)


def bulk_subscribers(store, count: int) -> float:
    """`count` active subscribers with one INSERT … SELECT (recursive CTE): seconds taken."""
    started = time.perf_counter()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    with store.begin() as conn:
        if not store.is_sqlite:
            conn.execute(sa.text(
                "INSERT INTO subscribers (email, email_given, name, language, status, source, attributes, "
                "created_at, updated_at, confirmed_at) "
                "SELECT 'reader' || i || '@example.net', 'Reader' || i || '@example.net', "
                "CASE i % 3 WHEN 0 THEN 'Lecteur ' || i WHEN 1 THEN 'Zoé Ça-Va ' || i ELSE '' END, "
                "'fr', 'active', 'bench', '{}', now(), now(), now() FROM generate_series(1, :count) AS i"),
                {"count": count})
            conn.execute(sa.text("ANALYZE subscribers"))
            return time.perf_counter() - started
        conn.execute(sa.text(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
            "INSERT INTO subscribers (email, email_given, name, language, status, source, attributes, "
            "created_at, updated_at, confirmed_at) "
            "SELECT 'reader' || i || '@example.net', 'Reader' || i || '@example.net', "
            "CASE i % 3 WHEN 0 THEN 'Lecteur ' || i WHEN 1 THEN 'Zoé Ça-Va ' || i ELSE '' END, "
            "'fr', 'active', 'bench', '{}', :now, :now, :now FROM n"), {"count": count, "now": now})
    return time.perf_counter() - started


def start_server(latency: float, handshake: float = 0.0) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "sendgrid_server.py"), "--cheap",
                                "--api-key", ENV["SENDGRID_API_KEY"], "--latency", str(latency),
                                "--handshake", str(handshake)],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise SystemExit(f"the SendGrid test server did not start: {line!r}")
    return process, f"http://127.0.0.1:{int(line.split()[1])}"


def sequential_floor(url: str, requests: int) -> float:
    """Seconds per request of the floor: prebuilt plain dicts of 1000 personalizations (the same shape
    and about the same size as mailer's), posted one after another with the official client."""
    import sendgrid

    body_html = "<p>" + "Une brève d'actualité, assez longue pour peser comme une vraie. " * 700 + "</p>"
    client = sendgrid.SendGridAPIClient(api_key=ENV["SENDGRID_API_KEY"], host=url)
    bodies = []
    for r in range(requests):
        personalizations = [{
            "to": [{"email": f"floor{r}-{i}@example.net", "name": f"Lecteur {i}"}],
            "substitutions": {"%%mailer:email%%": f"floor{r}-{i}@example.net", "%%mailer:greeting%%": "Bonjour,",
                              "%%mailer:unsubscribe_url%%": f"https://lettre.example.org/u/{'x' * 34}"},
            "headers": {"List-Unsubscribe": f"<https://lettre.example.org/u/{'x' * 34}>, <mailto:u@example.org>",
                        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                        "Message-ID": f"<{'0' * 24}@example.org>"},
            "custom_args": {"mailer_issue": "1", "mailer_subscriber": str(i), "mailer_delivery": str(i)}}
            for i in range(1000)]
        bodies.append({"from": {"email": "lettre@example.org"}, "subject": "Floor",
                       "content": [{"type": "text/plain", "value": body_html}, {"type": "text/html", "value": body_html}],
                       "personalizations": personalizations})
    started, cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        client.client.mail.send.post(request_body=body)
    FLOOR_CPU.append((time.process_time() - cpu) / (requests * 1000))  # seconds of CPU per recipient
    return (time.perf_counter() - started) / requests


def connection_cost(root: Path, latency: float, handshake: float, requests: int) -> tuple[float, float, int]:
    """What a new connection per request costs over a network: (seconds per request of the official
    client, which opens one per request through urllib; seconds per request of mailer's backend, which
    keeps its connection; connections the backend opened), `requests` one-recipient requests each,
    one after another, against a stand-in whose new connections wait `handshake` seconds first
    (a real HTTPS connection's TCP and TLS 1.3 handshakes: two round trips) and whose answers come
    `latency` seconds after a request."""
    import sendgrid
    from mailer.providers.sendgrid import SendGridBackend

    process, url = start_server(latency, handshake)
    try:
        body = {"personalizations": [{"to": [{"email": "reader@example.net"}]}],
                "from": {"email": "lettre@example.org"}, "subject": "Connexions",
                "content": [{"type": "text/plain", "value": "Une brève."}]}
        client = sendgrid.SendGridAPIClient(api_key=ENV["SENDGRID_API_KEY"], host=url)
        started = time.perf_counter()
        for _ in range(requests):
            client.client.mail.send.post(request_body=body)
        official = (time.perf_counter() - started) / requests
        before = server_stats(url)["connections"]
        with database("sqlite", root, None) as db_url:
            env = {**ENV, "MAILER_SENDGRID_API_URL": url, "MAILER_DATABASE_URL": db_url}
            open_store(db_url).close()
            backend = SendGridBackend.from_settings(load_settings(root, env=env))
            backend.open()
            encoded = json.dumps(body).encode()
            started = time.perf_counter()
            for _ in range(requests):
                backend._post(encoded)  # the backend's transport step (guard, kept connection, answer)
            kept = (time.perf_counter() - started) / requests
            backend.close()
        return official, kept, server_stats(url)["connections"] - before - 1  # minus this stats request's own
    finally:
        process.terminate()
        process.wait(10)


def parallel_floor(url: str, requests: int, threads: int) -> float:
    """Seconds per request of the in-flight floor: `threads` threads (the send's requests in flight)
    posting prebuilt bodies of 1000 personalizations (encoded before the clock starts), each on its own
    kept-alive connection, `requests` in all. Nothing is claimed, built or recorded: what the bound
    alone can carry against this server (Little's law with the server's own answer time), the least
    any sender holding that bound needs."""
    import http.client
    import threading
    import urllib.parse

    import orjson

    body_html = "<p>" + "Une brève d'actualité, assez longue pour peser comme une vraie. " * 700 + "</p>"
    bodies = [orjson.dumps({
        "from": {"email": "lettre@example.org"}, "subject": "Floor",
        "content": [{"type": "text/plain", "value": body_html}, {"type": "text/html", "value": body_html}],
        "personalizations": [{
            "to": [{"email": f"par{r}-{i}@example.net", "name": f"Lecteur {i}"}],
            "substitutions": {"%%mailer:greeting%%": "Bonjour,", "%%mailer:unsubscribe_url%%": f"https://lettre.example.org/u/{'x' * 34}"},
            "headers": {"List-Unsubscribe": f"<https://lettre.example.org/u/{'x' * 34}>, <mailto:u@example.org>",
                        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "Message-ID": f"<{'0' * 24}@example.org>"},
            "custom_args": {"mailer_issue": "1", "mailer_subscriber": str(i), "mailer_delivery": str(i)}}
            for i in range(1000)]}) for r in range(threads)]
    parts = urllib.parse.urlsplit(url)
    headers = {"Authorization": f"Bearer {ENV['SENDGRID_API_KEY']}", "Content-Type": "application/json"}
    left = [requests]
    lock = threading.Lock()

    def post(body: bytes) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port)
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            connection.request("POST", "/v3/mail/send", body=body, headers=headers)
            connection.getresponse().read()
        connection.close()

    workers = [threading.Thread(target=post, args=(body,)) for body in bodies]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - started) / requests


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_stats", timeout=5) as response:
        return json.load(response)


class ThreadProfiles:
    """cProfile in every thread of the send, not only the calling one: the send runs in sender threads
    (`Sender.run_worker`), which a profile enabled in the main thread never sees. Each thread gets its
    own profile, timed by that thread's CPU clock (`time.thread_time`: a thread waiting for the GIL or
    the network is not charged), merged at the end."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._original = dispatch.Sender.run_worker
        original, profiles = self._original, self.profiles

        def run_worker(sender, *args, **kwargs):
            profile = cProfile.Profile(time.thread_time)
            profiles.append(profile)
            profile.enable()
            try:
                return original(sender, *args, **kwargs)
            finally:
                profile.disable()
        dispatch.Sender.run_worker = run_worker
        self.main = cProfile.Profile(time.thread_time)
        profiles.append(self.main)

    def enable(self) -> None:
        self.main.enable()

    def disable(self) -> None:
        self.main.disable()
        dispatch.Sender.run_worker = self._original

    def stats(self) -> pstats.Stats:
        stats = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            stats.add(profile)
        return stats


def profile_summary(profile: ThreadProfiles, top: int = 25) -> None:
    stats = profile.stats()
    by_module: dict[str, float] = defaultdict(float)
    for (filename, _line, _name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        if "/mailer/" in filename:
            key = "mailer/" + filename.split("/mailer/", 1)[1]
        elif "sqlalchemy" in filename:
            key = "sqlalchemy (all)"
        elif "json" in filename:
            key = "json"
        elif filename.startswith("~") or filename == "~":
            key = "builtins / C"
        else:
            key = Path(filename).name
        by_module[key] += tottime
    total = sum(by_module.values())
    print("\nself CPU time by module (cProfile in every sending thread, inflated by profiling overhead):")
    for key, seconds in sorted(by_module.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {seconds:7.2f} s  {100 * seconds / total:5.1f} %  {key}")
    print("\ncumulative time of the send loop's steps:")
    wanted = ("claim_deliveries", "finish_deliveries", "recipient_for", "send_batch", "personalization",
              "_post", "_process", "_record", "freeze_recipients", "prepare_send", "make_token", "message_id",
              "slot_values", "static_part", "dumps", "requeue_ids", "_personalization", "many", "__call__",
              "recipient_headers", "personal_values")
    for (filename, _line, name), (_cc, calls, _tt, cumtime, _callers) in sorted(
            stats.stats.items(), key=lambda kv: -kv[1][3]):
        if name in wanted and ("/mailer/" in filename or name == "dumps"):
            print(f"  {cumtime:7.2f} s  {calls:>9,} calls  {name}  ({Path(filename).name})")
    print()
    stats.sort_stats("tottime").print_stats(top)



@contextmanager
def database(kind: str, root: Path, pg_url: str | None) -> Iterator[str]:
    """A database URL for an empty database of `kind`: a SQLite file in `root`, or a fresh PostgreSQL
    schema (dropped afterwards)."""
    if kind == "sqlite":
        db = root / "subscribers" / f"bench-{secrets.token_hex(4)}.db"  # a new name: open_store migrates it
        try:
            yield f"sqlite:///{db}"
        finally:
            for leftover in db.parent.glob(db.name + "*"):
                leftover.unlink()
        return
    if not pg_url:
        raise SystemExit("--database postgresql: give --postgres-url or set MAILER_BENCH_DATABASE_URL")
    schema = f"bench_{secrets.token_hex(6)}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in pg_url else "?"
    try:
        yield f"{pg_url}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def send_once(args, kind: str, root: Path, url: str, db_url: str) -> dict:
    """One send of `args.subscribers` recipients on a fresh database: prints its figures, returns them."""
    settings = load_settings(root, env={**ENV, "MAILER_SENDGRID_API_URL": url, "MAILER_DATABASE_URL": db_url})
    store = open_store(settings.database_url)
    try:
        insert_seconds = bulk_subscribers(store, args.subscribers)
        print(f"\n=== {kind}: {args.subscribers:,} subscribers inserted in {insert_seconds:.1f} s "
              f"(bulk SQL, not part of the send)")
        print(f"python {sys.version.split()[0]}, sqlite {__import__('sqlite3').sqlite_version}, "
              f"{os.cpu_count()} CPUs, workers={args.workers}, "
              f"processes={args.processes or 'automatic: ' + str(sending_processes(settings, args.subscribers, workers=args.workers))}, "
              f"server: separate process (--cheap); load average {os.getloadavg()[0]:.1f}")
        requests_before = server_stats(url)["requests"]
        recipients_before = server_stats(url)["recipients"]
        rss_before = peak_rss_mb()
        ledger_freeze = timed_freeze(store)
        started = time.perf_counter()
        prepared = prepare_send(settings, store, ISSUE, allow_draft=True)  # render + freeze (timed apart)
        freeze_seconds = time.perf_counter() - started
        breakdown = Breakdown() if args.breakdown else None
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        children_before = children_cpu()
        profile = ThreadProfiles() if args.profile else None
        send_started = time.perf_counter()
        env = {**os.environ, **ENV, "MAILER_SENDGRID_API_URL": url, "MAILER_DATABASE_URL": db_url}
        helpers = [subprocess.Popen([sys.executable, "-m", "mailer.cli", "worker", "--once"], cwd=root, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                   for _ in range(args.worker_processes)]
        if profile:
            profile.enable()
        report = dispatch.send_issue(settings, store, ISSUE, workers=args.workers, allow_draft=True,
                                     processes=args.processes)
        processes = sending_processes(settings, args.subscribers, args.processes, args.workers)
        threads, batch = lanes(settings, args.workers, processes)
        if profile:
            profile.disable()
        helper_sent = 0
        for helper in helpers:
            out, _ = helper.communicate(timeout=600)
            helper_sent += int(out.strip().split()[-2]) if out.strip() else 0  # "worker stopped: N sent"
        send_seconds = time.perf_counter() - send_started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_seconds = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        # the helper processes of --processes (and --worker-processes), reaped by now
        cpu_seconds += children_cpu() - children_before
        rss_send = peak_rss_mb()
        rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        total = time.perf_counter() - started
        stats = server_stats(url)
        requests = stats["requests"] - requests_before
        recipients = stats["recipients"] - recipients_before
        with store.engine.connect() as conn:
            counts = store.delivery_counts(conn, prepared.issue_id)
        ok = counts["sent"] == args.subscribers == recipients
        print(f"frozen: {prepared.frozen:,} deliveries in {freeze_seconds:.2f} s (render + freeze; the ledger's "
              f"INSERT … SELECT and its statistics: {ledger_freeze[0]:.2f} s)")
        print(f"sent:   {report.sent_now + helper_sent:,} in {send_seconds:.2f} s (claim, build, post, record)"
              + (f"; {helper_sent:,} of them by {len(helpers)} `mailer worker` process(es)" if helpers else ""))
        print(f"total:  {total:.2f} s end to end  -> {args.subscribers / total:,.0f} recipients/s, "
              f"{requests / total:,.1f} requests/s "
              f"(send loop alone: {(report.sent_now + helper_sent) / send_seconds:,.0f} recipients/s, "
              f"{requests / send_seconds:,.1f} requests/s)")
        print(f"peak RSS after the send: {rss_send:.0f} MB this process"
              + (f", {rss_children:.0f} MB the largest helper process" if processes > 1 or helpers else ""))
        print(f"CPU of the sending process(es) during the send: {cpu_seconds:.2f} s "
              f"({1000 * cpu_seconds / max(1, requests):.1f} ms per request; the machine's load average "
              f"was {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        print(f"server: {requests:,} requests accepted, {recipients:,} recipients")
        print(f"ledger: {counts}")
        print(f"in flight: {processes} process(es) x {threads} thread(s), {batch} recipients a request, "
              f"{in_flight_bound(settings, args.workers)[0]} requests at once for the send; the server saw at most "
              f"{stats['max_in_flight_requests']} requests / {stats['max_in_flight_recipients']:,} recipients at once")
        if breakdown:
            breakdown.print(max(1, requests))
            breakdown.restore()
        if profile:
            profile_summary(profile)
        return {"kind": kind, "total": total, "send": send_seconds, "freeze": ledger_freeze[0], "cpu": cpu_seconds,
                "requests": requests, "ok": ok, "rss_before": rss_before, "helpers": len(helpers),
                "rss": max(rss_send, rss_children)}
    finally:
        store.close()


def timed_freeze(store) -> list[float]:
    """Time `store.freeze_recipients` (the ledger's part of the freeze) on this store: a list whose first
    item holds the seconds once it ran."""
    seconds = [0.0]
    original = store.freeze_recipients

    def freeze(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds[0] += time.perf_counter() - started
    store.freeze_recipients = freeze
    return seconds


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drain_with_workers(root: Path, url: str, db_url: str, processes: int, in_flight: int) -> tuple[float, int]:
    """Seconds `processes` `mailer worker --once` processes take to drain the queue, and how many they sent."""
    env = {**os.environ, **ENV, "MAILER_SENDGRID_API_URL": url, "MAILER_DATABASE_URL": db_url,
           "MAILER_SENDGRID_IN_FLIGHT": str(in_flight)}
    started = time.perf_counter()
    helpers = [subprocess.Popen([sys.executable, "-m", "mailer.cli", "worker", "--once"], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(processes)]
    sent = 0
    for helper in helpers:
        out, err = helper.communicate(timeout=900)
        if helper.returncode:
            raise SystemExit(f"`mailer worker --once` failed: {err.strip().splitlines()[-1:]}")
        sent += int(out.strip().split()[-2]) if out.strip() else 0  # "worker stopped: N sent"
    return time.perf_counter() - started, sent


def scaling(args, kind: str, root: Path, url: str, db_url: str, latency: float) -> dict:
    """The same frozen list drained by 1 then 2 `mailer worker` processes (the ledger re-queued between)."""
    settings = load_settings(root, env={**ENV, "MAILER_SENDGRID_API_URL": url, "MAILER_DATABASE_URL": db_url})
    store = open_store(settings.database_url)
    try:
        bulk_subscribers(store, args.scaling)
        # what starting and stopping the processes costs (imports, connecting, finding the queue): the
        # same number of processes with nothing queued, measured before each drain
        idle = {processes: drain_with_workers(root, url, db_url, processes, args.scaling_in_flight)[0]
                for processes in (1, 2)}
        prepared = prepare_send(settings, store, ISSUE, allow_draft=True)
        with store.begin() as conn:
            store.update_issue(conn, prepared.issue_id, status="sending")  # what `send` leaves for workers
        requests = -(-args.scaling // min(1000, args.scaling_in_flight))
        per_process = max(1, args.scaling_in_flight // 1000)
        seconds: dict[int, float] = {}
        raw: dict[int, float] = {}
        print(f"\n=== {kind}: scale-out, {args.scaling:,} recipients drained by `mailer worker --once` processes, "
              f"{args.scaling_in_flight:,} recipients in flight each, {latency:g} s latency")
        for processes in (1, 2):
            cpu = children_cpu()
            elapsed, sent = drain_with_workers(root, url, db_url, processes, args.scaling_in_flight)
            cpu = children_cpu() - cpu
            with store.begin() as conn:
                counts = store.delivery_counts(conn, prepared.issue_id)
                store.requeue(conn, prepared.issue_id, statuses=("sent",))
                store.update_issue(conn, prepared.issue_id, status="sending", finished_at=None)
            ideal = requests * latency / (processes * per_process)
            net = max(1e-3, elapsed - idle[processes])
            seconds[processes] = net
            raw[processes] = elapsed
            print(f"  {processes} process(es): {elapsed:6.2f} s, of which {idle[processes]:.2f} s starting and stopping "
                  f"(the same processes with nothing queued) -> draining {net:.2f} s; {sent:,} sent "
                  f"({counts['sent']:,} in the ledger); provider-bound ideal {ideal:.2f} s -> "
                  f"{net / ideal if ideal else 0:.2f} x ideal; the processes used {cpu:.1f} s of CPU "
                  f"({1000 * cpu / requests:.0f} ms per request; load average {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} CPUs)")
        return {"kind": kind, "latency": latency, "speedup": seconds[1] / seconds[2], "one": seconds[1], "two": seconds[2],
                "raw": raw[1] / raw[2]}
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", "--recipients", dest="subscribers", type=int, default=1_000_000,
                        help="recipients of the send (default 1,000,000: the issue-12 run)")
    parser.add_argument("--processes", type=int, default=None,
                        help="sending processes (`mailer send --processes N`; default automatic, as `mailer send`)")
    parser.add_argument("--workers", type=int, default=None, help="sender threads (default: from the in-flight bound)")
    parser.add_argument("--in-flight", type=int, default=None,
                        help="MAILER_SENDGRID_IN_FLIGHT of the send (default: the setting's default, 4000)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the server waits before answering")
    parser.add_argument("--floor-requests", type=int, default=30, help="requests the sequential floor posts")
    parser.add_argument("--handshake", type=float, default=None,
                        help="seconds a new connection costs in the connection measure (default 2 x --latency)")
    parser.add_argument("--connection-requests", type=int, default=10,
                        help="requests of the connection measure (0: skip it)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="time each step of the send loop")
    parser.add_argument("--worker-processes", type=int, default=0,
                        help="also run this many `mailer worker --once` processes beside the send (scale-out)")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="sqlite",
                        help="the store: SQLite, PostgreSQL, or both one after the other (prints their ratio)")
    parser.add_argument("--postgres-url", default=os.environ.get("MAILER_BENCH_DATABASE_URL")
                        or os.environ.get("MAILER_TEST_DATABASE_URL"),
                        help="PostgreSQL server for --database postgresql|both (a fresh schema is made and dropped)")
    parser.add_argument("--scaling", type=int, default=0, metavar="N",
                        help="also drain N recipients with 1 then 2 `mailer worker` processes (target: 2 >= 1.6 x 1)")
    parser.add_argument("--scaling-in-flight", type=int, default=1000,
                        help="MAILER_SENDGRID_IN_FLIGHT of each scale-out worker process (default: one request)")
    parser.add_argument("--scaling-latency", type=float, default=None,
                        help="answer latency for the scale-out measure (default: --latency; a separate server)")
    parser.add_argument("--skip-send", action="store_true", help="only the scale-out measure (--scaling)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--tracking", type=int, default=2000,
                        help="recipients for the click-tracking CPU figures (on vs off), 0 to skip (2000)")
    parser.add_argument("--track-clicks", action="store_true", help="send with click and open tracking on")
    args = parser.parse_args()
    if args.in_flight:
        ENV["MAILER_SENDGRID_IN_FLIGHT"] = str(args.in_flight)
    if args.track_clicks:
        ENV.update(MAILER_TRACK_CLICKS="1", MAILER_TRACK_OPENS="1")

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-sendgrid-"))
    root.mkdir(parents=True, exist_ok=True)
    make_project(root)
    kinds = ("sqlite", "postgresql") if args.database == "both" else (args.database,)
    process, url = start_server(args.latency)
    try:
        if args.tracking:
            with database("sqlite", root, None) as db_url:
                env = {**ENV, "MAILER_SENDGRID_API_URL": url, "MAILER_DATABASE_URL": db_url}
                open_store(db_url).close()
                from mailer.providers.sendgrid import SendGridBackend
                from tracking_cpu import measure
                backend = SendGridBackend.from_settings(load_settings(root, env=env))
                measure(root, env, "SendGrid personalization",
                        lambda factory, message: backend.personalization(factory, message, 1),
                        args.tracking, setup=lambda factory: backend.static_part(factory, ISSUE))
        runs = []
        if not args.skip_send:
            for kind in kinds:
                with database(kind, root, args.postgres_url) as db_url:
                    runs.append(send_once(args, kind, root, url, db_url))
        scaled = []
        if args.scaling:
            latency = args.latency if args.scaling_latency is None else args.scaling_latency
            other = start_server(latency) if latency != args.latency else None
            try:
                for kind in kinds:
                    with database(kind, root, args.postgres_url) as db_url:
                        scaled.append(scaling(args, kind, root, other[1] if other else url, db_url, latency))
            finally:
                if other:
                    other[0].terminate()
                    other[0].wait(10)
        print(f"\nfloor: sequential plain-dict loop, same server, same latency ({args.floor_requests} requests sampled)")
        floor_per_request = sequential_floor(url, args.floor_requests)
        print(f"  {1000 * floor_per_request:.1f} ms per request")
        bound = in_flight_bound(load_settings(root, env={**ENV, "MAILER_SENDGRID_API_URL": url,
                                                         "MAILER_DATABASE_URL": "sqlite:///" + str(root / "x.db")}),
                                args.workers)[0]
        parallel_per_request = parallel_floor(url, max(bound * 10, args.floor_requests * bound), bound) \
            if args.latency > 0 else 0.0
        if parallel_per_request:
            print(f"in-flight floor: {bound} threads posting prebuilt bodies on kept connections (the send's {bound} "
                  f"requests in flight), nothing claimed, built or recorded")
            print(f"  {1000 * parallel_per_request:.1f} ms per request")
        handshake = 2 * args.latency if args.handshake is None else args.handshake
        if handshake > 0 and args.connection_requests:
            official, kept, opened = connection_cost(root, args.latency, handshake, args.connection_requests)
            print(f"\nconnections: {args.connection_requests} requests one after another, {1000 * args.latency:.0f} ms "
                  f"answers, each new connection {1000 * handshake:.0f} ms of handshakes (TCP + TLS over the network)")
            print(f"  a new connection per request (the official client's urllib, the floor) {1000 * official:7.1f} ms "
                  f"per request")
            print(f"  mailer's kept-alive connection                                        {1000 * kept:7.1f} ms "
                  f"per request ({kept / official:.2f} x; {opened} connection(s) opened)")
        target_seconds = TARGET_SECONDS * args.subscribers / 1_000_000  # the target scales with the list
        print("\nfigure                                          measured      target        ratio to floor")
        for run in runs:
            floor = floor_per_request * run["requests"]
            ratio = run["total"] / floor
            cpu_us = 1e6 * run["cpu"] / max(1, args.subscribers)
            name = f"{run['kind']}: end to end ({args.subscribers:,}, {args.latency:g} s)"
            print(f"  {name:45} {run['total']:7.2f} s   <= {target_seconds:5.1f} s "
                  f"{'OK' if run['total'] <= target_seconds else 'MISSED':6}  {ratio:.2f} x floor ({floor:.2f} s)"
                  + ("  (no latency: target <= 1.30 x " + ("OK" if ratio <= 1.3 else "MISSED") + ")"
                     if args.latency == 0 else ""))
            floor_us = 1e6 * FLOOR_CPU[0]
            if parallel_per_request:
                in_flight_floor = parallel_per_request * run["requests"]
                print(f"  {run['kind'] + ': against the in-flight floor':45} {run['total'] / in_flight_floor:7.2f} x   "
                      f"(the bound alone carries {run['requests']:,} requests in {in_flight_floor:.2f} s here; "
                      f"the 30 s target needs <= {TARGET_SECONDS * args.subscribers / 1_000_000 / in_flight_floor:.2f} x)")
            print(f"  {run['kind'] + ': CPU of the sender(s) per recipient':45} {cpu_us:7.1f} us  <= 30 us   "
                  f"{'OK' if cpu_us <= 30 else 'MISSED':6}  {cpu_us / floor_us:.2f} x the floor's CPU "
                  f"({floor_us:.1f} us per recipient: dicts + json.dumps + HTTP, nothing else)")
            print(f"  {run['kind'] + ': peak RSS':45} {run['rss']:7.0f} MB  <= {TARGET_RSS_MB:.0f} MB "
                  f"{'OK' if run['rss'] <= TARGET_RSS_MB or args.subscribers < 1_000_000 else 'MISSED':6}"
                  f"  (largest sending process, after the send)")
            print(f"  {run['kind'] + ': every recipient once':45} {'yes' if run['ok'] else 'NO'}")
            print(f"  {run['kind'] + ': freeze (the ledger rows)':45} {run['freeze']:7.2f} s   "
                  f"({1e6 * run['freeze'] / max(1, args.subscribers):.1f} us per recipient)")
        if len(runs) == 2:
            ratio = runs[1]["total"] / runs[0]["total"]
            send_ratio = runs[1]["send"] / runs[0]["send"]
            print(f"  {'postgresql / sqlite, freeze':45} {runs[1]['freeze'] / max(1e-9, runs[0]['freeze']):7.2f} x")
            print(f"  {'postgresql / sqlite, end to end':45} {ratio:7.2f} x   <= 1.50 x  "
                  f"{'OK' if ratio <= 1.5 else 'MISSED':6}  (send loop alone: {send_ratio:.2f} x; "
                  f"floors {runs[1]['total'] / (floor_per_request * runs[1]['requests']):.2f} / "
                  f"{runs[0]['total'] / (floor_per_request * runs[0]['requests']):.2f})")
        for run in scaled:
            label = f"{run['kind']}: 2 worker processes / 1 ({run['latency']:g} s)"
            print(f"  {label:45} {run['speedup']:7.2f} x   >= 1.60 x  "
                  f"{'OK' if run['speedup'] >= 1.6 else 'MISSED':6}  ({run['one']:.2f} s -> {run['two']:.2f} s; "
                  f"with process start and stop: {run['raw']:.2f} x)")
        print(f"  peak RSS of this process at the end {peak_rss_mb():.0f} MB (with the floor's prebuilt bodies)")
        print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: the machine is shared, compare "
              f"with the floor rather than across runs)")
    finally:
        process.terminate()
        process.wait(10)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
