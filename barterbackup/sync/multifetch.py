"""Fetching one revision from several holders at once, verified, balanced.

The owner's side of recovery (and of repair): the revision's two trees are
walked with the same ``SyncPlan`` the replica's ``RevisionFetcher`` uses,
and its blobs (tree nodes, sections, manifest chunks, any listed extra
blob) are asked for with ``Download`` from every *source* — a connection
to a peer holding the revision — in parallel. Pieces are checked by the
same assembler as a replica's sync (piece hash, order, bounded buffer,
the whole blob's hash), and a node is followed only once it decodes as
the node its parent (or the signed root) describes: nothing reaches the
sink that does not verify from the signed root down.

Balancing is work stealing: a source asks for its next batch as soon as
one of its ``IN_FLIGHT`` calls ends, and a batch is sized to about
``BATCH_SECONDS`` of that source's measured throughput, so a fast source
takes more batches and a slow one fewer. A source that sends one bad byte
(a piece or blob that fails its hash, a node that does not decode, more
than was asked, a blob left out) is dropped for the rest of the fetch
with ``on_dropped(source, reason, faulty=True)``; one whose connection
goes or that refuses is dropped with ``faulty=False``. Either way what it
had in flight goes back to the others. With no source left the fetch
fails with ``NoSourceLeft`` after making what it stored durable; a new
fetcher over the same sink resumes without fetching it again (stored
nodes are read back, stored sections skipped).

Each source is its own connection; over Tor each is its own circuit (the
connection pool dials every peer through its own isolated circuit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.logs import get_logger
from barterbackup.revisions import VerifiedRevision
from barterbackup.sync.assembly import BlobAssembler
from barterbackup.sync.fetch import _Wanted, assembly_limits
from barterbackup.sync.interfaces import (
    Blocking,
    PeerConnectionLike,
    ReactorTime,
    run_inline,
)
from barterbackup.sync.serve import MAX_BLOBS_PER_REQUEST, PIECE_BYTES
from barterbackup.tree import InvalidNode, SyncPlan, TreeRoot
from barterbackup.tree.nodes import max_node_bytes

log = get_logger("barterbackup.sync")

MIB = 1024 * 1024
# Calls a source has open at once: one streams while the next is asked,
# so a round trip over Tor (~0.5-1 s) does not leave the circuit idle.
IN_FLIGHT = 2
# A batch is about this many seconds of the source's measured rate...
BATCH_SECONDS = 2.0
# ...within these bounds (the first batch of a source: FIRST_BATCH_BYTES).
MIN_BATCH_BYTES = 256 * 1024
MAX_BATCH_BYTES = 16 * MIB
FIRST_BATCH_BYTES = 1 * MIB
MAX_BATCH_BLOBS = min(1024, MAX_BLOBS_PER_REQUEST)
# Verified blobs are handed to the sink in writes of about this much.
STORE_BATCH_BYTES = 4 * MIB
# The weight of the newest call in a source's measured rate.
RATE_WEIGHT = 0.5
# A call that delivers nothing for this long is cancelled and its source
# dropped (not as faulty: it may be slow or gone), checked this often.
STALL_SECONDS = 60.0
WATCH_EVERY_SECONDS = 5.0


class NoSourceLeft(Exception):
    """Every source was dropped (or none was given) before the end."""


class BlobSink(Protocol):
    """Where fetched blobs go (the owner's content store, for recovery)."""

    def has_blob(self, sha256: bytes) -> bool: ...

    def holds_subtree(self, node_hash: bytes) -> bool: ...

    def read_blob(self, sha256: bytes) -> bytes: ...

    def store_blobs(self, blobs: list[tuple[bytes, bytes]]) -> None: ...

    def checkpoint(self) -> None: ...


@dataclass(eq=False)
class FetchSource:
    """One holder of the revision, over its own connection."""

    # key is the holder's onion key; name is for people (its address).
    key: bytes
    name: str
    conn: PeerConnectionLike
    # What it delivered, verified: all blob bytes, and section bytes.
    bytes_received: int = 0
    section_bytes: int = 0
    blobs_received: int = 0
    # Measured throughput (bytes per second of its calls), 0 until known.
    rate: float = 0.0
    dropped: str = ""
    in_flight: int = 0
    _calls: list[defer.Deferred[None]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return not self.dropped

    def batch_bytes(self) -> int:
        if self.rate <= 0:
            return FIRST_BATCH_BYTES
        wanted = int(self.rate * BATCH_SECONDS)
        return max(MIN_BATCH_BYTES, min(MAX_BATCH_BYTES, wanted))


class _SourceFault(Exception):
    """The source sent something that does not verify."""


@dataclass
class _Batch:
    source: FetchSource
    wanted: dict[bytes, _Wanted]
    started: float
    delivered: set[bytes] = field(default_factory=set)
    bytes: int = 0
    last_at: float = 0.0
    call: defer.Deferred[None] | None = None


OnDropped = Callable[[FetchSource, str, bool], None]


class ParallelFetcher:
    """Fetch a revision's missing blobs from every source at once.

    ``trees`` False fetches only ``extra`` (hash, length) blobs — e.g. the
    sealed node state, or the damaged blobs a repair wants back. Sources
    may be added while it runs (``add_source``). ``on_progress()`` is
    called after each delivered blob (cheap: the caller rate-limits).
    """

    def __init__(
        self,
        revision: VerifiedRevision,
        sink: BlobSink,
        clock: ReactorTime,
        blocking: Blocking[Any] = run_inline,
        *,
        trees: bool = True,
        extra: list[tuple[bytes, int]] | None = None,
        on_dropped: OnDropped | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.revision = revision
        self._sink = sink
        self._clock = clock
        self._blocking = blocking
        self._on_dropped = on_dropped
        self._on_progress = on_progress
        self._plans: list[SyncPlan] = []
        if trees:
            self._plans = [
                self._plan(revision.sections),
                self._plan(revision.manifest),
            ]
        self._sections: list[_Wanted] = [
            _Wanted(sha256, length)
            for sha256, length in extra or []
            if not sink.has_blob(sha256)
        ]
        self.sources: list[FetchSource] = []
        self._batches: list[_Batch] = []
        self._to_store: list[tuple[bytes, bytes]] = []
        self._to_store_bytes = 0
        self._storing: defer.Deferred[None] | None = None
        self._done: defer.Deferred[None] = defer.Deferred()
        self._running = False
        self._pumping = False
        self._finishing = False
        self._stopped = False
        self.section_bytes_fetched = 0
        self.bytes_fetched = 0
        self.blobs_fetched = 0
        self._watch: Any = None

    def _plan(self, root: TreeRoot) -> SyncPlan:
        sink = self._sink
        return SyncPlan(root, sink.holds_subtree, sink.has_blob)

    # -- the caller's API -------------------------------------------------

    @property
    def bytes_done(self) -> int:
        """Section bytes held: found stored, or fetched now."""
        held = self._plans[0].held_bytes if self._plans else 0
        total = self.revision.content_length
        return min(total, held + self.section_bytes_fetched)

    def add_source(self, source: FetchSource) -> None:
        """Fetch from ``source`` too (a holder that answered late)."""
        if any(s.key == source.key and s.active for s in self.sources):
            return
        self.sources.append(source)
        if self._running:
            self._pump()

    def run(self) -> defer.Deferred[None]:
        """Fires once every blob is stored and durable; NoSourceLeft if
        every source was dropped first (what was stored is durable)."""
        self._running = True
        self._watch = self._clock.callLater(WATCH_EVERY_SECONDS, self._watchdog)
        self._pump()
        return self._done

    def _watchdog(self) -> None:
        """Cancel calls that stalled (their source is dropped)."""
        self._watch = None
        if self._finishing:
            return
        now = self._clock.seconds()
        for batch in list(self._batches):
            if now - batch.last_at >= STALL_SECONDS and batch.call is not None:
                batch.call.cancel()
        self._watch = self._clock.callLater(WATCH_EVERY_SECONDS, self._watchdog)

    def stop(self, why: str = "the recovery stopped") -> None:
        """Cancel every call; what was stored is made durable."""
        if self._stopped or self._done.called:
            return
        self._stopped = True
        for source in self.sources:
            if source.active:
                source.dropped = why
                for call in list(source._calls):
                    call.cancel()
        self._finish(NoSourceLeft(why))

    # -- scheduling -------------------------------------------------------

    def _pump(self) -> None:
        """Give every source with a free slot its next batch."""
        if self._pumping or self._finishing or self._stopped:
            return
        self._pumping = True
        try:
            progressed = True
            while progressed:
                progressed = False
                for source in self.sources:
                    if not source.active or source.in_flight >= IN_FLIGHT:
                        continue
                    batch = self._next_batch(source)
                    if batch is None:
                        continue
                    self._start(batch)
                    progressed = True
        finally:
            self._pumping = False
        if self._work_left():
            if not any(s.active for s in self.sources):
                self._finish(NoSourceLeft("no replica is left to fetch from"))
            return
        if not self._batches:
            self._finish(None)

    def _work_left(self) -> bool:
        return bool(
            self._sections
            or self._batches
            or any(not plan.finished for plan in self._plans)
        )

    def _next_batch(self, source: FetchSource) -> _Batch | None:
        wanted: dict[bytes, _Wanted] = {}
        budget = source.batch_bytes()
        size = 0
        for plan in self._plans:
            while len(wanted) < MAX_BATCH_BLOBS:
                ref = plan.next_node()
                if ref is None:
                    break
                if self._use_stored_node(plan, ref.hash):
                    continue
                wanted[ref.hash] = _Wanted(ref.hash, max_node_bytes(ref), plan, ref)
        while self._sections and len(wanted) < MAX_BATCH_BLOBS and size < budget:
            item = self._sections.pop()
            if item.sha256 in wanted or self._sink.has_blob(item.sha256):
                continue
            wanted[item.sha256] = item
            size += item.length
        if not wanted:
            return None
        return _Batch(source, wanted, self._clock.seconds())

    def _use_stored_node(self, plan: SyncPlan, node_hash: bytes) -> bool:
        """Feed a node an interrupted fetch stored; True if that worked."""
        if not self._sink.has_blob(node_hash):
            return False
        try:
            data = self._sink.read_blob(node_hash)
            self._found_node(plan, node_hash, data)
        except Exception:
            return False
        return True

    def _found_node(self, plan: SyncPlan, node_hash: bytes, data: bytes) -> None:
        for located in plan.node_received(node_hash, data):
            entry = located.entry
            self._sections.append(_Wanted(entry.sha256, entry.length))

    # -- one Download call --------------------------------------------------

    def _start(self, batch: _Batch) -> None:
        source = batch.source
        source.in_flight += 1
        self._batches.append(batch)
        assembler = BlobAssembler(assembly_limits(batch.wanted))
        nodes = sum(w.length for w in batch.wanted.values() if w.plan is not None)
        sections = sum(w.length for w in batch.wanted.values() if w.plan is None)
        allowance = sections + nodes + PIECE_BYTES

        batch.last_at = self._clock.seconds()

        def on_item(piece: bbrpc_pb2.DownloadResponse) -> Any:
            data = piece.data
            batch.bytes += len(data)
            batch.last_at = self._clock.seconds()
            if batch.bytes > allowance:
                raise _SourceFault("it sent more bytes than were asked for")
            blob = bytes(piece.blob)
            done = assembler.add(piece, data)
            why = assembler.rejected.get(blob)
            if why is not None:
                raise _SourceFault(f"blob {blob.hex()[:16]} {why}")
            if done is None:
                return None
            return self._arrived(batch, batch.wanted[blob], done)

        request = bbrpc_pb2.DownloadRequest(
            content_id=self.revision.content_id, blobs=list(batch.wanted)
        )
        call = source.conn.call_stream("download_request", request, on_item)
        batch.call = call
        source._calls.append(call)
        call.addCallbacks(
            lambda _: self._ended(batch, call, None),
            lambda failure: self._ended(batch, call, failure.value),
        )

    def _arrived(self, batch: _Batch, wanted: _Wanted, data: bytes) -> Any:
        source = batch.source
        if wanted.plan is not None:
            try:
                self._found_node(wanted.plan, wanted.sha256, data)
            except InvalidNode as error:
                raise _SourceFault(f"a tree node does not verify: {error}") from None
        else:
            self.section_bytes_fetched += len(data)
            source.section_bytes += len(data)
        batch.delivered.add(wanted.sha256)
        source.bytes_received += len(data)
        source.blobs_received += 1
        self.bytes_fetched += len(data)
        self.blobs_fetched += 1
        self._to_store.append((wanted.sha256, data))
        self._to_store_bytes += len(data)
        if self._on_progress is not None:
            self._on_progress()
        if wanted.plan is not None:
            # New nodes or sections may be ready for idle sources.
            self._clock.callLater(0, self._pump)
        if self._to_store_bytes >= STORE_BATCH_BYTES:
            return self._flush()
        return None

    def _ended(
        self, batch: _Batch, call: defer.Deferred[None], error: BaseException | None
    ) -> None:
        source = batch.source
        source.in_flight -= 1
        if call in source._calls:
            source._calls.remove(call)
        self._batches.remove(batch)
        left = [w for h, w in batch.wanted.items() if h not in batch.delivered]
        if error is None and left:
            error = _SourceFault(f"it left out {len(left)} blobs it was asked for")
        if error is None:
            elapsed = max(self._clock.seconds() - batch.started, 1e-3)
            rate = batch.bytes / elapsed
            source.rate = (
                rate
                if source.rate <= 0
                else RATE_WEIGHT * rate + (1 - RATE_WEIGHT) * source.rate
            )
        else:
            self._give_back(left)
            if source.active and not self._stopped:
                self._drop(source, error)
        self._pump()

    def _give_back(self, left: list[_Wanted]) -> None:
        """Blobs a dropped source did not deliver go to the others."""
        for wanted in left:
            if wanted.plan is not None:
                wanted.plan.node_failed(wanted.sha256)
            else:
                self._sections.append(wanted)

    def _drop(self, source: FetchSource, error: BaseException) -> None:
        faulty = isinstance(error, _SourceFault)
        if isinstance(error, PeerCallError):
            # It said it holds the revision, then refused a blob of it.
            faulty = error.code == bbrpc_pb2.ERROR_CODE_NOT_FOUND
            reason = f"it refused: {error.message}"
        elif faulty:
            reason = str(error)
        elif isinstance(error, defer.CancelledError):
            reason = f"it sent nothing for {STALL_SECONDS:.0f} s"
        else:
            reason = f"its connection failed: {error}"
        source.dropped = reason
        log.warn("recovery: dropped {name}: {reason}", name=source.name, reason=reason)
        # On the next turn: a connection failing its calls one by one must
        # not have the later ones cancelled from inside an earlier errback.
        self._clock.callLater(0, self._cancel_calls, source)
        if self._on_dropped is not None:
            self._on_dropped(source, reason, faulty)

    @staticmethod
    def _cancel_calls(source: FetchSource) -> None:
        for call in list(source._calls):
            if not call.called:
                call.cancel()

    # -- storing ----------------------------------------------------------

    def _flush(self) -> defer.Deferred[None]:
        """Hand the verified blobs to the sink (one write at a time)."""
        blobs, self._to_store, self._to_store_bytes = self._to_store, [], 0
        previous = self._storing

        async def store() -> None:
            if previous is not None:
                await previous
            if blobs:
                await self._blocking(lambda: self._sink.store_blobs(blobs))

        storing = defer.Deferred.fromCoroutine(store())
        self._storing = storing
        return storing

    def _finish(self, error: Exception | None) -> None:
        if self._finishing:
            return
        self._finishing = True
        if self._watch is not None and self._watch.active():
            self._watch.cancel()

        async def finish() -> None:
            try:
                await self._flush()
                await self._blocking(self._sink.checkpoint)
            except Exception as failure:
                self._done.errback(failure)
                return
            if error is None:
                self._done.callback(None)
            else:
                self._done.errback(error)

        defer.Deferred.fromCoroutine(finish())


__all__ = [
    "BlobSink",
    "FetchSource",
    "NoSourceLeft",
    "ParallelFetcher",
]
