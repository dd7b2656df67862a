"""Serving ``Download``: blobs of our own content to the peers we offered it
to, and replicas back to their owners.

A Download names a content id and the blobs wanted (sections, tree nodes,
manifest chunks) by hash. The caller's identity is always
``conn.peer_pubkey`` (proved by the handshake), never a field of the
request, so a peer downloads only:

* our own content, if we offered that content_id to that peer (``Pusher``
  records the offer) — any blob of our store;
* a replica we hold, only to its owner (recovery) — any blob of its store.

Every blob is read verified and sent in pieces of at most ``PIECE_BYTES``,
each with its SHA-256; each piece waits for the connection to take it, so a
slow peer slows the reads instead of filling memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.bbrpc.framing import DownloadPiece, accepts_download_pieces
from barterbackup.logs import get_logger
from barterbackup.revisions import VerifiedRevision
from barterbackup.store.replicas import BadBlob, ReplicaStore, UnknownRevision
from barterbackup.sync.interfaces import (
    Blocking,
    PeerConnectionLike,
    authenticated_peer,
    run_inline,
)
from barterbackup.sync.offers import OfferedContent

log = get_logger("barterbackup.sync")

PIECE_BYTES = 1024 * 1024
# Blobs are read on the worker thread in batches of about this many bytes
# (or READ_BATCH_BLOBS blobs): one thread hop per ~9 KiB section made the
# hand-offs, not the disk, the limit of a sync.
READ_BATCH_BYTES = 1024 * 1024
READ_BATCH_BLOBS = 256
# A request names at most this many blobs: the request frame stays small
# and the work one call asks for is bounded.
MAX_BLOBS_PER_REQUEST = 4096
HASH_BYTES = 32

Send = Callable[[Any], Awaitable[Any]]


class ContentSource(Protocol):
    """What serving needs of the node's own content store."""

    @property
    def current(self) -> VerifiedRevision | None: ...

    def read_blob(self, sha256: bytes) -> bytes: ...


def check_request(request: bbrpc_pb2.DownloadRequest) -> list[bytes]:
    """The blob hashes a request asks for, or BAD_REQUEST."""
    if len(request.blobs) > MAX_BLOBS_PER_REQUEST:
        raise PeerCallError(
            bbrpc_pb2.ERROR_CODE_BAD_REQUEST,
            f"at most {MAX_BLOBS_PER_REQUEST} blobs per Download",
        )
    blobs = [bytes(blob) for blob in request.blobs]
    if any(len(blob) != HASH_BYTES for blob in blobs):
        raise PeerCallError(
            bbrpc_pb2.ERROR_CODE_BAD_REQUEST, "a blob hash is not 32 bytes"
        )
    # Each blob is sent once, however often it is named: one request of
    # 4096 copies of a 4 MiB node's hash must not cost 16 GiB of reads.
    return list(dict.fromkeys(blobs))


async def send_blobs(
    send: Send,
    blobs: list[bytes],
    read: Callable[[bytes], bytes],
    blocking: Blocking[Any] = run_inline,
) -> None:
    """Stream ``blobs`` (by hash) in pieces of at most PIECE_BYTES.

    ``read(hash)`` returns the blob's verified bytes. ``send`` gets
    DownloadPiece items if it accepts them (see ``accepts_download_pieces``),
    else DownloadResponse messages.
    """
    # A real connection takes DownloadPieces: pieces are then views into
    # the blob, copied once into their frames instead of three times.
    as_pieces = accepts_download_pieces(send)
    pending = list(reversed(blobs))
    # The next batch is read on the worker thread while this one is sent:
    # disk and wire overlap instead of taking turns. At most two batches
    # (twice READ_BATCH_BYTES) are held at once.
    reading = blocking(partial(_read_batch, read, pending))
    try:
        while True:
            read_now: list[tuple[bytes, bytes]] = await reading
            if not pending:
                break
            reading = blocking(partial(_read_batch, read, pending))
            for blob, data in read_now:
                await _send_blob(send, as_pieces, blob, data)
    except BaseException:
        # Sending failed (the peer went away): the read ahead is not wanted,
        # and its own failure, if any, is not worth a second report.
        reading.addErrback(lambda _failure: None)
        raise
    for blob, data in read_now:
        await _send_blob(send, as_pieces, blob, data)


def _read_batch(
    read: Callable[[bytes], bytes], pending: list[bytes]
) -> list[tuple[bytes, bytes]]:
    """Read from the end of ``pending`` (popping) about READ_BATCH_BYTES."""
    batch: list[tuple[bytes, bytes]] = []
    size = 0
    while pending and size < READ_BATCH_BYTES and len(batch) < READ_BATCH_BLOBS:
        blob = pending[-1]
        data = read(blob)
        pending.pop()
        batch.append((blob, data))
        size += len(data)
    return batch


async def _send_blob(send: Send, as_pieces: bool, blob: bytes, data: bytes) -> None:
    view = memoryview(data)
    length = len(data)
    for offset in range(0, max(length, 1), PIECE_BYTES):
        chunk = view[offset : offset + PIECE_BYTES]
        # A whole-blob piece's hash is the blob's own: no second pass.
        sha256 = blob if len(chunk) == length else hashlib.sha256(chunk).digest()
        if as_pieces:
            await send(DownloadPiece(blob, offset, chunk, sha256, length))
        else:
            await send(
                bbrpc_pb2.DownloadResponse(
                    blob=blob,
                    offset=offset,
                    data=bytes(chunk),
                    sha256=sha256,
                    blob_length=length,
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
        blobs = check_request(request)
        if self._content is not None and self._offers.lookup(caller, content_id):
            await send_blobs(send, blobs, self._read_own, self._blocking)
            return
        held = self._replicas.held(caller)
        if held is not None and held.revision_for(content_id) is not None:
            await send_blobs(
                send, blobs, partial(self._read_replica, caller), self._blocking
            )
            return
        if self._is_known_elsewhere(content_id):
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_PERMISSION_DENIED,
                "you may not download that content",
            )
        raise PeerCallError(bbrpc_pb2.ERROR_CODE_NOT_FOUND, "no such content here")

    def _read_own(self, blob: bytes) -> bytes:
        assert self._content is not None
        try:
            return self._content.read_blob(blob)
        except LookupError:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_NOT_FOUND,
                f"blob {blob.hex()[:16]} of that revision is no longer held",
            ) from None

    def _read_replica(self, owner: bytes, blob: bytes) -> bytes:
        try:
            return self._replicas.read_blob(owner, blob)
        except UnknownRevision as error:
            raise PeerCallError(bbrpc_pb2.ERROR_CODE_NOT_FOUND, str(error)) from None
        except BadBlob as error:
            log.warn("serving a replica blob failed: {error}", error=error)
            raise PeerCallError(bbrpc_pb2.ERROR_CODE_INTERNAL, str(error)) from None

    def _is_known_elsewhere(self, content_id: bytes) -> bool:
        current = self._content.current if self._content else None
        if current is not None and current.content_id == content_id:
            return True
        return self._offers.is_offered_to_anyone(content_id)
