"""The providers' registry: everything the rest of mailer knows about a provider, asked by name.

A provider is ONE module that declares a `Provider`: its name (the MAILER_BACKEND value), its own
settings (`Setting`: name = mailer.toml key, type and default, environment variable, check), its
backend factory, its webhook (`POST /webhooks/{name}`) if it posts events, and the capabilities
generic code asks about instead of comparing names (does it reach real people, does it sign DKIM
itself, does it use our envelope sender, what must SPF authorise, does it keep requests in flight).
Registered three ways, all equal:

* a module of the `mailer.providers` package with a module-level `PROVIDER` (the built-in outbox,
  smtp and sendgrid) is found there, without any list naming it;
* another installed package declares an entry point in the group `mailer.providers` naming its
  `Provider` (`[project.entry-points."mailer.providers"] postmark = "mailer_postmark:PROVIDER"`);
* code calls `register_provider(provider)` (an embedding application, tests).

Config loading, the send checks, `mailer doctor`, DKIM, dispatch and the web app iterate
`providers()` or ask `provider_for(settings)`. Discovery runs once, on first use (never while
`mailer.config` is being imported), under a lock. This module sits beside `config` (it describes
settings) and imports provider modules only by name at discovery: the layout's data flow is
unchanged (providers depend on it, not the reverse).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import pkgutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import ConfigError

if TYPE_CHECKING:  # the type only: importing it would be a cycle (config imports this module)
    from .config import Settings

# What `Provider.backend` and `Provider.webhook` return: a `providers.base.Backend` and a
# `providers.events.Webhook` (named, not imported: this module is below the providers in the layout).
Backend = Any
Webhook = Any

ENTRY_POINT_GROUP = "mailer.providers"
BUILTIN_PACKAGE = "mailer.providers"

log = logging.getLogger("mailer.registry")


@dataclass(frozen=True)
class Setting:
    """One setting a provider owns, read like every other (mailer.toml `name = …`, env `env`).

    * `default` gives the type: str, bool (`1/true/yes/on`, `0/false/no/off`), int, float or Path
      (relative paths resolve from the config folder);
    * `choices`: the only values allowed (error: `NAME must be one of a, b, not 'x'`);
    * `normalise(value) -> value` may raise ValueError(reason) (error: `NAME 'value' reason`);
    * `check(value) -> str | None`: why the value is refused, written after the setting's name
      (`must be between 1 and 1000 …`).
    Every error names the setting as the user wrote it: `mailer.toml:LINE: key`, or the env variable.
    """

    name: str
    default: Any
    env: str
    choices: tuple[str, ...] = ()
    normalise: Callable[[Any], Any] | None = None
    check: Callable[[Any], str | None] | None = None


@dataclass(frozen=True)
class OwnDkim:
    """A provider that signs every message with its own DKIM key (so MAILER_DKIM_* is unused): the
    selector its domain authentication publishes, the domain it signs as without one, and how to set
    it up (for `mailer doctor` and the DKIM warnings)."""

    selector: str
    fallback_domain: str
    setup: str


@dataclass(frozen=True)
class HostedRelay:
    """A hosted relay recognised by its submission host: `host` is a shell-style pattern
    (`email-smtp.*.amazonaws.com`, `smtp.mailgun.org`), `include` the domain its documentation tells
    senders to name in SPF (`include:amazonses.com`), `name` how people call it. Its outbound servers
    are not the submission host's addresses, so SPF is checked for the include instead."""

    host: str
    include: str
    name: str

    def matches(self, host: str) -> bool:
        from fnmatch import fnmatchcase
        return fnmatchcase(host.strip().rstrip(".").lower(), self.host)


