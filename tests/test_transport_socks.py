"""The SOCKS5 client endpoint against a scripted proxy (no network)."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.transport.socks import (
    Socks5ClientEndpoint,
    SocksError,
    connect_request,
)

HOST = "a" * 56 + ".onion"
PORT = 4177
IPV4_SUCCESS = bytes([5, 0, 0, 1, 0, 0, 0, 0, 0, 0])


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class FakeProxyEndpoint:
    """Connects the SOCKS client protocol to a StringTransport."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None

    def connect(self, factory: Any) -> Deferred[Any]:
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        done: Deferred[Any] = Deferred()
        done.callback(self.protocol)
        return done


def connect(
    isolation: str | None = None, clock: Clock | None = None
) -> tuple[FakeProxyEndpoint, Deferred[IProtocol], Recorder]:
    proxy = FakeProxyEndpoint()
    app = Recorder()
    endpoint = Socks5ClientEndpoint(
        proxy,  # type: ignore[arg-type]
        HOST,
        PORT,
        isolation,
        reactor=clock,
        timeout=None if clock is None else 30.0,
    )
    connected = endpoint.connect(Factory.forProtocol(lambda: app))
    return proxy, connected, app


def sent(proxy: FakeProxyEndpoint) -> bytes:
    data = proxy.transport.value()
    proxy.transport.clear()
    return bytes(data)


class SocksClientTests(SynchronousTestCase):
    def test_connect_request_uses_domain_name(self) -> None:
        request = connect_request(HOST, PORT)
        self.assertEqual(request[:5], bytes([5, 1, 0, 3, len(HOST)]))
        self.assertEqual(request[5:-2], HOST.encode())
        self.assertEqual(struct.unpack("!H", request[-2:])[0], PORT)

    def test_handshake_then_application_bytes(self) -> None:
        proxy, connected, app = connect()
        self.assertEqual(sent(proxy), bytes([5, 1, 0]))
        proxy.protocol.dataReceived(bytes([5, 0]))
        self.assertEqual(sent(proxy), connect_request(HOST, PORT))
        self.assertNoResult(connected)
        proxy.protocol.dataReceived(IPV4_SUCCESS[:6])
        self.assertNoResult(connected)
        proxy.protocol.dataReceived(IPV4_SUCCESS[6:])
        self.assertIs(self.successResultOf(connected), app)
        proxy.protocol.dataReceived(b"hello")
        self.assertEqual(app.received, b"hello")
        app.transport.write(b"out")  # type: ignore[union-attr]
        self.assertEqual(sent(proxy), b"out")

    def test_bytes_arriving_with_the_reply_are_delivered(self) -> None:
        # txtorcon 26.6 keeps these until more data arrives; a server that
        # speaks first and then waits would never be heard.
        proxy, connected, app = connect()
        proxy.protocol.dataReceived(bytes([5, 0]))
        proxy.protocol.dataReceived(IPV4_SUCCESS + b"server hello")
        self.successResultOf(connected)
        self.assertEqual(app.received, b"server hello")

    def test_domain_reply(self) -> None:
        proxy, connected, app = connect()
        proxy.protocol.dataReceived(bytes([5, 0]))
        reply = bytes([5, 0, 0, 3, 3]) + b"abc" + b"\x00\x50"
        proxy.protocol.dataReceived(reply + b"x")
        self.successResultOf(connected)
        self.assertEqual(app.received, b"x")

    def test_error_reply_is_explained(self) -> None:
        proxy, connected, _app = connect()
        proxy.protocol.dataReceived(bytes([5, 0]))
        proxy.protocol.dataReceived(bytes([5, 0xF0, 0, 1, 0, 0, 0, 0, 0, 0]))
        failure = self.failureResultOf(connected, SocksError)
        self.assertEqual(failure.value.code, 0xF0)
        self.assertIn("descriptor cannot be found", str(failure.value))
        self.assertTrue(proxy.transport.disconnecting)

    def test_isolation_sent_as_credentials(self) -> None:
        proxy, connected, _app = connect(isolation="stream-2")
        self.assertEqual(sent(proxy), bytes([5, 1, 2]))
        proxy.protocol.dataReceived(bytes([5, 2]))
        token = b"stream-2"
        self.assertEqual(
            sent(proxy), bytes([1, len(token)]) + token + bytes([len(token)]) + token
        )
        proxy.protocol.dataReceived(bytes([1, 0]))
        self.assertEqual(sent(proxy), connect_request(HOST, PORT))
        proxy.protocol.dataReceived(IPV4_SUCCESS)
        self.successResultOf(connected)

    def test_refused_credentials(self) -> None:
        proxy, connected, _app = connect(isolation="x")
        proxy.protocol.dataReceived(bytes([5, 2]))
        proxy.protocol.dataReceived(bytes([1, 1]))
        self.failureResultOf(connected, SocksError)

    def test_not_a_socks5_proxy(self) -> None:
        proxy, connected, _app = connect()
        proxy.protocol.dataReceived(b"HTTP/1.0 400")
        self.failureResultOf(connected, SocksError)

    def test_proxy_demanding_auth_we_did_not_offer(self) -> None:
        proxy, connected, _app = connect()
        proxy.protocol.dataReceived(bytes([5, 0xFF]))
        self.failureResultOf(connected, SocksError)

    def test_lost_during_handshake(self) -> None:
        proxy, connected, app = connect()
        proxy.protocol.connectionLost(Failure(Exception("gone")))
        failure = self.failureResultOf(connected, SocksError)
        self.assertIn("during handshake", str(failure.value))
        self.assertIsNone(app.lost)

    def test_lost_after_connect_reaches_application(self) -> None:
        proxy, connected, app = connect()
        proxy.protocol.dataReceived(bytes([5, 0]) + IPV4_SUCCESS)
        self.successResultOf(connected)
        proxy.protocol.connectionLost(Failure(Exception("closed")))
        self.assertIsNotNone(app.lost)

    def test_timeout_aborts_the_proxy_connection(self) -> None:
        clock = Clock()
        proxy, connected, _app = connect(clock=clock)
        proxy.protocol.dataReceived(bytes([5, 0]))
        clock.advance(29)
        self.assertNoResult(connected)
        clock.advance(2)
        self.failureResultOf(connected, TimeoutError)
        self.assertTrue(proxy.transport.disconnecting)

    def test_bad_hosts_refused_early(self) -> None:
        for host, port in [("", 1), ("x" * 256, 1), ("h", 0), ("h", 70000)]:
            with self.assertRaises(ValueError):
                Socks5ClientEndpoint(None, host, port)  # type: ignore[arg-type]
