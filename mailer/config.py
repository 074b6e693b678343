"""One `Settings` object: `mailer.toml` in the working folder, overlaid by `MAILER_*` env vars.

Env wins over the file; relative paths resolve from the folder holding `mailer.toml` (the working
folder when there is none). Validation that depends on what the caller is about to do (sending
needs a From address, SMTP needs a host…) lives in `Settings.require_for_send`, so a send never
starts half-configured while `mailer build` still works on a bare checkout.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

BACKENDS = ("outbox", "smtp", "sendgrid")
SMTP_TLS_MODES = ("starttls", "ssl", "none")
LANGUAGES = ("fr", "en")

# env var -> Settings attribute. Everything not listed here is ignored.
ENV_VARS: dict[str, str] = {
    "MAILER_NAME": "name",
    "MAILER_LANGUAGE": "language",
    "MAILER_DATABASE_URL": "database_url",
    "MAILER_ISSUES_DIR": "issues_dir",
    "MAILER_TEMPLATES_DIR": "templates_dir",
    "MAILER_BACKEND": "backend",
    "MAILER_OUTBOX_DIR": "outbox_dir",
    "MAILER_FROM": "from_address",
    "MAILER_REPLY_TO": "reply_to",
    "MAILER_BASE_URL": "base_url",
    "MAILER_SECRET_KEY": "secret_key",
    "MAILER_POSTAL_ADDRESS": "postal_address",
    "MAILER_RATE_LIMIT": "rate_limit",
    "MAILER_TIMEZONE": "timezone",
    "MAILER_LIST_ID": "list_id",
    "MAILER_UNSUBSCRIBE_MAILTO": "unsubscribe_mailto",
    "SENDGRID_API_KEY": "sendgrid_api_key",
    "MAILER_SENDGRID_API_URL": "sendgrid_api_url",
    "MAILER_SENDGRID_SANDBOX": "sendgrid_sandbox",
    "MAILER_SENDGRID_WEBHOOK_PUBLIC_KEY": "sendgrid_webhook_public_key",
    "MAILER_WEBHOOK_MAX_AGE": "webhook_max_age",
    "MAILER_SMTP_HOST": "smtp_host",
    "MAILER_SMTP_PORT": "smtp_port",
    "MAILER_SMTP_USERNAME": "smtp_username",
    "MAILER_SMTP_PASSWORD": "smtp_password",
    "MAILER_SMTP_TLS": "smtp_tls",
    "MAILER_SMTP_POOL": "smtp_pool",
    "MAILER_BATCH_SIZE": "batch_size",
    "MAILER_PAUSE_AFTER": "pause_after",
    "MAILER_SMTP_TIMEOUT": "smtp_timeout",
    "MAILER_SENDGRID_TIMEOUT": "sendgrid_timeout",
    "MAILER_SCHEDULE_CRON": "schedule_cron",
    "MAILER_SCHEDULE_GRACE": "schedule_grace",
    "MAILER_SCHEDULE_TIMEZONE": "schedule_timezone",
    "MAILER_SCHEDULE_RESCAN": "schedule_rescan",
}

# Keys of the optional [schedule] table in mailer.toml.
SCHEDULE_KEYS = {"cron": "schedule_cron", "timezone": "schedule_timezone", "grace": "schedule_grace",
                 "rescan": "schedule_rescan"}


@dataclass(frozen=True)
class Settings:
    """Everything configurable. Paths are absolute once loaded."""

    root: Path = field(default_factory=Path.cwd)
    name: str = "Newsletter"
    language: str = "fr"
    database_url: str = ""
    issues_dir: Path = Path("issues")
    templates_dir: Path = Path("templates")
    backend: str = "outbox"
    outbox_dir: Path = Path("outbox")
    from_address: str = ""
    reply_to: str = ""
    base_url: str = "http://localhost:8000"
    secret_key: str = ""
    postal_address: str = ""
    rate_limit: float = 0.0  # messages per second across workers; 0 = unlimited
    timezone: str = "UTC"
    list_id: str = ""
    unsubscribe_mailto: str = ""
    sendgrid_api_key: str = ""
    sendgrid_api_url: str = "https://api.sendgrid.com"
    sendgrid_sandbox: bool = False
    sendgrid_webhook_public_key: str = ""
    webhook_max_age: int = 600
    smtp_host: str = ""
    smtp_port: int = 0
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_tls: str = "starttls"
    smtp_pool: int = 4
    batch_size: int = 0  # deliveries claimed at once; 0 = the backend's own batch (SendGrid 1000)
    pause_after: float = 300.0  # seconds a whole-path failure (outage, full disk) is retried before the send pauses
    smtp_timeout: float = 60.0  # seconds, in total, per SMTP message and per connection attempt
    sendgrid_timeout: float = 30.0  # seconds, in total, per SendGrid request
    schedule_cron: str = ""
    schedule_timezone: str = ""
    schedule_grace: int = 6 * 3600
    schedule_rescan: float = 30.0  # seconds between scans of the issue folders by `schedule run`

    # ----- derived values -------------------------------------------------------------------
    # cached: read per recipient on hot paths (a frozen dataclass without slots allows it)
    @cached_property
    def sender_email(self) -> str:
        return parseaddr(self.from_address)[1]

    @cached_property
    def sender_name(self) -> str:
        return parseaddr(self.from_address)[0] or self.name

    @cached_property
    def sender_domain(self) -> str:
        address = self.sender_email
        return address.rpartition("@")[2] if "@" in address else "localhost"

    @cached_property
    def effective_list_id(self) -> str:
        """RFC 2919 List-Id: `Name <slug.domain>`."""
        if self.list_id:
            return self.list_id
        slug = "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-") or "newsletter"
        return f"{self.name} <{slug}.{self.sender_domain}>"

    @cached_property
    def effective_unsubscribe_mailto(self) -> str:
        if self.unsubscribe_mailto:
            return self.unsubscribe_mailto
        return f"unsubscribe@{self.sender_domain}"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def schedule_zone(self) -> ZoneInfo:
        return ZoneInfo(self.schedule_timezone or self.timezone)

    # ----- checks ---------------------------------------------------------------------------
    def require_for_send(self) -> None:
        """Raise ConfigError naming every missing or invalid setting a real send needs."""
        problems: list[str] = []
        if not self.sender_email or "@" not in self.sender_email:
            problems.append("MAILER_FROM (e.g. 'Le Fil <lettre@example.org>') is missing or invalid")
        if not self.base_url.startswith(("http://", "https://")):
            problems.append("MAILER_BASE_URL must start with http:// or https://")
        if not self.postal_address:
            problems.append("MAILER_POSTAL_ADDRESS is missing (the law wants it in every newsletter footer)")
        if self.backend == "smtp" and not self.smtp_host:
            problems.append("MAILER_SMTP_HOST is missing for the smtp backend")
        if self.backend == "sendgrid" and not self.sendgrid_api_key:
            problems.append("SENDGRID_API_KEY is missing for the sendgrid backend")
        if self.backend != "outbox" and not self.secret_key:
            problems.append(f"MAILER_SECRET_KEY is missing (required with the {self.backend} backend)")
        if problems:
            raise ConfigError("; ".join(problems))


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a raw TOML/env value into the type of the Settings field `name`."""
    default = getattr(Settings, name, None) if name != "root" else None
    kind = type(default) if default is not None else str
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if name.endswith("_dir"):
            return Path(str(value))
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} has an invalid value {value!r}") from None


