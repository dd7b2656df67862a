"""Calls we opened on a connection: ids, answers, stream delivery, pings.

Call ids: the side that dialed (the client) numbers its calls 1, 3, 5, …;
the side that listened (the server) numbers its calls 2, 4, 6, … So the
parity of an id tells which side opened the call, and both sides can call
each other on one connection without coordination. The handshake uses id 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.calls import CALLS, CallSpec, check_message
from barterbackup.bbrpc.channel import FrameChannel
from barterbackup.bbrpc.errors import (
    PeerCallError,
    PeerConnectionLost,
    PeerProtocolError,
)
from barterbackup.bbrpc.framing import FrameError

PING_PAYLOAD_LENGTH = 8


@dataclass
class OutboundCall:
    """A call we opened; the peer answers it."""

    call_id: int
    result: Deferred[Any]
    # spec is None for a ping.
    spec: CallSpec | None
    on_item: Callable[[Any], object] | None = None
    ping_payload: bytes = b""
    started: float = 0.0


class OutboundCalls:
    """The calls we have open with the peer on one connection."""

    def __init__(self, conn: FrameChannel, first_call_id: int) -> None:
        self.conn = conn
        self._next_call_id = first_call_id
        self._open: dict[int, OutboundCall] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open(
        self,
        request_field: str,
        message: Message,
        streaming: bool,
        on_item: Callable[[Any], object] | None = None,
    ) -> Deferred[Any]:
        spec = _callable_spec(request_field, message, streaming, False)
        return self._open_call(spec, message, on_item, end=True)[1]

    def open_stream(
        self, request_field: str, message: Message, on_item: Callable[[Any], object]
    ) -> OutgoingStream:
        spec = _callable_spec(request_field, message, True, True)
        call_id, result = self._open_call(spec, message, on_item, end=False)
        return OutgoingStream(self, call_id, spec, result)

    def _open_call(
        self,
        spec: CallSpec,
        message: Message,
        on_item: Callable[[Any], object] | None,
        end: bool,
    ) -> tuple[int, Deferred[Any]]:
        call_id = self._take_call_id()
        result: Deferred[Any] = Deferred(lambda d: self._cancel(call_id))
        self._open[call_id] = OutboundCall(call_id, result, spec, on_item)
        envelope = bbrpc_pb2.Envelope(call_id=call_id, end=end)
        getattr(envelope, spec.request_field).CopyFrom(message)
        try:
            self.conn.send_envelope(envelope)
        except FrameError:
            del self._open[call_id]
            raise
        return call_id, result

    def is_open(self, call_id: int) -> bool:
        return call_id in self._open

    def ping(self) -> Deferred[float]:
        call_id = self._take_call_id()
        payload = os.urandom(PING_PAYLOAD_LENGTH)
        result: Deferred[float] = Deferred(lambda d: self._forget(call_id))
        self._open[call_id] = OutboundCall(
            call_id,
            result,
            None,
            ping_payload=payload,
            started=self.conn.reactor.seconds(),
        )
        self.conn.send_envelope(
            bbrpc_pb2.Envelope(
                call_id=call_id, end=True, ping=bbrpc_pb2.Ping(payload=payload)
            )
        )
        return result

    def handle_reply(self, envelope: bbrpc_pb2.Envelope, kind: str | None) -> None:
        """One frame answering a call we opened."""
        call = self._open.get(envelope.call_id)
        if call is None:
            # Late frames of a call we cancelled or gave up on.
            return
        if kind == "error":
            self._forget(call.call_id)
            call.result.errback(PeerCallError.from_error(envelope.error))
        elif kind == "pong" and call.spec is None:
            if envelope.pong.payload != call.ping_payload:
                raise PeerProtocolError("pong does not echo the ping's payload")
            self._forget(call.call_id)
            rtt = self.conn.reactor.seconds() - call.started
            self.conn.rtt = rtt
            call.result.callback(rtt)
        elif call.spec is not None and kind == call.spec.response_field:
            message = getattr(envelope, kind)
            if call.spec.streaming:
                self._deliver_item(call, message, envelope.end)
            else:
                self._forget(call.call_id)
                call.result.callback(message)
        elif kind is None and envelope.end and call.spec is not None:
            if not call.spec.streaming:
                raise PeerProtocolError(f"empty answer to unary call {call.call_id}")
            self._forget(call.call_id)
            call.result.callback(None)
        else:
            raise PeerProtocolError(
                f"{kind or 'empty frame'} in answer to call {call.call_id}"
            )

    def fail_all(self, why: str) -> None:
        calls, self._open = self._open, {}
        for call in calls.values():
            call.result.errback(PeerConnectionLost(why))

    # -- internals --------------------------------------------------------------

    def _take_call_id(self) -> int:
        call_id = self._next_call_id
        self._next_call_id += 2
        return call_id

    def _deliver_item(self, call: OutboundCall, message: Message, end: bool) -> None:
        assert call.on_item is not None
        try:
            outcome = call.on_item(message)
        except Exception:
            self._abort(call, Failure())
            return
        if isinstance(outcome, Deferred):
            outcome.addErrback(lambda failure: self._abort(call, failure))
            if not outcome.called:
                self.conn.pause_delivery(outcome)
        if end and call.call_id in self._open:
            # The peer put the end flag on the last item: finish after it.
            if isinstance(outcome, Deferred) and not outcome.called:
                outcome.addCallback(lambda _: self._finish_stream(call))
            else:
                self._finish_stream(call)

    def _finish_stream(self, call: OutboundCall) -> None:
        if self._open.pop(call.call_id, None) is not None:
            call.result.callback(None)

    def _abort(self, call: OutboundCall, failure: Failure) -> None:
        if self._open.pop(call.call_id, None) is None:
            return
        self.conn.send_cancel(call.call_id)
        call.result.errback(failure)

    def _cancel(self, call_id: int) -> None:
        """Canceller of an outbound call's Deferred."""
        if self._open.pop(call_id, None) is not None:
            self.conn.send_cancel(call_id)

    def _forget(self, call_id: int) -> None:
        self._open.pop(call_id, None)


