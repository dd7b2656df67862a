"""The replica side of sync: fetch what a revision needs that we lack.

``RevisionFetcher`` walks the revision's two trees (sections, then the
manifest's sealed chunks) with a ``SyncPlan``: subtrees we hold whole are
skipped, nodes we hold from an interrupted sync are read back from our own
store, everything else is asked for by hash with ``Download`` calls back on
the owner's connection — nodes and sections in the same calls, in batches.
Every node is verified against its parent (and the root against the signed
root) before it is stored or followed; every section and chunk against the
entry that names it. A blob that comes bad is asked for once more; a second
failure fails the sync with the held revision intact, and what was stored
stays for the next attempt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from barterbackup._proto import bbrpc_pb2
from barterbackup.revisions import VerifiedRevision
from barterbackup.store.replicas import ReplicaStore
from barterbackup.sync.assembly import BlobAssembler
from barterbackup.sync.interfaces import (
    Blocking,
    PeerConnectionLike,
    ReactorTime,
    run_inline,
)
from barterbackup.sync.serve import MAX_BLOBS_PER_REQUEST, PIECE_BYTES
from barterbackup.tree import (
    MAX_SECTION_BYTES,
    SECTION_TREE_SHAPE,
    InvalidNode,
    NodeSource,
    SyncPlan,
    TreeRoot,
)
from barterbackup.tree.nodes import Leaf, NodeRef, entry_hashes, max_node_bytes
from barterbackup.tree.read import iter_nodes

MIB = 1024 * 1024
PROGRESS_EVERY_BYTES = 1 * MIB
PROGRESS_EVERY_SECONDS = 0.5
# A Download call asks for at most this much, so an interrupted call loses
# little work in flight and request frames stay small.
BATCH_MAX_BLOBS = min(1024, MAX_BLOBS_PER_REQUEST)
BATCH_MAX_BYTES = 32 * MIB
# Sections found in fetched leaves and not asked for yet are kept to about
# this many: a round asks for no more leaves than could bring the backlog
# past it (LEAF_MAX_ENTRIES each), so it stays small (~200 bytes a section)
# however large the revision (a 20 GiB sync held 2.3 million of them,
# ~500 MB, when every leaf came first).
MAX_SECTION_BACKLOG = 8192
LEAF_MAX_ENTRIES = SECTION_TREE_SHAPE.leaf_max
# Verified blobs are handed to the store in writes of about this much.
STORE_BATCH_BYTES = 4 * MIB
FETCH_ATTEMPTS = 2


class FetchFailed(Exception):
    """The owner did not deliver valid bytes for some blobs."""


Send = Callable[[bbrpc_pb2.SetContentRevisionResponse], Awaitable[Any]]


@dataclass
class _Wanted:
    """A blob to fetch: a tree node (with its plan) or a section/chunk."""

    sha256: bytes
    length: int  # exact for a section; the maximum for a node
    plan: SyncPlan | None = None  # set for a node
    ref: NodeRef | None = None
    attempts: int = 0


@dataclass
class _Round:
    """One Download call's worth of blobs, by hash."""

    wanted: dict[bytes, _Wanted] = field(default_factory=dict)
    bytes: int = 0


