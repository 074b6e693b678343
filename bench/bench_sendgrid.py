"""SendGrid backend benchmark: prints figures (not a timed test).

    .venv/bin/python bench/bench_sendgrid.py [--subscribers N] [--latency S] [--workers N] [--profile] [--keep DIR]
                                             [--tracking 2000] [--track-clicks]

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
latency <= 1.3 x the floor; <= 30 us of this process's CPU per recipient.

`--profile` runs the send under cProfile and prints where the time goes, grouped by module.
`--tracking N` (default 2000) first prints the CPU per recipient of a personalization (its
substitutions) with click tracking on next to tracking off (the floor; `tracking_cpu.py`);
`--track-clicks` runs the send with MAILER_TRACK_CLICKS and MAILER_TRACK_OPENS on.
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
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from mailer.sending import dispatch  # noqa: E402
from mailer.config import load_settings  # noqa: E402
from mailer.store import open_store  # noqa: E402

ISSUE = "2026-11-26-donnees-ouvertes"
TARGET_SECONDS = 30.0
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
    "MAILER_BATCH_SIZE": "1000",
}


class Breakdown:
    """Wall and CPU time (this thread) spent in the send loop's steps, by wrapping them in memory."""

    STEPS = (("mailer.store", "Store", ("claim_deliveries", "finish_deliveries", "requeue_ids")),
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

    def print(self, batches: int) -> None:
        print("\nwhere the time goes (wall / CPU of the calling thread, ms per 1000-recipient batch):")
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
    # the shipped example is a draft (no scheduler sends it to a real list): sent as an editor would once ready
    toml = root / "issues" / ISSUE / "issue.toml"
    toml.write_text("".join(line for line in toml.read_text(encoding="utf-8").splitlines(keepends=True)
                            if not line.startswith("draft")), encoding="utf-8")


def bulk_subscribers(store, count: int) -> float:
    """`count` active subscribers with one INSERT … SELECT (recursive CTE): seconds taken."""
    started = time.perf_counter()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    with store.begin() as conn:
        conn.execute(sa.text(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
            "INSERT INTO subscribers (email, email_given, name, language, status, source, attributes, "
            "created_at, updated_at, confirmed_at) "
            "SELECT 'reader' || i || '@example.net', 'Reader' || i || '@example.net', "
            "CASE i % 3 WHEN 0 THEN 'Lecteur ' || i WHEN 1 THEN 'Zoé Ça-Va ' || i ELSE '' END, "
            "'fr', 'active', 'bench', '{}', :now, :now, :now FROM n"), {"count": count, "now": now})
    return time.perf_counter() - started


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "sendgrid_server.py"), "--cheap",
                                "--api-key", ENV["SENDGRID_API_KEY"], "--latency", str(latency)],
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
    started = time.perf_counter()
    for body in bodies:
        client.client.mail.send.post(request_body=body)
    return (time.perf_counter() - started) / requests


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_stats", timeout=5) as response:
        return json.load(response)