def _callable_spec(
    request_field: str, message: Message, streaming: bool, client_streaming: bool
) -> CallSpec:
    spec = CALLS.get(request_field)
    if spec is None:
        raise ValueError(f"{request_field!r} is not a call this node can open")
    if (spec.streaming, spec.client_streaming) != (streaming, client_streaming):
        use = (
            "open_stream"
            if spec.client_streaming
            else "call_stream"
            if spec.streaming
            else "call"
        )
        raise ValueError(f"{request_field} must be opened with {use}()")
    check_message(request_field, message)
    return spec


class OutgoingStream:
    """Our half of a client-streaming call (Chat) we opened.

    ``send`` writes one more item (its Deferred fires once it is written:
    flow control), ``end`` ends our half; the peer's items go to the
    ``on_item`` given when the call was opened, and ``result`` fires when
    the peer ends its half (or fails with its error, or PeerConnectionLost).
    Cancelling ``result`` cancels the call.
    """

    def __init__(
        self, calls: OutboundCalls, call_id: int, spec: CallSpec, result: Deferred[Any]
    ) -> None:
        self._calls = calls
        self.call_id = call_id
        self._spec = spec
        self.result = result
        self._ended = False

    def send(self, message: Message) -> Deferred[None]:
        if self._ended:
            return fail(RuntimeError(f"stream {self.call_id} already ended"))
        if not self._calls.is_open(self.call_id):
            return fail(PeerConnectionLost(f"call {self.call_id} is over"))
        check_message(self._spec.request_field, message)
        envelope = bbrpc_pb2.Envelope(call_id=self.call_id)
        getattr(envelope, self._spec.request_field).CopyFrom(message)
        conn = self._calls.conn
        return conn.write_when_writable(self, lambda: conn.send_envelope(envelope))

    def end(self) -> None:
        """End our half of the call (the peer may go on sending)."""
        if self._ended:
            return
        self._ended = True
        if self._calls.is_open(self.call_id):
            conn = self._calls.conn
            envelope = bbrpc_pb2.Envelope(call_id=self.call_id, end=True)
            conn.write_when_writable(self, lambda: conn.send_envelope(envelope))


def not_authenticated() -> Deferred[Any]:
    return fail(PeerConnectionLost("connection is not authenticated"))
