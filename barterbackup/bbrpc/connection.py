"""One bbrpc connection: bytes → frames → handshake → multiplexed calls.

The protocol class is deliberately thin. Framing (framing.py) and the
handshake checks (handshake.py) are pure functions; calls the peer opened
live in inbound.py, calls we opened in outbound.py. This module holds what
connects them: the handshake state, timers, the frame dispatch loop, and
flow control in both directions.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from barterbackup._proto import bbrpc_pb2
from barterbackup.allocator import keep_freed_buffers_for_reuse
from barterbackup.bbrpc import handshake
from barterbackup.bbrpc.channel import PeerLimits
from barterbackup.bbrpc.errors import (
    CallCancelled,
    ErrorCode,
    PeerConnectionLost,
    PeerProtocolError,
)
from barterbackup.bbrpc.framing import FrameDecoder, FrameError, encode_payload
from barterbackup.bbrpc.handshake import HandshakeFailed, Role
from barterbackup.bbrpc.inbound import InboundCalls
from barterbackup.bbrpc.outbound import OutboundCalls, OutgoingStream, not_authenticated
from barterbackup.bbrpc.outbox import SHARED_LEDGER, OutboxLedger
from barterbackup.keys import onion
from barterbackup.keys.derive import NodeKeys
from barterbackup.logs import get_logger

log = get_logger("barterbackup.bbrpc")

# An IReactorTime provider (the real reactor or task.Clock). Typed Any
# because mypy here has no zope.interface plugin to check providers.
ReactorTime = Any

HANDSHAKE_CALL_ID = 0
TRANSPORT_BUFFER_SIZE = 1 * 1024 * 1024


class _State(enum.Enum):
    awaiting_hello = "awaiting hello"
    awaiting_auth = "awaiting auth"
    authenticated = "authenticated"
    closed = "closed"


@implementer(IPushProducer)
class PeerConnection(Protocol):
    """One peer connection, either role, from handshake to close.

    After ``when_authenticated()`` fires, ``peer_pubkey`` and
    ``peer_onion_address`` name the proven peer, and ``call``,
    ``call_stream`` and ``ping`` may be used; the peer's calls are served by
    ``handler`` (see calls.py for what a handler is). The connection is
    registered as a streaming producer with its transport, which pauses it
    when its write buffer is full: stream handlers then get ``send``
    Deferreds that wait for the buffer to drain.
    """

    def __init__(
        self,
        reactor: ReactorTime,
        keys: NodeKeys,
        handler: object,
        role: Role,
        dialed_address: str = "",
        limits: PeerLimits | None = None,
        outbox_ledger: OutboxLedger | None = None,
    ) -> None:
        if role is Role.CLIENT:
            dialed_address = onion.normalize_onion_address(dialed_address)
        self.reactor = reactor
        self.keys = keys
        self.role = role
        self.dialed_address = dialed_address
        self.limits = limits or PeerLimits()
        self.peer_pubkey: bytes | None = None
        self.peer_onion_address: str | None = None
        self.rtt: float | None = None

        self._state = _State.awaiting_hello
        self._decoder = FrameDecoder(self.limits.max_handshake_frame_length)
        self._our_nonce = os.urandom(handshake.NONCE_LENGTH)
        self._our_hello = b""
        self._peer_hello = b""
        self._failure_reason: str | None = None
        # Set once we abort: frames already read are then not handled (the
        # transport calls connectionLost only later).
        self._aborted = False
        # None until the handshake ends; then this connection or the Failure.
        self._handshake_outcome: PeerConnection | Failure | None = None
        self._handshake_waiters: list[Deferred[PeerConnection]] = []
        self._close_waiters: list[Deferred[PeerConnection]] = []
        self._handshake_timer: Any = None
        self._idle_timer: Any = None

        self.inbound = InboundCalls(self, handler)
        self.outbound = OutboundCalls(self, 1 if role is Role.CLIENT else 2)

        # Frames wait undecoded in the decoder while delivery is paused (a
        # stream consumer's on_item Deferred is pending).
        self._delivery_paused = False
        self._dispatching = False
        # Write-side flow control, driven by the transport (IPushProducer):
        # while it is paused, answers wait in the outbox (bounded) and
        # stream items are not written at all (their senders wait).
        self.writes_paused = False
        self._outbox: deque[tuple[bytes, ...]] = deque()
        self._outbox_bytes = 0
        self._ledger = outbox_ledger or SHARED_LEDGER
        self._reading_paused = False
        # Stream items waiting for the transport's write buffer to drain,
        # with the call each belongs to and the bytes it holds; those bytes
        # count in the process's ledger like queued answers (a peer that
        # opens 32 streams and reads nothing holds 32 items).
        self._write_waiters: deque[
            tuple[object, Callable[[], None], Deferred[None], int]
        ] = deque()

    # -- public API ---------------------------------------------------------

    @property
    def handler(self) -> object:
        """The object serving the peer's calls (see calls.py)."""
        return self.inbound.handler

    @property
    def authenticated(self) -> bool:
        return self._state is _State.authenticated

    def when_authenticated(self) -> Deferred[PeerConnection]:
        """Fires with this connection once the handshake succeeded.

        Fails with HandshakeFailed if it did not (any check, a timeout, or
        the connection closing first).
        """
        if isinstance(self._handshake_outcome, Failure):
            return fail(self._handshake_outcome)
        if self._handshake_outcome is not None:
            return succeed(self)
        result: Deferred[PeerConnection] = Deferred()
        self._handshake_waiters.append(result)
        return result

    def when_closed(self) -> Deferred[PeerConnection]:
        """Fires with this connection once it is closed, for any reason."""
        result: Deferred[PeerConnection] = Deferred()
        if self._state is _State.closed:
            result.callback(self)
        else:
            self._close_waiters.append(result)
        return result

    def call(self, request_field: str, message: Message) -> Deferred[Any]:
        """Open a unary call; fires with the response message.

        Fails with PeerCallError if the peer answered with an Error, and with
        PeerConnectionLost if the connection closed first. Cancelling the
        Deferred sends Cancel to the peer.
        """
        if not self.authenticated:
            return not_authenticated()
        return self.outbound.open(request_field, message, streaming=False)

    def call_stream(
        self,
        request_field: str,
        message: Message,
        on_item: Callable[[Any], object],
    ) -> Deferred[None]:
        """Open a server-streaming call; ``on_item`` gets each item in order.

        If on_item returns a Deferred, no further frame of this connection is
        handled (and the transport stops reading) until it fires, so a slow
        consumer slows the sender instead of filling memory. If on_item
        raises or its Deferred fails, the call is cancelled and the returned
        Deferred fails with that error. Fires with None at the stream's end.
        """
        if not self.authenticated:
            return not_authenticated()
        return self.outbound.open(
            request_field, message, streaming=True, on_item=on_item
        )

    def open_stream(
        self,
        request_field: str,
        message: Message,
        on_item: Callable[[Any], object],
    ) -> OutgoingStream:
        """Open a call streaming both ways (Chat); see OutgoingStream.

        ``on_item`` gets the peer's items as for ``call_stream``.
        """
        if not self.authenticated:
            raise PeerConnectionLost("connection is not authenticated")
        return self.outbound.open_stream(request_field, message, on_item)

    def ping(self) -> Deferred[float]:
        """Measure the round-trip time in seconds; also stored in ``rtt``."""
        if not self.authenticated:
            return not_authenticated()
        return self.outbound.ping()

    def close(self) -> None:
        """Close the connection; open calls fail with PeerConnectionLost."""
        if self.transport is not None and self._state is not _State.closed:
            self._transport().loseConnection()

    # -- Protocol -----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self._transport()
        if hasattr(transport, "bufferSize"):
            # Twisted's TCP transport reads at most bufferSize bytes per event
            # (and pauses producers above that much buffered for writing).
            # Until the peer is authenticated a read is one handshake frame's
            # worth, so a stranger makes us hold little; afterwards 1 MiB, as
            # the 64 KiB default costs 16 reactor turns per 1 MiB item.
            transport.bufferSize = self.limits.max_handshake_frame_length
            # And writes at most SEND_LIMIT (128 KiB) per event: one frame
            # per send call instead of eight measured twice as fast.
            transport.SEND_LIMIT = TRANSPORT_BUFFER_SIZE
            keep_freed_buffers_for_reuse()
        if hasattr(transport, "setTcpNoDelay"):
            # Calls are small request/response exchanges and every frame is
            # written whole: Nagle would only delay each frame's last segment.
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        self._handshake_timer = self.reactor.callLater(
            self.limits.handshake_timeout, self._handshake_timed_out
        )
        self._idle_timer = self.reactor.callLater(
            self.limits.idle_timeout, self._idle_timed_out
        )
        hello = handshake.new_hello(
            self.keys, self._our_nonce, self.reactor.seconds(), self.dialed_address
        )
        self._our_hello = handshake.hello_bytes(hello)
        self.send_envelope(bbrpc_pb2.Envelope(call_id=HANDSHAKE_CALL_ID, hello=hello))

    def dataReceived(self, data: bytes) -> None:
        if self._state is _State.closed or self._aborted:
            return
        try:
            self._decoder.add(data)
        except FrameError as e:
            self._drop(f"bad frame: {e}")
            return
        self._dispatch_pending()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        was_authenticated = self._state is _State.authenticated
        self._state = _State.closed
        for timer in (self._handshake_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._clear_outbox()
        if not was_authenticated and self._handshake_outcome is None:
            why = self._failure_reason or "connection closed during the handshake"
            self._end_handshake(Failure(HandshakeFailed(why)))
        self.inbound.cancel_all()
        self.fail_all_write_waiters()
        self.outbound.fail_all(f"connection to {self._peer_name()} closed")
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    # -- IPushProducer: the transport tells us when its buffer is full ------

    def pauseProducing(self) -> None:
        self.writes_paused = True

    def resumeProducing(self) -> None:
        self.writes_paused = False
        # Queued answers first, in order; then the waiting stream senders.
        while self._outbox and not self.writes_paused:
            parts = self._outbox.popleft()
            size = sum(len(p) for p in parts)
            self._outbox_bytes -= size
            self._ledger.remove(self, size)
            self._transport().writeSequence(parts)
        self._update_reading()
        while self._write_waiters and self.writable:
            _, write, waiter, size = self._write_waiters.popleft()
            self._ledger.remove(self, size)
            write()
            waiter.callback(None)

    def stopProducing(self) -> None:
        self.fail_all_write_waiters()

    # -- write-side flow control for stream items ---------------------------

    def write_when_writable(
        self, owner: object, write: Callable[[], None], size: int = 0
    ) -> Deferred[None]:
        """Run ``write`` (one stream item of call ``owner``, ``size`` bytes)
        now if writable, else once it is; fires after it ran. While it
        waits, its bytes count in the process's outbox ledger (which may
        drop this connection if it holds the most)."""
        if self.writable and not self._write_waiters:
            write()
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._write_waiters.append((owner, write, waiter, size))
        self._ledger.add(self, size)  # may drop us: the waiter then fails
        return waiter

    def hold_answer_bytes(self, count: int) -> None:
        """``count`` bytes were read from disk for this peer's answers and
        wait to be sent (a Download's read-ahead): they count in the
        process's outbox ledger until ``release_answer_bytes``. Past the
        ledger's limit the connection holding the most is dropped, as for
        queued answers."""
        if self._state is _State.closed:
            return
        self._ledger.add(self, count)

    def release_answer_bytes(self, count: int) -> None:
        """Bytes held with ``hold_answer_bytes`` were sent or dropped."""
        self._ledger.remove(self, count)

    def fail_write_waiters(self, owner: object) -> None:
        mine = [e for e in self._write_waiters if e[0] is owner]
        self._write_waiters = deque(e for e in self._write_waiters if e[0] is not owner)
        for _, _, waiter, size in mine:
            self._ledger.remove(self, size)
            waiter.errback(CallCancelled("the call was cancelled"))

    def fail_all_write_waiters(self) -> None:
        waiters, self._write_waiters = self._write_waiters, deque()
        for _, _, waiter, size in waiters:
            self._ledger.remove(self, size)
            waiter.errback(CallCancelled("the connection closed"))

    # -- dispatch -----------------------------------------------------------

    def _dispatch_pending(self) -> None:
        # Re-entrancy guard: a callback fired while handling a frame may end
        # up here again; the outer loop will handle what is queued.
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while (
                not self._delivery_paused
                and self._state is not _State.closed
                and not self._aborted
            ):
                try:
                    envelope = self._decoder.next()
                except FrameError as e:
                    self._drop(f"bad frame: {e}")
                    return
                if envelope is None:
                    return
                self._touch()
                try:
                    self._handle(envelope)
                except HandshakeFailed as e:
                    self._failure_reason = str(e)
                    self._drop(f"handshake failed: {e}")
                except PeerProtocolError as e:
                    self._drop(f"protocol violation: {e}")
        finally:
            self._dispatching = False

    def _handle(self, envelope: bbrpc_pb2.Envelope) -> None:
        kind = envelope.WhichOneof("body")
        if self._state is _State.awaiting_hello:
            if kind != "hello" or envelope.call_id != HANDSHAKE_CALL_ID:
                raise HandshakeFailed(f"expected Hello, got {kind or 'an empty frame'}")
            self._receive_hello(envelope.hello)
        elif self._state is _State.awaiting_auth:
            if kind != "auth" or envelope.call_id != HANDSHAKE_CALL_ID:
                raise HandshakeFailed(f"expected Auth, got {kind or 'an empty frame'}")
            self._receive_auth(envelope.auth)
        elif kind in ("hello", "auth") or envelope.call_id == HANDSHAKE_CALL_ID:
            raise PeerProtocolError(
                f"{kind} with call id {envelope.call_id} after the handshake"
            )
        elif self._opened_by_peer(envelope.call_id):
            self.inbound.handle(envelope, kind)
        else:
            self.outbound.handle_reply(envelope, kind)

    def _opened_by_peer(self, call_id: int) -> bool:
        ours = 1 if self.role is Role.CLIENT else 0
        return call_id % 2 != ours

    def pause_delivery(self, until: Deferred[Any]) -> None:
        """Handle no further frame (and stop reading) until ``until`` fires."""
        self._delivery_paused = True
        self._update_reading()

        def resume(result: object) -> object:
            self._delivery_paused = False
            if self._state is not _State.closed:
                self._update_reading()
                self._dispatch_pending()
            return result

        until.addBoth(resume)

    def _update_reading(self) -> None:
        """Read from the peer only while we deliver and it reads our answers.

        A peer that sends requests but does not read the answers would
        otherwise make us queue answers without end: past
        ``outbox_pause_bytes`` queued we stop reading its requests.
        """
        if self._state is _State.closed or self.transport is None:
            return
        pause = (
            self._delivery_paused or self._outbox_bytes > self.limits.outbox_pause_bytes
        )
        if pause and not self._reading_paused:
            self._reading_paused = True
            self._transport().pauseProducing()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            self._transport().resumeProducing()

    # -- handshake ----------------------------------------------------------

    def _receive_hello(self, hello: bbrpc_pb2.Hello) -> None:
        handshake.check_peer_hello(
            hello,
            our_role=self.role,
            our_keys=self.keys,
            our_nonce=self._our_nonce,
            now=self.reactor.seconds(),
            dialed_address=self.dialed_address,
            max_clock_skew=self.limits.max_clock_skew,
        )
        self._peer_hello = handshake.hello_bytes(hello)
        self.peer_pubkey = bytes(hello.onion_pubkey)
        self._state = _State.awaiting_auth
        auth = handshake.sign_transcript(self.keys, self.role, *self._hellos())
        self.send_envelope(bbrpc_pb2.Envelope(call_id=HANDSHAKE_CALL_ID, auth=auth))

    def _receive_auth(self, auth: bbrpc_pb2.Auth) -> None:
        assert self.peer_pubkey is not None
        handshake.verify_auth(auth, self.peer_pubkey, self.role.other, *self._hellos())
        self.peer_onion_address = onion.onion_address_from_pubkey(self.peer_pubkey)
        self._state = _State.authenticated
        self._decoder.max_frame_length = self.limits.max_frame_length
        transport = self._transport()
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = TRANSPORT_BUFFER_SIZE
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        log.info(
            "bbrpc {role} connection with {peer} authenticated",
            role=self.role.name.lower(),
            peer=self.peer_onion_address,
        )
        self._end_handshake(self)

    def _end_handshake(self, outcome: PeerConnection | Failure) -> None:
        self._handshake_outcome = outcome
        waiters, self._handshake_waiters = self._handshake_waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    def _hellos(self) -> tuple[bytes, bytes]:
        """(client Hello bytes, server Hello bytes) for the transcript."""
        if self.role is Role.CLIENT:
            return self._our_hello, self._peer_hello
        return self._peer_hello, self._our_hello

    def _handshake_timed_out(self) -> None:
        self._failure_reason = (
            f"handshake not completed within {self.limits.handshake_timeout:.0f} s"
        )
        self._drop(self._failure_reason)

    # -- sending --------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """True when a stream item may be written now (nothing is queued)."""
        return not self.writes_paused and not self._outbox

    def send_envelope(self, envelope: bbrpc_pb2.Envelope) -> None:
        if self._state is _State.closed or self.transport is None:
            return
        self.send_parts(encode_payload(envelope, self.limits.max_frame_length))

    def send_parts(self, parts: tuple[bytes, ...]) -> None:
        """Write a frame now, or queue it (bounded) while writes are paused."""
        if self._state is _State.closed or self.transport is None:
            return
        self._touch()
        if self.writable:
            self._transport().writeSequence(parts)
            return
        size = sum(len(p) for p in parts)
        self._outbox.append(parts)
        self._outbox_bytes += size
        if self._outbox_bytes > self.limits.max_outbox_bytes:
            self._drop(
                f"it does not read our answers ({self._outbox_bytes} bytes "
                f"queued, at most {self.limits.max_outbox_bytes})"
            )
            return
        self._ledger.add(self, size)  # may drop us, or another non-reader
        if not self._outbox:
            return  # dropped: the ledger cleared our outbox
        self._update_reading()

    def drop_for_outbox(self, total: int, limit: int) -> None:
        """The process holds too many unread answers and ours are the most
        (OutboxLedger): drop this connection."""
        self._drop(
            f"it does not read our answers ({self._outbox_bytes} bytes queued; "
            f"{total} for all peers, at most {limit}, and this peer's are "
            "the most)"
        )

    def _clear_outbox(self) -> None:
        self._outbox.clear()
        self._outbox_bytes = 0
        self._ledger.release(self)

    def send_frame(self, frame: bytes) -> None:
        """Write a stream item framed as one bytes object (only when
        ``writable``: stream senders wait for it)."""
        # One bytes object: Twisted sends it as is, where a sequence of parts
        # would be joined (copied) into its write buffer first.
        if self._state is _State.closed or self.transport is None:
            return
        if not self.writable:
            self.send_parts((frame,))
            return
        self._touch()
        self._transport().write(frame)

    def send_error(self, call_id: int, code: ErrorCode, message: str) -> None:
        self.send_envelope(
            bbrpc_pb2.Envelope(
                call_id=call_id,
                end=True,
                error=bbrpc_pb2.Error(code=code, message=message),
            )
        )

    def send_cancel(self, call_id: int) -> None:
        self.send_envelope(
            bbrpc_pb2.Envelope(call_id=call_id, end=True, cancel=bbrpc_pb2.Cancel())
        )

    # -- timers and closing ---------------------------------------------------

    def _touch(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.limits.idle_timeout)

    def _idle_timed_out(self) -> None:
        log.info(
            "bbrpc connection with {peer} idle for {seconds:.0f} s, closing",
            peer=self._peer_name(),
            seconds=self.limits.idle_timeout,
        )
        self._abort()

    def _drop(self, why: str) -> None:
        """Drop a connection whose peer misbehaved; log why (no secrets)."""
        if self._state is _State.closed or self._aborted:
            return
        if self._state is not _State.authenticated and self._failure_reason is None:
            self._failure_reason = why
        log.warn(
            "bbrpc: dropping {role} connection with {peer}: {why}",
            role=self.role.name.lower(),
            peer=self._peer_name(),
            why=why,
        )
        self._abort()

    def _abort(self) -> None:
        if self._state is _State.closed or self._aborted:
            return
        self._aborted = True
        self._clear_outbox()
        self._transport().abortConnection()

    def _peer_name(self) -> str:
        if self.peer_onion_address is not None:
            return self.peer_onion_address
        if self.transport is not None:
            return str(self._transport().getPeer())
        return "an unknown peer"

    def _transport(self) -> Any:
        # ITransport & IConsumer & IProducer; Any for want of a zope plugin.
        return self.transport
