"""Keeping credentials and personal data out of what people read: logs, error messages, the ledger.

- `strip_credentials(text)`: `scheme://user:password@host` → `scheme://user:***@host` (a user part
  without a password, often a token, becomes `***`), plus `Bearer …` tokens and SendGrid API keys
  (`SG.xxx.yyy`), wherever they appear in the text.
- `quiet_http_loggers()`: third-party HTTP client loggers stay at WARNING even under `mailer -v`;
  `python_http_client` (under `sendgrid`) logs the `Authorization` header and whole request payloads
  (every address and personal link) at DEBUG.
- `RedactingFilter`: a logging filter (installed on the CLI's handler) that runs every record's
  message through `strip_credentials`, a second line of defence for whatever a library logs.
"""

from __future__ import annotations

import logging
import re

# scheme://userinfo@ — userinfo without "/", "@" or whitespace (RFC 3986 3.2.1)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/@:]*)(?P<password>:[^\s/@]*)?@")
_BEARER = re.compile(r"(?P<kind>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=\-]{6,}", re.IGNORECASE)
_SENDGRID_KEY = re.compile(r"\bSG\.[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{6,}")

HTTP_LOGGERS = ("python_http_client", "sendgrid", "urllib3", "httpx", "httpcore", "hpack", "requests")


def _userinfo(match: re.Match) -> str:
    if match.group("password") is not None:
        return f"{match.group('scheme')}{match.group('user')}:***@"
    return f"{match.group('scheme')}***@"


def strip_credentials(text: str) -> str:
    """`text` without URL passwords, bearer tokens or SendGrid keys (cheap when there is nothing to strip)."""
    if not text:
        return text
    if "@" in text and "://" in text:
        text = _URL_USERINFO.sub(_userinfo, text)
    text = _BEARER.sub(lambda m: f"{m.group('kind')}***", text)
    if "SG." in text:
        text = _SENDGRID_KEY.sub("SG.***", text)
    return text


def quiet_http_loggers(level: int = logging.WARNING) -> None:
    """Keep third-party HTTP loggers at `level` or above, whatever the root logger's level."""
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < level:
            logger.setLevel(level)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message through `strip_credentials` (install it on handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem, not ours
            return True
        cleaned = strip_credentials(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
