"""NodePeerService: what a node serves its authenticated peers.

It is the handler object a PeerConnection dispatches to. The caller's
identity is always ``conn.peer_pubkey`` (proved by the handshake), never a
field of the request, so a peer can only store, inspect or delete its *own*
content here, and only download what it is entitled to:

* our own content, if we offered that content_id to that peer
  (``push_revision`` records the offer);
* a replica we hold, only to the owner of it (recovery).

Errors reach the peer as PeerCallError with a bbrpc ErrorCode and a message
that never carries a secret.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer

from barterbackup._proto import bbrpc_pb2
from barterbackup.content.signing import InvalidRevision, VerifiedRevision
from barterbackup.peer.errors import PeerCallError
from barterbackup.peer.replication import (
    Blocking,
    FetchFailed,
    OfferedContent,
    PeerConnectionLike,
    ReactorTime,
    RevisionFetcher,
    authenticated_peer,
    push_revision,
    run_inline,
    selected_sections,
    send_sections,
)
from barterbackup.store.replicas import (
    BadSection,
    QuotaExceeded,
    ReplicaError,
    ReplicaStore,
    StaleRevision,
    UnknownRevision,
)

log = logging.getLogger(__name__)

Send = Callable[[Any], "defer.Deferred[Any]"]


class ContentSource(Protocol):
    """What the service needs of the node's own content store."""

    @property
    def current(self) -> VerifiedRevision | None: ...

    def read_section(self, sha256: bytes) -> bytes: ...


