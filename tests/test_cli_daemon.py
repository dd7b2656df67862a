"""The real CLI against a real ``twistd barterbackup`` process."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.passwords import OTHER_STRONG, STRONG
from tests.util import short_tempdir, tcp_daemon


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def tcp_listeners() -> dict[str, str]:
    """Listening TCP sockets: inode → "tcp:HOST:PORT" (IPv4 only shown)."""
    listeners = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if fields[3] != "0A":  # TCP_LISTEN
                    continue
                host_hex, port_hex = fields[1].split(":")
                if len(host_hex) == 8:
                    host = ".".join(str(b) for b in bytes.fromhex(host_hex)[::-1])
                else:
                    host = host_hex
                listeners[fields[9]] = f"tcp:{host}:{int(port_hex, 16)}"
    return listeners


class CliDaemonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = short_tempdir(self)
        self.node_dir = self.tmp / "node"
        self.daemon = tcp_daemon(self, self.node_dir)
        self.password_file = self.tmp / "password"
        self.password_file.write_text(STRONG + "\n")

    def cli(self, *args: str, input: bytes | None = None) -> tuple[int, str, str]:
        result = self.daemon.cli(*args, input=input)
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    def unlock(self) -> str:
        code, out, err = self.cli(
            "unlock", "--create", "--password-file", str(self.password_file)
        )
        self.assertEqual(code, 0, err)
        return out.split()[-1]

    def test_locked_then_unlocked_status(self) -> None:
        code, out, _ = self.cli("status", "--json")
        self.assertEqual(code, 0)
        self.assertFalse(json.loads(out)["unlocked"])
        code, _, err = self.cli("files", "list")
        self.assertEqual(code, 1)
        self.assertIn("node is locked", err)
        address = self.unlock()
        code, out, _ = self.cli("status", "--json")
        status = json.loads(out)
        self.assertTrue(status["unlocked"])
        self.assertEqual(status["onion_address"], address)

    def test_files_round_trip(self) -> None:
        self.unlock()
        source = self.tmp / "photos"
        (source / "2024").mkdir(parents=True)
        (source / "a.txt").write_bytes(b"alpha\n")
        (source / "2024" / "b.bin").write_bytes(os.urandom(300_000))
        (source / "empty").write_bytes(b"")
        code, out, err = self.cli("files", "add", str(source))
        self.assertEqual(code, 0, err)
        self.assertIn("revision 1", out)
        # The same files again (same bytes and stat): nothing to commit.
        code, out, err = self.cli("files", "add", str(source))
        self.assertEqual((code, out.strip()), (0, "no changes; revision 1 kept"), err)
        code, out, _ = self.cli("files", "list", "--json")
        self.assertEqual(
            json.loads(out), ["photos/2024/b.bin", "photos/a.txt", "photos/empty"]
        )
        code, out, _ = self.cli("files", "get", "photos/a.txt")
        self.assertEqual((code, out), (0, "alpha\n"))
        target = self.tmp / "restored.bin"
        code, _, err = self.cli("files", "get", "photos/2024/b.bin", "-o", str(target))
        self.assertEqual(code, 0, err)
        self.assertEqual(target.read_bytes(), (source / "2024" / "b.bin").read_bytes())
        code, out, _ = self.cli("files", "rm", "photos/empty")
        self.assertEqual(code, 0)
        self.assertIn("revision 2", out)
        code, _, err = self.cli("files", "get", "photos/empty")
        self.assertEqual(code, 1)
        self.assertIn("photos/empty", err)
        # A missing file leaves no partial output behind.
        missing = self.tmp / "never.bin"
        code, _, _ = self.cli("files", "get", "nope", "-o", str(missing))
        self.assertEqual(code, 1)
        self.assertFalse(missing.exists())

    def test_bad_input_gets_clear_errors(self) -> None:
        self.unlock()
        code, _, err = self.cli("files", "add", str(self.tmp / "does-not-exist"))
        self.assertEqual(code, 1)
        self.assertIn("cannot read", err)
        code, _, err = self.cli("peers", "connect", "not-an-onion")
        self.assertEqual(code, 1)
        self.assertIn("not a v3 onion address", err)
        code, _, err = self.cli("storage", "set", "--total", "lots")
        self.assertEqual(code, 2)
        self.assertIn("not a size", err)
        code, _, err = self.cli("contracts", "check", "not-an-onion")
        self.assertEqual(code, 1)
        self.assertIn("not a v3 onion address", err)
        code, out, _ = self.cli("contracts", "list")
        self.assertEqual(code, 0)
        self.assertIn("no contracts yet", out)

    def test_wrong_password(self) -> None:
        self.unlock()
        self.daemon.stop()
        self.daemon.start()
        wrong = self.tmp / "wrong"
        wrong.write_text(OTHER_STRONG + "\n")
        code, _, err = self.cli("unlock", "--password-file", str(wrong))
        self.assertEqual(code, 1)
        self.assertIn("wrong password", err)
        self.assertNotIn(OTHER_STRONG, err)
        # Standard input works as the password file too.
        code, out, err = self.cli(
            "unlock", "--password-file", "-", input=STRONG.encode() + b"\n"
        )
        self.assertEqual(code, 0, err)
        self.assertIn("unlocked", out)

    def test_socket_is_private_and_no_tcp_listener(self) -> None:
        rpc_dir = self.daemon.socket_path.parent
        self.assertEqual(stat.S_IMODE(rpc_dir.stat().st_mode), 0o700)
        # Locked, the daemon serves only the CLI socket: no TCP at all.
        listening = socket_inodes(self.daemon.pid) & set(tcp_listeners())
        self.assertEqual(listening, set(), "the CLI API must never listen on TCP")
        # Unlocked, the only TCP listener is the peer server the transport
        # announces, on 127.0.0.1 (Tor maps the onion to it).
        self.unlock()
        code, out, _ = self.cli("status", "--json")
        self.assertEqual(code, 0)
        endpoint = json.loads(out)["peer_endpoint"]
        ours = {
            inode: address
            for inode, address in tcp_listeners().items()
            if inode in socket_inodes(self.daemon.pid)
        }
        self.assertEqual(list(ours.values()), [endpoint])
        self.assertTrue(endpoint.startswith("tcp:127.0.0.1:"))

    def test_sigterm_stops_cleanly(self) -> None:
        self.unlock()
        # twistd re-raises the signal it stopped on, so -SIGTERM is clean.
        self.assertIn(self.daemon.stop(), (0, -signal.SIGTERM))
        self.assertIn("Server Shut Down", self.daemon.log_tail())

    def test_no_daemon(self) -> None:
        self.daemon.stop()
        code, _, err = self.cli("status")
        self.assertEqual(code, 3)
        self.assertIn("is the daemon running?", err)
