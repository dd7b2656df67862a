"""One bbrpc connection: bytes → frames → handshake → multiplexed calls.

The protocol class is deliberately thin. Framing (framing.py) and the
handshake checks (handshake.py) are pure functions; this module holds the
state between them: timers, the call tables and flow control.

Call ids: the side that dialed (the client) numbers its calls 1, 3, 5, …;
the side that listened (the server) numbers its calls 2, 4, 6, … So the
parity of an id tells which side opened the call, and both sides can call
each other on one connection without coordination. The handshake uses id 0.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from twisted.internet.defer import (
    Deferred,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from barterbackup._proto import bbrpc_pb2
from barterbackup.keys import onion
from barterbackup.keys.derive import NodeKeys
from barterbackup.peer import handshake
from barterbackup.peer.allocator import keep_freed_buffers_for_reuse
from barterbackup.peer.calls import CALLABLE, CALLS, CallSpec, check_message
from barterbackup.peer.errors import (
    CallCancelled,
    ErrorCode,
    PeerCallError,
    PeerConnectionLost,
    PeerProtocolError,
)
from barterbackup.peer.framing import (
    ACCEPTS_DOWNLOAD_PIECES,
    DownloadPiece,
    FrameDecoder,
    FrameError,
    encode_body_frame,
    encode_download_piece_frame,
    encode_payload,
)
from barterbackup.peer.handler import PeerRequestHandler
from barterbackup.peer.handshake import HandshakeFailed, Role

log = Logger()

# An IReactorTime provider (the real reactor or task.Clock). Typed Any
# because mypy here has no zope.interface plugin to check providers.
ReactorTime = Any

HANDSHAKE_CALL_ID = 0
PING_PAYLOAD_LENGTH = 8
TRANSPORT_BUFFER_SIZE = 1 * 1024 * 1024
# Sent instead of an exception's text: it could hold paths or key material.
INTERNAL_ERROR_MESSAGE = "internal error while serving the call"


MAX_HANDSHAKE_FRAME_LENGTH = 64 * 1024
MAX_AUTHENTICATED_FRAME_LENGTH = 64 * 1024 * 1024 + 64 * 1024


@dataclass(frozen=True)
class PeerLimits:
    """Every bound one connection enforces; all times in seconds."""

    # max_frame_length is the largest frame accepted or sent once the peer
    # is authenticated. A signed revision travels in one frame and takes
    # ~4.5 MB per GiB of content, so this admits contents up to ~14 GiB.
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


class _State(enum.Enum):
    awaiting_hello = "awaiting hello"
    awaiting_auth = "awaiting auth"
    authenticated = "authenticated"
    closed = "closed"


class _InboundCall:
    """A call the peer opened and our handler serves."""

    def __init__(self, conn: PeerConnection, call_id: int, spec: CallSpec) -> None:
        self.conn = conn
        self.call_id = call_id
        self.spec = spec
        self.cancelled = False
        self.finished = False
        self.handler_result: Deferred[Any] | None = None

    def send(self, message: Message | DownloadPiece) -> Deferred[None]:
        """The StreamSender given to a stream handler.

        A Download handler may send DownloadPiece items instead of
        DownloadResponse messages: same bytes on the wire, fewer copies.
        """
        if self.cancelled:
            return fail(CallCancelled(f"call {self.call_id} was cancelled"))
        if self.finished:
            return fail(RuntimeError(f"stream {self.call_id} already ended"))
        if isinstance(message, DownloadPiece):
            if self.spec.response_field != "download_response":
                raise TypeError(f"a DownloadPiece is not a {self.spec.response_field}")
            self.conn._send_frame(
                encode_download_piece_frame(
                    self.call_id, message, self.conn.limits.max_frame_length
                )
            )
            return self.conn._when_writable(self)
        check_message(self.spec.response_field, message)
        # Built with the item as a keyword: no extra copy of large items.
        self.conn._send_parts(
            encode_body_frame(
                self.call_id,
                False,
                self.spec.response_field,
                message,
                self.conn.limits.max_frame_length,
            )
        )
        return self.conn._when_writable(self)

    setattr(send, ACCEPTS_DOWNLOAD_PIECES, True)

    def handler_succeeded(self, result: object) -> None:
        if self.cancelled:
            return
        envelope = bbrpc_pb2.Envelope(call_id=self.call_id, end=True)
        if not self.spec.streaming:
            try:
                check_message(self.spec.response_field, result)  # type: ignore[arg-type]
            except TypeError as e:
                log.error("bbrpc handler returned a wrong type: {e}", e=e)
                self.answer_error(bbrpc_pb2.ERROR_CODE_INTERNAL, INTERNAL_ERROR_MESSAGE)
                return
            getattr(envelope, self.spec.response_field).CopyFrom(result)
        self._finish()
        self.conn._send(envelope)

    def handler_failed(self, failure: Failure) -> None:
        if self.cancelled:
            # The handler stopping because we cancelled it is no news.
            return
        error = failure.check(PeerCallError)
        if error is not None:
            value: PeerCallError = failure.value  # type: ignore[assignment]
            self.answer_error(value.code, value.message)
            return
        log.failure(
            "bbrpc handler for {field} (call {call_id}) failed",
            failure,
            field=self.spec.request_field,
            call_id=self.call_id,
        )
        self.answer_error(bbrpc_pb2.ERROR_CODE_INTERNAL, INTERNAL_ERROR_MESSAGE)

    def answer_error(self, code: ErrorCode, message: str) -> None:
        self._finish()
        self.conn._send_error(self.call_id, code, message)

    def cancel(self) -> None:
        """Stop serving: fail pending sends, cancel the handler's Deferred."""
        if self.cancelled or self.finished:
            return
        self.cancelled = True
        self.conn._inbound.pop(self.call_id, None)
        self.conn._fail_write_waiters(self)
        if self.handler_result is not None:
            self.handler_result.cancel()

    def _finish(self) -> None:
        self.finished = True
        self.conn._inbound.pop(self.call_id, None)


