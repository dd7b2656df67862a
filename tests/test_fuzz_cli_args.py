"""Fuzzing the CLI's command line: every command and option of the real
parser (found by walking it, so commands other branches add are fuzzed
too), with values a shell can pass: sizes, numbers, paths, hostile text.

The CLI runs in-process against a daemon that is not there. Every run must
end as the CLI documents: exit status 0, 1, 2 (usage) or 3 (no daemon) —
argparse's own exit counts — never a traceback of another exception.
See docs/wire-protocol.md, "Fuzzing".
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import io
import sys
from pathlib import Path
from typing import Any

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.cli.common import MAX_SIZE, parse_size
from barterbackup.cli.main import build_parser, main
from tests.fuzzing import HOSTILE_TEXT, INTERESTING_INTEGERS, fuzz_target, texts

EXIT_CODES = {0, 1, 2, 3}
NUMBERS = [str(n) for n in INTERESTING_INTEGERS] + ["-1", "1e400", "nan", "9" * 400]
SIZES = ["4096", "500M", "10GiB", "1.5 GB", "0", "18446744073709551616", "9" * 400]


def _commands() -> list[tuple[list[str], argparse.ArgumentParser]]:
    """(command words, its parser) for every leaf command."""
    found: list[tuple[list[str], argparse.ArgumentParser]] = []

    def walk(words: list[str], parser: argparse.ArgumentParser) -> None:
        subparsers = [
            action
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
        ]
        if not subparsers:
            found.append((words, parser))
            return
        for name, child in sorted(subparsers[0].choices.items()):
            walk([*words, name], child)

    walk([], build_parser())
    return found


COMMANDS = _commands()


# What a shell can pass: anything but NUL (execve cannot carry it).
ARGUMENT_TEXT = texts().filter(lambda text: "\x00" not in text)
HOSTILE_ARGUMENTS = [text for text in HOSTILE_TEXT if "\x00" not in text]


def _value(action: argparse.Action) -> st.SearchStrategy[str]:
    if action.choices is not None:
        choices = [str(c) for c in action.choices]
        return st.one_of(st.sampled_from(choices), ARGUMENT_TEXT)
    if action.type is parse_size:
        return st.one_of(st.sampled_from(SIZES), ARGUMENT_TEXT)
    if action.type in (int, float):
        return st.one_of(st.sampled_from(NUMBERS), ARGUMENT_TEXT)
    return st.one_of(st.sampled_from(HOSTILE_ARGUMENTS), ARGUMENT_TEXT)


@functools.cache
def _arguments(index: int) -> st.SearchStrategy[list[str]]:
    words, parser = COMMANDS[index]
    pieces: list[st.SearchStrategy[list[str]]] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        takes_value = action.nargs != 0
        if action.option_strings:
            flag = st.sampled_from(action.option_strings)
            if takes_value:
                pieces.append(st.tuples(flag, _value(action)).map(list))
            else:
                pieces.append(flag.map(lambda f: [f]))
        else:
            pieces.append(_value(action).map(lambda v: [v]))
    if not pieces:
        return st.just(list(words))
    chosen = st.lists(st.one_of(pieces), max_size=5)
    return chosen.map(lambda parts: [*words, *(a for part in parts for a in part)])


argvs = st.integers(0, len(COMMANDS) - 1).flatmap(_arguments)


class CliArgumentsFuzz(SynchronousTestCase):
    def setUp(self) -> None:
        self.sandbox = Path(self.mktemp())
        self.sandbox.mkdir()
        # No daemon there; nothing may prompt or read a terminal.
        self.patch(getpass, "getpass", _no_password)
        self.patch(sys, "stdin", io.StringIO(""))

    @fuzz_target("cli.arguments", cost=2, argv=argvs)
    # Found by fuzzing: a 400-digit size was float infinity (OverflowError
    # out of argparse, a traceback), 1e20 did not fit the uint64 sent.
    @example(argv=["storage", "set", "--total", "9" * 400])
    @example(argv=["storage", "set", "--total", "99999999999999999999"])
    def test_every_command_line_ends_with_a_documented_status(
        self, argv: list[str]
    ) -> None:
        full = [
            "--node-dir",
            str(self.sandbox / "node"),
            "--socket",
            str(self.sandbox / "no.sock"),
            *argv,
        ]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code: Any = main(full)
            except SystemExit as exit:
                code = exit.code if exit.code is not None else 0
        self.assertIn(code, EXIT_CODES, err.getvalue()[-2000:])
        self.assertNotIn("Traceback", err.getvalue())

    @fuzz_target(
        "cli.sizes",
        text=st.one_of(
            st.sampled_from(SIZES),
            st.text(alphabet="0123456789.kmgtpiKMGTPIbB eE+-", max_size=30),
            texts(),
        ),
    )
    def test_a_size_is_a_uint64_or_a_usage_error(self, text: str) -> None:
        try:
            size = parse_size(text)
        except (argparse.ArgumentTypeError, ValueError):
            return  # argparse reports both as usage errors
        self.assertTrue(0 <= size <= MAX_SIZE)


def _no_password(prompt: str = "", stream: Any = None) -> str:
    raise EOFError("no terminal in the fuzz campaign")
