"""One owner per piece of knowledge, checked on the source (AST and text, no import): a name is
imported from the module that defines it, URLs of the web app are built by `mailer/links.py` only,
and "the test-send subscriber" is `links.TEST_SUBSCRIBER_ID`, never a literal 0."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mailer"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _defined(path: Path) -> set[str]:
    """Names a module binds itself (functions, classes, assignments), not the ones it imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _imports_from(path: Path):
    """(line, module, name) of every `from mailer.X import name` in a file, relative ones resolved."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        for alias in node.names:
            yield node.lineno, module, alias.name


def test_names_are_imported_from_the_module_that_defines_them():
    """A plain module (not a package's `__init__`) that imports a name and lets others import it from
    there is a second owner: `statuses.STOPPED` through `scheduling.plan`, `format_moment` through
    `plan` rather than `wallclock`. Every `from mailer.M import NAME` in mailer/, tests/ and bench/
    must name the module that binds NAME (or a submodule)."""
    defined = {name: _defined(path) for name, path in MODULES.items() if path.name != "__init__.py"}
    found = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        for line, module, name in _imports_from(path):
            if module in defined and name not in defined[module] and f"{module}.{name}" not in MODULES:
                found.append(f"{path.relative_to(ROOT)}:{line}: {name} imported from {module}, which does not define it")
    assert not found, "\n".join(found)


def test_statuses_have_one_owner():
    """The status constants are bound in `mailer/statuses.py` only, and nobody imports them elsewhere."""
    names = _defined(PACKAGE / "statuses.py")
    assert {"STOPPED", "SUBSCRIBER_STATUSES", "SUPPRESSED_STATUSES", "SUPPRESSION_RANK", "TOMBSTONE_PREFIX"} <= names
    found = []
    for path in PACKAGE.rglob("*.py"):
        for line, module, name in _imports_from(path):
            if name in names and module != "mailer.statuses":
                found.append(f"{path.relative_to(ROOT)}:{line}: {name} from {module}")
        if path.name != "statuses.py":
            found += [f"{path.relative_to(ROOT)}: binds {name} again" for name in _defined(path) & names]
    assert not found, "\n".join(found)


def test_one_core_statement_inserts_subscribers():
    """One insert path for subscribers: `subscribers.insert()` is written once in mailer/ (the import's
    reference writer, which the single add calls with one row); the import's raw fast paths
    (SQLite executemany, PostgreSQL COPY) are checked against it by test_bulk_import_export.py."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "insert"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "subscribers"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(found) == 1, found


# ----- URLs: links.py builds them, templates and code call it ------------------------------------------
def _route_prefixes() -> dict[str, str]:
    """Each path template of links.py (a module-level string starting with "/") → its fixed start
    (`/u/{token}` → `/u/`); the bare root "/" is left out (every path starts with it)."""
    found = {}
    for node in ast.parse((PACKAGE / "links.py").read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                and node.value.value.startswith("/")):
            fixed = node.value.value.split("{")[0]
            if fixed != "/":
                found[node.targets[0].id] = fixed
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def _route_constant(node: ast.AST, routes: set[str], imported: set[str]) -> str | None:
    """`links.UNSUBSCRIBE` (any module alias ending in `links`) or a route constant imported by name."""
    if (isinstance(node, ast.Attribute) and node.attr in routes and isinstance(node.value, ast.Name)
            and node.value.id.endswith("links")):
        return node.attr
    if isinstance(node, ast.Name) and node.id in imported:
        return node.id
    return None


def hand_written_urls(python_files, template_files) -> list[str]:
    """Route paths written by hand. In code: a string (or an f-string's literal part) that starts with
    a route's fixed part or has one right after `scheme://host` (`"https://x.example/u/x"`), and a
    route template of links.py worked on outside it (`links.UNSUBSCRIBE.split("{token}")[0]`,
    `base + links.WEB_EDITION.format(…)`, `f"{links.CLICK}"`): only naming it (`Route(links.CONFIRM, …)`)
    is left to other modules. In a template: a route's fixed part right after a quote, `=` or `}}`
    (`href="/archive"`, `{{ root }}/u/{{ token }}`), Jinja comments left out."""
    prefixes = sorted(set(_route_prefixes().values()), key=len, reverse=True)
    routes = set(_route_prefixes())
    absolute = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s\"']*(" + "|".join(re.escape(p) for p in prefixes) + ")")
    found = []
    for path in python_files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        imported = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and (node.module or "").split(".")[-1] == "links" for alias in node.names if alias.name in routes}
        parents = {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                hit = next((p for p in prefixes if node.value.startswith(p)), None) or absolute.search(node.value)
                if hit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
            route = _route_constant(node, routes, imported)
            if route and isinstance(parents.get(id(node)), (ast.Attribute, ast.BinOp, ast.FormattedValue,
                                                             ast.Subscript, ast.JoinedStr)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {route} worked on by hand")
    pattern = re.compile(r"""(?:["'=]|\}\})\s*(""" + "|".join(re.escape(p) for p in prefixes) + ")")
    for path in template_files:
        text = re.sub(r"\{#.*?#\}", lambda m: "\n" * m.group(0).count("\n"), path.read_text(encoding="utf-8"), flags=re.S)
        for match in pattern.finditer(text):
            found.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(1)!r}")
    return found


def test_no_route_url_is_written_by_hand_outside_links():
    """Templates and code ask links.py (`urls.archive()`, `links.unsubscribe_url(…)`, `links.CONFIRM`
    in a route declaration); a path typed again elsewhere would outlive a change of the route."""
    python = [path for path in PACKAGE.rglob("*.py") if path != PACKAGE / "links.py"]
    found = hand_written_urls(python, sorted((ROOT / "templates").rglob("*.j2")))
    assert not found, "\n".join(found)


def test_the_url_check_finds_hand_written_urls(tmp_path):
    """The check above can fail: each way a route was written by hand before is found."""
    code = tmp_path / "mailer_like.py"
    code.write_text('base = "x"\nurl = base + "/archive"\nother = f"{base}/u/{base}"\nRoute("/feed.xml", None)\n'
                    'prefix = base + links.UNSUBSCRIBE.split("{token}")[0]\n'
                    'page = base + links.WEB_EDITION.format(slug="s")\n'
                    'probe = "https://invalid.example/u/x"\n'
                    'from mailer.links import CLICK\nclick = f"{base}{CLICK}"\n'
                    'Route(links.CONFIRM, None)\nnote = "route MAILER_BASE_URL/u/ to it"\n',
                    encoding="utf-8")
    page = tmp_path / "page.html.j2"
    page.write_text('{# /u/TOKEN: a comment #}\n<a href="{{ root }}/issues/{{ slug }}">x</a>\n'
                    '<form action="/subscribe"></form>\n<a href="/reports">r</a>\n', encoding="utf-8")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = hand_written_urls([code], [page])
    finally:
        ROOT = saved
    assert sorted(line.split(": ", 1)[0] for line in found) == [
        "mailer_like.py:2", "mailer_like.py:3", "mailer_like.py:4", "mailer_like.py:5", "mailer_like.py:6",
        "mailer_like.py:7", "mailer_like.py:9", "page.html.j2:2", "page.html.j2:3", "page.html.j2:4"]


# ----- the test-send subscriber ---------------------------------------------------------------------
def _is_subscriber_id(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id.endswith("subscriber_id")) or (
        isinstance(node, ast.Attribute) and node.attr.endswith("subscriber_id"))


def literal_test_subscriber_checks(paths) -> list[str]:
    """"Is this the test send?" asked by hand: a subscriber id compared with a number
    (`subscriber_id <= 0`, `== 0`), used as a truth value (`if data.subscriber_id`, `and
    subscriber_id`) or defaulted with `or` (`subscriber_id or 0`)."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            operands: list[ast.AST] = []
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(map(_is_subscriber_id, sides)) and any(
                        isinstance(side, ast.Constant) and type(side.value) is int for side in sides):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: compared with a number")
                continue
            if isinstance(node, ast.BoolOp):
                operands = node.values
            elif isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)):
                operands = [node.test]
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                operands = [node.operand]
            if any(map(_is_subscriber_id, operands)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: a subscriber id as a truth value")
    return found


def test_the_test_send_subscriber_is_named_not_written():
    """`links.TEST_SUBSCRIBER_ID` / `links.is_test_subscriber` say "a test send"; nowhere else in mailer/
    is a subscriber id compared with 0 or taken as true/false."""
    found = literal_test_subscriber_checks(path for path in PACKAGE.rglob("*.py") if path != PACKAGE / "links.py")
    assert not found, "\n".join(found)


def test_the_test_subscriber_check_finds_literal_checks(tmp_path):
    code = tmp_path / "like.py"
    code.write_text("def f(subscriber_id, data):\n    if subscriber_id <= 0:\n        pass\n"
                    "    x = data.subscriber_id or 0\n    if record and data.subscriber_id:\n        pass\n"
                    "    return subscriber_id == TEST\n", encoding="utf-8")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = literal_test_subscriber_checks([code])
    finally:
        ROOT = saved
    assert [line.split(": ")[0] for line in found] == ["like.py:2", "like.py:4", "like.py:5"]