@dataclass(frozen=True)
class Provider:
    """What one provider is (see the module docstring). Only `name` and `backend` are required.

    * `backend(settings) -> Backend`: the configured backend, ConfigError naming what is missing;
    * `problems(settings) -> [str]`: what its own settings lack for a real send, one line each;
    * `webhook(settings) -> Webhook`: its event webhook (every registered one is served);
    * `label`: its name as people write it (`SendGrid`, `SMTP`), in messages; default `name`;
    * `delivers`: reaches real people (a send then demands a strong MAILER_SECRET_KEY and a public
      https MAILER_BASE_URL; False for the outbox, which only writes files);
    * `own_dkim`: it signs itself (None: our MAILER_DKIM_* signature is on the bytes it sends);
    * `own_envelope`: it uses its own envelope sender (Return-Path), not ours (MAILER_BOUNCE_ADDRESS
      / VERP), so DMARC's SPF alignment is its business;
    * `spf_include`: what SPF must include for it (`sendgrid.net`); `relay_host_setting`: the setting
      naming a relay whose addresses SPF must authorise instead (`smtp_host`); `hosted_relays`: relays
      known by their host whose documented include SPF must name instead of those addresses;
      `spf_include_setting`: the setting with which the operator names that include themselves;
    * `in_flight(settings) -> (recipients, per request)`: a request-based provider whose requests
      overlap: at most `recipients` handed over and unanswered, at most `per request` in one;
    * `path_name`: how a streak of refusals names the path (default `the provider (NAME)`);
    * `writes_to(settings) -> Path | None`: the folder a send's files land in, shown after a send.
    """

    name: str
    backend: Callable[["Settings"], Backend]
    settings: tuple[Setting, ...] = ()
    label: str = ""
    problems: Callable[["Settings"], list[str]] | None = None
    webhook: Callable[["Settings"], Webhook] | None = None
    delivers: bool = True
    own_dkim: OwnDkim | None = None
    own_envelope: bool = False
    spf_include: str = ""
    relay_host_setting: str = ""
    hosted_relays: tuple[HostedRelay, ...] = ()
    spf_include_setting: str = ""
    in_flight: Callable[["Settings"], tuple[int, int]] | None = None
    path_name: str = ""
    writes_to: Callable[["Settings"], Path | None] | None = None

    @property
    def shown(self) -> str:
        return self.label or self.name

    def refusing_path(self) -> str:
        return self.path_name or f"the provider ({self.name})"

    def send_problems(self, settings: "Settings") -> list[str]:
        return list(self.problems(settings)) if self.problems else []


_lock = threading.RLock()
_registered: dict[str, Provider] = {}
_discovered = False


def register_provider(provider: Provider) -> Provider:
    """Add `provider` (replacing one of the same name: a newer version of it). Its settings must not
    reuse another provider's or a general setting's name or variable (ValueError). Returns it."""
    with _lock:
        _discover()
        _check_new(provider)
        _registered[provider.name] = provider
    return provider


def unregister_provider(name: str) -> None:
    """Remove a provider registered by `register_provider` (tests)."""
    with _lock:
        _registered.pop(name, None)


def providers() -> tuple[Provider, ...]:
    """Every registered provider: the built-in ones (by module name), then the others in the order
    they came."""
    with _lock:
        _discover()
        return tuple(_registered.values())


def names() -> tuple[str, ...]:
    return tuple(provider.name for provider in providers())


def provider_named(name: str) -> Provider:
    """The provider called `name`; ConfigError listing the known ones otherwise."""
    for provider in providers():
        if provider.name == name:
            return provider
    raise ConfigError(f"MAILER_BACKEND must be one of {', '.join(names())}, not {name!r}")


def provider_for(settings: "Settings") -> Provider:
    """The provider MAILER_BACKEND names (checked at load, so this only fails on hand-built settings)."""
    return provider_named(settings.backend)


def provider_settings() -> dict[str, Setting]:
    """Every provider's settings by name."""
    return {setting.name: setting for provider in providers() for setting in provider.settings}


def _check_new(provider: Provider) -> None:
    from .config import GENERAL_ENV_VARS, general_setting_names  # config imports this module lazily too
    taken = {name: "a general setting" for name in general_setting_names()}
    taken.update({var: "a general setting" for var in GENERAL_ENV_VARS})
    for other in _registered.values():
        if other.name != provider.name:
            taken.update({s.name: other.name for s in other.settings})
            taken.update({s.env: other.name for s in other.settings})
    for setting in provider.settings:
        for key in (setting.name, setting.env):
            if key in taken:
                raise ValueError(f"provider {provider.name!r}: {key} is already {taken[key]}'s")


def _discover() -> None:
    """Built-in providers (the `mailer.providers` package's modules with a PROVIDER), then entry points."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # set first: the modules imported below may register or ask for providers
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name):
        if info.ispkg or info.name.startswith("_"):
            continue
        found = getattr(importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}"), "PROVIDER", None)
        if isinstance(found, Provider):
            _check_new(found)
            _registered[found.name] = found
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.value.split(":")[0].startswith(BUILTIN_PACKAGE + "."):
            continue  # an older install's entry for a built-in one: found above
        try:
            found = entry.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not stop every command
            log.error("provider %s (%s) not loaded: %s", entry.name, entry.value, exc)
            continue
        if not isinstance(found, Provider):
            log.error("provider %s (%s) is not a mailer.registry.Provider", entry.name, entry.value)
            continue
        _check_new(found)
        _registered.setdefault(found.name, found)
