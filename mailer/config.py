"""One `Settings` object: `mailer.toml` in the working folder, overlaid by `MAILER_*` env vars.

Env wins over the file; relative paths resolve from the folder holding `mailer.toml` (the working
folder when there is none). The general settings are `Settings`' fields; each provider declares its
own (`registry.Setting`: SMTP host, SendGrid key…) in its module, and they are read, typed and checked
here exactly like the general ones, then reached the same way (`settings.smtp_host`).
Validation that depends on what the caller is about to do (sending needs a From address…) lives in
`Settings.require_for_send` (the provider's own needs in its `Provider.problems`, joined by
`providers.require_ready`), so a send never starts half-configured while `mailer build` still works
on a bare checkout.

Every value is checked at load, whatever the command: no setting may carry a control character or a
line break (a header-injection vector; a trailing CR from a Windows-edited file), and anything that
reaches a header or URL is parsed — addresses by email-validator, domains converted to IDNA, the base
URL split and rebuilt in ASCII. Errors name the setting (and mailer.toml's line) in one line.
The module holds the general settings AND every check of their values, and reads and checks the
providers' settings by their own declared rules (one reader, so that no new setting can reach a
header unchecked: the control-character rule applies to a provider's settings too), hence its length. The secret-key rule and the public-URL rule are
product policy, not a library's job: `secret_key_problem` is about machine-made keys (a password
strength estimator such as zxcvbn models human passwords and caps the length it reads), and
`base_url_problem` about what a recipient's mail client can reach.

Longer than ~400 lines because it is that one owner: every general setting and every check of its
value, and the one reader of every provider's.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import email_validator
from slugify import slugify

from .addresses import Mailbox, ascii_domain, header_address, parse_mailbox
from .errors import ConfigError, InvalidAddress
from .headers import HARD_LINE
from .links import unsubscribe_prefix
from .registry import Provider, provider_named, provider_settings
from .tokens import MAX_TOKEN_LENGTH

LANGUAGES = ("fr", "en")

# env var -> Settings attribute, for the general settings; each provider's own are in its
# `Provider.settings` (`ENV_VARS` joins both). Everything not listed is ignored.
GENERAL_ENV_VARS: dict[str, str] = {
    "MAILER_NAME": "name",
    "MAILER_LANGUAGE": "language",
    "MAILER_DATABASE_URL": "database_url",
    "MAILER_ISSUES_DIR": "issues_dir",
    "MAILER_TEMPLATES_DIR": "templates_dir",
    "MAILER_BACKEND": "backend",
    "MAILER_FROM": "from_address",
    "MAILER_REPLY_TO": "reply_to",
    "MAILER_BASE_URL": "base_url",
    "MAILER_SECRET_KEY": "secret_key",
    "MAILER_POSTAL_ADDRESS": "postal_address",
    "MAILER_RATE_LIMIT": "rate_limit",
    "MAILER_TIMEZONE": "timezone",
    "MAILER_LIST_ID": "list_id",
    "MAILER_UNSUBSCRIBE_MAILTO": "unsubscribe_mailto",
    "MAILER_WEBHOOK_MAX_AGE": "webhook_max_age",
    "MAILER_BATCH_SIZE": "batch_size",
    "MAILER_SEND_PROCESSES": "send_processes",
    "MAILER_PAUSE_AFTER": "pause_after",
    "MAILER_SMTP_COMMIT_EVERY": "smtp_commit_every",
    "MAILER_SMTP_COMMIT_MS": "smtp_commit_ms",
    "MAILER_SCHEDULE_CRON": "schedule_cron",
    "MAILER_SCHEDULE_GRACE": "schedule_grace",
    "MAILER_SCHEDULE_TIMEZONE": "schedule_timezone",
    "MAILER_SCHEDULE_RESCAN": "schedule_rescan",
    "MAILER_ALLOW_PRIVATE_BASE_URL": "allow_private_base_url",
    "MAILER_BOUNCE_ADDRESS": "bounce_address",
    "MAILER_IMAP_PASSWORD": "imap_password",
    "MAILER_BOUNCE_MAILBOX": "bounce_mailbox",
    "MAILER_BOUNCE_POLL": "bounce_poll",
    "MAILER_SOFT_BOUNCE_LIMIT": "soft_bounce_limit",
    "MAILER_SOFT_BOUNCE_SENDS": "soft_bounce_sends",
    "MAILER_DKIM_PRIVATE_KEY": "dkim_private_key",
    "MAILER_DKIM_SELECTOR": "dkim_selector",
    "MAILER_DKIM_DOMAIN": "dkim_domain",
    "MAILER_DNS_NAMESERVER": "dns_nameserver",
    "MAILER_TRACK_CLICKS": "track_clicks",
    "MAILER_TRACK_OPENS": "track_opens",
}


class _SettingNames(Mapping[str, str]):
    """A live view joining the general settings with every registered provider's: `ENV_VARS` (env var
    → attribute) and `ENV_NAMES` (attribute → env var). Read when used, never at import (providers
    register after this module is loaded)."""

    def __init__(self, by_env: bool) -> None:
        self.by_env = by_env

    def _pairs(self) -> dict[str, str]:
        pairs = {**GENERAL_ENV_VARS, **{s.env: s.name for s in provider_settings().values()}}
        return pairs if self.by_env else {attr: var for var, attr in pairs.items()}

    def __getitem__(self, key: str) -> str:
        return self._pairs()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs())

    def __len__(self) -> int:
        return len(self._pairs())

    def items(self):  # noqa: ANN201 - Mapping's; one join for the whole walk, not one per key
        return self._pairs().items()


ENV_VARS: Mapping[str, str] = _SettingNames(by_env=True)
ENV_NAMES: Mapping[str, str] = _SettingNames(by_env=False)

# Keys of the optional [schedule] table in mailer.toml.
SCHEDULE_KEYS = {"cron": "schedule_cron", "timezone": "schedule_timezone", "grace": "schedule_grace",
                 "rescan": "schedule_rescan"}


@dataclass(frozen=True, init=False)
class Settings:
    """Everything configurable. Paths are absolute once loaded.

    The fields are the general settings; every registered provider's settings are attributes too
    (`settings.smtp_host`), kept in `provider_values` (name → value, each provider's default when
    not given). `Settings(**values)` and `dataclasses.replace(settings, **values)` take both kinds;
    an unknown name is a TypeError.
    """

    root: Path = field(default_factory=Path.cwd)
    name: str = "Newsletter"
    language: str = "fr"
    database_url: str = ""
    issues_dir: Path = Path("issues")
    templates_dir: Path = Path("templates")
    backend: str = "outbox"
    from_address: str = ""
    reply_to: str = ""
    base_url: str = "http://localhost:8000"
    secret_key: str = ""
    postal_address: str = ""
    rate_limit: float = 0.0  # messages per second across workers; 0 = unlimited
    timezone: str = "UTC"
    list_id: str = ""
    unsubscribe_mailto: str = ""
    webhook_max_age: int = 600
    batch_size: int = 0  # deliveries claimed at once; 0 = the backend's own batch (SendGrid 1000)
    send_processes: int = 0  # processes sending one issue; 0 = automatic (sending/inflight.sending_processes)
    pause_after: float = 300.0  # seconds a whole-path failure (outage, full disk) is retried before the send pauses
    # dispatch's group commit for providers that hand over message by message (`Backend.ledger_step`,
    # SMTP, hence the names): accepted messages recorded in one ledger transaction, at most…
    smtp_commit_every: int = 10
    smtp_commit_ms: float = 20.0  # …or once the oldest unrecorded one is this many milliseconds old
    schedule_cron: str = ""
    schedule_timezone: str = ""
    schedule_grace: int = 6 * 3600
    schedule_rescan: float = 30.0  # seconds between scans of the issue folders by `schedule run`
    allow_private_base_url: bool = False  # a deliberate intranet setup: real backends accept any base URL
    track_clicks: bool = False  # links rewritten to BASE/c/TOKEN (an issue.toml `track_clicks` wins)
    track_opens: bool = False  # an open pixel BASE/o/TOKEN in the HTML part (unreliable: Apple Mail Privacy Protection)
    bounce_address: str = ""  # VERP envelope sender bounces@domain (providers/bounces/verp.py)
    imap_password: str = ""
    bounce_mailbox: str = ""  # what `schedule run` polls: Maildir, mbox or imap:// URL
    bounce_poll: float = 300.0  # seconds between two polls of bounce_mailbox
    soft_bounce_limit: int = 3  # soft bounces …
    soft_bounce_sends: int = 5  # … over a subscriber's last this many sends make them `bounced`
    dkim_private_key: str = ""  # PEM file (relative: from the config folder); checked at load by dkim_signing
    dkim_selector: str = ""
    dkim_domain: str = ""  # default: the From domain
    dns_nameserver: str = ""  # HOST[:PORT] for `mailer doctor`; default: the system's resolver
    # every registered provider's own settings, (name, value) sorted by name (a tuple: hashable)
    provider_values: tuple[tuple[str, Any], ...] = field(default=(), repr=False)

    def __init__(self, **values: Any) -> None:
        own = dict(values.pop("provider_values", ()))
        for spec in fields(self):
            if spec.name == "provider_values":
                continue
            if spec.name in values:
                value = values.pop(spec.name)
            else:
                value = spec.default if spec.default is not MISSING else spec.default_factory()  # type: ignore[misc]
            object.__setattr__(self, spec.name, value)
        declared = provider_settings()
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise TypeError(f"Settings has no setting {', '.join(unknown)}")
        merged = {name: setting.default for name, setting in declared.items()}
        merged.update(own)
        merged.update(values)
        object.__setattr__(self, "provider_values", tuple(sorted(merged.items())))
        for name, value in merged.items():  # plain attributes: read like the fields, at the same speed
            object.__setattr__(self, name, value)

    @cached_property
    def provider(self) -> "Provider":
        """The provider MAILER_BACKEND names (`registry.Provider`: its capabilities)."""
        return provider_named(self.backend)

    # ----- derived values -------------------------------------------------------------------
    # cached: read per recipient on hot paths (a frozen dataclass without slots allows it)
    @cached_property
    def sender(self) -> Mailbox | None:
        """MAILER_FROM parsed (validated at load); None when unset."""
        return _mailbox(self.from_address, "MAILER_FROM")

    @cached_property
    def sender_email(self) -> str:
        """The From address in ASCII (IDNA domain); '' when MAILER_FROM is unset."""
        return self.sender.address if self.sender else ""

    @cached_property
    def sender_name(self) -> str:
        return (self.sender.display_name if self.sender else "") or self.name

    @cached_property
    def sender_domain(self) -> str:
        """The From domain as an IDNA A-label (Message-ID, List-Id, default unsubscribe mailbox)."""
        address = self.sender_email
        return address.rpartition("@")[2] if "@" in address else "localhost"

    @cached_property
    def reply_to_mailbox(self) -> Mailbox | None:
        """MAILER_REPLY_TO parsed (one `Name <address>` or bare address); None when unset."""
        return _mailbox(self.reply_to, "MAILER_REPLY_TO")

    @cached_property
    def list_id_phrase(self) -> str:
        """The List-Id phrase (RFC 2919): MAILER_LIST_ID's own phrase, else the newsletter's name."""
        phrase, _ = parse_list_id(self.list_id) if self.list_id else ("", "")
        return phrase or " ".join(self.name.split())

    @cached_property
    def list_id_value(self) -> str:
        """The List-Id identifier: an ASCII dot-atom (RFC 2919 §2), without the angle brackets.

        Configured (MAILER_LIST_ID), or derived: the name transliterated to ASCII by python-slugify
        (`Les Actualités` → `les-actualites`) and the sender's IDNA domain.
        """
        if self.list_id:
            return parse_list_id(self.list_id)[1]
        domain = self.sender_domain
        room = max(1, min(63, 255 - len(domain) - 1))
        label = slugify(self.name, max_length=room, word_boundary=True, save_order=True) or "newsletter"
        return f"{label}.{domain}"

    @cached_property
    def effective_list_id(self) -> str:
        """`Phrase <id>` as a person reads it (unencoded; `message.list_id_header` encodes it)."""
        phrase = self.list_id_phrase
        return f"{phrase} <{self.list_id_value}>" if phrase else f"<{self.list_id_value}>"

    @cached_property
    def effective_unsubscribe_mailto(self) -> str:
        """The unsubscribe mailbox in ASCII: MAILER_UNSUBSCRIBE_MAILTO or unsubscribe@<sender domain>."""
        if self.unsubscribe_mailto:
            return header_address(_strip_mailto(self.unsubscribe_mailto))
        return f"unsubscribe@{self.sender_domain}"

    @cached_property
    def unsubscribe_mailto_url(self) -> str:
        """`mailto:ADDRESS?subject=unsubscribe` for List-Unsubscribe (RFC 2369), the address
        percent-encoded where RFC 6068 §2 wants it (`?`, `%`, `#`, `&`, `=`, `/`…)."""
        address = quote(self.effective_unsubscribe_mailto, safe="-._~!$'()*+,;:@")
        return f"mailto:{address}?subject=unsubscribe"

    @cached_property
    def base_url_problem(self) -> str | None:
        """Why MAILER_BASE_URL cannot serve recipients (not https, or not a public host), or None."""
        return base_url_problem(self.base_url)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def schedule_zone(self) -> ZoneInfo:
        return ZoneInfo(self.schedule_timezone or self.timezone)

    # ----- checks ---------------------------------------------------------------------------
    def require_for_send(self, backend_problems: Sequence[str] = ()) -> None:
        """Raise ConfigError naming every missing or invalid setting a real send needs.

        Called by every way a message leaves (send, send --test, worker, scheduler). With a backend
        that reaches real people (`Provider.delivers`: smtp, sendgrid) this also demands a strong
        MAILER_SECRET_KEY (`secret_key_problem`)
        and an https base URL on a public host (`base_url_problem`) unless
        MAILER_ALLOW_PRIVATE_BASE_URL is set.
        """
        problems: list[str] = []
        if not self.sender_email:
            problems.append("MAILER_FROM (e.g. 'Le Fil <lettre@example.org>') is missing")
        if not self.postal_address:
            problems.append("MAILER_POSTAL_ADDRESS is missing (the law wants it in every newsletter footer)")
        problems.extend(backend_problems)  # the backend's own settings: `providers.require_ready` passes them
        if self.provider.delivers:
            key_problem = secret_key_problem(self.secret_key)
            if key_problem:
                problems.append(f"{key_problem} (required with the {self.backend} backend)")
            if self.base_url_problem and not self.allow_private_base_url:
                problems.append(f"MAILER_BASE_URL {self.base_url} {self.base_url_problem}; the {self.backend} backend "
                                f"sends to real people (MAILER_ALLOW_PRIVATE_BASE_URL=1 for a deliberate intranet setup)")
        if problems:
            raise ConfigError("; ".join(problems))


def general_setting_names() -> tuple[str, ...]:
    """The general settings' names (Settings' fields), without the providers'."""
    return tuple(spec.name for spec in fields(Settings) if spec.name not in ("root", "provider_values"))


