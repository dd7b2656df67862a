"""What the node serves its authenticated peers: thin dispatch from the
bbrpc call table's handler methods to the data plane and the peer table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.calls import StreamSender
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.chat.service import ChatService
from barterbackup.chat.session import Mode
from barterbackup.sync.interfaces import PeerConnectionLike
from barterbackup.sync.replica import ReplicaService
from barterbackup.sync.serve import ContentServer


class NodePeerHandler:
    """The handler a node's bbrpc connections dispatch to (see bbrpc.calls).

    ``shareable_peers()`` gives the onion addresses the peer table allows
    telling others.
    """

    def __init__(
        self,
        shareable_peers: Callable[[], list[str]],
        replica: ReplicaService,
        server: ContentServer,
    ) -> None:
        self._shareable_peers = shareable_peers
        self._replica = replica
        self._server = server
        self._chat: ChatService | None = None

    def serve_chat_with(self, chat: ChatService) -> None:
        """Serve Chat, EncryptedChat and EncryptedDownload with ``chat``.

        Set after construction: the chat service needs the connection pool,
        which needs this handler.
        """
        self._chat = chat

    def _chat_service(self) -> ChatService:
        if self._chat is None:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_UNIMPLEMENTED, "chat is not served yet"
            )
        return self._chat

    def peer_exchange(
        self, conn: PeerConnectionLike, request: bbrpc_pb2.PeerExchangeRequest
    ) -> bbrpc_pb2.PeerExchangeResponse:
        # Never the asker itself: a peer list is a social graph.
        addresses = [
            address
            for address in self._shareable_peers()
            if address != conn.peer_onion_address
        ]
        return bbrpc_pb2.PeerExchangeResponse(onion_addresses=addresses)

    def get_content_revision(
        self, conn: PeerConnectionLike, request: bbrpc_pb2.GetContentRevisionRequest
    ) -> bbrpc_pb2.GetContentRevisionResponse:
        return self._replica.get_content_revision(conn)

    def set_content_revision(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.SetContentRevisionRequest,
        send: StreamSender[bbrpc_pb2.SetContentRevisionResponse],
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(
            self._replica.set_content_revision(conn, request, send)
        )

    def download(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.DownloadRequest,
        send: StreamSender[bbrpc_pb2.DownloadResponse],
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(self._server.download(conn, request, send))

    def chat(
        self, conn: PeerConnectionLike, request: bbrpc_pb2.ChatRequest, stream: Any
    ) -> Deferred[None]:
        return self._chat_service().serve_call(conn, request, stream, Mode.PLAIN)

    def encrypted_chat(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.EncryptedChatRequest,
        stream: Any,
    ) -> Deferred[None]:
        return self._chat_service().serve_call(conn, request, stream, Mode.ENCRYPTED)

    def encrypted_download(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.EncryptedDownloadRequest,
        send: StreamSender[Any],
    ) -> Deferred[None]:
        return self._chat_service().serve_download(conn, request, send)
