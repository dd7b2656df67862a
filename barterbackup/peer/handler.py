"""What a node serves to its authenticated peers.

A connection is symmetric after the handshake, so both the dialing and the
listening side get a PeerRequestHandler and either may call the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail

from barterbackup._proto import bbrpc_pb2
from barterbackup.peer.errors import PeerCallError

if TYPE_CHECKING:
    from barterbackup.peer.connection import PeerConnection

T = TypeVar("T")

# send(item) writes one stream item and returns a Deferred that fires once
# the connection can take more (flow control); it fails with CallCancelled
# once the call is cancelled or the connection is gone.
StreamSender = Callable[[T], "Deferred[None]"]


class PeerRequestHandler(Protocol):
    """Serves bbrpc calls. Each method may return a value or a Deferred.

    Raising (or failing with) PeerCallError answers with that Error; any
    other exception answers ERROR_CODE_INTERNAL with a generic message and
    is logged locally. A stream method's Deferred firing ends the stream.
    If the call is cancelled, the returned Deferred is cancelled.
    """

    def peer_exchange(
        self, conn: PeerConnection, request: bbrpc_pb2.PeerExchangeRequest
    ) -> Deferred[bbrpc_pb2.PeerExchangeResponse]: ...

    def get_content_revision(
        self, conn: PeerConnection, request: bbrpc_pb2.GetContentRevisionRequest
    ) -> Deferred[bbrpc_pb2.GetContentRevisionResponse]: ...

    def set_content_revision(
        self,
        conn: PeerConnection,
        request: bbrpc_pb2.SetContentRevisionRequest,
        send: StreamSender[bbrpc_pb2.SetContentRevisionResponse],
    ) -> Deferred[None]: ...

    def download(
        self,
        conn: PeerConnection,
        request: bbrpc_pb2.DownloadRequest,
        send: StreamSender[bbrpc_pb2.DownloadResponse],
    ) -> Deferred[None]: ...


def _unimplemented(name: str) -> Deferred[T]:
    return fail(
        PeerCallError(bbrpc_pb2.ERROR_CODE_UNIMPLEMENTED, f"{name} is not served")
    )


class UnimplementedHandler:
    """Serves nothing: every call is answered ERROR_CODE_UNIMPLEMENTED.

    For a side that only calls (a benchmark, a recovery client) or as a base
    class overriding some methods.
    """

    def peer_exchange(
        self, conn: PeerConnection, request: bbrpc_pb2.PeerExchangeRequest
    ) -> Deferred[bbrpc_pb2.PeerExchangeResponse]:
        return _unimplemented("PeerExchange")

    def get_content_revision(
        self, conn: PeerConnection, request: bbrpc_pb2.GetContentRevisionRequest
    ) -> Deferred[bbrpc_pb2.GetContentRevisionResponse]:
        return _unimplemented("GetContentRevision")

    def set_content_revision(
        self,
        conn: PeerConnection,
        request: bbrpc_pb2.SetContentRevisionRequest,
        send: StreamSender[bbrpc_pb2.SetContentRevisionResponse],
    ) -> Deferred[None]:
        return _unimplemented("SetContentRevision")

    def download(
        self,
        conn: PeerConnection,
        request: bbrpc_pb2.DownloadRequest,
        send: StreamSender[bbrpc_pb2.DownloadResponse],
    ) -> Deferred[None]:
        return _unimplemented("Download")
