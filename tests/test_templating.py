"""Templates compiled once per process (mailer/content/templating.py) render exactly as Jinja renders
them, follow an edited file at the next rendering, and name the file read in their errors."""

from __future__ import annotations

import random
import traceback
from pathlib import Path

import jinja2
import pytest

from mailer.content import templating
from mailer.content.issue import load_issue
from mailer.content.render import jinja_environment, render_issue

from .conftest import EXAMPLE_ISSUE

OPTION_SETS = [
    {"autoescape": True, "undefined": jinja2.StrictUndefined, "trim_blocks": True, "lstrip_blocks": True},
    {"autoescape": False, "undefined": jinja2.StrictUndefined, "keep_trailing_newline": True,
     "trim_blocks": True, "lstrip_blocks": True},
    {"autoescape": False},
]
PIECES = ["{{ x }}", "{{ x|upper }}", "{{ items|join(', ') }}", "{% for i in items %}[{{ i }}]{% endfor %}",
          "{% if flag %}yes{% else %}no{% endif %}", "\n  {% if flag %}\n  kept\n  {% endif %}\n",
          "{{ x ~ '<i>' }}", "{% set y = x * 2 %}{{ y }}", "{# note #}", "{{ '%s!'|format(x) }}", "text & <b>",
          "{% macro m(v) %}<{{ v }}>{% endmacro %}{{ m(x) }}", "{{ items|length }}", "\n", "   ", "{{ x|e }}"]
CONTEXT = {"x": "<b>Zoé & Cie</b>", "items": ["a<", "é", "&"], "flag": True}


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _generated_template(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 8)))


def test_generated_templates_render_as_jinja_renders_them_in_every_folder_and_option_set(tmp_path, sample_size):
    """The oracle is Jinja itself: a fresh `jinja2.Environment` with the same options. The same name and
    text under several option sets (autoescape on and off) and in several folders never share code that
    would render one like the other."""
    rng = random.Random(1129)
    for round_ in range(sample_size(24)):
        text = _generated_template(rng)
        base = "{% block body %}base{% endblock %}|" + _generated_template(rng)
        files = {"page.j2": text, "base.j2": base, "child.j2": '{% extends "base.j2" %}{% block body %}' + text + "{% endblock %}"}
        folders = [_write(tmp_path / f"r{round_}-{index}", files) for index in range(2)]
        for options in OPTION_SETS:
            jinjas = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folders[0])), **options)
            expected = {name: jinjas.get_template(name).render(CONTEXT) for name in ("page.j2", "child.j2")}
            for folder in folders:
                ours = templating.Environment(loader=jinja2.FileSystemLoader(str(folder)), **options)
                for name, rendered in expected.items():
                    assert ours.get_template(name).render(CONTEXT) == rendered, (options, name, text)


def test_an_edited_template_is_used_at_the_next_rendering_in_the_same_process(project, settings):
    """What a long-lived process (`mailer serve`'s preview, `schedule run`, `worker`) renders after an
    editor changes a template: the new text, and the old one again once it is put back."""
    template = project / "templates" / "weekly.mjml.j2"
    original = template.read_text(encoding="utf-8")
    issue = load_issue(EXAMPLE_ISSUE, settings.issues_dir, settings.zone)
    assert "Édité à la main" not in render_issue(issue, settings).mjml_source
    template.write_text(original.replace("<mj-title>{{ subject }}", "<mj-title>Édité à la main {{ subject }}"),
                        encoding="utf-8")
    assert "<mj-title>Édité à la main " in render_issue(issue, settings).mjml_source
    template.write_text(original, encoding="utf-8")
    assert "Édité à la main" not in render_issue(issue, settings).mjml_source


def test_an_error_while_rendering_names_the_file_read_not_the_first_with_that_text(tmp_path):
    text = "line one\n{{ missing.attribute }}\n"
    first = _write(tmp_path / "first", {"page.txt.j2": text})
    second = _write(tmp_path / "second", {"page.txt.j2": text})
    with pytest.raises(jinja2.UndefinedError):
        jinja_environment(first, autoescape=False).get_template("page.txt.j2").render({})
    with pytest.raises(jinja2.UndefinedError) as raised:
        jinja_environment(second, autoescape=False).get_template("page.txt.j2").render({})
    frames = [(frame.filename, frame.lineno) for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert (str(second / "page.txt.j2"), 2) in frames, frames
    assert not any(name == str(first / "page.txt.j2") for name, _ in frames), frames
