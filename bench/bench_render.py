"""Rendering benchmark: prints figures (not a timed test).

    .venv/bin/python bench/bench_render.py [--messages N] [--node-iterations N] [--no-node]

1. build time of the example issue (load_issue + render_issue), warm and cold;
2. personalisation of N messages from one RenderedIssue (HTML + text substitution), target >= 50,000/s;
3. the same including full MIME serialisation (MessageFactory.build), target >= 10,000/s;
4. MRML (mjml-python) compile time against the reference MJML implementation (npm `mjml`, installed
   into bench/.cache/ with npm when missing): node API in a loop inside one node process (startup
   excluded) and one CLI run (startup included), printed as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import mjml  # noqa: E402

from mailer.config import load_settings  # noqa: E402
from mailer.content.issue import load_issue  # noqa: E402
from mailer.mime import MessageFactory  # noqa: E402
from mailer.content.render import Recipient, render_issue  # noqa: E402

ISSUE = "2026-11-26-donnees-ouvertes"
CACHE = REPO / "bench" / ".cache"
NODE_DIR = CACHE / "node-mjml"
MJML_NPM_SPEC = "mjml@5"
TARGET_PERSONALISE = 50_000
TARGET_MIME = 10_000

NODE_LOOP = r"""
const fs = require('fs');
const mjml2html = require('mjml');
const source = fs.readFileSync(process.argv[2], 'utf8');
const iterations = parseInt(process.argv[3], 10);
(async () => {
  const run = async () => { const out = await Promise.resolve(mjml2html(source, {validationLevel: 'soft'})); return out; };
  for (let i = 0; i < 10; i++) await run();            // warm-up (JIT)
  const times = [];
  let html = '';
  for (let i = 0; i < iterations; i++) {
    const t0 = process.hrtime.bigint();
    const out = await run();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    html = out.html;
  }
  times.sort((a, b) => a - b);
  const version = require('mjml/package.json').version;
  console.log(JSON.stringify({version, median_ms: times[Math.floor(times.length / 2)],
    mean_ms: times.reduce((a, b) => a + b, 0) / times.length, min_ms: times[0], html_bytes: html.length}));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def ensure_node_mjml() -> Path | None:
    """npm `mjml` in bench/.cache/node-mjml (installed once); None when node/npm are missing or offline."""
    if (NODE_DIR / "node_modules" / "mjml" / "package.json").is_file():
        return NODE_DIR
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        print("  (node/npm not found: reference comparison skipped)")
        return None
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    if not (NODE_DIR / "package.json").exists():
        (NODE_DIR / "package.json").write_text('{"name": "mailer-bench-mjml", "private": true}\n')
    print(f"  installing {MJML_NPM_SPEC} into {NODE_DIR.relative_to(REPO)} (once) …", flush=True)
    result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", MJML_NPM_SPEC],
                            cwd=NODE_DIR, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  npm install failed: {result.stderr.strip()[:500]}")
        return None
    return NODE_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--node-iterations", type=int, default=200)
    parser.add_argument("--no-node", action="store_true")
    args = parser.parse_args()
    n = args.messages

    print(f"mailer render benchmark — Python {platform.python_version()}, {os.cpu_count()} cores, issue {ISSUE}")
    settings = load_settings(REPO, env={})

    # 1. build time -------------------------------------------------------------------------------
    started = time.perf_counter()
    issue = load_issue(ISSUE, settings.issues_dir, settings.zone)
    rendered = render_issue(issue, settings)
    cold = time.perf_counter() - started
    builds = timed(lambda: render_issue(load_issue(ISSUE, settings.issues_dir, settings.zone), settings), 20)
    html_bytes = len(rendered.html.raw.encode())
    print("\n[build] load_issue + render_issue (Jinja → MJML → HTML, text)")
    print(f"  first build (cold imports/caches): {cold * 1000:8.1f} ms")
    print(f"  warm build, median of 20:          {statistics.median(builds) * 1000:8.1f} ms"
          f"   (of which MRML compile {rendered.compile_seconds * 1000:.2f} ms)")
    print(f"  MJML source {len(rendered.mjml_source):,} chars, HTML {html_bytes:,} bytes, text {len(rendered.text.raw):,} chars, "
          f"{len(issue.briefs)} briefs")

    # 2. personalisation ----------------------------------------------------------------------------
    recipients = [Recipient(email=f"reader.{i}@example.org", name=("Léa Dubois-" + str(i)) if i % 3 else "",
                            unsubscribe_url=f"https://lettre.example.org/u/{i:012d}{'x' * 31}", subscriber_id=i)
                  for i in range(n)]
    personalise = rendered.personalise
    started = time.perf_counter()
    for recipient in recipients:
        personalise(recipient)
    seconds = time.perf_counter() - started
    rate = n / seconds
    print(f"\n[personalise] {n:,} × RenderedIssue.personalise (HTML + text substitution)")
    print(f"  {seconds:.2f} s, {rate:,.0f} messages/s, {seconds / n * 1e6:.1f} µs each"
          f"   target ≥ {TARGET_PERSONALISE:,}/s: {verdict(rate >= TARGET_PERSONALISE)}")

    # 3. full MIME ---------------------------------------------------------------------------------
    factory = MessageFactory(rendered)
    build = factory.build
    domain = settings.sender_domain
    message_ids = [f"<bench.{i}@{domain}>" for i in range(n)]
    started = time.perf_counter()
    size = 0
    for recipient, message_id in zip(recipients, message_ids):
        size = len(build(recipient, message_id))
    seconds = time.perf_counter() - started
    rate = n / seconds
    print(f"\n[mime] {n:,} × MessageFactory.build (headers + QP parts, bytes ready for SMTP)")
    print(f"  {seconds:.2f} s, {rate:,.0f} messages/s, {seconds / n * 1e6:.1f} µs each, {size:,} bytes a message"
          f"   target ≥ {TARGET_MIME:,}/s: {verdict(rate >= TARGET_MIME)}")
    print("  (recipients: 1/3 without a name, 2/3 with an accented one) by kind of name:")
    sample = min(n, 20_000)
    for label, name in (("no name", ""), ("ASCII name", "Lea Dubois"), ("accented name", "Léa Dubois")):
        kind = [Recipient(email=r.email, name=name, unsubscribe_url=r.unsubscribe_url) for r in recipients[:sample]]
        started = time.perf_counter()
        for recipient, message_id in zip(kind, message_ids):
            build(recipient, message_id)
        each = (time.perf_counter() - started) / sample
        print(f"    {label:<14} {1 / each:>9,.0f} messages/s ({each * 1e6:.0f} µs each)")

    # 4. MRML vs the reference ---------------------------------------------------------------------
    source = rendered.mjml_source
    for _ in range(10):
        mjml.mjml2html(source, disable_comments=False)
    iterations = args.node_iterations
    loop = timed(lambda: mjml.mjml2html(source, disable_comments=False), iterations)
    mrml_ms = statistics.median(loop) * 1000
    print(f"\n[mjml] compile of this issue's MJML ({len(source):,} chars)")
    print(f"  mjml-python (MRML) {getattr(mjml, '__version__', '')}: median {mrml_ms:.3f} ms, "
          f"mean {statistics.mean(loop) * 1000:.3f} ms over {iterations}")
    if args.no_node:
        return
    node_dir = ensure_node_mjml()
    if node_dir is None:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    src_path = CACHE / "issue.mjml"
    src_path.write_text(source, encoding="utf-8")
    script = node_dir / "loop.js"
    script.write_text(NODE_LOOP)
    result = subprocess.run(["node", str(script), str(src_path), str(iterations)], cwd=node_dir,
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  node mjml failed: {result.stderr.strip()[:500]}")
        return
    ref = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"  mjml (node) {ref['version']}, API in one process: median {ref['median_ms']:.3f} ms, "
          f"mean {ref['mean_ms']:.3f} ms over {iterations}   → MRML is {ref['median_ms'] / mrml_ms:.1f}× faster")
    cli = node_dir / "node_modules" / ".bin" / "mjml"
    out_path = CACHE / "issue.node.html"
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        proc = subprocess.run([str(cli), str(src_path), "-o", str(out_path)], cwd=node_dir, capture_output=True, text=True)
        runs.append(time.perf_counter() - started)
        if proc.returncode != 0:
            print(f"  mjml CLI failed: {proc.stderr.strip()[:300]}")
            return
    cli_ms = min(runs) * 1000
    print(f"  mjml CLI, one file incl. node startup: {cli_ms:.0f} ms (best of 3)"
          f"   → MRML in-process is {cli_ms / mrml_ms:,.0f}× faster per call")


if __name__ == "__main__":
    main()