def load_settings(root: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read `root/mailer.toml` (optional), overlay env vars and `overrides`, resolve paths."""
    root = (root or Path.cwd()).resolve()
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)} - {"root"}

    toml_path = root / "mailer.toml"
    if toml_path.is_file():
        try:
            data = tomllib.loads(toml_path.read_text(encoding="utf-8-sig"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: {exc}") from None
        for key, value in data.items():
            if key == "schedule" and isinstance(value, dict):
                for sub_key, sub_value in value.items():
                    if sub_key not in SCHEDULE_KEYS:
                        raise ConfigError(f"{toml_path}: unknown setting [schedule].{sub_key}")
                    attr = SCHEDULE_KEYS[sub_key]
                    values[attr] = _coerce(attr, sub_value, str(toml_path))
                continue
            attr = {"from": "from_address", "cron": "schedule_cron"}.get(key, key)
            if attr not in known:
                raise ConfigError(f"{toml_path}: unknown setting {key!r}")
            values[attr] = _coerce(attr, value, str(toml_path))

    for var, attr in ENV_VARS.items():
        if var in env and env[var] != "":
            values[attr] = _coerce(attr, env[var], f"environment variable {var}")
    values.update(overrides)

    settings = Settings(root=root, **values)
    if not settings.database_url:
        settings = replace(settings, database_url=f"sqlite:///{root / 'subscribers' / 'subscribers.db'}")
    settings = replace(
        settings,
        issues_dir=_resolve(root, settings.issues_dir),
        templates_dir=_resolve(root, settings.templates_dir),
        outbox_dir=_resolve(root, settings.outbox_dir),
        database_url=_resolve_sqlite_url(root, settings.database_url),
        base_url=settings.base_url.rstrip("/"),
    )
    _validate(settings)
    return settings


def _resolve(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else (root / path)


def _resolve_sqlite_url(root: Path, url: str) -> str:
    """`sqlite:///relative.db` resolves from the config folder, like every other path."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(root / url[len(prefix):])
    return url


def _validate(settings: Settings) -> None:
    if settings.backend not in BACKENDS:
        raise ConfigError(f"MAILER_BACKEND must be one of {', '.join(BACKENDS)}, not {settings.backend!r}")
    if settings.language not in LANGUAGES:
        raise ConfigError(f"MAILER_LANGUAGE must be one of {', '.join(LANGUAGES)}, not {settings.language!r}")
    if settings.smtp_tls not in SMTP_TLS_MODES:
        raise ConfigError(f"MAILER_SMTP_TLS must be one of {', '.join(SMTP_TLS_MODES)}, not {settings.smtp_tls!r}")
    for label, zone in (("MAILER_TIMEZONE", settings.timezone), ("[schedule].timezone", settings.schedule_timezone)):
        if zone:
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(f"{label}: unknown time zone {zone!r}") from None
    for label, value in (("MAILER_FROM", settings.from_address), ("MAILER_REPLY_TO", settings.reply_to),
                         ("MAILER_NAME", settings.name), ("MAILER_LIST_ID", settings.list_id)):
        if "\r" in value or "\n" in value:
            raise ConfigError(f"{label} contains a line break; header values must be one line")
    if settings.rate_limit < 0:
        raise ConfigError("MAILER_RATE_LIMIT must be >= 0 (messages per second, 0 = unlimited)")
    if settings.schedule_grace < 1:
        raise ConfigError("[schedule].grace (MAILER_SCHEDULE_GRACE) must be at least 1 second")
    if settings.schedule_rescan <= 0:
        raise ConfigError("[schedule].rescan (MAILER_SCHEDULE_RESCAN) must be a positive number of seconds")
    if settings.batch_size < 0 or settings.batch_size > 1000:
        raise ConfigError("MAILER_BATCH_SIZE must be between 1 and 1000 (0: the backend's own)")
    for label, seconds in (("MAILER_PAUSE_AFTER", settings.pause_after), ("MAILER_SMTP_TIMEOUT", settings.smtp_timeout),
                           ("MAILER_SENDGRID_TIMEOUT", settings.sendgrid_timeout)):
        if not seconds > 0:
            raise ConfigError(f"{label} must be a positive number of seconds, not {seconds!r}")


def secret_key_for(settings: Settings) -> bytes:
    """The HMAC key for tokens.

    With the outbox backend (local use, demos) a missing key is generated once and kept in
    `subscribers/.secret_key` so links stay valid across runs; real backends demand an explicit key
    (checked by `require_for_send`).
    """
    if settings.secret_key:
        return settings.secret_key.encode("utf-8")
    key_file = settings.root / "subscribers" / ".secret_key"
    if key_file.is_file():
        return key_file.read_text(encoding="ascii").strip().encode("ascii")
    if settings.backend != "outbox":
        raise ConfigError(f"MAILER_SECRET_KEY is missing (required with the {settings.backend} backend)")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    key_file.write_text(key + "\n", encoding="ascii")
    key_file.chmod(0o600)
    return key.encode("ascii")
