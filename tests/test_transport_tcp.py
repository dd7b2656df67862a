"""PlainTcpTransport over real loopback."""

from __future__ import annotations

import os

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from barterbackup.keys.derive import node_keys_from_master
from barterbackup.transport.base import DestinationRefused, TransportError
from barterbackup.transport.tcp import PlainTcpTransport

PEER = node_keys_from_master(b"\x07" * 32).onion_address


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class Collect(Protocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(self.received)


class PlainTcpTransportTests(TestCase):
    async def test_echo_over_loopback(self) -> None:
        transport = PlainTcpTransport(global_reactor)
        self.addCleanup(lambda: Deferred.fromCoroutine(transport.stop()))
        await transport.start()
        await transport.listen(Factory.forProtocol(Echo))
        advertised = transport.advertised
        self.assertRegex(advertised, r"^tcp:127\.0\.0\.1:\d+$")
        payload = os.urandom(100_000)
        collector = Collect(len(payload))
        endpoint = transport.client_endpoint(PEER, advertised)
        client = await connectProtocol(endpoint, collector)
        client.transport.write(payload)  # type: ignore[attr-defined]
        received = await collector.done.addTimeout(5, global_reactor)
        client.transport.loseConnection()  # type: ignore[attr-defined]
        self.assertEqual(received, payload)

    def test_listens_only_on_given_interface(self) -> None:
        transport = PlainTcpTransport(global_reactor)
        self.assertEqual(transport.advertised, "")
        port = self.successResultOf(transport.listen(Factory.forProtocol(Echo)))
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().host, "127.0.0.1")
        with self.assertRaises(TransportError):
            transport.listen(Factory.forProtocol(Echo))

    def test_refuses_onion_without_endpoint(self) -> None:
        transport = PlainTcpTransport(global_reactor)
        with self.assertRaisesRegex(DestinationRefused, "explicit endpoint"):
            transport.client_endpoint(PEER, None)

    def test_refuses_other_endpoint_types(self) -> None:
        transport = PlainTcpTransport(global_reactor)
        for hint in ("tor:example.com:80", "tls:127.0.0.1:1", "ssl:x:1"):
            with self.assertRaises(DestinationRefused):
                transport.client_endpoint(PEER, hint)

    def test_refuses_malformed_endpoint(self) -> None:
        transport = PlainTcpTransport(global_reactor)
        for hint in (
            "tcp:127.0.0.1:notaport",
            "tcp:127.0.0.1:0",
            "tcp:127.0.0.1:99999",
            "tcp:127.0.0.1:1:timeout=1",
            "unix:relative/path",
        ):
            with self.assertRaisesRegex(DestinationRefused, "bad endpoint", msg=hint):
                transport.client_endpoint(PEER, hint)

    def test_accepts_loopback_and_unix_hints(self) -> None:
        transport = PlainTcpTransport(global_reactor)
        for hint in ("tcp:127.0.0.1:9", "tcp:host=127.1.2.3:port=9", "unix:/x/y"):
            self.assertIsNotNone(transport.client_endpoint(PEER, hint))

    def test_refuses_addresses_off_this_machine(self) -> None:
        transport = PlainTcpTransport(global_reactor)
        for hint in ("tcp:10.0.0.1:9", "tcp:192.168.1.2:9", "tcp:8.8.8.8:53"):
            with self.assertRaisesRegex(DestinationRefused, "outside", msg=hint):
                transport.client_endpoint(PEER, hint)
        lan = PlainTcpTransport(global_reactor, trusted_lan=True)
        self.assertIsNotNone(lan.client_endpoint(PEER, "tcp:10.0.0.1:9"))

    def test_never_resolves_names(self) -> None:
        lan = PlainTcpTransport(global_reactor, trusted_lan=True)
        for hint in ("tcp:localhost:9", "tcp:example.com:80"):
            with self.assertRaisesRegex(DestinationRefused, "DNS", msg=hint):
                lan.client_endpoint(PEER, hint)

    def test_listening_off_loopback_needs_trust(self) -> None:
        with self.assertRaisesRegex(ValueError, "unprotected"):
            PlainTcpTransport(global_reactor, interface="0.0.0.0")
        with self.assertRaisesRegex(ValueError, "IPv4"):
            PlainTcpTransport(global_reactor, interface="localhost")
        PlainTcpTransport(global_reactor, interface="0.0.0.0", trusted_lan=True)

    def test_refuses_invalid_onion_address(self) -> None:
        transport = PlainTcpTransport(global_reactor)
        with self.assertRaises(DestinationRefused):
            transport.client_endpoint("example.com", "tcp:127.0.0.1:1")
