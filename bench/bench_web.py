"""Web app benchmark: prints figures (not a timed test).

    .venv/bin/python bench/bench_web.py [--requests N] [--concurrency N] [--batches N] [--batch-size N]

The app runs in its own process (uvicorn, one worker, SQLite in WAL mode, as `mailer serve` runs it)
on a free loopback port; the load client is a small asyncio HTTP/1.1 keep-alive client in this
process (no third-party tool), so the server's figures are not diluted by the client's own cost more
than necessary. Both share the machine's cores.

1. RFC 8058 one-click POST /u/TOKEN, each request a different active subscriber (a real status
   change + event row per request). Target: >= 500 requests/s. Prints req/s, p50, p99.
2. The same POSTs again (everyone already unsubscribed: the idempotent path).
3. POST /webhooks/sendgrid with signed batches of N events (ECDSA P-256 as SendGrid signs), a mix
   of delivered/open/bounce events: req/s, events/s, p50, p99.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_ONE_CLICK_RPS = 500.0
SECRET = secrets.token_urlsafe(32)  # mailer refuses weak or published keys with real backends and serve


def settings_env(db_url: str, outbox: Path, public_key: str) -> dict[str, str]:
    return {
        "MAILER_NAME": "Le Fil du jeudi", "MAILER_LANGUAGE": "fr", "MAILER_DATABASE_URL": db_url,
        "MAILER_TEMPLATES_DIR": str(REPO / "templates"), "MAILER_OUTBOX_DIR": str(outbox),
        "MAILER_SECRET_KEY": SECRET, "MAILER_BASE_URL": "https://lettre.example.org",
        "MAILER_FROM": "Le Fil du jeudi <lettre@example.org>", "MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY": public_key,
    }


# ----- the server process ------------------------------------------------------------------------------
def serve(port: int, root: Path) -> None:
    import logging

    import uvicorn

    from mailer.config import load_settings
    from mailer.web.app import create_app

    logging.getLogger("mailer").setLevel(logging.WARNING)
    settings = load_settings(root, env=os.environ)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                server_header=False)


# ----- a minimal keep-alive HTTP client ---------------------------------------------------------------------
class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer:
            self.writer.close()


async def load(port: int, requests: list[tuple[str, bytes, dict[str, str]]], concurrency: int) -> dict:
    """Send every request over `concurrency` keep-alive connections; latencies per request."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(requests)

    async def worker() -> None:
        connection = Connection(port)
        await connection.open()
        try:
            for path, body, headers in queue:
                started = time.perf_counter()
                status = await connection.post(path, body, headers)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies), "elapsed": elapsed, "rps": len(latencies) / elapsed, "statuses": statuses,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "mean_ms": 1000 * statistics.fmean(latencies),
    }


def report(label: str, result: dict, unit_per_request: int = 1) -> None:
    extra = f", {result['rps'] * unit_per_request:,.0f} events/s" if unit_per_request > 1 else ""
    print(f"{label:<44} {result['requests']:>6} req in {result['elapsed']:.2f} s: {result['rps']:>7,.0f} req/s"
          f"{extra}; p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; statuses {result['statuses']}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited early (code {process.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="one-click POSTs (default 5000)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batches", type=int, default=200, help="webhook requests (default 200)")
    parser.add_argument("--batch-size", type=int, default=100, help="events per webhook request (default 100)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.root)
        return 0

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    import sqlalchemy as sa

    from mailer import tokens
    from mailer.store.schema import subscriber_events, subscribers
    from mailer.store import open_store, utcnow

    private = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode("ascii")

    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        root = Path(tmp)
        db_url = f"sqlite:///{root / 'subscribers.db'}"
        store = open_store(db_url)
        now = utcnow()
        count = args.requests
        with store.begin() as conn:
            conn.execute(subscribers.insert(), [{
                "email": f"reader{i}@example.org", "email_given": f"reader{i}@example.org", "name": f"Reader {i}",
                "language": "", "status": "active", "source": "bench", "attributes": {}, "created_at": now,
                "updated_at": now, "confirmed_at": now} for i in range(count)])
            ids = list(conn.execute(sa.select(subscribers.c.id).order_by(subscribers.c.id)).scalars())
        store.close()

        port = free_port()
        env = {**os.environ, **settings_env(db_url, root / "outbox", public)}
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--root", str(root)], env=env)
        try:
            wait_until_listening(port, server)
            print(f"python {platform.python_version()}, {os.cpu_count()} CPU(s); uvicorn (1 worker) + SQLite WAL; "
                  f"{args.concurrency} keep-alive connections from an asyncio client on the same machine")
            key = SECRET.encode()
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            one_click = [(f"/u/{tokens.make_token(key, 'unsubscribe', sid)}", b"List-Unsubscribe=One-Click", form)
                         for sid in ids]
            # warm-up (connections, templates, first transactions) on a few requests, then the run
            asyncio.run(load(port, one_click[:50], 4))
            first = asyncio.run(load(port, one_click[50:], args.concurrency))
            report("one-click POST (status change + event)", first)
            again = asyncio.run(load(port, one_click, args.concurrency))
            report("one-click POST again (already unsubscribed)", again)

            kinds = ("delivered", "open", "delivered", "click", "bounce", "processed")
            requests = []
            for batch in range(args.batches):
                events = []
                for n in range(args.batch_size):
                    sid = ids[(batch * args.batch_size + n) % len(ids)]
                    events.append({"email": f"reader{sid - ids[0]}@example.org", "timestamp": int(time.time()),
                                   "event": kinds[n % len(kinds)], "type": "bounce",
                                   "sg_event_id": f"b{batch}-{n}", "sg_message_id": f"m{batch}.{n}",
                                   "mailer_subscriber": str(sid), "mailer_issue": "1"})
                body = json.dumps(events, separators=(",", ":")).encode()
                stamp = str(int(time.time()))
                signature = base64.b64encode(private.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
                requests.append(("/webhooks/sendgrid", body, {
                    "Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature": signature,
                    "X-Twilio-Email-Event-Webhook-Timestamp": stamp}))
            hooks = asyncio.run(load(port, requests, 4))
            report(f"webhook, signed batches of {args.batch_size} events", hooks, args.batch_size)
            replay = asyncio.run(load(port, requests, 4))
            report("webhook replay (all duplicates)", replay, args.batch_size)
        finally:
            server.terminate()
            server.wait(timeout=10)

        store = open_store(db_url)
        with store.engine.connect() as conn:
            unsubscribed = conn.execute(sa.select(sa.func.count()).select_from(subscribers)
                                        .where(subscribers.c.status.in_(("unsubscribed", "bounced")))).scalar_one()
            status_events = conn.execute(sa.select(sa.func.count()).select_from(subscriber_events)
                                         .where(subscriber_events.c.kind == "status",
                                                subscriber_events.c.source == "one-click")).scalar_one()
        store.close()
        print(f"check: {unsubscribed}/{count} suppressed, {status_events} one-click status events (one per person)")
        ok = first["rps"] >= TARGET_ONE_CLICK_RPS and first["statuses"] == {200: len(one_click) - 50}
        print(f"target one-click >= {TARGET_ONE_CLICK_RPS:.0f} req/s: {'met' if ok else 'NOT met'}")
        return 0 if ok and status_events == count else 1


if __name__ == "__main__":
    sys.exit(main())
