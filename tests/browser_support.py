"""Helpers for the real-browser tests: launching the Debian Chromium, serving an ASGI app on
loopback from a thread, and asking the page what a reader actually sees.

Kept free of fixtures so any test module (preview, web pages) can reuse them.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("MAILER_CHROMIUM", "/usr/bin/chromium"))
# Root needs --no-sandbox; the rest stop Chromium's own network chatter (refused connections here).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    """Skip when Chromium is absent, unless MAILER_REQUIRE_BROWSER=1 (CI), where that is a failure."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return
    reason = f"{CHROMIUM} is not installed: browser tests need the Debian chromium package (apt-get install chromium)"
    if os.environ.get("MAILER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MAILER_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def launched_chromium():
    """The Debian Chromium under Playwright (skip/fail as `require_chromium` says).

    Playwright's sync API cannot start while another sync_playwright() is alive in the same
    thread, so a browser must not outlive the test module that launched it unless every browser
    module shares it: fixtures built on this use scope="module".
    """
    require_chromium()
    if os.environ.get("MAILER_REQUIRE_BROWSER") == "1":
        from playwright import sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def opened_page(browser, **context_options):  # noqa: ANN001, ANN003, ANN201
    """A page in a fresh browser context (`browser.new_context(**context_options)`: viewport,
    color_scheme…), 10 s default timeout; the context is closed afterwards."""
    context = browser.new_context(**context_options)
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        yield page
    finally:
        context.close()


@contextlib.contextmanager
def served_web_app(make_settings, store):  # noqa: ANN001, ANN201
    """The public web app on a free loopback port, its public URL (MAILER_BASE_URL) being that address:
    yields (server, settings, store). The app needs the URL, which exists once the socket is bound."""
    from mailer.web.app import create_app

    holder: dict = {}

    async def asgi(scope, receive, send):  # noqa: ANN001
        await holder["app"](scope, receive, send)

    server = ThreadedServer(asgi)
    settings = make_settings(MAILER_BASE_URL=server.url)
    holder["app"] = create_app(settings, store=store)
    with server:
        yield server, settings, store


def free_loopback_socket() -> socket.socket:
    """A bound, listening loopback socket on a free port: handed to uvicorn, so no port race."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


class ThreadedServer:
    """uvicorn.Server running an ASGI app in a daemon thread; use as a context manager."""

    def __init__(self, app, *, start_timeout: float = 10.0) -> None:
        import uvicorn

        self._sock = free_loopback_socket()
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name=f"uvicorn-{self.port}", daemon=True)
        self._start_timeout = start_timeout

    def __enter__(self) -> "ThreadedServer":
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the uvicorn server thread died before starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the uvicorn server did not start within {self._start_timeout} s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


_WORD = re.compile(r"[^\W\d_]{6,}")


def distinctive_words(text: str, first: int = 3, last: int = 2) -> list[str]:
    """Some long words from the start and the end of `text` (lower case): if all of them show in
    one visible block, the block holds the text from its beginning to its end."""
    words: list[str] = []
    for word in _WORD.findall(text):
        word = word.lower()
        if word not in words:
            words.append(word)
    if len(words) <= first + last:
        return words
    return words[:first] + words[-last:]


# The deepest elements whose rendered text (innerText: what is laid out, not display:none) holds
# every word, with their box, visibility and font size.
BLOCKS_WITH_WORDS_JS = """
(words) => {
  const norm = (s) => (s || '').replace(/[\\s\\u00a0\\u202f]+/g, ' ').toLowerCase();
  const hits = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (['SCRIPT', 'STYLE', 'HEAD', 'TITLE'].includes(el.tagName)) continue;
    const text = norm(el.innerText);
    if (words.every((w) => text.includes(w))) hits.push(el);
  }
  const deepest = hits.filter((el) => !hits.some((other) => other !== el && el.contains(other)));
  return deepest.map((el) => {
    const r = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    return {
      tag: el.tagName, left: r.left, right: r.right, width: r.width, height: r.height,
      visible: el.checkVisibility({opacityProperty: true, visibilityProperty: true}),
      fontSize: parseFloat(style.fontSize), text: norm(el.innerText).slice(0, 120),
    };
  });
}
"""

LAYOUT_JS = """
() => ({
  innerWidth: window.innerWidth,
  scrollWidth: document.scrollingElement.scrollWidth,
  bodyText: (document.body.innerText || '').replace(/[\\s\\u00a0\\u202f]+/g, ' '),
})
"""

# Elements holding `text` anywhere in the DOM (textContent includes hidden content).
ELEMENTS_HOLDING_TEXT_JS = """
(text) => {
  const norm = (s) => (s || '').replace(/[\\s\\u00a0\\u202f]+/g, ' ').trim();
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (norm(el.textContent) === norm(text)) {
      const r = el.getBoundingClientRect();
      out.push({tag: el.tagName, width: r.width, height: r.height,
                visible: el.checkVisibility({opacityProperty: true, visibilityProperty: true})});
    }
  }
  return out;
}
"""

LINKS_JS = """
(href) => Array.from(document.querySelectorAll('a')).filter((a) => a.href === href).map((a) => {
  const r = a.getBoundingClientRect();
  return {text: a.innerText.trim(), width: r.width, height: r.height, right: r.right,
          visible: a.checkVisibility({opacityProperty: true, visibilityProperty: true}),
          fontSize: parseFloat(getComputedStyle(a).fontSize)};
})
"""


def visible_blocks(frame, words: list[str]) -> list[dict]:
    """Visible, non-empty blocks (in `frame`: a Page or Frame) showing all `words`."""
    blocks = frame.evaluate(BLOCKS_WITH_WORDS_JS, words)
    return [b for b in blocks if b["visible"] and b["width"] > 0 and b["height"] > 0]


# WCAG 2.x contrast of EVERY visible text in the page, from the colours Chromium computed: for each
# element holding a non-blank text node, its `color` over the background actually behind it (the
# ancestors' background colours composited, alpha included, down to the canvas: white, or Chromium's
# dark canvas rgb(18,18,18) when the page's used scheme is dark); SVG text (the Reports charts) by its
# `fill`, which is what paints it. Large text: ≥ 24 px, or ≥ 18.66 px
# bold (WCAG's 18 pt / 14 pt bold). Off-screen or aria-hidden elements (the honeypot) are not text a
# reader sees. Background images are not considered (the pages and emails use none behind text).
CONTRAST_JS = """
() => {
  const parse = (value) => {
    const m = value.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, bottom) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat([1]);
  };
  const lum = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const darkCanvas = getComputedStyle(document.documentElement).colorScheme.includes('dark')
                     && matchMedia('(prefers-color-scheme: dark)').matches;
  const canvas = darkCanvas ? [18, 18, 18, 1] : [255, 255, 255, 1];
  const background = (el) => {
    const layers = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const c = parse(getComputedStyle(node).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let result = canvas;
    for (const layer of layers.reverse()) result = over(layer, result);
    return result;
  };
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || seen.has(el) || !node.textContent.trim()) continue;
    seen.add(el);
    if (['SCRIPT', 'STYLE', 'TITLE', 'NOSCRIPT'].includes(el.tagName)) continue;
    if (!el.checkVisibility({opacityProperty: true, visibilityProperty: true})) continue;
    if (el.closest('[aria-hidden="true"]')) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || r.right <= 0 || r.bottom <= 0) continue;
    const style = getComputedStyle(el);
    const fg = parse(el instanceof SVGElement ? style.fill : style.color);  // SVG text is painted by `fill`
    const bg = background(el);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    out.push({tag: el.tagName, text: node.textContent.trim().slice(0, 60), fg: style.color,
              bg: `rgb(${bg.slice(0, 3).map(Math.round).join(', ')})`, ratio: ratio(over(fg, bg), bg),
              large, bgLuminance: lum(bg)});
  }
  return out;
}
"""


def contrast_failures(frame) -> tuple[list[dict], list[dict]]:
    """(every visible text's measurement, those under WCAG AA: 4.5:1, or 3:1 for large text)."""
    texts = frame.evaluate(CONTRAST_JS)
    return texts, [t for t in texts if t["ratio"] < (3.0 if t["large"] else 4.5)]
