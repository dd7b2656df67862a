"""Revision sync between an owner and a replica, and section streaming.

The flow (docs/replication.md has the whole story):

1. The owner calls ``SetContentRevision`` with its signed revision
   (``push_revision``) and remembers that this peer may download it
   (``OfferedContent``).
2. The replica plans the delta (``ReplicaStore.begin``) and, on the same
   connection, calls ``Download`` back on the owner for the sections it does
   not hold, in batches (``RevisionFetcher``). Each piece and each whole
   section is hash-checked before it is stored; a bad section is fetched once
   more, then the sync fails with the old revision intact.
3. The replica streams progress back and a final ``complete`` response.

``send_sections`` is the serving half of ``Download`` for both own content
and replicas.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Protocol, TypeVar

from twisted.internet import defer

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.content.signing import VerifiedRevision
from barterbackup.peer.framing import DownloadPiece, accepts_download_pieces
from barterbackup.store.replicas import ReplicaPlan, ReplicaStore

MIB = 1024 * 1024
PIECE_BYTES = 1 * MIB
PROGRESS_EVERY_BYTES = 1 * MIB
PROGRESS_EVERY_SECONDS = 0.5
# A Download call asks for at most this much, so request frames stay small
# and an interrupted call loses little work in flight.
BATCH_MAX_SECTIONS = 1024
BATCH_MAX_BYTES = 64 * MIB
# The missing-section list already excludes what we hold; the reference list
# is only a hint to the server, capped so the request frame stays small.
MAX_REFERENCE_HASHES = 1024
FETCH_ATTEMPTS = 2
OFFERS_PER_PEER = 4

T = TypeVar("T")
# An IReactorTime provider (the reactor or task.Clock). Typed Any because
# mypy here has no zope.interface plugin to check providers.
ReactorTime = Any
Blocking = Callable[[Callable[[], T]], "defer.Deferred[T]"]


def run_inline(work: Callable[[], T]) -> defer.Deferred[T]:
    """Run blocking store work right away (tests; small stores)."""
    return defer.maybeDeferred(work)


class PeerConnectionLike(Protocol):
    """What replication needs of an authenticated peer connection."""

    # Both are set once the handshake proved the peer (None before).
    peer_pubkey: bytes | None
    peer_onion_address: str | None

    def call(self, request_field: str, message: Any) -> defer.Deferred[Any]: ...

    def call_stream(
        self, request_field: str, message: Any, on_item: Callable[[Any], Any]
    ) -> defer.Deferred[None]: ...


def authenticated_peer(conn: PeerConnectionLike) -> bytes:
    """The proven peer key of ``conn``; calls are only served after that."""
    if conn.peer_pubkey is None:
        raise RuntimeError("peer connection is not authenticated yet")
    return conn.peer_pubkey


class FetchFailed(Exception):
    """The owner did not deliver valid bytes for some sections."""


class PushFailed(Exception):
    """The replica ended SetContentRevision without confirming completion."""


class OfferedContent:
    """Content ids we asked each peer to store: what it may Download.

    Only the last few revisions per peer are kept; a peer asked to store an
    older one is asked again (with the newer one) anyway.
    """

    def __init__(self, per_peer: int = OFFERS_PER_PEER) -> None:
        self._per_peer = per_peer
        self._offers: dict[bytes, OrderedDict[bytes, VerifiedRevision]] = {}

    def offer(self, peer_pubkey: bytes, revision: VerifiedRevision) -> None:
        offers = self._offers.setdefault(peer_pubkey, OrderedDict())
        offers[revision.content_id] = revision
        offers.move_to_end(revision.content_id)
        while len(offers) > self._per_peer:
            offers.popitem(last=False)

    def lookup(self, peer_pubkey: bytes, content_id: bytes) -> VerifiedRevision | None:
        offers = self._offers.get(peer_pubkey)
        return offers.get(content_id) if offers is not None else None

    def is_offered_to_anyone(self, content_id: bytes) -> bool:
        return any(content_id in offers for offers in self._offers.values())


def push_revision(
    conn: PeerConnectionLike,
    revision: VerifiedRevision,
    on_progress: Callable[[bbrpc_pb2.SetContentRevisionResponse], object],
    offers: OfferedContent | None = None,
) -> defer.Deferred[bbrpc_pb2.SetContentRevisionResponse]:
    """Ask the peer behind ``conn`` to store ``revision``; relay progress.

    Fires with the final (complete) response; fails with the peer's error
    (e.g. quota exceeded) or PushFailed if the stream ends short. With
    ``offers``, the peer is first allowed to Download the revision.
    """
    if offers is not None:
        offers.offer(authenticated_peer(conn), revision)
    last: list[bbrpc_pb2.SetContentRevisionResponse] = []

    def on_item(response: bbrpc_pb2.SetContentRevisionResponse) -> None:
        last[:] = [response]
        on_progress(response)

    def ended(_: None) -> bbrpc_pb2.SetContentRevisionResponse:
        if not last or not last[0].complete or last[0].revision != revision.number:
            raise PushFailed("the peer ended the sync without storing the revision")
        return last[0]

    request = bbrpc_pb2.SetContentRevisionRequest(signed_revision=revision.signed)
    # maybeDeferred: a revision too large for one frame fails the Deferred
    # (FrameTooLarge) instead of raising at the caller.
    d = defer.maybeDeferred(
        conn.call_stream, "set_content_revision_request", request, on_item
    )
    return d.addCallback(ended)


class RevisionFetcher:
    """Replica side: fetch a plan's missing sections from the owner.

    ``send`` delivers progress responses to the owner (its Deferred is the
    transport's backpressure); ``blocking`` runs store writes (a thread pool
    in the node, inline in tests).
    """

    def __init__(
        self,
        conn: PeerConnectionLike,
        store: ReplicaStore,
        plan: ReplicaPlan,
        send: Callable[[bbrpc_pb2.SetContentRevisionResponse], defer.Deferred[Any]],
        clock: ReactorTime,
        blocking: Blocking[Any] = run_inline,
    ) -> None:
        self._conn = conn
        self._store = store
        self._plan = plan
        self._send = send
        self._clock = clock
        self._blocking = blocking
        self._slots_per_hash: dict[bytes, int] = {}
        for section in plan.revision.revision.sections:
            count = self._slots_per_hash.get(section.sha256, 0)
            self._slots_per_hash[section.sha256] = count + 1
        self.bytes_done = plan.bytes_done
        self.bytes_fetched = 0
        self._reported_bytes = -1
        self._reported_at = clock.seconds()

    def run(self) -> defer.Deferred[bbrpc_pb2.SetContentRevisionResponse]:
        return defer.Deferred.fromCoroutine(self._run())

    async def _run(self) -> bbrpc_pb2.SetContentRevisionResponse:
        await self._report(force=True)
        wanted = list(self._plan.missing)
        for _attempt in range(FETCH_ATTEMPTS):
            if not wanted:
                break
            failed: list[tuple[int, storedpb_pb2.SectionRef]] = []
            for batch in _batches(wanted):
                failed.extend(await self._fetch_batch(batch))
            wanted = failed
        if wanted:
            index = wanted[0][0]
            raise FetchFailed(
                f"the owner sent bad or no bytes for {len(wanted)} sections "
                f"(first: {index}) twice; the previous revision is kept"
            )
        plan = self._plan
        await self._blocking(
            lambda: self._store.finish(plan.owner_pubkey, plan.content_id)
        )
        final = self._response(complete=True)
        await self._send(final)
        return final

    async def _fetch_batch(
        self, batch: list[tuple[int, storedpb_pb2.SectionRef]]
    ) -> list[tuple[int, storedpb_pb2.SectionRef]]:
        """Fetch one batch; return the sections that did not arrive intact."""
        assembler = _SectionAssembler(dict(batch))
        # An owner streaming far more than asked is cut off, not buffered.
        allowance = 2 * sum(ref.length for _, ref in batch) + PIECE_BYTES
        received = 0
        request = bbrpc_pb2.DownloadRequest(
            content_id=self._plan.content_id,
            sections=[index for index, _ in batch],
            reference_sections=self._plan.reference[:MAX_REFERENCE_HASHES],
        )

        def on_item(piece: bbrpc_pb2.DownloadResponse) -> defer.Deferred[Any] | None:
            nonlocal received
            # Read once: every read of a protobuf bytes field is a new copy.
            data = piece.data
            received += len(data)
            self.bytes_fetched += len(data)
            if received > allowance:
                raise FetchFailed("the owner sent far more bytes than were asked for")
            finished = assembler.add(piece, data)
            if finished is None:
                return None
            index, data = finished
            return defer.Deferred.fromCoroutine(self._store_section(index, data))

        await self._conn.call_stream("download_request", request, on_item)
        return [(i, ref) for i, ref in batch if i not in assembler.stored]

    async def _store_section(self, index: int, data: bytes) -> None:
        plan = self._plan
        await self._blocking(
            lambda: self._store.store_section(
                plan.owner_pubkey, plan.content_id, index, data
            )
        )
        sha256 = plan.revision.revision.sections[index].sha256
        self.bytes_done += len(data) * self._slots_per_hash[sha256]
        await self._report()

    async def _report(self, force: bool = False) -> None:
        now = self._clock.seconds()
        due = (
            self.bytes_done - self._reported_bytes >= PROGRESS_EVERY_BYTES
            or now - self._reported_at >= PROGRESS_EVERY_SECONDS
        )
        if force or due:
            self._reported_bytes, self._reported_at = self.bytes_done, now
            await self._send(self._response(complete=False))

    def _response(self, complete: bool) -> bbrpc_pb2.SetContentRevisionResponse:
        return bbrpc_pb2.SetContentRevisionResponse(
            revision=self._plan.number,
            bytes_done=self._plan.bytes_total if complete else self.bytes_done,
            bytes_total=self._plan.bytes_total,
            bytes_fetched=self.bytes_fetched,
            complete=complete,
        )


class _SectionAssembler:
    """Reassemble sections from pieces, checking each piece and the whole.

    Pieces must come in order within a section. A section with any bad
    piece is discarded (and refetched by the caller); its buffer never grows
    past the table's length, so a hostile owner cannot make us hoard memory.
    """

    def __init__(self, wanted: dict[int, storedpb_pb2.SectionRef]) -> None:
        self._wanted = wanted
        self._buffers: dict[int, bytearray] = {}
        self._rejected: set[int] = set()
        self.stored: set[int] = set()

    def add(
        self, piece: bbrpc_pb2.DownloadResponse, data: bytes
    ) -> tuple[int, bytes] | None:
        """Take ``piece`` (whose ``data`` the caller read already).

        Returns (index, section bytes) when this piece completed a section
        that passed its hash check, else None.
        """
        index = piece.section
        ref = self._wanted.get(index)
        if ref is None or index in self._rejected or index in self.stored:
            return None
        buffer = self._buffers.setdefault(index, bytearray())
        if (
            piece.section_length != ref.length
            or piece.offset != len(buffer)
            or len(buffer) + len(data) > ref.length
        ):
            self._reject(index)
            return None
        piece_digest = hashlib.sha256(data).digest()
        if piece_digest != piece.sha256:
            self._reject(index)
            return None
        if not buffer and len(data) == ref.length:
            # The piece is the whole section: its hash is the section's, so
            # both checks below use one hashing pass and no buffer copy.
            section, section_digest = data, piece_digest
            del self._buffers[index]
        else:
            buffer += data
            if len(buffer) < ref.length:
                return None
            section = bytes(self._buffers.pop(index))
            section_digest = hashlib.sha256(section).digest()
        if section_digest != ref.sha256:
            self._reject(index)
            return None
        self.stored.add(index)
        return index, section

    def _reject(self, index: int) -> None:
        self._rejected.add(index)
        self._buffers.pop(index, None)


def _batches(
    wanted: list[tuple[int, storedpb_pb2.SectionRef]],
) -> Iterable[list[tuple[int, storedpb_pb2.SectionRef]]]:
    batch: list[tuple[int, storedpb_pb2.SectionRef]] = []
    batch_bytes = 0
    for item in wanted:
        if batch and (
            len(batch) >= BATCH_MAX_SECTIONS
            or batch_bytes + item[1].length > BATCH_MAX_BYTES
        ):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(item)
        batch_bytes += item[1].length
    if batch:
        yield batch


def selected_sections(
    table: list[storedpb_pb2.SectionRef] | Any,
    indices: Iterable[int],
    reference: Iterable[bytes],
) -> list[int]:
    """Which sections a Download request asks for (ValueError if out of range).

    An empty index list means all of them; sections whose hash is in
    ``reference`` are left out (the caller holds them).
    """
    count = len(table)
    chosen = list(indices) or list(range(count))
    for index in chosen:
        if not 0 <= index < count:
            raise ValueError(f"section index {index} is out of range (0..{count - 1})")
    skip = set(reference)
    return [i for i in chosen if table[i].sha256 not in skip]


async def send_sections(
    send: Callable[[Any], Awaitable[Any]],
    table: list[storedpb_pb2.SectionRef] | Any,
    indices: list[int],
    read: Callable[[int], bytes],
    blocking: Blocking[Any] = run_inline,
) -> None:
    """Stream sections ``indices`` of ``table`` in pieces of ≤ PIECE_BYTES.

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
        length = table[index].length
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
