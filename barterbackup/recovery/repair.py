"""Self-repair: damaged or missing blobs of our own store, back from replicas.

Every peer under contract keeps our content in its replica store, and
serves any blob of it back to us (its owner) with ``Download``
(docs/replication.md, "Authorisation"). A repair asks them for the blobs a
check (or a read) found damaged, by hash:

1. the peers come from the contract book: those whose contract is in force
   or still keeps our data, the ones our ledger says hold the revision
   being repaired first;
2. for each, ``GetContentRevision`` gives the revision it holds; its
   signed root must verify under our own key (anything else is ignored),
   and its content id names the Download;
3. blobs are asked for in small batches; each piece is checked against its
   SHA-256 and each blob against its hash before it is kept, so a replica
   can send nothing but the exact bytes we lost. A replica that lacks a
   blob (or fails a batch) is asked for the rest one by one, then the next
   replica is asked for what is still missing;
4. verified blobs are written into the pack store and the damaged copies
   dropped from its index (``ContentStore.replace_blobs``), then the store
   is checked again: a repaired tree node may reveal damage below it that
   could not be seen before, which the next round repairs.

``check --repair`` runs this after a check. Reads that meet damage (a file
read, a push serving a replica, chat's offer of a stored file) tell the
store's damage listener, ``ContentRepair.note_damaged``: the hash is
queued (deduplicated, bounded) and a timer starts one background repair
at a time; what no replica can give back is logged with the files it
damages. The read that met the damage still fails, clearly.

This is deliberately the small fetcher: a few blobs from any one replica
at a time. Recovery after a total loss (many replicas in parallel) is
``recovery`` proper.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.progress import Progress, ProgressReport
from barterbackup.recovery.check import (
    CheckOutcome,
    CheckSource,
    check_store,
    locate,
)
from barterbackup.recovery.relay import ProgressRelay
from barterbackup.revisions import InvalidRevision, verify_root
from barterbackup.sync.assembly import BlobAssembler
from barterbackup.sync.interfaces import Blocking, PeerConnectionLike, ReactorTime
from barterbackup.untrusted import printable

log = get_logger("barterbackup.recovery")

# A Download asks for at most this many blobs, or this many bytes of them
# (by their bounds): a replica that fails a batch costs little.
BATCH_BLOBS = 64
BATCH_BYTES = 16 * 1024 * 1024
# A blob whose length is not known is at most this long (a section's
# maximum, more than any tree node or manifest chunk).
MAX_BLOB_BYTES = 4 * 1024 * 1024
# A replica that sent bad bytes is named with at most this many of the
# blobs (the note stays one readable line).
MAX_FAULTS_NAMED = 3
# A call to a replica that takes longer than this is given up.
CALL_TIMEOUT_SECONDS = 120.0
# Check, repair, check again: at most this many rounds (a repaired node can
# reveal damage under it).
MAX_ROUNDS = 8
# Automatic repair: how often the queue is looked at, how many blobs it
# holds at most, how many one run takes, and how long a blob no replica
# could give back waits before it is tried again.
AUTO_REPAIR_POLL_SECONDS = 5.0
MAX_PENDING_BLOBS = 4096
AUTO_REPAIR_BATCH = 256
RETRY_UNREPAIRED_SECONDS = 3600.0


@dataclass(frozen=True)
class Holder:
    """A peer that may hold our content, and the revision our ledger says
    it holds (0: not known)."""

    peer: bytes
    revision: int = 0


Connect = Callable[[bytes], Awaitable[PeerConnectionLike]]
StoreBlobs = Callable[[list[tuple[bytes, bytes]]], Awaitable[object]]


@dataclass
class FetchReport:
    """What a fetch got: the blobs stored, and why replicas could not help."""

    fetched: set[bytes] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


class ReplicaBlobFetcher:
    """Fetch a few of our blobs by hash from the replicas of our content."""

    def __init__(
        self,
        owner_pubkey: bytes,
        holders: Callable[[], list[Holder]],
        connect: Connect,
        clock: ReactorTime,
        call_timeout: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self._owner = owner_pubkey
        self._holders = holders
        self._connect = connect
        self._clock = clock
        self._timeout = call_timeout

    async def fetch(
        self, wanted: dict[bytes, int], store: StoreBlobs, prefer_revision: int = 0
    ) -> FetchReport:
        """Fetch ``wanted`` (hash → the most bytes it may have), handing
        each verified batch to ``store``; returns what was stored."""
        report = FetchReport()
        remaining = dict(wanted)
        holders = _ordered(self._holders(), prefer_revision)
        if not holders:
            report.notes.append("no peer keeps our content under a contract")
        for holder in holders:
            if not remaining:
                break
            got = await self._from_holder(holder, remaining, store, report)
            for sha256 in got:
                remaining.pop(sha256, None)
            report.fetched |= got
        if remaining and holders:
            report.notes.append(
                f"{len(remaining)} blobs are held by none of the "
                f"{len(holders)} peers that keep our content"
            )
        return report

    async def _from_holder(
        self,
        holder: Holder,
        wanted: dict[bytes, int],
        store: StoreBlobs,
        report: FetchReport,
    ) -> set[bytes]:
        address = onion_address_from_pubkey(holder.peer)
        try:
            conn = await self._connect(holder.peer)
            response = await self._timed(
                conn.call(
                    "get_content_revision_request",
                    bbrpc_pb2.GetContentRevisionRequest(),
                )
            )
        except Exception as error:
            report.notes.append(f"{address}: not reachable ({_reason(error)})")
            return set()
        signed = bytes(response.signed_root)
        if not signed:
            report.notes.append(f"{address}: holds none of our revisions")
            return set()
        try:
            held = verify_root(signed, self._owner)
        except InvalidRevision as error:
            report.notes.append(
                f"{address}: offered a revision we did not sign ({error})"
            )
            return set()
        got: set[bytes] = set()
        faults: dict[bytes, str] = {}
        for batch in _batches(wanted):
            blobs = await self._download(conn, held.content_id, batch, faults)
            if len(batch) > 1 and len(blobs) < len(batch):
                # The replica failed the call for some blob: ask for each
                # of the others alone, so one it lacks costs only itself.
                for sha256, bound in batch.items():
                    if sha256 not in blobs and sha256 not in faults:
                        blobs.update(
                            await self._download(
                                conn, held.content_id, {sha256: bound}, faults
                            )
                        )
            if blobs:
                await store(list(blobs.items()))
                got |= blobs.keys()
        if faults:
            _note_faults(report, address, faults)
        if got:
            log.info(
                "repair: {count} blobs fetched from {peer} (revision {revision})",
                count=len(got),
                peer=address,
                revision=held.number,
            )
        return got

    async def _download(
        self,
        conn: PeerConnectionLike,
        content_id: bytes,
        wanted: dict[bytes, int],
        faults: dict[bytes, str],
    ) -> dict[bytes, bytes]:
        """The blobs of one Download that arrived whole and verified (the
        call may fail part way: what was complete is kept); why any blob
        sent wrong was refused goes into ``faults``."""
        # Lengths are not known here: each blob may have up to its bound.
        assembler = BlobAssembler({h: (bound, False) for h, bound in wanted.items()})
        complete: dict[bytes, bytes] = {}
        # A replica streaming far more than was asked is cut off.
        allowance = 2 * sum(wanted.values()) + 1024 * 1024
        received = 0

        def on_item(piece: bbrpc_pb2.DownloadResponse) -> None:
            nonlocal received
            data = piece.data
            received += len(data)
            if received > allowance:
                raise ValueError("the replica sent far more bytes than were asked for")
            blob = assembler.add(piece, data)
            if blob is not None:
                complete[bytes(piece.blob)] = blob

        request = bbrpc_pb2.DownloadRequest(content_id=content_id, blobs=list(wanted))
        try:
            await self._timed(conn.call_stream("download_request", request, on_item))
        except Exception as error:
            log.debug("repair download stopped: {error}", error=_reason(error))
        faults.update(assembler.rejected)
        return complete

    def _timed(self, d: Deferred[Any]) -> Deferred[Any]:
        return d.addTimeout(self._timeout, self._clock)


def _note_faults(report: FetchReport, address: str, faults: dict[bytes, str]) -> None:
    """Name the replica and the blobs it sent wrong (the first few)."""
    named = [
        f"{sha256.hex()[:16]} ({why})"
        for sha256, why in list(faults.items())[:MAX_FAULTS_NAMED]
    ]
    more = len(faults) - len(named)
    text = f"{address}: sent bad bytes for blob {', '.join(named)}"
    if more:
        text += f" and {more} more"
    report.notes.append(text)
    log.warn("repair: {text}", text=text)


def _ordered(holders: Iterable[Holder], revision: int) -> list[Holder]:
    """One entry per peer, those holding ``revision`` first."""
    seen: dict[bytes, Holder] = {}
    for holder in holders:
        known = seen.get(holder.peer)
        if known is None or (holder.revision == revision != known.revision):
            seen[holder.peer] = holder
    return sorted(seen.values(), key=lambda h: h.revision != revision)


def _batches(wanted: dict[bytes, int]) -> Iterable[dict[bytes, int]]:
    batch: dict[bytes, int] = {}
    size = 0
    for sha256, bound in wanted.items():
        if batch and (len(batch) >= BATCH_BLOBS or size + bound > BATCH_BYTES):
            yield batch
            batch, size = {}, 0
        batch[sha256] = bound
        size += bound
    if batch:
        yield batch


def _reason(error: BaseException) -> str:
    return printable(str(error) or type(error).__name__, 200)


class BlobFetcher(Protocol):
    """What a repair needs to get blobs back (``ReplicaBlobFetcher``)."""

    async def fetch(
        self, wanted: dict[bytes, int], store: StoreBlobs, prefer_revision: int = 0
    ) -> FetchReport: ...


class RepairTarget(CheckSource, Protocol):
    """What a repair needs of the content store (``ContentStore``)."""

    def replace_blobs(self, blobs: Iterable[tuple[bytes, bytes]]) -> int: ...


@dataclass
class ContentCheckReport:
    """What ``check`` found, and (with repair) what it could mend."""

    found: CheckOutcome
    final: CheckOutcome
    repair_asked: bool = False
    blobs_repaired: int = 0
    # notes say why replicas could not give something back.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No damage left."""
        return self.final.ok