class NodePeerService:
    """Serves PeerExchange, Get/SetContentRevision and Download.

    Everything is injected: ``clock`` rate-limits progress reports,
    ``blocking`` runs disk work (the node passes a thread-pool runner; the
    default runs it inline), ``shareable_peers`` returns onion addresses of
    peers whose records allow sharing. The storage budget is the replica
    store's (one source of truth for quotas).
    """

    def __init__(
        self,
        *,
        reactor: ReactorTime,
        content: ContentSource | None,
        replicas: ReplicaStore,
        shareable_peers: Callable[[], list[str]],
        clock: ReactorTime | None = None,
        blocking: Blocking[Any] = run_inline,
    ) -> None:
        self._reactor = reactor
        self._content = content
        self._replicas = replicas
        self._shareable_peers = shareable_peers
        self._clock = clock if clock is not None else reactor
        self._blocking = blocking
        self.offers = OfferedContent()
        self._syncing: set[bytes] = set()

    # ---- owner side -----------------------------------------------------

    def push_revision(
        self,
        conn: PeerConnectionLike,
        revision: VerifiedRevision,
        on_progress: Callable[[bbrpc_pb2.SetContentRevisionResponse], object],
    ) -> defer.Deferred[bbrpc_pb2.SetContentRevisionResponse]:
        """Ask ``conn``'s peer to store ``revision`` (and let it download it)."""
        return push_revision(conn, revision, on_progress, self.offers)

    # ---- handler methods ---------------------------------------------------

    def peer_exchange(
        self, conn: PeerConnectionLike, request: bbrpc_pb2.PeerExchangeRequest
    ) -> defer.Deferred[bbrpc_pb2.PeerExchangeResponse]:
        addresses = [
            address
            for address in self._shareable_peers()
            if address != conn.peer_onion_address
        ]
        return defer.succeed(bbrpc_pb2.PeerExchangeResponse(onion_addresses=addresses))

    def get_content_revision(
        self, conn: PeerConnectionLike, request: bbrpc_pb2.GetContentRevisionRequest
    ) -> defer.Deferred[bbrpc_pb2.GetContentRevisionResponse]:
        owner = authenticated_peer(conn)
        response = bbrpc_pb2.GetContentRevisionResponse(
            granted_bytes=self._replicas.granted_bytes(owner)
        )
        held = self._replicas.held(owner)
        if held is not None:
            # Report what can be served back (the complete revision) while a
            # newer one is still being fetched; the owner re-pushes to resume.
            shown = held.readable or held.pending
            assert shown is not None
            response.signed_revision = shown.signed
            response.complete = held.readable is not None
            response.stored_bytes = held.stored_bytes
        return defer.succeed(response)

    def set_content_revision(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.SetContentRevisionRequest,
        send: Send,
    ) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(
            self._set_content_revision(conn, request, send)
        )

    def download(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.DownloadRequest,
        send: Send,
    ) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._download(conn, request, send))

    # ---- implementation ----------------------------------------------------

    async def _set_content_revision(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.SetContentRevisionRequest,
        send: Send,
    ) -> None:
        owner = authenticated_peer(conn)
        if owner in self._syncing:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_BUSY, "a sync of your content is already running"
            )
        self._syncing.add(owner)
        try:
            if request.delete:
                await self._blocking(lambda: self._replicas.delete(owner))
                await send(bbrpc_pb2.SetContentRevisionResponse(complete=True))
                return
            try:
                plan = await self._blocking(
                    lambda: self._replicas.begin(owner, request.signed_revision)
                )
                fetcher = RevisionFetcher(
                    conn, self._replicas, plan, send, self._clock, self._blocking
                )
                await fetcher.run()
            except InvalidRevision as error:
                raise PeerCallError(
                    bbrpc_pb2.ERROR_CODE_BAD_REQUEST, str(error)
                ) from None
            except QuotaExceeded as error:
                raise PeerCallError(
                    bbrpc_pb2.ERROR_CODE_QUOTA_EXCEEDED, str(error)
                ) from None
            except StaleRevision as error:
                raise PeerCallError(bbrpc_pb2.ERROR_CODE_STALE, str(error)) from None
            except (FetchFailed, BadSection) as error:
                raise PeerCallError(
                    bbrpc_pb2.ERROR_CODE_BAD_REQUEST, str(error)
                ) from None
            except PeerCallError as error:
                # The owner refused our Download: report it, do not relay codes
                # that would blame us (e.g. its NOT_FOUND).
                raise PeerCallError(
                    bbrpc_pb2.ERROR_CODE_BAD_REQUEST,
                    f"downloading the revision from you failed: {error.message}",
                ) from None
        finally:
            self._syncing.discard(owner)

    async def _download(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.DownloadRequest,
        send: Send,
    ) -> None:
        content_id = bytes(request.content_id)
        caller = authenticated_peer(conn)
        own = self.offers.lookup(caller, content_id)
        if own is not None:
            content = self._content
            if content is None:
                raise PeerCallError(bbrpc_pb2.ERROR_CODE_NOT_FOUND, "content not held")
            table = own.revision.sections
            indices = self._select(table, request)

            def read(index: int) -> bytes:
                try:
                    return content.read_section(table[index].sha256)
                except (LookupError, FileNotFoundError):
                    raise PeerCallError(
                        bbrpc_pb2.ERROR_CODE_NOT_FOUND,
                        f"section {index} of that revision is no longer held",
                    ) from None

            await send_sections(send, table, indices, read, self._blocking)
            return
        held = self._replicas.held(caller)
        for revision in (held.readable, held.pending) if held else ():
            if revision is not None and revision.content_id == content_id:
                table = revision.revision.sections
                indices = self._select(table, request)

                def read_replica(index: int) -> bytes:
                    try:
                        return self._replicas.read_section(caller, content_id, index)
                    except UnknownRevision as error:
                        raise PeerCallError(
                            bbrpc_pb2.ERROR_CODE_NOT_FOUND, str(error)
                        ) from None
                    except ReplicaError as error:
                        log.warning("serving a replica section failed: %s", error)
                        raise PeerCallError(
                            bbrpc_pb2.ERROR_CODE_INTERNAL, str(error)
                        ) from None

                await send_sections(send, table, indices, read_replica, self._blocking)
                return
        if self._is_known_elsewhere(content_id):
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_PERMISSION_DENIED,
                "you may not download that content",
            )
        raise PeerCallError(bbrpc_pb2.ERROR_CODE_NOT_FOUND, "no such content here")

    def _select(self, table: Any, request: bbrpc_pb2.DownloadRequest) -> list[int]:
        try:
            return selected_sections(
                table, request.sections, [bytes(h) for h in request.reference_sections]
            )
        except ValueError as error:
            raise PeerCallError(bbrpc_pb2.ERROR_CODE_BAD_REQUEST, str(error)) from None

    def _is_known_elsewhere(self, content_id: bytes) -> bool:
        current = self._content.current if self._content else None
        if current is not None and current.content_id == content_id:
            return True
        return self.offers.is_offered_to_anyone(content_id)
