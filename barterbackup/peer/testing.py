"""In-memory bbrpc connections for tests, with real flow control.

iosim's FakeTransport never pushes back on a producer, so it cannot show
that a stream waits for a slow reader. ``MemoryPipe`` joins two protocols
through StringTransports that pause their producer above a high-water mark,
and stops delivering to a side that paused reading, as TCP does.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from barterbackup.keys.derive import NodeKeys, node_keys_from_master
from barterbackup.peer.connection import PeerConnection, PeerLimits, ReactorTime
from barterbackup.peer.handler import PeerRequestHandler
from barterbackup.peer.handshake import Role


def keys_for_test(index: int) -> NodeKeys:
    """Cheap, distinct, deterministic node keys (no Argon2id)."""
    return node_keys_from_master(bytes([index]) * 32)


class FlowControlledTransport(StringTransport):
    """A StringTransport that pauses its producer when its buffer is full."""

    def __init__(self, high_water: int) -> None:
        super().__init__()
        self.high_water = high_water
        self.most_buffered = 0
        self._producer_paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        buffered = len(self.io.getbuffer())
        self.most_buffered = max(self.most_buffered, buffered)
        if (
            self.producer is not None
            and self.streaming
            and not self._producer_paused
            and buffered > self.high_water
        ):
            self._producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def take(self) -> bytes:
        """Everything written so far; resumes a paused producer (drained)."""
        data = self.value()
        self.clear()
        if self._producer_paused and self.producer is not None:
            self._producer_paused = False
            self.producer.resumeProducing()
        return data

    # Reading is paused and resumed by the protocol even while closing;
    # StringTransport's state checks would raise there.
    def pauseProducing(self) -> None:
        self.producerState = "paused"

    def resumeProducing(self) -> None:
        self.producerState = "producing"

    @property
    def reading_paused(self) -> bool:
        return self.producerState == "paused"


class MemoryPipe:
    """Two protocols joined in memory; ``pump()`` moves bytes both ways."""

    def __init__(
        self, client: Protocol, server: Protocol, high_water: int = 65536
    ) -> None:
        self.client = client
        self.server = server
        self.client_transport = FlowControlledTransport(high_water)
        self.server_transport = FlowControlledTransport(high_water)
        self.closed = False
        server.makeConnection(self.server_transport)
        client.makeConnection(self.client_transport)

    def pump(self, rounds: int = 10_000) -> None:
        """Deliver until nothing moves (or a reader paused); then closes."""
        for _ in range(rounds):
            moved = self._move(
                self.client_transport, self.server_transport, self.server
            )
            moved |= self._move(
                self.server_transport, self.client_transport, self.client
            )
            if not moved:
                break
        else:
            raise AssertionError("pump did not settle")
        if not self.closed and (
            self.client_transport.disconnecting or self.server_transport.disconnecting
        ):
            self.closed = True
            reason = Failure(ConnectionDone("closed"))
            self.client.connectionLost(reason)
            self.server.connectionLost(reason)

    def _move(
        self,
        source: FlowControlledTransport,
        sink: FlowControlledTransport,
        to: Protocol,
    ) -> bool:
        if self.closed or sink.reading_paused or not source.value():
            return False
        to.dataReceived(source.take())
        return True


def connected_pair(
    reactor: ReactorTime,
    client_keys: NodeKeys,
    server_keys: NodeKeys,
    client_handler: PeerRequestHandler,
    server_handler: PeerRequestHandler,
    limits: PeerLimits | None = None,
    high_water: int = 65536,
) -> tuple[PeerConnection, PeerConnection, MemoryPipe]:
    """A client and a server connection joined by a MemoryPipe, handshake run."""
    client = PeerConnection(
        reactor,
        client_keys,
        client_handler,
        Role.CLIENT,
        dialed_address=server_keys.onion_address,
        limits=limits,
    )
    server = PeerConnection(
        reactor, server_keys, server_handler, Role.SERVER, limits=limits
    )
    pipe = MemoryPipe(client, server, high_water)
    pipe.pump()
    return client, server, pipe


__all__ = ["FlowControlledTransport", "MemoryPipe", "connected_pair", "keys_for_test"]