class ContentRepair:
    """Checks and repairs of the node's own store, one run at a time.

    ``blocking`` runs the checks and the pack writes (a worker thread in
    the daemon); the rest runs on the reactor.
    """

    def __init__(
        self,
        content: RepairTarget,
        fetcher: BlobFetcher,
        clock: ReactorTime,
        blocking: Blocking[Any],
        current_revision: Callable[[], int] = lambda: 0,
        poll_seconds: float = AUTO_REPAIR_POLL_SECONDS,
    ) -> None:
        self._content = content
        self._fetcher = fetcher
        self._clock = clock
        self._blocking = blocking
        self._current_revision = current_revision
        self._poll_seconds = poll_seconds
        self._runs = DeferredLock()
        self._pending: set[bytes] = set()
        self._pending_lock = threading.Lock()
        self._overflowed = False
        self._unrepaired: dict[bytes, float] = {}
        self._loop: LoopingCall | None = None
        self._auto_run: Deferred[None] | None = None

    # -- automatic repair ---------------------------------------------------

    def start(self) -> None:
        """Look at the queue of damaged blobs every few seconds."""
        if self._loop is None:
            self._loop = LoopingCall(self._poll)
            self._loop.clock = self._clock
            self._loop.start(self._poll_seconds, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def note_damaged(self, sha256: bytes) -> None:
        """A read found the blob ``sha256`` damaged (any thread): repair it
        in the background, once, whatever number of reads meet it."""
        with self._pending_lock:
            if sha256 in self._pending:
                return
            if len(self._pending) >= MAX_PENDING_BLOBS:
                self._overflowed = True
                return
            self._pending.add(sha256)

    @property
    def pending(self) -> int:
        """Blobs waiting for an automatic repair."""
        with self._pending_lock:
            return len(self._pending)

    def _poll(self) -> None:
        if self._auto_run is not None:
            return
        now = self._clock.seconds()
        with self._pending_lock:
            overflowed, self._overflowed = self._overflowed, False
            batch = []
            for sha256 in list(self._pending):
                tried = self._unrepaired.get(sha256)
                if tried is not None and now - tried < RETRY_UNREPAIRED_SECONDS:
                    self._pending.discard(sha256)
                    continue
                batch.append(sha256)
                if len(batch) >= AUTO_REPAIR_BATCH:
                    break
            self._pending.difference_update(batch)
        if overflowed:
            log.warn(
                "more than {limit} damaged blobs wait for a repair; run "
                "`barterbackup check --read-data --repair`",
                limit=MAX_PENDING_BLOBS,
            )
        if not batch:
            return
        run = self._runs.run(lambda: Deferred.fromCoroutine(self._auto_repair(batch)))
        self._auto_run = run

        def failed(failure: Failure) -> None:
            log.failure("the automatic repair failed", failure)

        def ended(_: object) -> None:
            self._auto_run = None

        run.addErrback(failed).addBoth(ended)

    async def _auto_repair(self, batch: list[bytes]) -> None:
        log.warn(
            "a read found {count} damaged blobs of our content; fetching them "
            "back from replicas",
            count=len(batch),
        )
        report = await self._fetcher.fetch(
            {sha256: MAX_BLOB_BYTES for sha256 in batch},
            self._store,
            self._current_revision(),
        )
        if report.fetched:
            log.info(
                "repaired {count} damaged blobs from replicas",
                count=len(report.fetched),
            )
        missing = set(batch) - report.fetched
        if not missing:
            return
        now = self._clock.seconds()
        for sha256 in missing:
            self._unrepaired[sha256] = now
        if len(self._unrepaired) > MAX_PENDING_BLOBS:
            for sha256 in list(self._unrepaired)[: len(self._unrepaired) // 2]:
                del self._unrepaired[sha256]
        located = await self._blocking(lambda: locate(self._content, missing))
        names = [f"{f.name!r} (revision {f.revision})" for f in located.damaged_files]
        log.error(
            "{count} damaged blobs could not be repaired ({why}); damaged files: "
            "{names}{more}; `barterbackup check --read-data` lists them all",
            count=len(missing),
            why="; ".join(report.notes) or "no replica gave them back",
            names=", ".join(names[:20]) or "none found in the stored revisions",
            more=f" and {located.damaged_files_count - 20} more"
            if located.damaged_files_count > 20
            else "",
        )

    async def _store(self, blobs: list[tuple[bytes, bytes]]) -> None:
        await self._blocking(lambda: self._content.replace_blobs(blobs))

    # -- check, and check --repair -------------------------------------------

    def check(
        self, read_data: bool, repair: bool, report: ProgressReport
    ) -> Deferred[ContentCheckReport]:
        """Check the store; with ``repair`` fetch what is damaged back from
        replicas and check again. Fires with the report (damage is in it,
        not an error)."""
        return self._runs.run(
            lambda: Deferred.fromCoroutine(self._check(read_data, repair, report))
        )

    async def _check(
        self, read_data: bool, repair: bool, report: ProgressReport
    ) -> ContentCheckReport:
        found = await self._checked(read_data, report)
        result = ContentCheckReport(found, found, repair_asked=repair)
        rounds = 0
        while repair and not result.final.ok and rounds < MAX_ROUNDS:
            rounds += 1
            wanted = {
                blob.sha256: blob.max_length or MAX_BLOB_BYTES
                for blob in result.final.damaged
                if blob.sha256
            }
            if not wanted:
                break
            report(
                Progress(
                    phase="repairing",
                    message=f"asking replicas for {len(wanted)} damaged blobs",
                )
            )
            fetched = await self._fetcher.fetch(
                wanted, self._store, self._current_revision()
            )
            result.notes = fetched.notes
            result.blobs_repaired += len(fetched.fetched)
            if not fetched.fetched:
                break
            result.final = await self._checked(read_data, report)
        return result

    async def _checked(self, read_data: bool, report: ProgressReport) -> CheckOutcome:
        relay = ProgressRelay(self._clock, report)
        try:
            outcome: CheckOutcome = await self._blocking(
                lambda: check_store(self._content, read_data, relay.post)
            )
        finally:
            relay.close(None)
        return outcome
