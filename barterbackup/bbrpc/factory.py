"""Building bbrpc connections: a listening factory and a dialing helper.

The listening factory admits connections within fixed bounds, because an
anonymous stranger can open as many as it likes: at most
``max_handshaking`` connections may be in their handshake at once (each
has ``handshake_timeout`` to finish), at most ``max_handshaking_per_source``
from one source address (over Tor every inbound connection comes from the
local tor, so this bounds a LAN peer on plain TCP), and at most
``max_connections`` in all. A connection over a bound is closed at once,
before it holds any state, so file descriptors stay free for the CLI, our
stores and the peers we know.
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from barterbackup.bbrpc.channel import PeerLimits
from barterbackup.bbrpc.connection import PeerConnection, ReactorTime
from barterbackup.bbrpc.handshake import HandshakeFailed, Role
from barterbackup.keys.derive import NodeKeys
from barterbackup.logs import get_logger

log = get_logger("barterbackup.bbrpc")

ConnectionHook = Callable[[PeerConnection], object]

# Descriptors kept out of reach of inbound peers: the CLI's gRPC server and
# its clients, the stores' pack files, tor's control connection, dials.
RESERVED_DESCRIPTORS = 256


@dataclass(frozen=True)
class AdmissionLimits:
    """How many inbound connections a listening node takes at once."""

    max_handshaking: int = 64
    max_handshaking_per_source: int = 16
    max_connections: int = 512

    @classmethod
    def for_this_process(cls) -> AdmissionLimits:
        """The defaults, within what the descriptor limit leaves.

        Raises the soft limit of open files to the hard one first (a
        service often starts with 1024).
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            wanted = 65536 if hard == resource.RLIM_INFINITY else hard
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (ValueError, OSError):
                pass
        room = max(16, soft - RESERVED_DESCRIPTORS)
        defaults = cls()
        return cls(
            max_handshaking=min(defaults.max_handshaking, room // 2),
            max_handshaking_per_source=min(
                defaults.max_handshaking_per_source, room // 2
            ),
            max_connections=min(defaults.max_connections, room),
        )


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
        admission: AdmissionLimits | None = None,
    ) -> None:
        self.reactor = reactor
        self.keys = keys
        self.handler = handler
        self.limits = limits
        self.on_authenticated = on_authenticated
        self.on_connection_lost = on_connection_lost
        self.admission = admission or AdmissionLimits()
        self.connections = 0
        self.handshaking = 0
        self._handshaking_from: Counter[str] = Counter()
        self.refused = 0

    def buildProtocol(self, addr: object) -> PeerConnection | None:
        source = str(getattr(addr, "host", "local"))
        refusal = self._refusal(source)
        if refusal:
            # Closed at once by the transport (no protocol): no state kept.
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warn(
                    "bbrpc: refusing inbound connections ({why}; {count} so far)",
                    why=refusal,
                    count=self.refused,
                )
            return None
        conn = PeerConnection(
            self.reactor, self.keys, self.handler, Role.SERVER, limits=self.limits
        )
        conn.factory = self
        self.connections += 1
        self.handshaking += 1
        self._handshaking_from[source] += 1

        def handshake_over(result: object) -> object:
            self.handshaking -= 1
            self._handshaking_from[source] -= 1
            if not self._handshaking_from[source]:
                del self._handshaking_from[source]
            return result

        def closed(result: object) -> object:
            self.connections -= 1
            return result

        conn.when_authenticated().addBoth(handshake_over).addCallbacks(
            self._authenticated, _handshake_failed
        )
        conn.when_closed().addBoth(closed)
        return conn

    def _refusal(self, source: str) -> str:
        admission = self.admission
        if self.connections >= admission.max_connections:
            return f"{admission.max_connections} connections open"
        if self.handshaking >= admission.max_handshaking:
            return f"{admission.max_handshaking} handshakes under way"
        if self._handshaking_from[source] >= admission.max_handshaking_per_source:
            return f"{admission.max_handshaking_per_source} handshakes from one source"
        return ""

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