def profile_summary(profile: cProfile.Profile, top: int = 25) -> None:
    stats = pstats.Stats(profile)
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
    print("\nself time by module (cProfile, inflated by profiling overhead):")
    for key, seconds in sorted(by_module.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {seconds:7.2f} s  {100 * seconds / total:5.1f} %  {key}")
    print("\ncumulative time of the send loop's steps:")
    wanted = ("claim_deliveries", "finish_deliveries", "recipient_for", "send_batch", "personalization",
              "_post", "_process", "_record", "freeze_recipients", "prepare_send", "make_token", "message_id",
              "slot_values", "static_part", "dumps", "requeue_ids")
    for (filename, _line, name), (_cc, calls, _tt, cumtime, _callers) in sorted(
            stats.stats.items(), key=lambda kv: -kv[1][3]):
        if name in wanted and ("/mailer/" in filename or name == "dumps"):
            print(f"  {cumtime:7.2f} s  {calls:>9,} calls  {name}  ({Path(filename).name})")
    print()
    stats.sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=None, help="sender threads (default: from the in-flight bound)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the server waits before answering")
    parser.add_argument("--floor-requests", type=int, default=30, help="requests the sequential floor posts")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="time each step of the send loop")
    parser.add_argument("--worker-processes", type=int, default=0,
                        help="also run this many `mailer worker --once` processes beside the send (scale-out)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--tracking", type=int, default=2000,
                        help="recipients for the click-tracking CPU figures (on vs off), 0 to skip (2000)")
    parser.add_argument("--track-clicks", action="store_true", help="send with click and open tracking on")
    args = parser.parse_args()
    if args.track_clicks:
        ENV.update(MAILER_TRACK_CLICKS="1", MAILER_TRACK_OPENS="1")

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-sendgrid-"))
    root.mkdir(parents=True, exist_ok=True)
    db = root / "subscribers" / "bench.db"
    for leftover in db.parent.glob("bench.db*"):
        leftover.unlink()
    make_project(root)
    process, url = start_server(args.latency)
    try:
        settings = load_settings(root, env={**ENV, "MAILER_SENDGRID_API_URL": url,
                                            "MAILER_DATABASE_URL": f"sqlite:///{db}"})
        store = open_store(settings.database_url)
        if args.tracking:
            from mailer.providers.sendgrid import SendGridBackend
            from tracking_cpu import measure
            backend = SendGridBackend.from_settings(settings)
            measure(root, {**ENV, "MAILER_SENDGRID_API_URL": url, "MAILER_DATABASE_URL": f"sqlite:///{db}"},
                    "SendGrid personalization", lambda factory, message: backend.personalization(factory, message, 1),
                    args.tracking, setup=lambda factory: backend.static_part(factory, ISSUE))
        insert_seconds = bulk_subscribers(store, args.subscribers)
        print(f"{args.subscribers:,} subscribers inserted in {insert_seconds:.1f} s (bulk SQL, not part of the send)")
        print(f"python {sys.version.split()[0]}, sqlite {sa.__version__ and __import__('sqlite3').sqlite_version}, "
              f"{os.cpu_count()} CPUs, workers={args.workers}, server: separate process (--cheap)")

        rss_before = peak_rss_mb()
        started = time.perf_counter()
        prepared = dispatch.prepare_send(settings, store, ISSUE, allow_draft=True)  # render + freeze (timed apart)
        freeze_seconds = time.perf_counter() - started
        breakdown = Breakdown() if args.breakdown else None
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        profile = cProfile.Profile() if args.profile else None
        send_started = time.perf_counter()
        env = {**os.environ, **ENV, "MAILER_SENDGRID_API_URL": url, "MAILER_DATABASE_URL": f"sqlite:///{db}"}
        helpers = [subprocess.Popen([sys.executable, "-m", "mailer.cli", "worker", "--once"], cwd=root, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                   for _ in range(args.worker_processes)]
        if profile:
            profile.enable()
        report = dispatch.send_issue(settings, store, ISSUE, workers=args.workers, allow_draft=True)
        threads, batch = dispatch.lanes(settings, args.workers)
        if profile:
            profile.disable()
        helper_sent = 0
        for helper in helpers:
            out, _ = helper.communicate(timeout=600)
            helper_sent += int(out.strip().split()[-2]) if out.strip() else 0  # "worker stopped: N sent"
        send_seconds = time.perf_counter() - send_started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_seconds = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        total = time.perf_counter() - started
        stats = server_stats(url)
        floor_before = stats["requests"]
        floor_per_request = sequential_floor(url, args.floor_requests)
        floor = floor_per_request * stats["requests"]

        with store.engine.connect() as conn:
            counts = store.delivery_counts(conn, prepared.issue_id)
        ok = counts["sent"] == args.subscribers == stats["recipients"]
        print(f"frozen: {prepared.frozen:,} deliveries in {freeze_seconds:.2f} s (render + freeze)")
        print(f"sent:   {report.sent_now + helper_sent:,} in {send_seconds:.2f} s (claim, build, post, record)"
              + (f"; {helper_sent:,} of them by {len(helpers)} `mailer worker` process(es)" if helpers else ""))
        print(f"total:  {total:.2f} s end to end  -> {args.subscribers / total:,.0f} recipients/s, "
              f"{stats['requests'] / total:,.1f} requests/s "
              f"(send loop alone: {(report.sent_now + helper_sent) / send_seconds:,.0f} recipients/s, "
              f"{stats['requests'] / send_seconds:,.1f} requests/s)")
        print(f"CPU of this process during the send: {cpu_seconds:.2f} s "
              f"({1000 * cpu_seconds / max(1, stats['requests']):.1f} ms per request; the machine's load average "
              f"was {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        print(f"server: {stats['requests']:,} requests accepted, {stats['recipients']:,} recipients")
        print(f"ledger: {counts}")
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS: {peak_rss_mb():.0f} MB (before the send: {rss_before:.0f} MB)"
              + (f"; largest worker process {children:.0f} MB" if helpers else ""))
        target_seconds = TARGET_SECONDS * args.subscribers / 1_000_000  # the target scales with the list
        cpu_us = 1e6 * cpu_seconds / max(1, args.subscribers)
        ratio = total / floor
        print(f"in flight: {threads} thread(s) x {batch} recipients; the server saw at most "
              f"{stats['max_in_flight_requests']} requests / {stats['max_in_flight_recipients']:,} recipients at once")
        print(f"floor:  sequential plain-dict loop, same server, same latency: {1000 * floor_per_request:.1f} ms "
              f"per request -> {floor:.2f} s for {stats['requests']:,} requests ({args.floor_requests} sampled)")
        print("\nfigure                                   measured      target        ratio to floor")
        print(f"  end to end ({args.subscribers:,}, {args.latency:g} s latency) {total:9.2f} s   "
              f"<= {target_seconds:.1f} s {'OK' if total <= target_seconds else 'MISSED':6}  {ratio:.2f} x floor"
              + ("  (no latency: target <= 1.30 x " + ("OK" if ratio <= 1.3 else "MISSED") + ")"
                 if args.latency == 0 else ""))
        print(f"  CPU of this process per recipient     {cpu_us:9.1f} us  <= 30 us "
              f"{'OK' if cpu_us <= 30 else 'MISSED':6}")
        print(f"  peak RSS                              {peak_rss_mb():9.0f} MB  <= {TARGET_RSS_MB:.0f} MB "
              f"{'OK' if peak_rss_mb() <= TARGET_RSS_MB else 'MISSED'}")
        print(f"  every recipient once                  {'yes' if ok else 'NO'}")
        print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: the machine is shared, compare "
              f"with the floor rather than across runs)")
        if breakdown:
            breakdown.print(max(1, stats["requests"]))
        if profile:
            profile_summary(profile)
        store.close()
    finally:
        process.terminate()
        process.wait(10)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
