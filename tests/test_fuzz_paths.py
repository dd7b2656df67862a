"""Fuzzing the paths and options the daemon and the CLI take from their
command lines: twistd's ``barterbackup`` options (node directory, socket,
tor network config, numbers), the CLI's ``--node-dir`` / ``--socket``,
and the socket directory the daemon prepares.

A command line is outside input too: a typo must give a usage error, not
a traceback, and a socket path must never make the daemon change a
directory it did not create. See docs/wire-protocol.md, "Fuzzing".
"""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

from hypothesis import example
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.cli.common import EXIT_NO_DAEMON, CliError, socket_path, stub
from barterbackup.rpc.server import (
    MAX_SOCKET_PATH,
    SocketPathError,
    prepare_socket_directory,
)
from barterbackup.tap import Options
from tests.fuzzing import fuzz_target, texts

# What a shell can pass: no NUL, but undecodable bytes arrive as lone
# surrogates (surrogateescape).
ARGUMENT = st.one_of(
    texts().filter(lambda text: "\x00" not in text),
    st.text(
        alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), max_size=4
    ),
    st.sampled_from(["~", "~/x", "~nosuchuser-barterbackup/x", "-1", "1e3", " 7 "]),
)
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["", "nan", "0x10", "١٢", "65536", "-0"]),
    ARGUMENT,
)
TORRC_FILES = {
    "good.json": json.dumps({"torrc": [["TestingTorNetwork", "1"]]}),
    "shape.json": json.dumps({"torrc": [["a"], 3, {"b": 1}]}),
    "list.json": json.dumps([1, 2]),
    "bad.json": "{",
    "binary.json": "\udcff",
}


class _Sandbox(SynchronousTestCase):
    def setUp(self) -> None:
        self.sandbox = Path(self.mktemp()).resolve()
        self.sandbox.mkdir()
        for name, text in TORRC_FILES.items():
            (self.sandbox / name).write_bytes(text.encode("utf-8", "surrogateescape"))
        (self.sandbox / "dir.json").mkdir()
        (self.sandbox / "loop").symlink_to(self.sandbox / "loop")

    def in_sandbox(self) -> st.SearchStrategy[str]:
        names = [*TORRC_FILES, "dir.json", "missing.json", "loop", "loop/x"]
        return st.one_of(
            st.sampled_from(names).map(lambda n: str(self.sandbox / n)), ARGUMENT
        )


class DaemonOptionsFuzz(_Sandbox):
    def options(self) -> st.SearchStrategy[dict[str, str]]:
        places = self.in_sandbox()
        return st.fixed_dictionaries(
            {},
            optional={
                "node-dir": places,
                "socket": places,
                "log-level": st.one_of(st.sampled_from(["info", "debug"]), ARGUMENT),
                "transport": st.one_of(st.sampled_from(["tor", "tcp"]), ARGUMENT),
                "tcp-port": NUMBERS,
                "tor-control": ARGUMENT,
                "tor-binary": ARGUMENT,
                "tor-network-config": places,
                "onion-pow-rate": NUMBERS,
                "onion-pow-burst": NUMBERS,
                "onion-max-streams": NUMBERS,
            },
        )

    def test_options_parse_or_are_a_usage_error(self) -> None:
        run = fuzz_target("tap.options", options=self.options(), flag=st.booleans())(
            example(options={"node-dir": "~nosuchuser-barterbackup/x"}, flag=False)(
                example(options={"node-dir": str(self.sandbox / "loop")}, flag=False)(
                    DaemonOptionsFuzz.parse
                )
            )
        )
        run(self)

    def parse(self, options: dict[str, str], flag: bool) -> None:
        argv = [f"--{name}={value}" for name, value in options.items()]
        if flag:
            argv.append("--no-onion-pow")
        parsed = Options()
        try:
            parsed.parseOptions(argv)
        except usage.UsageError:
            return
        self.assertTrue(Path(parsed["node-dir"]).is_absolute())
        self.assertLessEqual(len(os.fsencode(str(parsed["socket"]))), MAX_SOCKET_PATH)
        self.assertIn(parsed["transport"], ("tor", "tcp"))
        self.assertTrue(0 <= parsed["tcp-port"] <= 65535)


class CliPathFuzz(_Sandbox):
    def test_the_cli_says_no_daemon_or_names_the_problem(self) -> None:
        places = self.in_sandbox()
        run = fuzz_target(
            "cli.socket_path",
            node_dir=st.none() | places,
            socket=st.none() | places,
        )(
            example(node_dir="~nosuchuser-barterbackup", socket=None)(
                CliPathFuzz.connect
            )
        )
        run(self)

    def connect(self, node_dir: str | None, socket: str | None) -> None:
        args = argparse.Namespace(node_dir=node_dir, socket=socket)
        try:
            path = socket_path(args)
        except CliError:
            return
        self.assertIsInstance(path, Path)
        if socket is None and node_dir is None:
            return  # the user's real default node directory: not ours to probe
        with self.assertRaises(CliError) as raised:
            stub(args)
        self.assertEqual(raised.exception.code, EXIT_NO_DAEMON)


def _modes(root: Path) -> dict[str, int]:
    return {
        str(path): path.lstat().st_mode for path in [root, *sorted(root.rglob("*"))]
    }


class SocketDirectoryFuzz(SynchronousTestCase):
    @fuzz_target(
        "rpc.socket_directory",
        cost=2,
        parts=st.lists(
            st.one_of(
                st.sampled_from(["private", "open", "file", "secret", "new", ".."]),
                texts().filter(lambda t: "\x00" not in t and "/" not in t and t),
            ),
            min_size=1,
            max_size=3,
        ),
        owned=st.booleans(),
    )
    @example(parts=["file", "x"], owned=False)
    @example(parts=["secret"], owned=False)
    # Found by fuzzing: "new/../open" did not exist, so it was created:
    # "new" made, then the existing "open" chmodded to 0700.
    @example(parts=["new", "..", "open"], owned=False)
    def test_only_a_private_directory_is_used_and_nothing_else_changes(
        self, parts: list[str], owned: bool
    ) -> None:
        sandbox = Path(self.mktemp()).resolve()
        (sandbox / "private").mkdir(parents=True, mode=0o700)
        (sandbox / "open").mkdir(mode=0o755)
        os.chmod(sandbox / "open", 0o755)
        (sandbox / "file").write_bytes(b"x")
        os.chmod(sandbox / "file", 0o644)
        (sandbox / "secret").write_bytes(b"x")
        os.chmod(sandbox / "secret", 0o600)
        before = _modes(sandbox)
        directory = sandbox.joinpath(*parts)
        try:
            found = prepare_socket_directory(directory, owned=owned)
        except SocketPathError:
            found = None
        if not owned:
            # Nothing that existed changed (only the node's own socket
            # directory is set back to 0700 when it drifted).
            after = _modes(sandbox)
            self.assertEqual({p: after.get(p) for p in before}, before)
        if found is None:
            return
        info = found.stat()
        self.assertTrue(stat.S_ISDIR(info.st_mode), f"{found} is not a directory")
        self.assertEqual(stat.S_IMODE(info.st_mode), 0o700)
        self.assertEqual(info.st_uid, os.getuid())
