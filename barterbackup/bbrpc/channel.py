"""What the call tables (inbound.py, outbound.py) need of their connection,
and the limits every connection enforces.

Kept apart from connection.py so the call tables depend on this small
interface, not on the protocol class that owns them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc import handshake
from barterbackup.bbrpc.errors import ErrorCode

MAX_HANDSHAKE_FRAME_LENGTH = 64 * 1024
# The largest item any call carries is a 1 MiB Download piece (or a sealed
# EncryptedDownload piece); 64 KiB on top covers the envelope and fields.
# Revisions are small signed roots and trees travel node by node, so no
# frame needs more whatever the content's size.
MAX_AUTHENTICATED_FRAME_LENGTH = 1024 * 1024 + 64 * 1024


@dataclass(frozen=True)
class PeerLimits:
    """Every bound one connection enforces; all times in seconds."""

    # max_frame_length is the largest frame accepted or sent once the peer
    # is authenticated: one 1 MiB piece and its envelope.
    max_frame_length: int = MAX_AUTHENTICATED_FRAME_LENGTH
    # max_handshake_frame_length bounds frames before authentication, so an
    # anonymous stranger can make us buffer no more than this.
    max_handshake_frame_length: int = MAX_HANDSHAKE_FRAME_LENGTH
    # max_concurrent_calls is how many calls the peer may have open with us;
    # one more is answered ERROR_CODE_BUSY.
    max_concurrent_calls: int = 32
    # handshake_timeout bounds connect → authenticated; Tor is slow.
    handshake_timeout: float = 30.0
    # idle_timeout closes a connection no frame crossed for that long.
    idle_timeout: float = 600.0
    # max_clock_skew is how far a peer's Hello timestamp may be from ours.
    max_clock_skew: float = handshake.DEFAULT_MAX_CLOCK_SKEW
    # outbox_pause_bytes: answers queued past the transport's own buffer
    # (the peer is not reading them) beyond which we stop reading its
    # requests, so it cannot make us produce more.
    outbox_pause_bytes: int = 1024 * 1024
    # max_outbox_bytes: answers queued beyond which the peer is dropped. It
    # leaves room for one largest frame on top of the pause mark.
    max_outbox_bytes: int = MAX_AUTHENTICATED_FRAME_LENGTH + 2 * 1024 * 1024
    # max_ping_payload is the longest ping payload answered; a longer one
    # is a protocol violation (a pong must not amplify).
    max_ping_payload: int = 64


class FrameChannel(Protocol):
    """The sending half of a connection, as the call tables use it."""

    # reactor is an IReactorTime provider (typed Any: no zope plugin here).
    reactor: Any
    limits: PeerLimits
    # writes_paused is True while the transport's write buffer is full.
    writes_paused: bool
    # rtt is the last measured round-trip time in seconds.
    rtt: float | None

    @property
    def writable(self) -> bool: ...

    def send_envelope(self, envelope: bbrpc_pb2.Envelope) -> None: ...

    def send_parts(self, parts: tuple[bytes, ...]) -> None: ...

    def send_frame(self, frame: bytes) -> None: ...

    def send_error(self, call_id: int, code: ErrorCode, message: str) -> None: ...

    def send_cancel(self, call_id: int) -> None: ...

    def pause_delivery(self, until: Deferred[Any]) -> None: ...

    def write_when_writable(
        self, owner: object, write: Callable[[], None], size: int = 0
    ) -> Deferred[None]: ...

    def fail_write_waiters(self, owner: object) -> None: ...
