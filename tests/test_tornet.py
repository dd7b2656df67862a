"""Torrc generation and bookkeeping of the private Tor network (no Tor)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.testing.tornet import (
    MAX_NODES,
    AuthorityIdentity,
    NodePorts,
    TorProcess,
    _read_pid,
    all_ports,
    authority_torrc,
    choose_base_port,
    client_torrc,
    network_client_options,
    ports_are_free,
    render_torrc,
)

BASE = 30000
AUTHORITIES = [
    AuthorityIdentity(
        f"auth{i}", NodePorts.for_index(BASE, i), f"{i:040X}", f"{i + 10:040X}"
    )
    for i in range(4)
]
IPV4 = re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")


def as_dict(options: list[tuple[str, str]]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for option, value in options:
        result.setdefault(option, []).append(value)
    return result


class PortLayoutTests(SynchronousTestCase):
    def test_ports_by_index(self) -> None:
        ports = NodePorts.for_index(BASE, 5)
        self.assertEqual(
            (ports.or_port, ports.dir_port, ports.control_port, ports.socks_port),
            (BASE + 5, BASE + 105, BASE + 205, BASE + 305),
        )
        with self.assertRaises(ValueError):
            NodePorts.for_index(BASE, MAX_NODES)

    def test_all_ports_distinct(self) -> None:
        ports = all_ports(BASE)
        self.assertEqual(len(ports), len(set(ports)))
        self.assertEqual(len(ports), 4 * MAX_NODES)

    def test_busy_port_detected(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            self.assertFalse(ports_are_free([port]))
        base = choose_base_port()
        self.assertTrue(ports_are_free(all_ports(base)))


class TorrcTests(SynchronousTestCase):
    def test_authority_options(self) -> None:
        data_dir = Path("/tmp/net/auth1")
        options = as_dict(authority_torrc(AUTHORITIES[1], data_dir, AUTHORITIES, 42))
        self.assertEqual(options["TestingTorNetwork"], ["1"])
        self.assertEqual(options["AuthoritativeDirectory"], ["1"])
        self.assertEqual(options["V3AuthoritativeDirectory"], ["1"])
        self.assertEqual(options["ExitRelay"], ["0"])
        self.assertEqual(options["ExitPolicy"], ["reject *:*"])
        self.assertEqual(options["SocksPort"], ["0"])
        self.assertEqual(options["ORPort"], [f"127.0.0.1:{BASE + 1}"])
        self.assertEqual(options["DirPort"], [f"127.0.0.1:{BASE + 101}"])
        self.assertEqual(options["ControlPort"], [f"127.0.0.1:{BASE + 201}"])
        self.assertEqual(options["__OwningControllerProcess"], ["42"])
        self.assertEqual(options["CookieAuthentication"], ["1"])
        self.assertEqual(options["DataDirectory"], [str(data_dir)])
        self.assertEqual(len(options["DirAuthority"]), 4)
        self.assertIn(
            f"auth2 orport={BASE + 2} no-v2 v3ident={2:040X} "
            f"127.0.0.1:{BASE + 102} {12:040X}",
            options["DirAuthority"],
        )

    def test_client_options(self) -> None:
        ports = NodePorts.for_index(BASE, 4)
        options = as_dict(
            client_torrc("client4", Path("/tmp/c"), ports, AUTHORITIES, 42)
        )
        self.assertEqual(options["SocksPort"], [f"127.0.0.1:{BASE + 304}"])
        self.assertEqual(options["VanguardsLiteEnabled"], ["0"])
        for relay_only in ("ORPort", "DirPort", "AuthoritativeDirectory"):
            self.assertNotIn(relay_only, options)

    def test_only_loopback_addresses(self) -> None:
        ports = NodePorts.for_index(BASE, 4)
        everything = [
            *authority_torrc(AUTHORITIES[0], Path("/tmp/a"), AUTHORITIES, 1),
            *client_torrc("client4", Path("/tmp/c"), ports, AUTHORITIES, 1),
        ]
        addresses = {a for _, value in everything for a in IPV4.findall(value)}
        self.assertEqual(addresses, {"127.0.0.1"})

    def test_network_client_options(self) -> None:
        options = as_dict(network_client_options(AUTHORITIES))
        self.assertEqual(options["TestingTorNetwork"], ["1"])
        self.assertEqual(options["VanguardsLiteEnabled"], ["0"])
        self.assertEqual(options["PathsNeededToBuildCircuits"], ["0.67"])
        self.assertEqual(
            options["DirAuthority"], [a.dir_authority_line() for a in AUTHORITIES]
        )
        # A node's own tor gets these on top of txtorcon's: they must not
        # fight over the ports or directories txtorcon sets.
        for managed in ("SocksPort", "ControlPort", "DataDirectory"):
            self.assertNotIn(managed, options)

    def test_render_refuses_injection(self) -> None:
        self.assertEqual(render_torrc([("Nickname", "x")]), "Nickname x\n")
        for bad in [("Nickname", "x\nSocksPort 0.0.0.0:1"), ("Bad Name", "1")]:
            with self.assertRaises(ValueError):
                render_torrc([bad])


class PidFileTests(SynchronousTestCase):
    def test_partly_written_pid_file_is_not_read(self) -> None:
        pid_file = Path(self.mktemp())
        self.assertIsNone(_read_pid(pid_file))
        for partial in ("", "12", "12x\n"):
            pid_file.write_text(partial)
            self.assertIsNone(_read_pid(pid_file), partial)
        pid_file.write_text("1234\n")
        self.assertEqual(_read_pid(pid_file), 1234)


class ProcessIdentityTests(SynchronousTestCase):
    def test_pid_that_is_not_our_tor_is_never_signalled(self) -> None:
        ours = TorProcess(
            "auth0",
            NodePorts.for_index(BASE, 0),
            Path("/x"),
            Path("/x/torrc"),
            pid=os.getpid(),
        )
        # Our own PID is alive but its cmdline does not name the torrc.
        self.assertFalse(ours.is_running())
        ours.signal(9)  # would kill the test runner if it were not guarded
        gone = TorProcess(
            "auth0", NodePorts.for_index(BASE, 0), Path("/x"), Path("/x/torrc")
        )
        self.assertFalse(gone.is_running())