class RevisionFetcher:
    """Fetch a pending revision's missing blobs from its owner.

    ``send`` delivers progress responses to the owner (its Deferred is the
    transport's back-pressure); ``blocking`` runs store reads and writes (a
    thread pool in the node, inline in tests).
    """

    def __init__(
        self,
        conn: PeerConnectionLike,
        store: ReplicaStore,
        owner: bytes,
        revision: VerifiedRevision,
        send: Send,
        clock: ReactorTime,
        blocking: Blocking[Any] = run_inline,
    ) -> None:
        self._conn = conn
        self._store = store
        self._owner = owner
        self._revision = revision
        self._send = send
        self._clock = clock
        self._blocking = blocking
        self._plans = [self._plan(revision.sections), self._plan(revision.manifest)]
        self._sections: list[_Wanted] = []
        if revision.node_state is not None:
            # The sealed node state is one blob the signed root names.
            state_hash, state_length = revision.node_state
            if not store.has_blob(owner, state_hash):
                self._sections.append(_Wanted(state_hash, state_length))
        self._retry: list[_Wanted] = []
        self._to_store: list[tuple[bytes, bytes]] = []
        self._to_store_bytes = 0
        self._flushing: defer.Deferred[Any] | None = None
        self.bytes_fetched = 0
        self.section_bytes_fetched = 0
        self._reported_bytes = -1
        self._reported_at = clock.seconds()

    def _plan(self, root: TreeRoot) -> SyncPlan:
        owner = self._owner
        return SyncPlan(
            root,
            have_subtree=lambda h: self._store.holds_subtree(owner, h),
            have_section=lambda h: self._store.has_blob(owner, h),
        )

    @property
    def bytes_done(self) -> int:
        """Section bytes held: found held, or fetched in this sync."""
        held = self._plans[0].held_bytes
        return min(self._revision.content_length, held + self.section_bytes_fetched)

    def run(self) -> defer.Deferred[bbrpc_pb2.SetContentRevisionResponse]:
        return defer.Deferred.fromCoroutine(self._run())

    async def _run(self) -> bbrpc_pb2.SetContentRevisionResponse:
        await self._report(force=True)
        try:
            while True:
                work = await self._next_round()
                if work is None:
                    break
                await self._download(work)
            await self._flush_store()
        except BaseException:
            # Keep what was fetched: the next attempt skips it.
            await self._flush_store()
            await self._blocking(lambda: self._store.checkpoint(self._owner))
            raise
        revision = self._revision
        await self._blocking(
            lambda: self._store.finish(
                self._owner, revision.content_id, self._live_blobs
            )
        )
        final = self._response(complete=True)
        await self._send(final)
        return final

    # -- planning ---------------------------------------------------------------

    async def _next_round(self) -> _Round | None:
        """The blobs of the next Download, or None when nothing is left."""
        work = _Round()
        for wanted in self._retry:
            self._add(work, wanted)
        self._retry = []
        # Each leaf asked for may add up to leaf_max sections when it comes.
        nodes_left = (MAX_SECTION_BACKLOG - len(self._sections)) // LEAF_MAX_ENTRIES
        for plan in self._plans:
            while (
                len(work.wanted) < BATCH_MAX_BLOBS
                and work.bytes < BATCH_MAX_BYTES
                and nodes_left > 0
            ):
                nodes_left -= 1
                ref = plan.next_node()
                if ref is None:
                    break
                if not await self._use_stored_node(plan, ref):
                    self._add(work, _Wanted(ref.hash, max_node_bytes(ref), plan, ref))
        while self._sections and len(work.wanted) < BATCH_MAX_BLOBS:
            if work.bytes >= BATCH_MAX_BYTES:
                break
            self._add(work, self._sections.pop())
        if work.wanted:
            return work
        if any(not plan.finished for plan in self._plans):
            raise FetchFailed("the sync plan stalled")  # cannot happen
        return None

    @staticmethod
    def _add(work: _Round, wanted: _Wanted) -> None:
        if wanted.sha256 not in work.wanted:
            work.wanted[wanted.sha256] = wanted
            work.bytes += wanted.length if wanted.plan is None else 0

    async def _use_stored_node(self, plan: SyncPlan, ref: NodeRef) -> bool:
        """Feed a node an interrupted sync stored; True if that worked."""
        owner = self._owner
        if not self._store.has_blob(owner, ref.hash):
            return False
        try:
            data: bytes = await self._blocking(
                lambda: self._store.read_blob(owner, ref.hash)
            )
            self._found_node(plan, ref.hash, data)
        except Exception:
            return False  # fetch it from the owner instead
        return True

    def _found_node(self, plan: SyncPlan, node_hash: bytes, data: bytes) -> None:
        for located in plan.node_received(node_hash, data):
            entry = located.entry
            self._sections.append(_Wanted(entry.sha256, entry.length))

    # -- fetching ---------------------------------------------------------------

    async def _download(self, work: _Round) -> None:
        assembler = BlobAssembler(assembly_limits(work.wanted))
        # An owner streaming far more than asked is cut off, not buffered.
        node_allowance = sum(w.length for w in work.wanted.values() if w.plan)
        allowance = 2 * (work.bytes + node_allowance) + PIECE_BYTES
        received = 0
        request = bbrpc_pb2.DownloadRequest(
            content_id=self._revision.content_id, blobs=list(work.wanted)
        )

        def on_item(piece: bbrpc_pb2.DownloadResponse) -> Any:
            nonlocal received
            data = piece.data  # read once: every read is a copy
            received += len(data)
            self.bytes_fetched += len(data)
            if received > allowance:
                raise FetchFailed("the owner sent far more bytes than were asked for")
            blob = assembler.add(piece, data)
            if blob is None:
                return None
            return self._arrived(work.wanted[bytes(piece.blob)], blob)

        await self._conn.call_stream("download_request", request, on_item)
        for sha256, wanted in work.wanted.items():
            if sha256 not in assembler.stored:
                self._failed(wanted)

    def _arrived(self, wanted: _Wanted, data: bytes) -> Any:
        if wanted.plan is not None:
            try:
                self._found_node(wanted.plan, wanted.sha256, data)
            except InvalidNode:
                self._failed(wanted)
                return None
        else:
            self.section_bytes_fetched += len(data)
        self._to_store.append((wanted.sha256, data))
        self._to_store_bytes += len(data)
        if self._to_store_bytes >= STORE_BATCH_BYTES:
            return defer.Deferred.fromCoroutine(self._flush_and_report())
        if self._report_due():
            return defer.Deferred.fromCoroutine(self._report())
        return None

    def _failed(self, wanted: _Wanted) -> None:
        wanted.attempts += 1
        if wanted.attempts >= FETCH_ATTEMPTS:
            kind = "tree node" if wanted.plan else "section"
            raise FetchFailed(
                f"the owner sent bad or no bytes for {kind} "
                f"{wanted.sha256.hex()[:16]} twice; the previous revision is kept"
            )
        self._retry.append(wanted)

    async def _flush_and_report(self) -> None:
        # The batch is written on the worker thread while the next one
        # arrives: at most two batches (twice STORE_BATCH_BYTES) are held.
        await self._wait_flushing()
        self._start_flush()
        await self._report()

    async def _flush_store(self) -> None:
        """Everything received is in the store (or its failure raised)."""
        await self._wait_flushing()
        if self._to_store:
            self._start_flush()
            await self._wait_flushing()

    def _start_flush(self) -> None:
        blobs, self._to_store, self._to_store_bytes = self._to_store, [], 0
        owner, content_id = self._owner, self._revision.content_id
        self._flushing = self._blocking(
            lambda: self._store.store_blobs(owner, content_id, blobs)
        )

    async def _wait_flushing(self) -> None:
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            await flushing

    def _live_blobs(self) -> Iterator[bytes]:
        """Every blob the revision references (read from our own store)."""
        return live_blobs(self._revision, _StoreSource(self._store, self._owner))

    # -- progress -----------------------------------------------------------

    def _report_due(self) -> bool:
        return (
            self.bytes_done - self._reported_bytes >= PROGRESS_EVERY_BYTES
            or self._clock.seconds() - self._reported_at >= PROGRESS_EVERY_SECONDS
        )

    async def _report(self, force: bool = False) -> None:
        if force or self._report_due():
            self._reported_bytes = self.bytes_done
            self._reported_at = self._clock.seconds()
            await self._send(self._response(complete=False))

    def _response(self, complete: bool) -> bbrpc_pb2.SetContentRevisionResponse:
        total = self._revision.content_length
        return bbrpc_pb2.SetContentRevisionResponse(
            revision=self._revision.number,
            bytes_done=total if complete else self.bytes_done,
            bytes_total=total,
            bytes_fetched=self.bytes_fetched,
            complete=complete,
        )


class _StoreSource:
    """Our replica store as a tree NodeSource for one owner."""

    def __init__(self, store: ReplicaStore, owner: bytes) -> None:
        self._store = store
        self._owner = owner

    def get(self, node_hash: bytes) -> bytes:
        return self._store.read_blob(self._owner, node_hash)


def live_blobs(revision: VerifiedRevision, source: NodeSource) -> Iterator[bytes]:
    """Every blob ``revision`` references: the nodes of both its trees, its
    sections and its manifest chunks (each tree read once, verified)."""
    if revision.node_state is not None:
        yield revision.node_state[0]
    for root in (revision.sections, revision.manifest):
        for node in iter_nodes(root, source):
            yield node.ref.hash
            if isinstance(node, Leaf):
                yield from entry_hashes(node.packed(0, node.count))


def assembly_limits(wanted: dict[bytes, _Wanted]) -> dict[bytes, tuple[int, bool]]:
    """What a BlobAssembler checks of each blob: a section's exact length,
    a node's maximum."""
    return {sha256: (w.length, w.plan is None) for sha256, w in wanted.items()}


__all__ = ["MAX_SECTION_BYTES", "FetchFailed", "RevisionFetcher"]
