"""What the prose says about the code stays true: every file a docstring, a comment or a README names
exists, and the README's architecture table names every module of `mailer/` (checked on the source
text, nothing imported)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mailer"

# A path-like reference: folders and a name, `a/b.py`, `mailer/…`, `backends/…` (not part of a longer path or URL)
_PATH = re.compile(r"(?<![\w./:-])((?:[\w.-]+/)+[\w.-]*\w)")
_BARE = re.compile(r"(?<![\w./-])([A-Za-z_][\w-]*\.py)\b")  # `edition.py`: a module named without its folder
# references that name files of other projects or of older versions on purpose: (where, reference)
ELSEWHERE = {
    ("bench/README.md", "mailer/subscribers.py"),  # older versions' single subscribers module (--implementation)
}


def _is_file_reference(ref: str) -> bool:
    return ref.endswith(".py") or ref.startswith(("mailer/", "backends/"))


def stale_references(files: list[Path], root: Path, elsewhere=frozenset()) -> list[str]:  # noqa: ANN001
    """`file:line: reference` for each path-like reference of `files` that names no file or folder:
    looked up from the repository root, from `mailer/`, and from the referring file's folder; a bare
    `name.py` must be some file's name in the repository."""
    names = {p.name for p in root.rglob("*.py") if ".venv" not in p.parts}
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(root).as_posix()
        hits = [(m.start(), m.group(1)) for m in _PATH.finditer(text) if _is_file_reference(m.group(1))]
        hits += [(m.start(), m.group(1)) for m in _BARE.finditer(text) if m.group(1) not in names]
        for start, ref in hits:
            if (where, ref) in elsewhere or "/" in ref and any(
                    (base / ref).exists() for base in (root, root / "mailer", path.parent)):
                continue
            found.append(f"{where}:{text.count(chr(10), 0, start) + 1}: {ref}")
    return found


def _prose_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + [ROOT / "README.md", ROOT / "bench" / "README.md"]


def test_every_file_a_docstring_comment_or_readme_names_exists():
    found = stale_references(_prose_files(), ROOT, ELSEWHERE)
    assert not found, "references to files that do not exist:\n" + "\n".join(found)


def test_the_reference_check_finds_stale_references(tmp_path):
    (tmp_path / "mailer" / "providers").mkdir(parents=True)
    (tmp_path / "mailer" / "providers" / "base.py").write_text("", encoding="utf-8")
    (tmp_path / "mailer" / "web").mkdir()
    (tmp_path / "mailer" / "web" / "preview.py").write_text("", encoding="utf-8")
    code = tmp_path / "mailer" / "dispatch.py"
    code.write_text('"""Classified by whose failure it is (backends/base.py), see providers/base.py."""\n'
                    "# the editor's preview (mailer/preview.py, templates/preview.html.j2)\n"
                    "# the preview is mailer/web/preview.py; the ledger is in store.py\n"
                    "URL = 'https://example.org/u/x.py'\n", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text("Older versions: `mailer/subscribers.py`.\nSee `mailer/web/` and `scheduler.py`.\n",
                      encoding="utf-8")
    found = stale_references([code, readme], tmp_path, {("README.md", "mailer/subscribers.py")})
    assert found == ["mailer/dispatch.py:1: backends/base.py", "mailer/dispatch.py:2: mailer/preview.py",
                     "mailer/dispatch.py:3: store.py", "README.md:2: scheduler.py"]


# ----- the README's architecture table -------------------------------------------------------------------
def architecture_rows(readme: str) -> list[tuple[str, str]]:
    """(place, job) of each row of the README's architecture table (`| place | its one job |`)."""
    start = readme.index("| place | its one job |")
    end = readme.find("\n\n", start)
    rows = []
    for line in readme[start:end if end != -1 else None].splitlines()[2:]:
        cells = line.strip().strip("|").split("|", 1)
        rows.append((cells[0], cells[1] if len(cells) > 1 else ""))
    return rows


def unnamed_modules(package: Path, readme: str) -> list[str]:
    """Modules of `package` the table does not name: a top-level `x.py` named in a row's place
    (`` `x.py` ``), a module of a folder (at any depth) by its name in backticks in the job of the
    folder's row (`` `dispatch` `` in the `sending/` row). Package markers and migrations are left out."""
    rows = architecture_rows(readme)
    missing = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if path.name in ("__init__.py", "__main__.py") or "migrations" in rel.parts:
            continue
        if len(rel.parts) == 1:
            named = any(f"`{path.name}`" in place for place, _ in rows)
        else:
            named = any(f"`{rel.parts[0]}/`" in place and f"`{path.stem}`" in job for place, job in rows)
        if not named:
            missing.append(rel.as_posix())
    return missing


def test_the_readme_architecture_table_names_every_module():
    missing = unnamed_modules(PACKAGE, (ROOT / "README.md").read_text(encoding="utf-8"))
    assert not missing, "modules the README's architecture table does not name: " + ", ".join(missing)


def test_the_architecture_check_finds_a_module_left_out(tmp_path):
    for name in ("links.py", "segments.py", "sending/dispatch.py", "sending/report.py", "subscribers/importer/parse.py",
                 "sending/__init__.py", "store/migrations/env.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("", encoding="utf-8")
    readme = ("Intro.\n\n| place | its one job |\n|---|---|\n| `links.py` | the URL builder |\n"
              "| `sending/` | `dispatch` (the loop) |\n| `subscribers/` | `importer/`: `parse` |\n\nAfter.\n")
    assert unnamed_modules(tmp_path, readme) == ["segments.py", "sending/report.py"]
