"""Calls the peer opened on a connection, served by our handler.

``InboundCalls`` takes the frames of calls the peer opened (requests,
cancels, pings), dispatches requests to the handler through the call table,
and sends the answers through the connection. A stream handler's ``send``
Deferred is the flow control: it waits while the transport's write buffer
is full.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.calls import CALLS, CallSpec, check_message, handler_for
from barterbackup.bbrpc.channel import FrameChannel
from barterbackup.bbrpc.errors import (
    CallCancelled,
    ErrorCode,
    PeerCallError,
    PeerProtocolError,
)
from barterbackup.bbrpc.framing import (
    ACCEPTS_DOWNLOAD_PIECES,
    ACCEPTS_SEALED_PIECES,
    DownloadPiece,
    SealedPiece,
    encode_body_frame,
    encode_download_piece_frame,
    encode_sealed_piece_frame,
)
from barterbackup.logs import get_logger

log = get_logger("barterbackup.bbrpc")

# Sent instead of an exception's text: it could hold paths or key material.
INTERNAL_ERROR_MESSAGE = "internal error while serving the call"


class InboundCall:
    """One call the peer opened; our handler serves it."""

    def __init__(self, calls: InboundCalls, call_id: int, spec: CallSpec) -> None:
        self._calls = calls
        self.call_id = call_id
        self.spec = spec
        self.cancelled = False
        self.finished = False
        self.handler_result: Deferred[Any] | None = None
        # The caller's half of a client-streaming call.
        self.stream: IncomingStream | None = (
            IncomingStream(self) if spec.client_streaming else None
        )

    def send(self, message: Message | DownloadPiece | SealedPiece) -> Deferred[None]:
        """The StreamSender given to a stream handler.

        The item is written as soon as the connection is writable; the
        Deferred fires once it has been, so a handler awaiting each send
        never has more than one item waiting. A Download handler may send
        DownloadPiece items instead of DownloadResponse messages, and an
        EncryptedDownload handler SealedPiece items instead of
        EncryptedDownloadResponse messages: same bytes on the wire, fewer
        copies.
        """
        if self.cancelled:
            return fail(CallCancelled(f"call {self.call_id} was cancelled"))
        if self.finished:
            return fail(RuntimeError(f"stream {self.call_id} already ended"))
        conn = self._calls.conn
        limit = conn.limits.max_frame_length
        if isinstance(message, DownloadPiece):
            if self.spec.response_field != "download_response":
                raise TypeError(f"a DownloadPiece is not a {self.spec.response_field}")
            frame = encode_download_piece_frame(self.call_id, message, limit)
            return conn.write_when_writable(
                self, lambda: conn.send_frame(frame), len(frame)
            )
        if isinstance(message, SealedPiece):
            if self.spec.response_field != "encrypted_download_response":
                raise TypeError(f"a SealedPiece is not a {self.spec.response_field}")
            frame = encode_sealed_piece_frame(self.call_id, message, limit)
            return conn.write_when_writable(
                self, lambda: conn.send_frame(frame), len(frame)
            )
        check_message(self.spec.response_field, message)
        # Built with the item as a keyword: no extra copy of large items.
        parts = encode_body_frame(
            self.call_id, False, self.spec.response_field, message, limit
        )
        size = sum(len(part) for part in parts)
        return conn.write_when_writable(self, lambda: conn.send_parts(parts), size)

    setattr(send, ACCEPTS_DOWNLOAD_PIECES, True)
    setattr(send, ACCEPTS_SEALED_PIECES, True)

    def handler_succeeded(self, result: object) -> None:
        if self.cancelled:
            return
        envelope = bbrpc_pb2.Envelope(call_id=self.call_id, end=True)
        if not self.spec.streaming:
            if not isinstance(result, Message):
                log.error(
                    "bbrpc handler for {field} returned {kind}, not a message",
                    field=self.spec.request_field,
                    kind=type(result).__name__,
                )
                self.answer_error(bbrpc_pb2.ERROR_CODE_INTERNAL, INTERNAL_ERROR_MESSAGE)
                return
            try:
                check_message(self.spec.response_field, result)
            except TypeError as e:
                log.error("bbrpc handler returned a wrong type: {e}", e=e)
                self.answer_error(bbrpc_pb2.ERROR_CODE_INTERNAL, INTERNAL_ERROR_MESSAGE)
                return
            getattr(envelope, self.spec.response_field).CopyFrom(result)
        self._finish()
        self._calls.conn.send_envelope(envelope)

    def handler_failed(self, failure: Failure) -> None:
        if self.cancelled or failure.check(CallCancelled) is not None:
            # The handler stopping because we cancelled it, or because the
            # connection went (its transport fails the waiting sends before
            # the connection hears it was lost), is no news.
            return
        if failure.check(PeerCallError) is not None:
            error: PeerCallError = failure.value  # type: ignore[assignment]
            self.answer_error(error.code, error.message)
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
        self._calls.conn.send_error(self.call_id, code, message)

    def cancel(self) -> None:
        """Stop serving: fail pending sends, cancel the handler's Deferred."""
        if self.cancelled or self.finished:
            return
        self.cancelled = True
        self._calls.forget(self)
        self._calls.conn.fail_write_waiters(self)
        if self.stream is not None:
            self.stream.cancelled()
        if self.handler_result is not None:
            self.handler_result.cancel()

    def _finish(self) -> None:
        self.finished = True
        self._calls.forget(self)

    def conn_channel(self) -> FrameChannel:
        return self._calls.conn


