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
slow peer slows the reads instead of filling memory. A connection is served
``STREAMS_PER_CONNECTION`` Downloads at once (the rest wait their turn,
holding only their request), and what each has read but not yet sent counts
in the process's outbox ledger (docs/wire-protocol.md §4): a peer that asks
and never reads holds a few MiB, and many such peers together no more than
the ledger's limit.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, runtime_checkable

from twisted.internet.defer import DeferredSemaphore

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
# Download streams one connection is served at once. The fetchers keep two
# calls open per source (one streams while the next is asked,
# multifetch.IN_FLIGHT); each stream holds at most two read batches, so a
# peer that opens 32 and reads none holds about 4 batches, not 64.
STREAMS_PER_CONNECTION = 2

Send = Callable[[Any], Awaitable[Any]]


@runtime_checkable
class HoldsAnswerBytes(Protocol):
    """A connection that counts bytes read for its answers in the
    process's outbox ledger (bbrpc's PeerConnection)."""

    def hold_answer_bytes(self, count: int) -> None: ...

    def release_answer_bytes(self, count: int) -> None: ...


class _NotCounted:
    def hold_answer_bytes(self, count: int) -> None:
        pass

    def release_answer_bytes(self, count: int) -> None:
        pass


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
    holder: HoldsAnswerBytes | None = None,
) -> None:
    """Stream ``blobs`` (by hash) in pieces of at most PIECE_BYTES.

    ``read(hash)`` returns the blob's verified bytes. ``send`` gets
    DownloadPiece items if it accepts them (see ``accepts_download_pieces``),
    else DownloadResponse messages. ``holder`` is told of the bytes read and
    not yet sent.
    """
    counted = holder if holder is not None else _NotCounted()
    # A real connection takes DownloadPieces: pieces are then views into
    # the blob, copied once into their frames instead of three times.
    as_pieces = accepts_download_pieces(send)
    pending = list(reversed(blobs))
    held = 0
    abandoned = False

    def hold(batch: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        nonlocal held
        if abandoned:
            return batch  # read after the stream failed: dropped at once
        size = sum(len(data) for _, data in batch)
        held += size
        counted.hold_answer_bytes(size)
        return batch

    def read_next() -> Any:
        return blocking(partial(_read_batch, read, pending)).addCallback(hold)

    async def send_batch(batch: list[tuple[bytes, bytes]]) -> None:
        nonlocal held
        for blob, data in batch:
            await _send_blob(send, as_pieces, blob, data)
            held -= len(data)
            counted.release_answer_bytes(len(data))

    # The next batch is read on the worker thread while this one is sent:
    # disk and wire overlap instead of taking turns. At most two batches
    # (twice READ_BATCH_BYTES, plus a section) are held at once.
    reading = read_next()
    try:
        while True:
            read_now: list[tuple[bytes, bytes]] = await reading
            if not pending:
                break
            reading = read_next()
            await send_batch(read_now)
        await send_batch(read_now)
    except BaseException:
        # Sending failed (the peer went away): the read ahead is not wanted,
        # and its own failure, if any, is not worth a second report.
        abandoned = True
        reading.addErrback(lambda _failure: None)
        counted.release_answer_bytes(held)
        raise


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
        # Per connection, the Downloads it is served at once.
        self._streams: weakref.WeakKeyDictionary[Any, DeferredSemaphore] = (
            weakref.WeakKeyDictionary()
        )

    async def download(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.DownloadRequest,
        send: Send,
    ) -> None:
        # Checked before the call waits its turn: a refusal is immediate.
        blobs = check_request(request)
        read = self._reader_for(authenticated_peer(conn), bytes(request.content_id))
        streams = self._streams.get(conn)
        if streams is None:
            streams = self._streams[conn] = DeferredSemaphore(STREAMS_PER_CONNECTION)
        await streams.acquire()
        try:
            holder = conn if isinstance(conn, HoldsAnswerBytes) else None
            await send_blobs(send, blobs, read, self._blocking, holder)
        finally:
            streams.release()

    def _reader_for(self, caller: bytes, content_id: bytes) -> Callable[[bytes], bytes]:
        """How to read the blobs of ``content_id`` for ``caller``, or why not."""
        if self._content is not None and self._offers.lookup(caller, content_id):
            return self._read_own
        held = self._replicas.held(caller)
        if held is not None and held.revision_for(content_id) is not None:
            return partial(self._read_replica, caller)
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
