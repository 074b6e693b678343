"""The layout's rules, checked on the source (AST, no import): one concern per folder, data flowing
one way (content → mime → sending → providers → store), all SQL behind the store, and a stated
reason at the top of any module over ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mailer"
MAX_LINES = 400
FOLDERS = ("content", "mime", "providers", "sending", "store", "subscribers", "scheduling", "web", "cli")
# What each concern may import among the others (top-level modules: config, errors, links, tokens,
# addresses, headers, redact, statuses, wallclock, are shared by all). `mime` is a module, the rest folders.
ALLOWED = {
    "content": set(),
    "mime": {"content"},
    "providers": {"content", "mime"},
    "store": set(),
    "sending": {"content", "mime", "providers", "store"},
    "subscribers": {"providers", "store"},
    "scheduling": {"content", "sending", "providers", "store", "subscribers"},  # the bounce-mailbox job
    "web": {"content", "mime", "providers", "sending", "store", "subscribers"},
    "cli": {"content", "mime", "providers", "sending", "store", "subscribers", "scheduling", "web"},
    "top": set(),
}
# The job store's stable names (see mailer/scheduler.py): top-level modules that only re-export.
SHIMS = {"scheduler.py": {"scheduling"}, "cadence.py": {"scheduling"}}
# Known exceptions, each with its reason (remove the line when the reason goes):
# config checks MAILER_BOUNCE_ADDRESS at load with the VERP parser of the bounce mailboxes (a
# lazy import); the parser's address rule belongs in addresses.py.
EXCEPTIONS = {("config.py", "mailer.providers.bounces.verp"), ("config.py", "mailer.providers.bounces.verp.Verp")}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def concern(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    if parts[0] == "mime.py":
        return "mime"
    return parts[0] if len(parts) > 1 else "top"


def imported(path: Path) -> set[str]:
    """Absolute dotted names of every module `path` imports (function-level imports included)."""
    package = ".".join(("mailer", *path.relative_to(PACKAGE).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_rules_see_every_module() -> None:
    seen = {concern(path) for path in modules()}
    assert set(FOLDERS) <= seen, "a folder of the layout is missing"
    assert imported(PACKAGE / "web" / "app.py") >= {"mailer.store", "mailer.subscribers.signup"}


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_the_store_imports_sqlalchemy(path: Path) -> None:
    if concern(path) == "store":
        return
    offending = sorted(name for name in imported(path) if name == "sqlalchemy" or name.startswith("sqlalchemy.")
                       or name.startswith("apscheduler.jobstores.sqlalchemy"))
    assert not offending, f"{path.relative_to(PACKAGE)} imports {offending}: SQL belongs in mailer/store/"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_data_flow(path: Path) -> None:
    own = concern(path)
    allowed = SHIMS.get(path.name, set()) if own == "top" and path.parent == PACKAGE else set()
    allowed |= ALLOWED[own] | {own}
    wrong = set()
    for name in imported(path):
        parts = name.split(".")
        if parts[0] != "mailer" or len(parts) < 2:
            continue
        target = "mime" if parts[1] == "mime" else parts[1] if parts[1] in FOLDERS else "top"
        if target != "top" and target not in allowed and (path.name, name) not in EXCEPTIONS:
            wrong.add(name)
    assert not wrong, f"{path.relative_to(PACKAGE)} ({own}) imports {sorted(wrong)} against the flow"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_long_modules_say_why_at_their_top(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").count("\n")
    if lines <= MAX_LINES:
        return
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert "Longer than ~400 lines" in docstring, (
        f"{path.relative_to(PACKAGE)} has {lines} lines: split it, or say at its top why not "
        "('Longer than ~400 lines because …')")
