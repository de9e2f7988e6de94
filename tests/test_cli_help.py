"""`--help` of the top-level parser and of every (sub)command, plugins' too (issue 20)."""

from __future__ import annotations

import argparse

import pytest

from jfedrl import plugins
from jfedrl.cli import main
from jfedrl.cli.app import build_parser


def _parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """`(command words, parser)` for `parser` and every subcommand under it, recursively."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*prefix, name))


COMMANDS = [words for words, _ in _parsers(build_parser())]


def test_the_plugin_commands_are_among_the_helps_checked():
    assert "offload" in plugins.commands()  # the entry point of the offload package
    assert ("offload",) in COMMANDS and ("train",) in COMMANDS and () in COMMANDS


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "jfedrl")
def test_help_prints_and_exits_0(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jfedrl")


def test_a_percent_sign_in_a_help_string_is_printed_literally(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "95% CIs" in capsys.readouterr().out
