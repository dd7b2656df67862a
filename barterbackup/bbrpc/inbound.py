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
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
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
    DownloadPiece,
    encode_body_frame,
    encode_download_piece_frame,
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

    def send(self, message: Message | DownloadPiece) -> Deferred[None]:
        """The StreamSender given to a stream handler.

        The item is written as soon as the connection is writable; the
        Deferred fires once it has been, so a handler awaiting each send
        never has more than one item waiting. A Download handler may send
        DownloadPiece items instead of DownloadResponse messages: same bytes
        on the wire, fewer copies.
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
            return self._calls.write_when_writable(self, lambda: conn.send_frame(frame))
        check_message(self.spec.response_field, message)
        # Built with the item as a keyword: no extra copy of large items.
        parts = encode_body_frame(
            self.call_id, False, self.spec.response_field, message, limit
        )
        return self._calls.write_when_writable(self, lambda: conn.send_parts(parts))

    setattr(send, ACCEPTS_DOWNLOAD_PIECES, True)

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
        if self.cancelled:
            # The handler stopping because we cancelled it is no news.
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
        self._calls.fail_write_waiters(self)
        if self.handler_result is not None:
            self.handler_result.cancel()

    def _finish(self) -> None:
        self.finished = True
        self._calls.forget(self)


class InboundCalls:
    """The calls a peer has open with us on one connection."""

    def __init__(self, conn: FrameChannel, handler: object) -> None:
        self.conn = conn
        self.handler = handler
        self._open: dict[int, InboundCall] = {}
        # Stream items waiting for the transport's write buffer to drain.
        self._write_waiters: deque[
            tuple[InboundCall, Callable[[], None], Deferred[None]]
        ] = deque()

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
        if call_id in self._open:
            raise PeerProtocolError(f"call id {call_id} reused while its call is open")
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
        if spec.streaming:
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
        self.fail_all_write_waiters()

    # -- write-side flow control ---------------------------------------------

    def write_when_writable(
        self, call: InboundCall, write: Callable[[], None]
    ) -> Deferred[None]:
        """Run ``write`` (one stream item) now if the connection is writable,
        else once it is; fires after it ran."""
        if self.conn.writable and not self._write_waiters:
            write()
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._write_waiters.append((call, write, waiter))
        return waiter

    def writes_resumed(self) -> None:
        while self._write_waiters and self.conn.writable:
            _, write, waiter = self._write_waiters.popleft()
            write()
            waiter.callback(None)

    def fail_write_waiters(self, call: InboundCall) -> None:
        mine = [w for c, _, w in self._write_waiters if c is call]
        self._write_waiters = deque(
            entry for entry in self._write_waiters if entry[0] is not call
        )
        for waiter in mine:
            waiter.errback(CallCancelled(f"call {call.call_id} was cancelled"))

    def fail_all_write_waiters(self) -> None:
        waiters, self._write_waiters = self._write_waiters, deque()
        for call, _, waiter in waiters:
            waiter.errback(CallCancelled(f"call {call.call_id} was cancelled"))
