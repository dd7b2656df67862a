"""The replica side of sync: fetch a revision's missing sections from its
owner, verify every piece and section, store them.

``RevisionFetcher`` calls ``Download`` back on the owner for the sections
the plan lacks, in batches. Each piece and each whole section is
hash-checked before it is stored; a bad section is fetched once more, then
the sync fails with the old revision intact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.internet import defer

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.store.replicas import ReplicaPlan, ReplicaStore
from barterbackup.sync.interfaces import (
    Blocking,
    PeerConnectionLike,
    ReactorTime,
    run_inline,
)
from barterbackup.sync.serve import PIECE_BYTES

MIB = 1024 * 1024
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


class FetchFailed(Exception):
    """The owner did not deliver valid bytes for some sections."""


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
        send: Callable[[bbrpc_pb2.SetContentRevisionResponse], Awaitable[Any]],
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
