"""What the node serves its authenticated peers: thin dispatch from the
bbrpc call table's handler methods to the data plane, the peer table and
the contract book.

The caller is always ``conn.peer_pubkey`` (proved by the handshake), never
a field of a request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.calls import StreamSender
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.chat.service import ChatService
from barterbackup.chat.session import Mode
from barterbackup.contracts.book import ContractBook
from barterbackup.peers.exchange import shareable_for_exchange
from barterbackup.sync.interfaces import PeerConnectionLike, authenticated_peer
from barterbackup.sync.replica import ReplicaService
from barterbackup.sync.serve import ContentServer


class NodePeerHandler:
    """The handler a node's bbrpc connections dispatch to (see bbrpc.calls).

    ``shareable_peers()`` gives the onion addresses the peer table allows
    telling others; ``contracts`` is the contract book (set once it exists:
    until then the contract calls answer UNIMPLEMENTED-like errors).
    """

    def __init__(
        self,
        shareable_peers: Callable[[], list[str]],
        replica: ReplicaService,
        server: ContentServer,
        contracts: ContractBook | None = None,
    ) -> None:
        self._shareable_peers = shareable_peers
        self._replica = replica
        self._server = server
        self.contracts = contracts
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
        # Never the asker itself (a peer list is a social graph), and no
        # more than an asker accepts.
        addresses = shareable_for_exchange(
            self._shareable_peers(), conn.peer_onion_address
        )
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

    # ---- contracts (docs/contracts.md, "Negotiation") ------------------------

    def propose_contract(
        self, conn: PeerConnectionLike, request: bbrpc_pb2.ProposeContractRequest
    ) -> bbrpc_pb2.ProposeContractResponse:
        return self._book().handle_proposal(authenticated_peer(conn), request)

    def answer_contract(
        self, conn: PeerConnectionLike, request: bbrpc_pb2.AnswerContractRequest
    ) -> bbrpc_pb2.AnswerContractResponse:
        return self._book().handle_answer(authenticated_peer(conn), request)

    def end_contract(
        self, conn: PeerConnectionLike, request: bbrpc_pb2.EndContractRequest
    ) -> bbrpc_pb2.EndContractResponse:
        return self._book().handle_end(authenticated_peer(conn), request)

    def spot_check(
        self, conn: PeerConnectionLike, request: bbrpc_pb2.SpotCheckRequest
    ) -> Deferred[bbrpc_pb2.SpotCheckResponse]:
        return self._book().handle_spot_check(authenticated_peer(conn), request)

    def replica_lost(
        self, conn: PeerConnectionLike, request: bbrpc_pb2.ReplicaLostRequest
    ) -> bbrpc_pb2.ReplicaLostResponse:
        return self._book().handle_replica_lost(authenticated_peer(conn), request)

    def _book(self) -> ContractBook:
        if self.contracts is None:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_UNIMPLEMENTED, "contracts are not open yet"
            )
        return self.contracts

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
