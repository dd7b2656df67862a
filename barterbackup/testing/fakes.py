"""Small fakes of the content store and the peer connection, for tests.

``FakeContentStore`` holds "ciphertext" sections in memory and signs
revisions with a real key, so replicas verify them exactly as they would
real ones. ``connect_fake_peers`` joins two handler objects with a pair of
``FakePeerConnection``: every message is serialized and parsed again (so
nothing is shared by reference), counted in wire bytes (frame header plus
Envelope), and may be tampered with or cut off mid-stream by the test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import nacl.signing
from google.protobuf.message import Message
from twisted.internet import defer
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.content.signing import (
    REVISION_FORMAT,
    VerifiedRevision,
    sign_revision,
)
from barterbackup.peer.errors import CallCancelled, PeerCallError, PeerConnectionLost

FRAME_HEADER_BYTES = 4


def make_revision(
    signing_key: nacl.signing.SigningKey, sections: list[bytes], number: int
) -> VerifiedRevision:
    """Sign a revision whose section table describes ``sections``."""
    table = [
        storedpb_pb2.SectionRef(length=len(s), sha256=hashlib.sha256(s).digest())
        for s in sections
    ]
    revision = storedpb_pb2.ContentRevision(
        format=REVISION_FORMAT,
        owner_pubkey=bytes(signing_key.verify_key),
        number=number,
        content_length=sum(len(s) for s in sections),
        content_sha256=hashlib.sha256(b"".join(r.sha256 for r in table)).digest(),
        sections=table,
        sealed_manifest=b"fake sealed manifest",
    )
    return sign_revision(revision, signing_key)


class FakeContentStore:
    """An owner's content: the current revision and sections by hash."""

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self._sections: dict[bytes, bytes] = {}
        self.current: VerifiedRevision | None = None
        self.reads: list[bytes] = []

    def commit(self, sections: list[bytes]) -> VerifiedRevision:
        number = self.current.number + 1 if self.current else 1
        self.current = make_revision(self._signing_key, sections, number)
        for data in sections:
            self._sections[hashlib.sha256(data).digest()] = data
        return self.current

    def has_section(self, sha256: bytes) -> bool:
        return sha256 in self._sections

    def read_section(self, sha256: bytes) -> bytes:
        self.reads.append(sha256)
        try:
            return self._sections[sha256]
        except KeyError:
            raise KeyError("section not held") from None

    def forget_section(self, sha256: bytes) -> None:
        del self._sections[sha256]


def _copy(message: Message) -> Any:
    return type(message).FromString(message.SerializeToString())


def _wire_size(field: str, message: Message) -> int:
    envelope = bbrpc_pb2.Envelope(call_id=1)
    getattr(envelope, field).CopyFrom(message)
    return FRAME_HEADER_BYTES + envelope.ByteSize()


_RESPONSE_FIELD = {
    "peer_exchange_request": "peer_exchange_response",
    "get_content_revision_request": "get_content_revision_response",
    "set_content_revision_request": "set_content_revision_response",
    "download_request": "download_response",
}


