"""Nothing leaves outside Tor: two real daemons on the private Tor network,
one traced with strace, do what a user does (unlock, publish, connect by
onion address, back up, replicate); every socket the traced daemon and
its tor open or use is AF_UNIX or on 127.0.0.1, and there is no DNS.

Tor itself reaches the private network's relays on 127.0.0.1 (the test
network is all loopback), so any address outside loopback — or any use of
port 53, or a raw or packet socket — is a leak. One kind of netlink socket
is allowed: tor reads the local interface table (NETLINK_ROUTE, dump
requests RTM_GETLINK / RTM_GETADDR) when it starts using the network; that
is a question to the local kernel, nothing leaves the machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from barterbackup.testing.daemon import DaemonProcess
from tests.test_transport_tor_network import SHARED
from tests.util import PASSWORDS, short_tempdir

READY_SECONDS = 180.0
ALLOWED_FAMILIES = {"AF_UNIX", "AF_INET", "AF_INET6"}
_FAMILY = re.compile(r"sa_family=(AF_\w+)")
_IPV4 = re.compile(r'sin_port=htons\((\d+)\), sin_addr=inet_addr\("([\d.]+)"\)')
_IPV6 = re.compile(r'sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"')
_SOCKET = re.compile(r"\bsocket\((AF_\w+|PF_\w+)")
_ADDRESSED = re.compile(r"\b(connect|bind|sendto|sendmsg|recvfrom)\(")


def _local_interface_query(line: str) -> bool:
    """A read of the local interface table (see the module doc)."""
    if "AF_NETLINK" not in line:
        return False
    if line.split(" ", 1)[-1].startswith("socket("):
        return "NETLINK_ROUTE" in line
    if "sendto(" in line or "sendmsg(" in line:
        return "RTM_GETLINK" in line or "RTM_GETADDR" in line
    return True  # bind/recv on such a socket: the answers coming back


def leaks(trace_lines: Iterable[str]) -> list[str]:
    """The lines of an ``strace -e trace=network`` log that leave loopback."""
    found = []
    for line in trace_lines:
        if _local_interface_query(line):
            continue
        socket = _SOCKET.search(line)
        if socket and socket.group(1).replace("PF_", "AF_") not in ALLOWED_FAMILIES:
            found.append(line)
            continue
        if not _ADDRESSED.search(line):
            continue
        family = _FAMILY.search(line)
        if family is None or family.group(1) == "AF_UNIX":
            continue
        if family.group(1) not in ALLOWED_FAMILIES:
            found.append(line)
            continue
        for port, address in _IPV4.findall(line) + _IPV6.findall(line):
            if port == "53" or address not in ("127.0.0.1", "::1"):
                found.append(line)
    return found


class TracedDaemon(DaemonProcess):
    """A daemon traced by strace from just after its start: its unlock, its
    tor (a child, followed with -f) and every connection."""

    def __init__(self, *args: object, trace: Path, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.trace = trace
        self.strace: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> TracedDaemon:
        super().start(timeout)
        self.strace = subprocess.Popen(
            [
                "strace",
                "-f",
                "-qq",
                "-e",
                "trace=network",
                "-o",
                str(self.trace),
                "-p",
                str(self.pid),
            ],
            stderr=subprocess.DEVNULL,
        )
        # Attached once strace writes its first line (the daemon is idle
        # and polling, so a line comes at once).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.trace.exists() and self.trace.stat().st_size:
                break
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        code = super().stop(timeout)
        if self.strace is not None:
            try:
                self.strace.wait(10)
            except subprocess.TimeoutExpired:
                self.strace.kill()
        return code


class LeakTests(TestCase):
    # Network start (shared with other tests), two tors, an onion sync.
    timeout = 400

    async def test_nothing_leaves_loopback_and_no_dns(self) -> None:
        # make test installs strace (tools/system-deps.sh): never skipped.
        self.assertIsNotNone(shutil.which("strace"), "strace is not installed")
        network = await SHARED.get()
        tmp = short_tempdir(self)
        config = tmp / "tor-network.json"
        config.write_text(
            json.dumps({"torrc": [list(o) for o in network.client_torrc_options()]})
        )
        trace = tmp / "strace.log"
        lines = await deferToThread(self.run_nodes, tmp, config, trace)
        self.assertGreater(len(lines), 100, "strace saw almost nothing")
        # The trace is real: it saw the daemon's tor talk to the relays.
        self.assertTrue(any('inet_addr("127.0.0.1")' in line for line in lines))
        self.maxDiff = None
        self.assertEqual(leaks(lines), [])

    def run_nodes(self, tmp: Path, config: Path, trace: Path) -> list[str]:
        args = ["--tor-network-config", str(config)]
        traced = TracedDaemon(
            tmp / "a", log_path=tmp / "a.log", extra_args=args, trace=trace
        )
        other = DaemonProcess(tmp / "b", log_path=tmp / "b.log", extra_args=args)
        try:
            for daemon, password in ((traced, PASSWORDS[0]), (other, PASSWORDS[1])):
                daemon.start(timeout=60)
                secret = daemon.node_dir.parent / f"{daemon.node_dir.name}.password"
                secret.write_text(password + "\n")
                daemon.cli(
                    "unlock", "--create", "--password-file", str(secret), check=True
                )
            for daemon in (traced, other):
                wait_ready(daemon)
            address = json.loads(other.cli("status", "--json", check=True).stdout)[
                "onion_address"
            ]
            own = json.loads(traced.cli("status", "--json", check=True).stdout)[
                "onion_address"
            ]
            # Friends connect both ways: the default acceptance policy takes
            # contracts from peers our user connected.
            other.cli("peers", "connect", own, check=True, timeout=180)
            traced.cli("peers", "connect", address, check=True, timeout=180)
            files = tmp / "files"
            files.mkdir()
            (files / "note.txt").write_text("nothing leaves outside Tor\n" * 1000)
            traced.cli("files", "add", str(files), check=True)
            traced.cli(
                "contracts",
                "propose",
                address,
                "--ours",
                "4MiB",
                "--theirs",
                "4MiB",
                check=True,
                timeout=180,
            )
            traced.cli("replicate", address, check=True, timeout=180)
        finally:
            traced.stop()
            other.stop()
        return trace.read_text(errors="replace").splitlines()


def wait_ready(daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        status = json.loads(daemon.cli("status", "--json", check=True).stdout)
        state = status.get("peer_network", "")
        if state == "ready":
            return
        if state.startswith("failed"):
            raise AssertionError(f"peer network failed: {state}")
        time.sleep(1)
    raise AssertionError(f"onion not published in {READY_SECONDS} s")


class LeakParserTests(TestCase):
    """The parser catches what a leak looks like in strace's output."""

    def test_leaks_are_found(self) -> None:
        lines = [
            "1 connect(7, {sa_family=AF_INET, sin_port=htons(9050), "
            'sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
            "1 connect(8, {sa_family=AF_INET, sin_port=htons(443), "
            'sin_addr=inet_addr("93.184.216.34")}, 16) = -1 EINPROGRESS',
            '1 sendto(9, "\\x12", 30, 0, {sa_family=AF_INET, sin_port=htons(53), '
            'sin_addr=inet_addr("127.0.0.1")}, 16) = 30',
            "1 connect(10, {sa_family=AF_INET6, sin6_port=htons(80), "
            'sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2001:db8::1", '
            "&sin6_addr), sin6_scope_id=0}, 28) = 0",
            "1 socket(AF_PACKET, SOCK_RAW, 768) = 3",
            "1 socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_AUDIT) = 4",
            # Tor reading the interface table: local, allowed.
            "1 socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE) = 5",
            "1 sendto(5, [{nlmsg_len=20, nlmsg_type=RTM_GETADDR, ...}], 20, 0, "
            "{sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12) = 20",
            '1 bind(11, {sa_family=AF_UNIX, sun_path="/x/rpc.sock"}, 110) = 0',
        ]
        self.assertEqual(
            [line.split()[1].split("(")[0] for line in leaks(lines)],
            ["connect", "sendto", "connect", "socket", "socket"],
        )
