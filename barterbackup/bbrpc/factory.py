"""Building bbrpc connections: a listening factory and a dialing helper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from barterbackup.bbrpc.channel import PeerLimits
from barterbackup.bbrpc.connection import PeerConnection, ReactorTime
from barterbackup.bbrpc.handshake import HandshakeFailed, Role
from barterbackup.keys.derive import NodeKeys

ConnectionHook = Callable[[PeerConnection], object]


class PeerServerFactory(Factory):
    """Serves bbrpc on a listening endpoint (the port Tor maps the onion to).

    ``on_authenticated`` is called with each connection whose handshake
    succeeded, ``on_connection_lost`` with each authenticated connection
    that closed, so the node can track which peers are connected.
    """

    def __init__(
        self,
        reactor: ReactorTime,
        keys: NodeKeys,
        handler: object,
        limits: PeerLimits | None = None,
        on_authenticated: ConnectionHook | None = None,
        on_connection_lost: ConnectionHook | None = None,
    ) -> None:
        self.reactor = reactor
        self.keys = keys
        self.handler = handler
        self.limits = limits
        self.on_authenticated = on_authenticated
        self.on_connection_lost = on_connection_lost

    def buildProtocol(self, addr: object) -> PeerConnection:
        conn = PeerConnection(
            self.reactor, self.keys, self.handler, Role.SERVER, limits=self.limits
        )
        conn.factory = self
        conn.when_authenticated().addCallbacks(self._authenticated, _handshake_failed)
        return conn

    def _authenticated(self, conn: PeerConnection) -> None:
        if self.on_authenticated is not None:
            self.on_authenticated(conn)
        if self.on_connection_lost is not None:
            conn.when_closed().addCallback(self.on_connection_lost)


def _handshake_failed(failure: Failure) -> None:
    # The connection already logged why it dropped the peer.
    failure.trap(HandshakeFailed)


class _PeerClientFactory(Factory):
    def __init__(
        self,
        reactor: ReactorTime,
        keys: NodeKeys,
        handler: object,
        dialed_address: str,
        limits: PeerLimits | None,
    ) -> None:
        self.reactor = reactor
        self.keys = keys
        self.handler = handler
        self.dialed_address = dialed_address
        self.limits = limits

    def buildProtocol(self, addr: object) -> PeerConnection:
        conn = PeerConnection(
            self.reactor,
            self.keys,
            self.handler,
            Role.CLIENT,
            dialed_address=self.dialed_address,
            limits=self.limits,
        )
        conn.factory = self
        return conn


def connect_peer(
    reactor: ReactorTime,
    endpoint: Any,
    keys: NodeKeys,
    expected_onion_address: str,
    handler: object,
    limits: PeerLimits | None = None,
) -> Deferred[PeerConnection]:
    """Dial ``endpoint`` and authenticate the peer as ``expected_onion_address``.

    ``endpoint`` is an IStreamClientEndpoint (a Tor onion endpoint, or TCP in
    tests and LANs). Fires with the PeerConnection once the handshake
    succeeded; fails with HandshakeFailed if it did not, or with the
    endpoint's error if the connection could not be made. Cancelling the
    Deferred aborts the connection attempt.
    """
    factory = _PeerClientFactory(reactor, keys, handler, expected_onion_address, limits)
    connecting: Deferred[Any] = endpoint.connect(factory)
    result: Deferred[PeerConnection] = Deferred(lambda d: connecting.cancel())

    def connected(conn: PeerConnection) -> Deferred[PeerConnection]:
        # From here on, cancelling means dropping the half-open connection.
        result._canceller = lambda d: conn.transport.abortConnection()  # type: ignore[union-attr]
        return conn.when_authenticated()

    connecting.addCallback(connected).chainDeferred(result)
    return result