class WireCounter:
    """Bytes both directions of a fake link carried, as frames."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0

    def count(self, field: str, message: Message) -> None:
        self.frames += 1
        self.bytes += _wire_size(field, message)


class FakePeerConnection:
    """One side's view of an authenticated peer link (see connect_fake_peers).

    ``tamper(field, message)`` may return a changed copy of every stream
    item this side *receives*; ``drop_after_items`` cuts the link once that
    many stream items have been received here.
    """

    def __init__(
        self, local_pubkey: bytes, peer_pubkey: bytes, peer_onion_address: str
    ) -> None:
        self.local_pubkey = local_pubkey
        self.peer_pubkey: bytes | None = peer_pubkey
        self.peer_onion_address: str | None = peer_onion_address
        self.remote_handler: Any = None
        self.remote_view: FakePeerConnection | None = None
        self.counter = WireCounter()
        self.tamper: Callable[[str, Any], Any] | None = None
        self.drop_after_items: int | None = None
        self.items_received = 0
        self.connected = True
        self.calls: list[str] = []

    def disconnect(self) -> None:
        for side in (self, self.remote_view):
            if side is not None:
                side.connected = False

    def _lost(self) -> Failure:
        return Failure(PeerConnectionLost("fake peer link dropped"))

    def _handler_method(self, request_field: str) -> Callable[..., Any]:
        name = request_field.removesuffix("_request")
        method: Callable[..., Any] = getattr(self.remote_handler, name)
        return method

    def call(self, request_field: str, message: Message) -> defer.Deferred[Any]:
        """Unary call: run the remote handler, hand back a copy of its answer."""
        if not self.connected:
            return defer.fail(self._lost())
        self.calls.append(request_field)
        self.counter.count(request_field, message)
        d = defer.maybeDeferred(
            self._handler_method(request_field), self.remote_view, _copy(message)
        )

        def answered(response: Message) -> Any:
            self._check_connected()
            self.counter.count(_RESPONSE_FIELD[request_field], response)
            return _copy(response)

        return d.addCallbacks(answered, self._as_remote_error)

    def call_stream(
        self,
        request_field: str,
        message: Message,
        on_item: Callable[[Any], Any],
    ) -> defer.Deferred[None]:
        """Server-streaming call; on_item's Deferred is the backpressure."""
        if not self.connected:
            return defer.fail(self._lost())
        self.calls.append(request_field)
        self.counter.count(request_field, message)
        response_field = _RESPONSE_FIELD[request_field]
        # As on the real link: if on_item fails, the call is cancelled (the
        # server's sends fail) and the caller gets on_item's error.
        consumer_failed: list[Failure] = []

        def consumer_error(failure: Failure) -> Failure:
            consumer_failed.append(failure)
            return Failure(CallCancelled("the caller cancelled the stream"))

        def send(item: Message) -> defer.Deferred[None]:
            if not self.connected:
                return defer.fail(CallCancelled("fake peer link dropped"))
            if consumer_failed:
                return defer.fail(CallCancelled("the caller cancelled the stream"))
            self.counter.count(response_field, item)
            received = _copy(item)
            if self.tamper is not None:
                received = self.tamper(response_field, received)
            self.items_received += 1
            if (
                self.drop_after_items is not None
                and self.items_received >= self.drop_after_items
            ):
                self.disconnect()
                return defer.fail(CallCancelled("fake peer link dropped"))
            return (
                defer.maybeDeferred(on_item, received)
                .addCallback(lambda _: None)
                .addErrback(consumer_error)
            )

        d = defer.maybeDeferred(
            self._handler_method(request_field), self.remote_view, _copy(message), send
        )

        def ended(result: object) -> object:
            if consumer_failed:
                return consumer_failed[0]
            if isinstance(result, Failure):
                return self._as_remote_error(result)
            self._check_connected()
            return None

        return d.addBoth(ended)

    def _check_connected(self) -> None:
        if not self.connected:
            raise PeerConnectionLost("fake peer link dropped")

    def _as_remote_error(self, failure: Failure) -> Failure:
        """What the caller sees of a handler failure, as the real link does."""
        if not self.connected:
            return self._lost()
        error = failure.value
        if isinstance(error, PeerCallError):
            return Failure(PeerCallError(error.code, error.message))
        return Failure(
            PeerCallError(
                bbrpc_pb2.ERROR_CODE_INTERNAL, "the peer failed to serve the call"
            )
        )


def connect_fake_peers(
    a_handler: object,
    a_pubkey: bytes,
    a_onion: str,
    b_handler: object,
    b_pubkey: bytes,
    b_onion: str,
) -> tuple[FakePeerConnection, FakePeerConnection]:
    """Link two nodes; return (a's connection to b, b's connection to a)."""
    a_to_b = FakePeerConnection(a_pubkey, b_pubkey, b_onion)
    b_to_a = FakePeerConnection(b_pubkey, a_pubkey, a_onion)
    a_to_b.remote_handler, a_to_b.remote_view = b_handler, b_to_a
    b_to_a.remote_handler, b_to_a.remote_view = a_handler, a_to_b
    return a_to_b, b_to_a
