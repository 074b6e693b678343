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