class _OutboundCall:
    """A call we opened; the peer answers it."""

    def __init__(
        self,
        call_id: int,
        result: Deferred[Any],
        spec: CallSpec | None,
        on_item: Callable[[Any], object] | None = None,
        ping_payload: bytes = b"",
        started: float = 0.0,
    ) -> None:
        self.call_id = call_id
        self.result = result
        self.spec = spec
        self.on_item = on_item
        self.ping_payload = ping_payload
        self.started = started


@implementer(IPushProducer)
class PeerConnection(Protocol):
    """One peer connection, either role, from handshake to close.

    After ``when_authenticated()`` fires, ``peer_pubkey`` and
    ``peer_onion_address`` name the proven peer, and ``call``,
    ``call_stream`` and ``ping`` may be used; the peer's calls are served by
    ``handler``. The connection is registered as a streaming producer with
    its transport, which pauses it when its write buffer is full: stream
    handlers then get ``send`` Deferreds that wait for the buffer to drain.
    """

    def __init__(
        self,
        reactor: ReactorTime,
        keys: NodeKeys,
        handler: PeerRequestHandler,
        role: Role,
        dialed_address: str = "",
        limits: PeerLimits | None = None,
    ) -> None:
        if role is Role.CLIENT:
            dialed_address = onion.normalize_onion_address(dialed_address)
        self.reactor = reactor
        self.keys = keys
        self.handler = handler
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
        # None until the handshake ends; then this connection or the Failure.
        self._handshake_outcome: PeerConnection | Failure | None = None
        self._handshake_waiters: list[Deferred[PeerConnection]] = []
        self._close_waiters: list[Deferred[PeerConnection]] = []
        self._handshake_timer: Any = None
        self._idle_timer: Any = None

        self._next_call_id = 1 if role is Role.CLIENT else 2
        self._outbound: dict[int, _OutboundCall] = {}
        self._inbound: dict[int, _InboundCall] = {}

        # Frames decoded but not yet handled: delivery pauses while a
        # stream consumer's on_item Deferred is pending.
        self._pending: deque[bbrpc_pb2.Envelope] = deque()
        self._delivery_paused = False
        self._dispatching = False
        # Write-side flow control, driven by the transport (IPushProducer).
        self._writes_paused = False
        self._write_waiters: deque[tuple[_InboundCall, Deferred[None]]] = deque()

    # -- public API ---------------------------------------------------------

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
        spec = self._callable_spec(request_field, message, streaming=False)
        return self._open_call(spec, message, None)

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
        spec = self._callable_spec(request_field, message, streaming=True)
        return self._open_call(spec, message, on_item)

    def ping(self) -> Deferred[float]:
        """Measure the round-trip time in seconds; also stored in ``rtt``."""
        if not self.authenticated:
            return fail(PeerConnectionLost("connection is not authenticated"))
        call_id = self._take_call_id()
        payload = os.urandom(PING_PAYLOAD_LENGTH)
        result: Deferred[float] = Deferred(lambda d: self._forget_outbound(call_id))
        self._outbound[call_id] = _OutboundCall(
            call_id, result, None, ping_payload=payload, started=self.reactor.seconds()
        )
        self._send(
            bbrpc_pb2.Envelope(
                call_id=call_id, end=True, ping=bbrpc_pb2.Ping(payload=payload)
            )
        )
        return result

    def close(self) -> None:
        """Close the connection; open calls fail with PeerConnectionLost."""
        if self.transport is not None and self._state is not _State.closed:
            self._transport().loseConnection()

    # -- Protocol -----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self._transport()
        if hasattr(transport, "bufferSize"):
            # Twisted's TCP transport reads at most bufferSize bytes per
            # event and pauses producers above it; its 64 KiB default costs
            # 16 reactor turns per 1 MiB item. One frame's worth is still a
            # small, fixed bound per connection.
            transport.bufferSize = TRANSPORT_BUFFER_SIZE
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
        self._send(bbrpc_pb2.Envelope(call_id=HANDSHAKE_CALL_ID, hello=hello))

    def dataReceived(self, data: bytes) -> None:
        if self._state is _State.closed:
            return
        try:
            envelopes = self._decoder.feed(data)
        except FrameError as e:
            self._drop(f"bad frame: {e}")
            return
        if envelopes:
            self._touch()
            self._pending.extend(envelopes)
            self._dispatch_pending()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        was_authenticated = self._state is _State.authenticated
        self._state = _State.closed
        for timer in (self._handshake_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._pending.clear()
        if not was_authenticated and self._handshake_outcome is None:
            why = self._failure_reason or "connection closed during the handshake"
            self._end_handshake(Failure(HandshakeFailed(why)))
        for call in list(self._inbound.values()):
            call.cancel()
        outbound, self._outbound = self._outbound, {}
        for out in outbound.values():
            out.result.errback(
                PeerConnectionLost(f"connection to {self._peer_name()} closed")
            )
        self._fail_all_write_waiters()
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    # -- IPushProducer: the transport tells us when its buffer is full ------

    def pauseProducing(self) -> None:
        self._writes_paused = True

    def resumeProducing(self) -> None:
        self._writes_paused = False
        while self._write_waiters and not self._writes_paused:
            _, waiter = self._write_waiters.popleft()
            waiter.callback(None)

    def stopProducing(self) -> None:
        self._fail_all_write_waiters()

    # -- dispatch -----------------------------------------------------------

    def _dispatch_pending(self) -> None:
        # Re-entrancy guard: a callback fired while handling a frame may end
        # up here again; the outer loop will handle what is queued.
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._pending and not self._delivery_paused:
                if self._state is _State.closed:
                    return
                envelope = self._pending.popleft()
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
            self._handle_inbound(envelope, kind)
        else:
            self._handle_reply(envelope, kind)

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
        self._send(bbrpc_pb2.Envelope(call_id=HANDSHAKE_CALL_ID, auth=auth))

    def _receive_auth(self, auth: bbrpc_pb2.Auth) -> None:
        assert self.peer_pubkey is not None
        handshake.verify_auth(auth, self.peer_pubkey, self.role.other, *self._hellos())
        self.peer_onion_address = onion.onion_address_from_pubkey(self.peer_pubkey)
        self._state = _State.authenticated
        self._decoder.max_frame_length = self.limits.max_frame_length
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

    # -- calls the peer opened ------------------------------------------------

    def _opened_by_peer(self, call_id: int) -> bool:
        ours = 1 if self.role is Role.CLIENT else 0
        return call_id % 2 != ours

    def _handle_inbound(self, envelope: bbrpc_pb2.Envelope, kind: str | None) -> None:
        call_id = envelope.call_id
        if kind == "cancel":
            call = self._inbound.get(call_id)
            if call is not None:
                call.cancel()
            # A Cancel crossing our last answer on the wire is normal.
            return
        if kind == "ping":
            self._send(
                bbrpc_pb2.Envelope(call_id=call_id, end=True, pong=envelope.ping)
            )
            return
        if call_id in self._inbound:
            raise PeerProtocolError(f"call id {call_id} reused while its call is open")
        if kind is None:
            self._send_error(
                call_id, bbrpc_pb2.ERROR_CODE_BAD_REQUEST, "empty envelope"
            )
            return
        spec = CALLS.get(kind)
        if spec is None:
            raise PeerProtocolError(f"{kind} on call {call_id}, which the peer opened")
        if spec.handler_method is None:
            self._send_error(
                call_id,
                bbrpc_pb2.ERROR_CODE_UNIMPLEMENTED,
                f"{kind} is not served here",
            )
            return
        if len(self._inbound) >= self.limits.max_concurrent_calls:
            self._send_error(
                call_id,
                bbrpc_pb2.ERROR_CODE_BUSY,
                f"more than {self.limits.max_concurrent_calls} calls open",
            )
            return
        self._start_handler(call_id, spec, getattr(envelope, kind))

    def _start_handler(self, call_id: int, spec: CallSpec, request: Message) -> None:
        call = _InboundCall(self, call_id, spec)
        self._inbound[call_id] = call
        assert spec.handler_method is not None
        method = getattr(self.handler, spec.handler_method)
        if spec.streaming:
            result = maybeDeferred(method, self, request, call.send)
        else:
            result = maybeDeferred(method, self, request)
        call.handler_result = result
        result.addCallbacks(call.handler_succeeded, call.handler_failed)

    def _when_writable(self, call: _InboundCall) -> Deferred[None]:
        if not self._writes_paused:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._write_waiters.append((call, waiter))
        return waiter

    def _fail_write_waiters(self, call: _InboundCall) -> None:
        mine = [w for c, w in self._write_waiters if c is call]
        self._write_waiters = deque(
            (c, w) for c, w in self._write_waiters if c is not call
        )
        for waiter in mine:
            waiter.errback(CallCancelled(f"call {call.call_id} was cancelled"))

    def _fail_all_write_waiters(self) -> None:
        waiters, self._write_waiters = self._write_waiters, deque()
        for call, waiter in waiters:
            waiter.errback(CallCancelled(f"call {call.call_id} was cancelled"))

    # -- calls we opened ------------------------------------------------------

    def _callable_spec(
        self, request_field: str, message: Message, streaming: bool
    ) -> CallSpec:
        if request_field not in CALLABLE:
            raise ValueError(f"{request_field!r} is not a call this node can open")
        spec = CALLS[request_field]
        if spec.streaming != streaming:
            use = "call_stream" if spec.streaming else "call"
            raise ValueError(f"{request_field} must be opened with {use}()")
        check_message(request_field, message)
        return spec

    def _open_call(
        self, spec: CallSpec, message: Message, on_item: Callable[[Any], object] | None
    ) -> Deferred[Any]:
        if not self.authenticated:
            return fail(PeerConnectionLost("connection is not authenticated"))
        call_id = self._take_call_id()
        result: Deferred[Any] = Deferred(lambda d: self._cancel_outbound(call_id))
        self._outbound[call_id] = _OutboundCall(call_id, result, spec, on_item)
        envelope = bbrpc_pb2.Envelope(call_id=call_id, end=True)
        getattr(envelope, spec.request_field).CopyFrom(message)
        try:
            self._send(envelope)
        except FrameError:
            del self._outbound[call_id]
            raise
        return result

    def _take_call_id(self) -> int:
        call_id = self._next_call_id
        self._next_call_id += 2
        return call_id

    def _handle_reply(self, envelope: bbrpc_pb2.Envelope, kind: str | None) -> None:
        call = self._outbound.get(envelope.call_id)
        if call is None:
            # Late frames of a call we cancelled or gave up on.
            return
        if kind == "error":
            self._forget_outbound(call.call_id)
            call.result.errback(PeerCallError.from_error(envelope.error))
        elif kind == "pong" and call.spec is None:
            if envelope.pong.payload != call.ping_payload:
                raise PeerProtocolError("pong does not echo the ping's payload")
            self._forget_outbound(call.call_id)
            self.rtt = self.reactor.seconds() - call.started
            call.result.callback(self.rtt)
        elif call.spec is not None and kind == call.spec.response_field:
            message = getattr(envelope, kind)
            if call.spec.streaming:
                self._deliver_item(call, message, envelope.end)
            else:
                self._forget_outbound(call.call_id)
                call.result.callback(message)
        elif (
            kind is None
            and envelope.end
            and call.spec is not None
            and call.spec.streaming
        ):
            self._forget_outbound(call.call_id)
            call.result.callback(None)
        else:
            raise PeerProtocolError(
                f"{kind or 'empty frame'} in answer to call {call.call_id}"
            )

    def _deliver_item(self, call: _OutboundCall, message: Message, end: bool) -> None:
        assert call.on_item is not None
        try:
            outcome = call.on_item(message)
        except Exception:
            self._abort_outbound(call, Failure())
            return
        if isinstance(outcome, Deferred):
            outcome.addErrback(lambda failure: self._abort_outbound(call, failure))
            if not outcome.called:
                self._pause_delivery(outcome)
        if end and call.call_id in self._outbound:
            # The peer put the end flag on the last item: finish after it.
            if isinstance(outcome, Deferred) and not outcome.called:
                outcome.addCallback(lambda _: self._finish_stream(call))
            else:
                self._finish_stream(call)

    def _finish_stream(self, call: _OutboundCall) -> None:
        if self._outbound.pop(call.call_id, None) is not None:
            call.result.callback(None)

    def _pause_delivery(self, until: Deferred[Any]) -> None:
        self._delivery_paused = True
        self._transport().pauseProducing()

        def resume(result: object) -> object:
            self._delivery_paused = False
            if self._state is not _State.closed:
                self._transport().resumeProducing()
                self._dispatch_pending()
            return result

        until.addBoth(resume)

    def _abort_outbound(self, call: _OutboundCall, failure: Failure) -> None:
        if self._outbound.pop(call.call_id, None) is None:
            return
        self._send_cancel(call.call_id)
        call.result.errback(failure)

    def _cancel_outbound(self, call_id: int) -> None:
        """Canceller of an outbound call's Deferred."""
        if self._outbound.pop(call_id, None) is not None:
            self._send_cancel(call_id)

    def _forget_outbound(self, call_id: int) -> None:
        self._outbound.pop(call_id, None)

    # -- sending --------------------------------------------------------------

    def _send(self, envelope: bbrpc_pb2.Envelope) -> None:
        if self._state is _State.closed or self.transport is None:
            return
        self._send_parts(encode_payload(envelope, self.limits.max_frame_length))

    def _send_parts(self, parts: tuple[bytes, ...]) -> None:
        if self._state is _State.closed or self.transport is None:
            return
        self._touch()
        self._transport().writeSequence(parts)

    def _send_frame(self, frame: bytes) -> None:
        # One bytes object: Twisted sends it as is, where a sequence of parts
        # would be joined (copied) into its write buffer first.
        if self._state is _State.closed or self.transport is None:
            return
        self._touch()
        self._transport().write(frame)

    def _send_error(self, call_id: int, code: ErrorCode, message: str) -> None:
        self._send(
            bbrpc_pb2.Envelope(
                call_id=call_id,
                end=True,
                error=bbrpc_pb2.Error(code=code, message=message),
            )
        )

    def _send_cancel(self, call_id: int) -> None:
        self._send(
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
        if self._state is _State.closed:
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
        if self._state is _State.closed:
            return
        self._pending.clear()
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
