"""Serving ``Download``: sections of our own content to the peers we offered
it to, and replicas back to their owners.

The caller's identity is always ``conn.peer_pubkey`` (proved by the
handshake), never a field of the request, so a peer downloads only:

* our own content, if we offered that content_id to that peer (``Pusher``
  records the offer);
* a replica we hold, only to the owner of it (recovery).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Protocol

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.bbrpc.framing import DownloadPiece, accepts_download_pieces
from barterbackup.logs import get_logger
from barterbackup.revisions import SectionIndexOutOfRange, VerifiedRevision
from barterbackup.store.replicas import ReplicaError, ReplicaStore, UnknownRevision
from barterbackup.sync.interfaces import (
    Blocking,
    PeerConnectionLike,
    authenticated_peer,
    run_inline,
)
from barterbackup.sync.offers import OfferedContent

log = get_logger("barterbackup.sync")

PIECE_BYTES = 1024 * 1024

Send = Callable[[Any], Awaitable[Any]]


class ContentSource(Protocol):
    """What serving needs of the node's own content store."""

    @property
    def current(self) -> VerifiedRevision | None: ...

    def read_section(self, sha256: bytes) -> bytes: ...


def selected_sections(
    revision: VerifiedRevision, indices: Iterable[int], reference: Iterable[bytes]
) -> list[int]:
    """Which sections a Download request asks for.

    An empty index list means all of them; sections whose hash is in
    ``reference`` are left out (the caller holds them). Raises
    SectionIndexOutOfRange for an index the revision does not have.
    """
    chosen = list(indices) or list(range(revision.section_count))
    skip = set(reference)
    return [i for i in chosen if revision.section(i).sha256 not in skip]


async def send_sections(
    send: Send,
    revision: VerifiedRevision,
    indices: list[int],
    read: Callable[[int], bytes],
    blocking: Blocking[Any] = run_inline,
) -> None:
    """Stream sections ``indices`` of ``revision`` in pieces of ≤ PIECE_BYTES.

    ``read(index)`` returns the section's verified ciphertext; each send is
    awaited, so a slow peer slows the reads instead of filling memory.
    ``send`` gets DownloadPiece items if it accepts them (see
    ``accepts_download_pieces``), else DownloadResponse messages.
    """
    # A real connection takes DownloadPieces: pieces are then views into
    # the section, copied once into their frames instead of three times.
    as_pieces = accepts_download_pieces(send)
    for index in indices:
        data: bytes = await blocking(partial(read, index))
        view = memoryview(data)
        length = revision.section(index).length
        for offset in range(0, max(length, 1), PIECE_BYTES):
            chunk = view[offset : offset + PIECE_BYTES]
            sha256 = hashlib.sha256(chunk).digest()
            if as_pieces:
                await send(DownloadPiece(index, offset, chunk, sha256, length))
            else:
                await send(
                    bbrpc_pb2.DownloadResponse(
                        section=index,
                        offset=offset,
                        data=bytes(chunk),
                        sha256=sha256,
                        section_length=length,
                    )
                )


class ContentServer:
    """Answers Download for our own content and for replicas we hold."""

    def __init__(
        self,
        content: ContentSource | None,
        replicas: ReplicaStore,
        offers: OfferedContent,
        blocking: Blocking[Any] = run_inline,
    ) -> None:
        self._content = content
        self._replicas = replicas
        self._offers = offers
        self._blocking = blocking

    async def download(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.DownloadRequest,
        send: Send,
    ) -> None:
        content_id = bytes(request.content_id)
        caller = authenticated_peer(conn)
        own = self._offers.lookup(caller, content_id)
        if own is not None:
            await self._send_own(own, request, send)
            return
        held = self._replicas.held(caller)
        replica = held.revision_for(content_id) if held else None
        if replica is not None:
            await self._send_replica(caller, replica, request, send)
            return
        if self._is_known_elsewhere(content_id):
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_PERMISSION_DENIED,
                "you may not download that content",
            )
        raise PeerCallError(bbrpc_pb2.ERROR_CODE_NOT_FOUND, "no such content here")

    async def _send_own(
        self, own: VerifiedRevision, request: bbrpc_pb2.DownloadRequest, send: Send
    ) -> None:
        content = self._content
        if content is None:
            raise PeerCallError(bbrpc_pb2.ERROR_CODE_NOT_FOUND, "content not held")

        def read(index: int) -> bytes:
            try:
                return content.read_section(own.section(index).sha256)
            except (LookupError, FileNotFoundError):
                raise PeerCallError(
                    bbrpc_pb2.ERROR_CODE_NOT_FOUND,
                    f"section {index} of that revision is no longer held",
                ) from None

        indices = _select(own, request)
        await send_sections(send, own, indices, read, self._blocking)

    async def _send_replica(
        self,
        owner: bytes,
        revision: VerifiedRevision,
        request: bbrpc_pb2.DownloadRequest,
        send: Send,
    ) -> None:
        def read(index: int) -> bytes:
            try:
                return self._replicas.read_section(owner, revision.content_id, index)
            except UnknownRevision as error:
                raise PeerCallError(
                    bbrpc_pb2.ERROR_CODE_NOT_FOUND, str(error)
                ) from None
            except ReplicaError as error:
                log.warn("serving a replica section failed: {error}", error=error)
                raise PeerCallError(bbrpc_pb2.ERROR_CODE_INTERNAL, str(error)) from None

        indices = _select(revision, request)
        await send_sections(send, revision, indices, read, self._blocking)

    def _is_known_elsewhere(self, content_id: bytes) -> bool:
        current = self._content.current if self._content else None
        if current is not None and current.content_id == content_id:
            return True
        return self._offers.is_offered_to_anyone(content_id)


def _select(
    revision: VerifiedRevision, request: bbrpc_pb2.DownloadRequest
) -> list[int]:
    try:
        return selected_sections(
            revision, request.sections, [bytes(h) for h in request.reference_sections]
        )
    except SectionIndexOutOfRange as error:
        raise PeerCallError(bbrpc_pb2.ERROR_CODE_BAD_REQUEST, str(error)) from None
