"""Every command and option of `mailer` has help text and is mentioned in the README (as sqlite-utils
checks its own docs): a new option cannot ship undocumented."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from mailer.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append(((*path, name), command))
        if isinstance(command, click.Group):
            found.extend(commands(command, (*path, name)))
    return found


def options() -> list[tuple[tuple[str, ...], click.Option]]:
    return [(path, param) for path, command in commands() for param in command.params
            if isinstance(param, click.Option) and not param.hidden]


def test_the_cli_has_commands_and_options() -> None:
    assert len(commands()) > 20 and len(options()) > 20


@pytest.mark.parametrize("path,command", commands(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_has_help_and_is_in_the_readme(path: tuple[str, ...], command: click.Command) -> None:
    assert (command.help or "").strip(), f"`mailer {' '.join(path)}` has no help text"
    assert f"mailer {' '.join(path)}" in README, f"`mailer {' '.join(path)}` is not mentioned in README.md"


@pytest.mark.parametrize("path,option", options(),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else getattr(v, "name", ""))
def test_every_option_has_help_and_is_in_the_readme(path: tuple[str, ...], option: click.Option) -> None:
    where = f"`mailer {' '.join(path)}` option {'/'.join(option.opts)}"
    assert (option.help or "").strip(), f"{where} has no help text"
    assert any(opt in README for opt in option.opts), f"{where} is not mentioned in README.md"
