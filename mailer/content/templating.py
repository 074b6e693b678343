"""Jinja environments that compile each template text once per process.

A `jinja2.Environment` compiles a template (lex, parse, generate Python, compile it) the first time it
loads it, and keeps it only for its own life. mailer makes an environment per rendering (`render.
compile_email`, the notices, the preview) and per web app, so a long-lived process (`mailer schedule
run`, `mailer worker`, `mailer serve`, the preview server) compiled the same templates again for every
issue, notice and page: about 10 ms of CPU a template, most of a small rendering.

`Environment` keeps the code Jinja compiles, keyed by the environment's options (they shape the
generated code), the template's name and its exact text, and shares it among every environment made
with the same options. A template whose text changed is compiled afresh. The code is handed out under
the file name of each load, so tracebacks and error messages name the file read. (Jinja's own
`BytecodeCache` is keyed by file path: it would miss for each new project folder.)
"""

from __future__ import annotations

import threading
from types import CodeType
from typing import Any

import jinja2
from jinja2.utils import internalcode

MAX_KEPT = 512  # compiled templates kept (a few kB each); past it, the oldest goes
_compiled: dict[tuple, CodeType] = {}
_lock = threading.Lock()


class Environment(jinja2.Environment):
    """`jinja2.Environment(**options)` sharing compiled templates with the others of the same options
    (`loader` aside: the text read decides). Options must be hashable (bools, strings, functions)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._options_key = tuple(sorted((name, value) for name, value in options.items() if name != "loader"))

    @internalcode  # hidden from template tracebacks, as Jinja's own
    def compile(self, source, name=None, filename=None, raw=False, defer_init=False):  # noqa: ANN001, ANN201 - Jinja's signature
        if raw or not isinstance(source, str):
            return super().compile(source, name, filename, raw, defer_init)
        key = (self._options_key, name, defer_init, source)
        code = _compiled.get(key)
        if code is None:
            code = super().compile(source, name, filename, defer_init=defer_init)
            with _lock:
                if len(_compiled) >= MAX_KEPT:
                    del _compiled[next(iter(_compiled))]
                _compiled[key] = code
        return _named(code, filename or "<template>")


def _named(code: CodeType, filename: str) -> CodeType:
    """`code` with `filename` as its file name, and that of the functions it defines (blocks, macros)."""
    if code.co_filename == filename:
        return code
    constants = tuple(_named(c, filename) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=constants)