class InboundCalls:
    """The calls a peer has open with us on one connection."""

    def __init__(self, conn: FrameChannel, handler: object) -> None:
        self.conn = conn
        self.handler = handler
        self._open: dict[int, InboundCall] = {}

    def __len__(self) -> int:
        return len(self._open)

    def handle(self, envelope: bbrpc_pb2.Envelope, kind: str | None) -> None:
        """One frame of a call the peer opened."""
        call_id = envelope.call_id
        if kind == "cancel":
            call = self._open.get(call_id)
            if call is not None:
                call.cancel()
            # A Cancel crossing our last answer on the wire is normal.
            return
        if kind == "ping":
            if len(envelope.ping.payload) > self.conn.limits.max_ping_payload:
                raise PeerProtocolError(
                    f"ping payload of {len(envelope.ping.payload)} bytes (at most "
                    f"{self.conn.limits.max_ping_payload})"
                )
            self.conn.send_envelope(
                bbrpc_pb2.Envelope(call_id=call_id, end=True, pong=envelope.ping)
            )
            return
        open_call = self._open.get(call_id)
        if open_call is not None:
            if open_call.stream is None:
                raise PeerProtocolError(
                    f"call id {call_id} reused while its call is open"
                )
            if kind not in (None, open_call.spec.request_field):
                raise PeerProtocolError(f"{kind} on the stream of call {call_id}")
            item = getattr(envelope, kind) if kind is not None else None
            open_call.stream.arrived(item, envelope.end)
            return
        if kind is None:
            self.conn.send_error(
                call_id, bbrpc_pb2.ERROR_CODE_BAD_REQUEST, "empty envelope"
            )
            return
        spec = CALLS.get(kind)
        if spec is None:
            raise PeerProtocolError(f"{kind} on call {call_id}, which the peer opened")
        method = handler_for(self.handler, spec)
        if method is None:
            self.conn.send_error(
                call_id,
                bbrpc_pb2.ERROR_CODE_UNIMPLEMENTED,
                f"{kind} is not served here",
            )
            return
        limit = self.conn.limits.max_concurrent_calls
        if len(self._open) >= limit:
            self.conn.send_error(
                call_id, bbrpc_pb2.ERROR_CODE_BUSY, f"more than {limit} calls open"
            )
            return
        call = InboundCall(self, call_id, spec)
        self._open[call_id] = call
        request = getattr(envelope, kind)
        if call.stream is not None:
            if envelope.end:
                call.stream.arrived(None, True)
            result = maybeDeferred(method, self.conn, request, call.stream)
        elif spec.streaming:
            result = maybeDeferred(method, self.conn, request, call.send)
        else:
            result = maybeDeferred(method, self.conn, request)
        call.handler_result = result
        result.addCallbacks(call.handler_succeeded, call.handler_failed)

    def forget(self, call: InboundCall) -> None:
        if self._open.get(call.call_id) is call:
            del self._open[call.call_id]

    def cancel_all(self) -> None:
        for call in list(self._open.values()):
            call.cancel()


class IncomingStream:
    """Both halves of a client-streaming call (Chat), as its handler sees it.

    The handler gets it with the opening request: ``send`` writes its items
    (flow controlled, like a server stream's ``send``), ``receive`` takes
    the caller's further items. Items that arrive before ``receive`` is
    called wait, and the connection reads nothing more meanwhile.
    """

    def __init__(self, call: InboundCall) -> None:
        self._call = call
        self._receiver: Callable[[Message], object] | None = None
        self._held: deque[Message] = deque()
        self._unblocked: Deferred[None] | None = None
        self._caller_ended = False
        self.ended: Deferred[None] = Deferred()

    def send(self, message: Message) -> Deferred[None]:
        return self._call.send(message)

    def receive(self, on_item: Callable[[Message], object]) -> Deferred[None]:
        """Deliver the caller's items to ``on_item`` from now on.

        If ``on_item`` returns an unfired Deferred, nothing more is read from
        the connection until it fires. Returns ``ended``: it fires when the
        caller ends its half, and fails with CallCancelled if the call is
        cancelled or the connection closes first.
        """
        if self._receiver is not None:
            raise RuntimeError("receive() was already called")
        self._receiver = on_item
        while self._held:
            self._deliver(self._held.popleft())
        if self._caller_ended and not self.ended.called:
            self.ended.callback(None)
        unblocked, self._unblocked = self._unblocked, None
        if unblocked is not None:
            unblocked.callback(None)
        return self.ended

    def arrived(self, item: Message | None, end: bool) -> None:
        if self._caller_ended:
            raise PeerProtocolError(
                f"frame after the end of the caller's stream {self._call.call_id}"
            )
        if item is not None:
            if self._receiver is None:
                self._held.append(item)
                if self._unblocked is None:
                    self._unblocked = Deferred()
                    self._call.conn_channel().pause_delivery(self._unblocked)
            else:
                self._deliver(item)
        if end:
            self._caller_ended = True
            if self._receiver is not None and not self.ended.called:
                self.ended.callback(None)

    def cancelled(self) -> None:
        if not self.ended.called:
            self.ended.errback(
                CallCancelled(f"call {self._call.call_id} was cancelled")
            )
        unblocked, self._unblocked = self._unblocked, None
        if unblocked is not None:
            unblocked.callback(None)

    def _deliver(self, item: Message) -> None:
        assert self._receiver is not None
        outcome = self._receiver(item)
        if isinstance(outcome, Deferred) and not outcome.called:
            self._call.conn_channel().pause_delivery(outcome)
