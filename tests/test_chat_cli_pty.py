"""The real ``barterbackup chat`` in a terminal (a pty) against real daemons.

Two ``twistd barterbackup`` processes on 127.0.0.1 TCP; keys generated and
set with ``peers key``; then each side runs ``barterbackup chat`` in its
own pseudo-terminal, as a person would: a message each way (shown while
the other side has a half-typed line), a file offered with ``/file`` and
fetched with ``/get`` under a progress bar, then ``/quit``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.testing.daemon import BIN, DaemonProcess
from tests.util import PASSWORDS, short_tempdir

EXPECT_SECONDS = 60.0
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A command running on a pty we type into and read from."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        self.master = master
        self.process = subprocess.Popen(
            command,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env={**os.environ, "TERM": "xterm"},
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str) -> str:
        """Read until ``pattern`` (a regex) shows, ANSI sequences removed."""
        deadline = time.monotonic() + EXPECT_SECONDS
        wanted = re.compile(pattern.encode())
        while True:
            match = wanted.search(ANSI.sub(b"", self.seen))
            if match:
                return match.group(0).decode(errors="replace")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{pattern!r} not shown; the terminal shows:\n"
                    + ANSI.sub(b"", self.seen).decode(errors="replace")[-3000:]
                )
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the command exited: nothing more to read
                    chunk = b""
                if not chunk and self.process.poll() is not None:
                    continue
                self.seen += chunk

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        os.close(self.master)


class ChatInTerminalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = short_tempdir(self)
        self.daemons = []
        for index in range(2):
            daemon = DaemonProcess(
                self.tmp / f"n{index}",
                log_path=self.tmp / f"daemon{index}.log",
                extra_args=["--transport", "tcp"],
            )
            daemon.start()
            self.addCleanup(daemon.kill)
            password = self.tmp / f"password{index}"
            password.write_text(PASSWORDS[index] + "\n")
            daemon.cli(
                "unlock", "--create", "--password-file", str(password), check=True
            )
            self.daemons.append(daemon)
        self.status = [
            json.loads(d.cli("status", "--json", check=True).stdout)
            for d in self.daemons
        ]

    def chat(self, index: int, peer: str) -> Terminal:
        terminal = Terminal(
            [
                str(BIN / "barterbackup"),
                "--node-dir",
                str(self.daemons[index].node_dir),
                "chat",
                peer,
            ],
            cwd=self.tmp,
        )
        self.addCleanup(terminal.close)
        return terminal

    def test_messages_each_way_and_an_offer_fetched_with_a_progress_bar(self) -> None:
        alice_node, bob_node = self.daemons
        alice, bob = (s["onion_address"] for s in self.status)
        alice_node.cli(
            "peers",
            "connect",
            bob,
            "--endpoint",
            self.status[1]["peer_endpoint"],
            check=True,
        )
        made = alice_node.cli(
            "peers", "key", bob, "--generate", check=True
        ).stdout.decode()
        key_text = made.splitlines()[1].strip()
        fingerprint = made.split("fingerprint: ")[1].split()[0:4]
        key_file = self.tmp / "key.txt"
        key_file.write_text(key_text + "\n")
        bob_node.cli(
            "peers", "key", alice, "--set", "--key-file", str(key_file), check=True
        )
        shown = bob_node.cli("peers", "key", alice, check=True).stdout.decode()
        self.assertIn(" ".join(fingerprint), shown)

        alice_term = self.chat(0, bob)
        alice_term.expect(
            r"chat with \S+ open \(encrypted, key fingerprint " + " ".join(fingerprint)
        )
        bob_term = self.chat(1, alice)
        bob_term.expect(r"open \(encrypted")

        # Bob is half-way through a line when Alice's message arrives.
        bob_term.type("half a li")
        alice_term.type("hello from alice\r")
        bob_term.expect(r"<\w+> hello from alice")
        bob_term.type("ne from bob\r")
        alice_term.expect(r"<\w+> half a line from bob")

        data = hashlib.sha256(b"seed").digest() * (24 * 1024 * 1024 // 32)
        (self.tmp / "holiday.tar").write_bytes(data)
        alice_term.type("/file holiday.tar\r")
        alice_term.expect(r"offered holiday\.tar \(24\.0 MiB\)")
        offered = bob_term.expect(r"offers holiday\.tar, 24\.0 MiB.*?/get [0-9a-f]{8}")
        offer_id = offered.split("/get ")[1]
        inbox = self.tmp / "inbox"
        inbox.mkdir()
        bob_term.type(f"/get {offer_id} inbox\r")
        bob_term.expect(r"holiday\.tar [0-9a-f]{8}: fetching +0 B / 24\.0 MiB \(0%\)")
        bob_term.expect(r"24\.0 MiB / 24\.0 MiB \(100%\)")
        bob_term.expect(r"saved \S+holiday\.tar \(SHA-256 checked\)")
        self.assertEqual((inbox / "holiday.tar").read_bytes(), data)

        alice_term.type("/quit\r")
        alice_term.expect(r"chat closed")
        bob_term.expect(r"left the chat")
        bob_term.type("/quit\r")
        self.assertEqual(alice_term.process.wait(30), 0)
        self.assertEqual(bob_term.process.wait(30), 0)
