"""`mailer …` for tests: in this process through click's CliRunner, or as a real process.

Most CLI tests run the command in this process (`invoke`, and the `cli` fixture in conftest): the same
click command a user runs, with the same outputs on stdout and stderr and the same exit code, without
a process start-up each time (Python and the imports cost about a second, several on a loaded
machine). Each call starts as a fresh process would: the environment is this process's without any
MAILER_*/SENDGRID_* variable, plus BASE_ENV and the test's own; the working directory is the
project folder. What a command changes in the process (logging, signal handlers, open stores) it
undoes when it ends (`mailer.cli.main`), so the next test starts clean.

A real `mailer` process (`MAILER`, `process_env`) is kept only where the behaviour is the process:
signals (SIGTERM, SIGKILL, Ctrl-C), crashes, `mailer schedule run` and `mailer worker` running
beside other processes, a terminal (pty), the console-script entry point and start-up itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .conftest import BASE_ENV

MAILER = [sys.executable, "-m", "mailer.cli"]
OWN_VARIABLES = ("MAILER_", "SENDGRID_")


@dataclass
class Ran:
    """What `mailer ARGS` did: the fields of subprocess.CompletedProcess that tests read, and `output`,
    stdout and stderr interleaved as a terminal shows them."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    output: str = ""


def process_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] = BASE_ENV) -> dict[str, str]:
    """The environment of a real `mailer` process: this one's without MAILER_*/SENDGRID_*, then
    `base`, then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES)}
    return {**env, **base, **(extra or {})}


def invoke(args: Sequence[str], cwd: Path, extra_env: Mapping[str, str] | None = None, stdin: str = "",
           base: Mapping[str, str] = BASE_ENV) -> Ran:
    """`mailer ARGS` in this process, in `cwd`, with `process_env(extra_env, base)`'s MAILER_* and
    SENDGRID_* variables (the others are this process's). An exception the command lets escape — a
    traceback for a user — fails the test with that exception (SystemExit is the exit code)."""
    from click.testing import CliRunner

    from mailer.cli import main

    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(OWN_VARIABLES)}  # None: unset
    env.update(base)
    env.update(extra_env or {})
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(main, list(args), env=env, input=stdin, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"`mailer {' '.join(args)}` let an exception escape (a traceback for a user); "
                             f"its output:\n{result.output}") from result.exception
    return Ran(list(args), result.exit_code, result.stdout, result.stderr, result.output)


def invoke_with(env: Mapping[str, str], args: Sequence[str], cwd: Path, stdin: str = "") -> Ran:
    """`mailer ARGS` in this process with the MAILER_*/SENDGRID_* variables of `env`, a whole process
    environment (as made for a real process beside it: `process_env`, test_crash's `_env`)."""
    return invoke(args, cwd, {k: v for k, v in env.items() if k.startswith(OWN_VARIABLES)}, stdin, base={})


def checked(result: Ran, check_exit: int | None) -> Ran:
    """`result`, after asserting its exit code (None: any)."""
    if check_exit is not None:
        assert result.returncode == check_exit, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result
