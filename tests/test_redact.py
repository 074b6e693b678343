"""Credentials never reach logs, messages or the ledger: `strip_credentials` against urllib's own parser
on generated URLs, and the logging filter."""

from __future__ import annotations

import logging
import random
import string
from urllib.parse import quote, urlsplit

from mailer.redact import RedactingFilter, strip_credentials

SAFE = string.ascii_letters + string.digits + "-._~!$&'()*+,;="


def _random_url(rng: random.Random) -> tuple[str, str, str | None]:
    scheme = rng.choice(["http", "https", "postgresql+psycopg", "smtp", "imap", "redis"])
    user = "".join(rng.choice(SAFE) for _ in range(rng.randint(1, 12)))
    password = None if rng.random() < 0.3 else quote("".join(rng.choice(SAFE + "%:@/ ") for _ in range(rng.randint(1, 16))), safe="")
    host = rng.choice(["db.example.org", "127.0.0.1", "[::1]", "xn--mdiathque-exemple-8nbd.fr", "localhost"])
    port = rng.choice(["", f":{rng.randint(1, 65535)}"])
    path = rng.choice(["", "/", "/v3/mail/send", "/mailer?sslmode=require"])
    userinfo = user if password is None else f"{user}:{password}"
    return f"{scheme}://{userinfo}@{host}{port}{path}", user, password


def test_no_password_survives_and_the_rest_of_the_url_does():
    rng = random.Random(20261126)
    for _ in range(3000):
        url, user, password = _random_url(rng)
        parsed = urlsplit(url)
        assert parsed.password == password  # the generator is right about what the password is
        text = f"cannot reach {url}: connection refused"
        cleaned = strip_credentials(text)
        if password is not None:
            assert f":{password}@" not in cleaned, (url, cleaned)
            assert f"{parsed.scheme}://{user}:***@" in cleaned
        else:
            assert f"{parsed.scheme}://***@" in cleaned  # a lone user part is often a token
        assert cleaned.endswith(f"{parsed.netloc.rpartition('@')[2]}{url.split(parsed.netloc, 1)[1]}: connection refused")


def test_tokens_and_keys_are_masked_and_plain_text_is_untouched():
    assert strip_credentials("Authorization: Bearer SG.abcdef123.ghijkl456") == "Authorization: Bearer ***"
    assert strip_credentials("key SG.abcdefgh.ijklmnop in a message") == "key SG.*** in a message"
    for text in ("lettre@example.org wrote to a@b.fr", "https://example.org/u/abc", "sent 5 now", ""):
        assert strip_credentials(text) == text


def test_the_logging_filter_rewrites_records(caplog):
    logger = logging.getLogger("mailer.test-redact")
    handler_filter = RedactingFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.INFO, logger="mailer.test-redact"):
            logger.info("connecting to %s", "postgresql://mailer:hunter2@db.example.org/mailer")
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert "hunter2" not in caplog.text and "postgresql://mailer:***@db.example.org/mailer" in caplog.text
