"""The one in-memory peer link: two real PeerConnections joined in memory.

Both ends run the real bbrpc code (handshake, framing, the call table's
dispatch, flow control), so a test exercises exactly what runs over TCP.
iosim's FakeTransport never pushes back on a producer, so it cannot show
that a stream waits for a slow reader: these transports pause their
producer above a high-water mark, and the link stops delivering to a side
that paused reading, as TCP does.

By default the link delivers by itself (``auto=True``): every write moves
bytes until nothing moves, synchronously, so a test (or the no-network
swarm) sees a call's answer as soon as the call is made. Tests can count
the bytes each way, tamper with frames, or cut the link after some frames.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.channel import PeerLimits
from barterbackup.bbrpc.connection import PeerConnection, ReactorTime
from barterbackup.bbrpc.framing import FrameDecoder, encode_frame
from barterbackup.bbrpc.handshake import Role
from barterbackup.bbrpc.outbox import OutboxLedger
from barterbackup.keys.derive import NodeKeys, node_keys_from_master

# Frames a tamper hook sees may be up to the authenticated limit.
_TAMPER_FRAME_LIMIT = PeerLimits().max_frame_length


def keys_for_test(index: int) -> NodeKeys:
    """Cheap, distinct, deterministic node keys (no Argon2id)."""
    if not 0 <= index < 256:
        raise ValueError("test key indexes are 0..255")
    return node_keys_from_master(bytes([index]) * 32)


class Direction(enum.Enum):
    """Which way bytes travel on a link."""

    to_server = "to server"
    to_client = "to client"


# A tamper hook gets each frame travelling one way and returns the frame to
# deliver instead, or None to drop it.
TamperHook = Callable[[bbrpc_pb2.Envelope], bbrpc_pb2.Envelope | None]


class FlowControlledTransport(StringTransport):
    """A StringTransport that pauses its producer when its buffer is full."""

    def __init__(self, high_water: int, on_activity: Callable[[], None]) -> None:
        super().__init__()
        self.high_water = high_water
        self.most_buffered = 0
        self._producer_paused = False
        self._on_activity = on_activity

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
        self._on_activity()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        super().loseConnection()
        self._on_activity()

    def abortConnection(self) -> None:
        self.loseConnection()

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
        self._on_activity()

    @property
    def reading_paused(self) -> bool:
        return self.producerState == "paused"


class PeerLink:
    """Two protocols joined in memory; ``pump()`` moves bytes both ways."""

    def __init__(
        self,
        client: Protocol,
        server: Protocol,
        high_water: int = 65536,
        auto: bool = True,
    ) -> None:
        self.client = client
        self.server = server
        self.auto = auto
        self.client_transport = FlowControlledTransport(high_water, self._activity)
        self.server_transport = FlowControlledTransport(high_water, self._activity)
        self.closed = False
        self.bytes = {Direction.to_server: 0, Direction.to_client: 0}
        self.frames = {Direction.to_server: 0, Direction.to_client: 0}
        self._tamper: dict[Direction, TamperHook] = {}
        self._decoders: dict[Direction, FrameDecoder] = {}
        self._cut_after: dict[Direction, int] = {}
        self._dirty = False
        # Nothing moves until both ends are connected.
        self._pumping = True
        server.makeConnection(self.server_transport)
        client.makeConnection(self.client_transport)
        self._pumping = False
        self._activity()

    # -- test controls --------------------------------------------------------

    @property
    def wire_bytes(self) -> int:
        """Bytes carried both ways so far."""
        return sum(self.bytes.values())

    def tamper(self, direction: Direction, hook: TamperHook | None) -> None:
        """Pass every frame travelling ``direction`` through ``hook``."""
        if hook is None:
            self._tamper.pop(direction, None)
        else:
            self._tamper[direction] = hook
            self._decoders.setdefault(direction, FrameDecoder(_TAMPER_FRAME_LIMIT))

    def cut_after_frames(self, direction: Direction, frames: int) -> None:
        """Drop the link once ``frames`` more frames crossed ``direction``."""
        self._cut_after[direction] = self.frames[direction] + frames
        self._decoders.setdefault(direction, FrameDecoder(_TAMPER_FRAME_LIMIT))

    def disconnect(self) -> None:
        """Close both ends, as a network failure would."""
        if self.closed:
            return
        self.closed = True
        reason = Failure(ConnectionDone("link cut"))
        self.client.connectionLost(reason)
        self.server.connectionLost(reason)

    # -- delivery -------------------------------------------------------------

    def _activity(self) -> None:
        self._dirty = True
        if self.auto and not self._pumping:
            self.pump()

    def pump(self, rounds: int = 100_000) -> None:
        """Deliver until nothing moves (or a reader paused); then closes."""
        if self._pumping:
            self._dirty = True
            return
        self._pumping = True
        try:
            for _ in range(rounds):
                self._dirty = False
                moved = self._move(
                    Direction.to_server,
                    self.client_transport,
                    self.server_transport,
                    self.server,
                )
                moved |= self._move(
                    Direction.to_client,
                    self.server_transport,
                    self.client_transport,
                    self.client,
                )
                if not moved and not self._dirty:
                    break
            else:
                raise AssertionError("the peer link did not settle")
            if not self.closed and (
                self.client_transport.disconnecting
                or self.server_transport.disconnecting
            ):
                self.disconnect()
        finally:
            self._pumping = False

    def _move(
        self,
        direction: Direction,
        source: FlowControlledTransport,
        sink: FlowControlledTransport,
        to: Protocol,
    ) -> bool:
        if self.closed or sink.reading_paused or not source.value():
            return False
        data = source.take()
        self.bytes[direction] += len(data)
        decoder = self._decoders.get(direction)
        if decoder is None:
            to.dataReceived(data)
            return True
        for envelope in decoder.feed(data):
            if self.closed:
                break
            self.frames[direction] += 1
            hook = self._tamper.get(direction)
            delivered = hook(envelope) if hook is not None else envelope
            if delivered is not None:
                to.dataReceived(encode_frame(delivered, _TAMPER_FRAME_LIMIT))
            limit = self._cut_after.get(direction)
            if limit is not None and self.frames[direction] >= limit:
                self.disconnect()
        return True


def connected_pair(
    clock: ReactorTime,
    client_keys: NodeKeys,
    server_keys: NodeKeys,
    client_handler: object,
    server_handler: object,
    limits: PeerLimits | None = None,
    high_water: int = 65536,
    auto: bool = True,
    server_ledger: OutboxLedger | None = None,
) -> tuple[PeerConnection, PeerConnection, PeerLink]:
    """A client and a server connection joined by a PeerLink, handshake run
    (the server's queued answers count in ``server_ledger`` if given)."""
    client = PeerConnection(
        clock,
        client_keys,
        client_handler,
        Role.CLIENT,
        dialed_address=server_keys.onion_address,
        limits=limits,
    )
    server = PeerConnection(
        clock,
        server_keys,
        server_handler,
        Role.SERVER,
        limits=limits,
        outbox_ledger=server_ledger,
    )
    link = PeerLink(client, server, high_water, auto)
    link.pump()
    return client, server, link


__all__ = [
    "Direction",
    "FlowControlledTransport",
    "PeerLink",
    "connected_pair",
    "keys_for_test",
]