def setting_default(name: str) -> Any:
    """The default of the setting `name` (general or a provider's); KeyError for an unknown name."""
    for spec in fields(Settings):
        if spec.name == name and name not in ("root", "provider_values"):
            return spec.default if spec.default is not MISSING else spec.default_factory()  # type: ignore[misc]
    return provider_settings()[name].default


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a raw TOML/env value into the type of the setting `name` (its default's)."""
    default = setting_default(name)
    kind = Path if isinstance(default, Path) else type(default) if default is not None else str
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
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)  # mailer.toml's true or 2.5 is no count
            return int(value)
        if kind is float:
            return float(value)
        if kind is Path:
            return Path(str(value))
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} has an invalid value {value!r}") from None


def load_settings(root: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read `root/mailer.toml` (optional), overlay env vars and `overrides`, resolve paths, check values.

    Raises ConfigError (one line naming the setting, and mailer.toml's line when it came from there)
    for a malformed file, an unknown key, or any value `_validate` refuses.
    """
    root = (root or Path.cwd()).resolve()
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}  # attribute -> where its value came from, for error messages
    known = {*general_setting_names(), *provider_settings()}

    toml_path = root / "mailer.toml"
    if toml_path.is_file():
        try:
            text = toml_path.read_text(encoding="utf-8-sig")
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: {exc}") from None
        lines = _toml_key_lines(text)
        for key, value in data.items():
            if key == "schedule" and isinstance(value, dict):
                for sub_key, sub_value in value.items():
                    if sub_key not in SCHEDULE_KEYS:
                        raise ConfigError(f"{toml_path}: unknown setting [schedule].{sub_key}")
                    attr = SCHEDULE_KEYS[sub_key]
                    origins[attr] = f"{toml_path}:{lines.get(('schedule', sub_key), '?')}: [schedule].{sub_key}"
                    values[attr] = _coerce(attr, sub_value, origins[attr])
                continue
            attr = {"from": "from_address", "cron": "schedule_cron"}.get(key, key)
            if attr not in known:
                raise ConfigError(f"{toml_path}: unknown setting {key!r}")
            origins[attr] = f"{toml_path}:{lines.get(('', key), '?')}: {key}"
            values[attr] = _coerce(attr, value, origins[attr])

    for var, attr in ENV_VARS.items():
        if var in env and env[var] != "":
            origins[attr] = var
            values[attr] = _coerce(attr, env[var], f"environment variable {var}")
    for attr in overrides:
        origins.pop(attr, None)
    values.update(overrides)

    def where(attr: str) -> str:
        return origins.get(attr) or ENV_NAMES.get(attr, attr)

    _check_characters(values, where)
    settings = Settings(root=root, **values)
    if not settings.database_url:
        settings = replace(settings, database_url=f"sqlite:///{root / 'subscribers' / 'subscribers.db'}")
    paths = {name: _resolve(root, getattr(settings, name)) for name, setting in provider_settings().items()
             if isinstance(setting.default, Path)}
    settings = replace(
        settings,
        issues_dir=_resolve(root, settings.issues_dir),
        templates_dir=_resolve(root, settings.templates_dir),
        database_url=_resolve_sqlite_url(root, settings.database_url),
        **paths,
    )
    return _validate(settings, where)


def _toml_key_lines(text: str) -> dict[tuple[str, str], int]:
    """(table, key) -> 1-based line of `key = …` in mailer.toml (tomllib does not report lines)."""
    lines: dict[tuple[str, str], int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
        if header:
            table = header.group(1)
            continue
        key = re.match(r"""\s*["']?([A-Za-z0-9_-]+)["']?\s*=""", line)
        if key:
            lines.setdefault((table, key.group(1)), number)
    return lines


def _resolve(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else (root / path)


def _resolve_sqlite_url(root: Path, url: str) -> str:
    """`sqlite:///relative.db` resolves from the config folder, like every other path."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(root / url[len(prefix):])
    return url


# ----- characters ---------------------------------------------------------------------------------
# C0 controls (TAB, CR and LF included), DEL, C1 controls (U+0085 NEXT LINE included), the Unicode
# line and paragraph separators, and lone surrogates (what Python makes of undecodable bytes in env).
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_LINE_BREAKS = {0x0A: "line feed", 0x0B: "vertical tab", 0x0C: "form feed", 0x0D: "carriage return",
                0x1C: "file separator", 0x1D: "group separator", 0x1E: "record separator",
                0x85: "next line", 0x2028: "line separator", 0x2029: "paragraph separator"}
_CONTROL_NAMES = {0x00: "null", 0x09: "tab", 0x1B: "escape", 0x7F: "delete"}


def forbidden_character(value: str) -> str | None:
    """Why `value` cannot be a setting (a control character, line break or undecodable byte), or None.

    Names the character's code point and its 1-based position, e.g.
    `contains a line break (U+000D carriage return) at character 27`.
    """
    match = _FORBIDDEN.search(value)
    if match is None:
        return None
    code, position = ord(match.group()), match.start() + 1
    if 0xD800 <= code <= 0xDFFF:
        byte = f" 0x{code - 0xDC00:02X}" if code >= 0xDC80 else ""
        return f"contains an undecodable byte{byte} at character {position} (the value is not valid UTF-8)"
    kind = "a line break" if code in _LINE_BREAKS else "a control character"
    name = _LINE_BREAKS.get(code) or _CONTROL_NAMES.get(code)
    return f"contains {kind} (U+{code:04X}{' ' + name if name else ''}) at character {position}"


def _check_characters(values: Mapping[str, Any], where: Callable[[str], str]) -> None:
    for attr, value in values.items():
        if isinstance(value, (str, Path)):
            problem = forbidden_character(str(value))
            if problem:
                raise ConfigError(f"{where(attr)} {problem}; settings must be one line of visible text")


# ----- addresses, List-Id -------------------------------------------------------------------------
def _mailbox(value: str, label: str) -> Mailbox | None:
    if not value:
        return None
    try:
        return parse_mailbox(value)
    except InvalidAddress as exc:
        raise ConfigError(f"{label}: {exc}") from None


def _strip_mailto(value: str) -> str:
    text = value.strip()
    return text[len("mailto:"):] if text.lower().startswith("mailto:") else text


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})+")


def parse_list_id(value: str) -> tuple[str, str]:
    """MAILER_LIST_ID as (phrase, id): `id.example.org`, `<id.example.org>` or `Phrase <id.example.org>`.

    The id must be an ASCII dot-atom with at least one dot, at most 255 characters (RFC 2919 §2);
    non-ASCII labels are converted to IDNA when they can be. Raises ConfigError.
    """
    text = value.strip()
    phrase, ident = "", text
    if text.endswith(">") and "<" in text:
        phrase, _, ident = text[:-1].rpartition("<")
        phrase = " ".join(phrase.split())
        if len(phrase) >= 2 and phrase[0] == phrase[-1] == '"':
            phrase = phrase[1:-1]
    ident = ident.strip()
    if ident and not ident.isascii():
        try:
            ident = ascii_domain(ident)
        except InvalidAddress:
            raise ConfigError(f"MAILER_LIST_ID: the id {ident!r} is not ASCII and cannot be converted to IDNA; "
                              f"use an ASCII dot-atom such as lettre.example.org") from None
    if not _DOT_ATOM.fullmatch(ident) or len(ident) > 255:
        raise ConfigError(f"MAILER_LIST_ID: {ident!r} is not a list id: an ASCII dot-atom of at most 255 characters "
                          f"with at least one dot, e.g. lettre.example.org or 'Le Fil <lettre.example.org>' (RFC 2919)")
    return phrase, ident


# ----- the base URL -------------------------------------------------------------------------------
_URL_UNSAFE = set(' <>"{}|\\^`')
# Names no mail client outside the sender's network resolves: RFC 6761 special-use names (as listed
# by email-validator), RFC 2606 `example`, ICANN's private-use `internal` (2024), RFC 8375
# `home.arpa` (under `arpa`), and the suffixes intranets commonly use.
PRIVATE_TLDS = frozenset({*email_validator.SPECIAL_USE_DOMAIN_NAMES, "example", "internal", "intranet",
                          "lan", "home", "corp", "localdomain", "private", "priv", "alt"})
_NUMERIC_LABEL = re.compile(r"\d+|0[xX][0-9A-Fa-f]*")
# Not globally reachable per IANA's special-purpose registries, yet `is_global` in Python 3.11 says
# it is: IETF protocol assignments (RFC 6890; only .9 and .10 are global) and the 2024 IPv6
# documentation block (RFC 9637).
_NOT_GLOBAL_EXTRA = tuple(ipaddress.ip_network(net) for net in ("192.0.0.0/24", "3fff::/20"))
_GLOBAL_EXCEPTIONS = frozenset(ipaddress.ip_address(ip) for ip in ("192.0.0.9", "192.0.0.10"))


# List-Unsubscribe (RFC 2369) is folded between its bracketed URLs, never inside one, so the longest line is
# `List-Unsubscribe: <BASE/u/TOKEN>,`; RFC 5322 §2.1.1 limits a line to 998 characters.
MAX_BASE_URL = HARD_LINE - len("List-Unsubscribe: <") - len(unsubscribe_prefix("")) - MAX_TOKEN_LENGTH - len(">,")


def normalise_base_url(value: str) -> str:
    """An http(s) base URL rebuilt in ASCII: IDNA host, percent-encoded path, no trailing slash.

    Refused (ValueError with the reason): spaces or characters URLs cannot hold, another scheme,
    user name or password, a missing or invalid host or port, a query or fragment (paths such as
    `/u/TOKEN` are appended to it).
    """
    text = value.strip(" ")
    bad = next((ch for ch in text if ch.isspace() or ch in _URL_UNSAFE), None)
    if bad is not None:
        raise ValueError(f"contains {'a space' if bad.isspace() else repr(bad)}, which a URL cannot hold")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("must start with https:// (or http:// for local use)")
    if "@" in parts.netloc:
        raise ValueError("must not contain a user name or password (user@host)")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError("must not have a query (?…) or fragment (#…): link paths are appended to it")
    host = parts.hostname or ""
    if not host:
        raise ValueError("has no host name")
    if parts.netloc.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError(f"has an invalid IPv6 address {host!r}") from None
    else:
        try:
            host = ascii_domain(host.rstrip(".")) + ("." if host.endswith(".") else "")
        except InvalidAddress as exc:
            raise ValueError(f"has an invalid host: {exc}") from None
    path = quote(parts.path, safe="/%:@!$&'()*+,;=-._~").rstrip("/")
    return f"{scheme}://{host}{f':{port}' if port is not None else ''}{path}"


def base_url_problem(url: str) -> str | None:
    """Why recipients could not follow links under `url` (already normalised), or None.

    Refused: anything but https; an IP address that is not globally routable (loopback, private,
    link-local, CGNAT, documentation, multicast, reserved, IPv4-mapped); `localhost` and the names
    under PRIVATE_TLDS; bare host names (no dot); a numeric last label (`127.1`, `0x7f.1`: browsers
    read those as IPv4 addresses).
    """
    parts = urlsplit(url)
    if parts.scheme != "https":
        return "is not https"
    host = (parts.hostname or "").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        extra = address not in _GLOBAL_EXCEPTIONS and any(address in net for net in _NOT_GLOBAL_EXTRA)
        if not address.is_global or address.is_multicast or address.is_reserved or extra:
            return f"points to a non-public address ({host})"
        return None
    labels = host.split(".")
    if len(labels) < 2:
        return f"has a bare host name ({host}) that only the local network resolves"
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return f"has a host ({host}) that is neither a domain name nor a valid public IP address"
    if labels[-1] in PRIVATE_TLDS or ".".join(labels[-2:]) in PRIVATE_TLDS:
        return f"has a host under .{labels[-1]} ({host}) that only the local network resolves"
    return None


def _validate(settings: Settings, where: Callable[[str], str]) -> Settings:
    """Check every value; return the settings with the base URL in its normalised ASCII form."""
    try:
        provider_named(settings.backend)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("MAILER_BACKEND", where("backend"), 1)) from None
    if settings.language not in LANGUAGES:
        raise ConfigError(f"{where('language')} must be one of {', '.join(LANGUAGES)}, not {settings.language!r}")
    for attr in ("timezone", "schedule_timezone"):
        zone = getattr(settings, attr)
        if zone:
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(f"{where(attr)}: unknown time zone {zone!r}") from None
    try:
        normalised = normalise_base_url(settings.base_url)
    except ValueError as exc:
        raise ConfigError(f"{where('base_url')} {settings.base_url.strip(' ')!r} {exc}") from None
    settings = replace(settings, base_url=normalised)
    if len(settings.base_url) > MAX_BASE_URL:
        raise ConfigError(f"{where('base_url')} is {len(settings.base_url)} characters long (in ASCII); at most "
                          f"{MAX_BASE_URL}: List-Unsubscribe holds BASE/u/TOKEN as one URL, and a header line may "
                          f"not pass {HARD_LINE} characters (RFC 5322 §2.1.1)")
    for attr in ("name", "from_address", "reply_to", "list_id"):
        if "=?" in getattr(settings, attr):
            raise ConfigError(f"{where(attr)} contains '=?', which mail programs decode as an RFC 2047 encoded word "
                              f"(a way to smuggle a line break into a header); write plain text")
    for attr in ("from_address", "reply_to", "unsubscribe_mailto"):
        raw = getattr(settings, attr)
        if raw.strip():
            try:
                (header_address(_strip_mailto(raw)) if attr == "unsubscribe_mailto" else parse_mailbox(raw))
            except InvalidAddress as exc:
                raise ConfigError(f"{where(attr)}: {exc}") from None
    if settings.list_id.strip():
        try:
            parse_list_id(settings.list_id)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("MAILER_LIST_ID", where("list_id"), 1)) from None
    if not settings.list_id_value.isascii():  # derived from the name and domain; belt and braces
        raise ConfigError(f"{where('name')}: cannot derive an ASCII List-Id; set MAILER_LIST_ID")
    if settings.rate_limit < 0:
        raise ConfigError(f"{where('rate_limit')} must be >= 0 (messages per second, 0 = unlimited)")
    if settings.schedule_grace < 1:
        raise ConfigError("[schedule].grace (MAILER_SCHEDULE_GRACE) must be at least 1 second")
    if settings.schedule_rescan <= 0:
        raise ConfigError("[schedule].rescan (MAILER_SCHEDULE_RESCAN) must be a positive number of seconds")
    if settings.bounce_address.strip():
        from .providers.bounces.verp import Verp
        Verp.parse(settings.bounce_address.strip(), b"", where("bounce_address"))
    if not settings.bounce_poll > 0:
        raise ConfigError(f"{where('bounce_poll')} must be a positive number of seconds")
    if not 1 <= settings.soft_bounce_limit <= settings.soft_bounce_sends:
        raise ConfigError(f"{where('soft_bounce_limit')} must be between 1 and {where('soft_bounce_sends')} "
                          f"({settings.soft_bounce_limit} over {settings.soft_bounce_sends} sends)")
    if settings.batch_size < 0 or settings.batch_size > 1000:
        raise ConfigError(f"{where('batch_size')} must be between 1 and 1000 (0: the backend's own)")
    if not 0 <= settings.send_processes <= 64:
        raise ConfigError(f"{where('send_processes')} must be between 1 and 64 processes (0: automatic), "
                          f"not {settings.send_processes!r}")
    if not 1 <= settings.smtp_commit_every <= 1000:
        raise ConfigError(f"{where('smtp_commit_every')} must be between 1 and 1000 (accepted messages recorded "
                          f"together), not {settings.smtp_commit_every!r}")
    if not 0 <= settings.smtp_commit_ms <= 60_000:
        raise ConfigError(f"{where('smtp_commit_ms')} must be between 0 and 60000 milliseconds, "
                          f"not {settings.smtp_commit_ms!r}")
    if not settings.pause_after > 0:
        raise ConfigError(f"{where('pause_after')} {positive_seconds(settings.pause_after)}")
    settings = _validate_provider_settings(settings, where)
    if settings.dkim_private_key or settings.dkim_selector or settings.dkim_domain:
        from .dkim_signing import check_settings  # imports dkimpy: only when DKIM is configured
        check_settings(settings, where)
    return settings


def positive_seconds(value: float) -> str | None:
    """A `Setting.check` for durations: None, or why `value` is refused."""
    return None if value > 0 else f"must be a positive number of seconds, not {value!r}"


def within(low: float, high: float, meaning: str = "") -> Callable[[float], str | None]:
    """A `Setting.check` for a bounded number: `must be between LOW and HIGH (MEANING), not VALUE`."""
    def check(value: float) -> str | None:
        if low <= value <= high:
            return None
        return f"must be between {low} and {high}{f' ({meaning})' if meaning else ''}, not {value!r}"
    return check


def _validate_provider_settings(settings: Settings, where: Callable[[str], str]) -> Settings:
    """Every registered provider's settings, checked by their own `Setting` rules (whatever the
    backend, like every other setting); returns the settings with normalised values."""
    changed: dict[str, Any] = {}
    for name, setting in provider_settings().items():
        value = getattr(settings, name)
        if setting.choices and value not in setting.choices:
            raise ConfigError(f"{where(name)} must be one of {', '.join(setting.choices)}, not {value!r}")
        if setting.normalise is not None:
            try:
                normalised = setting.normalise(value)
            except ValueError as exc:
                shown = value.strip(" ") if isinstance(value, str) else value
                raise ConfigError(f"{where(name)} {shown!r} {exc}") from None
            if normalised != value:
                changed[name] = value = normalised
        problem = setting.check(value) if setting.check is not None else None
        if problem:
            raise ConfigError(f"{where(name)} {problem}")
    return replace(settings, **changed) if changed else settings


# ----- the secret key -----------------------------------------------------------------------------
MIN_SECRET_KEY_LENGTH = 32
MAKE_SECRET_KEY = "python -c \"import secrets; print(secrets.token_urlsafe(32))\""
# Keys published in this repository's examples and tests over time: never accepted for real use.
PUBLISHED_KEYS = frozenset({"test-secret-key-0123456789", "test-secret-key-for-hunt-0123456789"})
# A key containing one of these was typed by a person, not made by a generator (a random 43-character
# token contains a given 5-letter word with a probability of about 1e-6).
_WEAK_WORDS = ("changeme", "change-me", "change_me", "secret", "password", "passwd", "example", "default",
               "sample", "dummy", "insecure", "placeholder", "letmein", "qwerty", "azerty", "mailer",
               "newsletter", "your-key", "yourkey", "replace", "12345")


def secret_key_problem(key: str) -> str | None:
    """Why `key` is not fit to sign links sent to real people, or None. Never quotes the key.

    Refused: unset; shorter than 32 characters; a key published in this project's examples or
    tests; a repetition of a shorter pattern (`abcabc…`); fewer than 8 distinct characters; a run of
    8 or more consecutive characters (`01234567`, `hgfedcba`); a word people type (`changeme`,
    `secret`, `password`…). Keys from `secrets.token_urlsafe(32)` or `token_hex(16)` pass
    (tests/test_config.py measures the rate over many generated keys).
    """
    advice = f"make one with: {MAKE_SECRET_KEY}"
    if not key:
        return f"MAILER_SECRET_KEY is missing; {advice}"
    if len(key) < MIN_SECRET_KEY_LENGTH:
        return f"MAILER_SECRET_KEY is {len(key)} characters, at least {MIN_SECRET_KEY_LENGTH} are needed; {advice}"
    lowered = key.lower()
    reason = None
    if key.strip() in PUBLISHED_KEYS:
        reason = "is a published example key"
    elif (key + key).find(key, 1) < len(key):
        reason = "is a short pattern repeated"
    elif len(set(key)) < 8:
        reason = f"uses only {len(set(key))} distinct characters"
    elif _longest_run(key) >= 8:
        reason = "contains a run of consecutive characters"
    else:
        word = next((w for w in _WEAK_WORDS if w in lowered), None)
        if word:
            reason = f"contains the word {word!r}"
    return f"MAILER_SECRET_KEY {reason}, not a random key; {advice}" if reason else None


def _longest_run(key: str) -> int:
    """Length of the longest run of code points each one above (or each one below) the previous."""
    longest = up = down = 1
    for previous, current in zip(key, key[1:]):
        step = ord(current) - ord(previous)
        up = up + 1 if step == 1 else 1
        down = down + 1 if step == -1 else 1
        longest = max(longest, up, down)
    return longest


def require_secret_key(settings: Settings) -> bytes:
    """The explicitly configured MAILER_SECRET_KEY as HMAC key bytes, or ConfigError (one line).

    For whatever signs links that real people follow: the smtp and sendgrid backends (through
    `secret_key_for`) and `mailer serve`. Never falls back to the outbox backend's local key file.
    """
    problem = secret_key_problem(settings.secret_key)
    if problem:
        raise ConfigError(problem)
    return settings.secret_key.encode("utf-8")


def secret_key_for(settings: Settings) -> bytes:
    """The HMAC key for tokens.

    Backends that reach real people (`Provider.delivers`: smtp, sendgrid): the configured key, which
    must pass `require_secret_key`. The outbox backend (local use, demos; it delivers nothing) takes MAILER_SECRET_KEY as it is, or else a key generated
    once and kept in `subscribers/.secret_key` so links stay valid across runs; that file is never
    used with any other backend; `mailer serve` demands an explicit key whatever the backend.
    """
    if settings.provider.delivers:
        return require_secret_key(settings)
    if settings.secret_key:
        return settings.secret_key.encode("utf-8")
    key_file = settings.root / "subscribers" / ".secret_key"
    if key_file.is_file():
        return key_file.read_text(encoding="ascii").strip().encode("ascii")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    key_file.write_text(key + "\n", encoding="ascii")
    key_file.chmod(0o600)
    return key.encode("ascii")
