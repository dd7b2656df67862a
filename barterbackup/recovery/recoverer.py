"""The owner's side of recovery: from "who holds my content?" to installed.

One ``Recovery`` per unlocked node runs at most one recovery at a time;
``recover()`` starts it or follows the one running. Its phases, each
reported as ``Progress``:

1. **waiting for replicas**: every peer that connects (replicas dial their
   owners: ``contact``), every peer named with ``--from`` and every peer of
   the table is asked ``GetContentRevision``; the signed roots are verified
   with our key (``offers``). The wait ends ``WINDOW_SECONDS`` after the
   first usable offer, or as soon as ``enough()`` replicas hold it.
2. **fetching node state**: the sealed node state the chosen root names is
   fetched (one blob, verified by its hash from the root) and restored
   (peer table, contracts, storage settings) if this node had nothing;
   then the replicas it names are dialled and asked, and the choice is
   made again with their offers (a newer revision found this way wins).
3. **fetching**: every replica holding the revision completely is a
   source of one ``ParallelFetcher`` (sync/multifetch.py): verified,
   balanced by throughput, a faulty replica dropped and scored down.
   Every blob goes into our own packs; the current revision (if any) is
   untouched.
4. **verifying**: the whole revision is walked from the signed root in
   our store (``missing_blob``).
5. **installing**: ``install_revision`` makes it current (its own crash
   points); then the host is told (contracts resume, peers whose data we
   kept hear it was lost).

A fetch left with no source, an interruption or a restart loses nothing
stored: the next attempt (after a replica reconnects, or at the next
unlock) resumes from our packs.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.progress import Progress, ProgressReport
from barterbackup.recovery.nodestate import InvalidNodeState, open_node_state
from barterbackup.recovery.offers import Choice, Offer, choose, read_offer
from barterbackup.revisions import VerifiedRevision
from barterbackup.sync.interfaces import Blocking, PeerConnectionLike, ReactorTime
from barterbackup.sync.multifetch import (
    BlobSink,
    FetchSource,
    NoSourceLeft,
    ParallelFetcher,
)

log = get_logger("barterbackup.recovery")

# How long offers are collected after the first usable one.
WINDOW_SECONDS = 30.0
# After the node state named the replicas: how long to wait for them.
STATE_WINDOW_SECONDS = 20.0
# How often a wait with nothing happening looks again (dials the table).
IDLE_RECHECK_SECONDS = 60.0
# Progress events at most this often (and at every phase change).
REPORT_EVERY_SECONDS = 0.5
# A choice is made again at most this many times (a newer root found).
MAX_ROUNDS = 4

PHASE_WAITING = "waiting for replicas"
PHASE_STATE = "fetching node state"
PHASE_FETCHING = "fetching"
PHASE_VERIFYING = "verifying"
PHASE_INSTALLING = "installing"
PHASE_DONE = "done"
PHASE_FAILED = "failed"


class RecoveryFailed(Exception):
    """A recovery cannot go on (the message says why)."""


class RecoveredContent(Protocol):
    """What recovery needs of our own content store (reactor side)."""

    @property
    def current(self) -> VerifiedRevision | None: ...

    def recovered_blobs(self) -> Any: ...

    def read_blob(self, sha256: bytes) -> bytes: ...

    def missing_blob(self, revision: VerifiedRevision) -> bytes | None: ...

    def install_revision(self, revision: VerifiedRevision) -> None: ...


class RecoveryHost(Protocol):
    """What the node gives a recovery (node/recovering.py)."""

    @property
    def owner(self) -> bytes: ...

    @property
    def node_state_key(self) -> bytes: ...

    @property
    def content(self) -> RecoveredContent: ...

    @property
    def clock(self) -> ReactorTime: ...

    @property
    def blocking(self) -> Blocking[Any]: ...

    def connection(self, peer: bytes) -> PeerConnectionLike | None: ...

    def connections(self) -> dict[bytes, PeerConnectionLike]: ...

    def dial(self, peer: bytes) -> defer.Deferred[Any]: ...

    def when_connected(self, listener: Callable[[Any], object]) -> None: ...

    def known_peers(self) -> list[bytes]: ...

    def replica_peers(self) -> list[bytes]:
        """Peers under a contract that keep our content."""

    def min_replicas(self) -> int: ...

    def restore_node_state(self, state: storedpb_pb2.NodeState) -> None: ...

    def lower_score(self, peer: bytes, why: str) -> None: ...

    def recovered(self, revision: VerifiedRevision, lost_state: bool) -> None: ...


@dataclass(frozen=True)
class RecoveryResult:
    """What a finished recovery did."""

    revision: VerifiedRevision
    sources: tuple[str, ...]
    bytes_fetched: int
    blobs_fetched: int
    note: str = ""
    dropped: tuple[tuple[str, str], ...] = ()


@dataclass
class _Run:
    """One recovery in progress."""

    from_peers: list[bytes]
    wanted_number: int
    followers: list[defer.Deferred[RecoveryResult]] = field(default_factory=list)
    reports: list[ProgressReport] = field(default_factory=list)
    phase: str = PHASE_WAITING
    last: Progress | None = None
    excluded: set[bytes] = field(default_factory=set)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    fetcher: ParallelFetcher | None = None
    target: VerifiedRevision | None = None
    stopped: bool = False
    lost_state: bool = False
    state_restored: bool = False
    note: str = ""


class Recovery:
    """The node's recovery (reactor thread only)."""

    def __init__(
        self,
        host: RecoveryHost,
        window_seconds: float = WINDOW_SECONDS,
        state_window_seconds: float = STATE_WINDOW_SECONDS,
        now: Callable[[], float] = _time.monotonic,
    ) -> None:
        self._host = host
        self._clock = host.clock
        self._window = window_seconds
        self._state_window = state_window_seconds
        self._offers: dict[bytes, Offer] = {}
        self._asking: set[bytes] = set()
        self._changed: list[defer.Deferred[None]] = []
        self._run: _Run | None = None
        self._reported_at = -1e18
        self._fetch_started = 0.0
        self._fetch_base = 0
        self._listening = False
        self.attempts = 0
        # Blobs delivered by every fetch of this node (tests: nothing twice).
        self.blobs_fetched = 0

    # -- the node's API -------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def waiting(self) -> bool:
        """Running, and no revision chosen yet (nothing fetched)."""
        run = self._run
        return run is not None and run.target is None and run.fetcher is None

    def status(self) -> Progress | None:
        """The last progress of the recovery running, or None."""
        run = self._run
        if run is None:
            return None
        return run.last or Progress(phase=run.phase)

    def recover(
        self,
        report: ProgressReport,
        from_peers: Iterable[bytes] = (),
        revision: int = 0,
    ) -> defer.Deferred[RecoveryResult]:
        """Start a recovery (or follow the one running); fires with its
        result, fails with RecoveryFailed."""
        self._listen()
        follower: defer.Deferred[RecoveryResult] = defer.Deferred()
        run = self._run
        if run is None:
            run = self._run = _Run(list(from_peers), revision)
            run.lost_state = self._host.content.current is None
            run.reports.append(report)
            # Followed before it starts: it may finish at once (everything
            # already stored, every replica connected).
            run.followers.append(follower)
            defer.Deferred.fromCoroutine(self._drive(run))
        else:
            run.reports.append(report)
            run.followers.append(follower)
            for peer in from_peers:
                self._dial(peer)
            if run.last is not None:
                report(run.last)
        return follower

    def stop(self) -> defer.Deferred[None]:
        """Stop the recovery running; fires once what it stored is durable
        (it stays for the next attempt)."""
        run = self._run
        if run is None:
            return defer.succeed(None)
        run.stopped = True
        ended: defer.Deferred[RecoveryResult] = defer.Deferred()
        run.followers.append(ended)
        if run.fetcher is not None:
            run.fetcher.stop("the node is stopping")
        self._wake()
        return ended.addBoth(lambda _: None)

    # -- offers -----------------------------------------------------------------

    def _listen(self) -> None:
        if not self._listening:
            self._listening = True
            self._host.when_connected(self._peer_connected)

    def _peer_connected(self, conn: Any) -> None:
        if self._run is None or conn.peer_pubkey is None:
            return
        self._ask(bytes(conn.peer_pubkey), conn)

    def _ask(self, peer: bytes, conn: PeerConnectionLike) -> None:
        if peer in self._asking:
            return
        self._asking.add(peer)

        async def ask() -> None:
            try:
                response = await conn.call(
                    "get_content_revision_request",
                    bbrpc_pb2.GetContentRevisionRequest(),
                )
            except Exception as error:
                log.debug(
                    "{peer} did not say what it holds: {error}",
                    peer=onion_address_from_pubkey(peer),
                    error=str(error),
                )
                return
            finally:
                self._asking.discard(peer)
            offer = read_offer(peer, response, self._host.owner)
            if offer.held is None and offer.pending is None and not offer.forged:
                return  # It holds nothing of ours.
            self._offers[peer] = offer
            self._offered(peer, offer)

        defer.Deferred.fromCoroutine(ask())

    def _offered(self, peer: bytes, offer: Offer) -> None:
        run = self._run
        if run is None:
            return
        if (
            run.fetcher is not None
            and run.target is not None
            and offer.held is not None
            and offer.held.content_id == run.target.content_id
            and peer not in run.excluded
        ):
            conn = self._host.connection(peer)
            if conn is not None:
                run.fetcher.add_source(
                    FetchSource(peer, onion_address_from_pubkey(peer), conn)
                )
        self._wake()

    def _ask_everyone(self) -> None:
        for peer, conn in self._host.connections().items():
            if peer not in self._offers:
                self._ask(peer, conn)

    def _dial(self, peer: bytes) -> None:
        if peer == self._host.owner or self._host.connection(peer) is not None:
            return
        self._host.dial(peer).addErrback(lambda _: None)

    def _wake(self) -> None:
        waiters, self._changed = self._changed, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    async def _wait(self, seconds: float) -> None:
        """Until an offer changes or ``seconds`` pass."""
        changed: defer.Deferred[None] = defer.Deferred()
        self._changed.append(changed)
        timer = self._clock.callLater(max(0.0, seconds), self._wake)
        try:
            await changed
        finally:
            if timer.active():
                timer.cancel()

    def _usable_offers(self, run: _Run) -> list[Offer]:
        return [o for p, o in self._offers.items() if p not in run.excluded]

    async def _gather(self, run: _Run, window: float, enough: int) -> Choice:
        """Offers until the window after the first usable one ends, or
        ``enough`` replicas hold the best."""
        first_at: float | None = None
        idle_rounds = 0
        while True:
            self._check_stopped(run)
            self._ask_everyone()
            choice = choose(self._usable_offers(run), run.wanted_number)
            now = self._clock.seconds()
            if choice.revision is not None:
                if first_at is None:
                    first_at = now
                if len(choice.sources) >= enough or now - first_at >= window:
                    return choice
                wait = first_at + window - now
            else:
                message = choice.note or "no replica has answered yet"
                self._report(run, PHASE_WAITING, message=message, force=True)
                wait = IDLE_RECHECK_SECONDS
                if idle_rounds:
                    # Nobody answered for a while: dial the table again
                    # (at first the pool is dialling it already).
                    for peer in run.from_peers + self._host.known_peers():
                        self._dial(peer)
                idle_rounds += 1
            await self._wait(wait)

    def _check_stopped(self, run: _Run) -> None:
        if run.stopped:
            raise RecoveryFailed("the recovery was stopped; it resumes later")

    # -- the phases -------------------------------------------------------------

    async def _drive(self, run: _Run) -> None:
        try:
            result = await self._recover(run)
        except BaseException as error:
            if isinstance(error, defer.CancelledError):
                error = RecoveryFailed("the recovery was cancelled")
            message = str(error) or type(error).__name__
            self._report(run, PHASE_FAILED, message=message, force=True)
            self._run = None
            failure = error if isinstance(error, Exception) else RecoveryFailed(message)
            for follower in run.followers:
                follower.errback(failure)
            return
        self._run = None
        for follower in run.followers:
            follower.callback(result)

    async def _recover(self, run: _Run) -> RecoveryResult:
        self._report(run, PHASE_WAITING, force=True)
        # The peers of our table are dialled by the pool at start (and
        # by the wait below when nobody answers); those named are now.
        for peer in run.from_peers:
            self._dial(peer)
        enough = max(1, self._host.min_replicas())
        while True:
            choice = await self._gather(run, self._window, enough)
            for _ in range(MAX_ROUNDS):
                changed = await self._node_state(run, choice)
                if not changed:
                    break
                # The node state named our replicas: hear them all.
                replicas = self._host.replica_peers()
                for peer in replicas:
                    self._dial(peer)
                choice = await self._gather(
                    run, self._state_window, max(1, len(replicas))
                )
            self._penalize(run, choice)
            current = self._host.content.current
            if (
                current is not None
                and choice.revision is not None
                and choice.revision.number <= current.number
            ):
                message = (
                    f"revision {current.number} is current; no replica holds a "
                    "newer one"
                )
                self._report(run, PHASE_DONE, message=message, force=True)
                return RecoveryResult(current, (), 0, 0, note=message)
            result = await self._fetch(run, choice)
            if result is not None:
                return result

    async def _node_state(self, run: _Run, choice: Choice) -> bool:
        """Fetch and restore the chosen root's node state (once, and only
        on a node that had nothing); True if that was done now."""
        revision = choice.revision
        assert revision is not None
        if not run.lost_state or run.state_restored or revision.node_state is None:
            return False
        self._report(run, PHASE_STATE, revision=revision.number, force=True)
        state_hash, state_length = revision.node_state
        sink = self._host.content.recovered_blobs()
        fetcher = ParallelFetcher(
            revision,
            sink,
            self._clock,
            self._host.blocking,
            trees=False,
            extra=[(state_hash, state_length)],
            on_dropped=lambda source, why, faulty: self._dropped(
                run, source, why, faulty
            ),
        )
        for source in self._sources(run, choice):
            fetcher.add_source(source)
        run.fetcher = fetcher
        try:
            await fetcher.run()
        except NoSourceLeft:
            return False  # Tried again with the next choice.
        finally:
            run.fetcher = None
            self.blobs_fetched += fetcher.blobs_fetched
        sealed = await self._host.blocking(
            lambda: self._host.content.read_blob(state_hash)
        )
        try:
            state = open_node_state(sealed, self._host.node_state_key, self._host.owner)
        except InvalidNodeState as error:
            # Signed by us, so it is ours: a bug or damage, not a replica's.
            log.error("the recovered node state does not open: {e}", e=str(error))
            run.state_restored = True
            return False
        self._host.restore_node_state(state)
        run.state_restored = True
        log.info(
            "recovery: node state of revision {n} restored ({peers} peers, "
            "{contracts} contracts)",
            n=revision.number,
            peers=len(state.peers),
            contracts=len(state.contracts),
        )
        return True

    def _sources(self, run: _Run, choice: Choice) -> list[FetchSource]:
        sources = []
        for peer in choice.sources:
            conn = self._host.connection(peer)
            if conn is not None and peer not in run.excluded:
                sources.append(FetchSource(peer, onion_address_from_pubkey(peer), conn))
        return sources

    def _penalize(self, run: _Run, choice: Choice) -> None:
        for peer, why in choice.faulty:
            if peer in run.excluded:
                continue
            run.excluded.add(peer)
            address = onion_address_from_pubkey(peer)
            run.dropped.append((address, why))
            log.warn("recovery: ignoring {peer}: {why}", peer=address, why=why)
            self._host.lower_score(peer, why)

    def _dropped(self, run: _Run, source: FetchSource, why: str, faulty: bool) -> None:
        run.dropped.append((source.name, why))
        self._report(
            run, run.phase, peer=source.name, message=f"dropped: {why}", force=True
        )
        if faulty:
            run.excluded.add(source.key)
            self._offers.pop(source.key, None)
            self._host.lower_score(source.key, why)
        else:
            # It may come back; it is asked again when it reconnects.
            self._offers.pop(source.key, None)

    async def _fetch(self, run: _Run, choice: Choice) -> RecoveryResult | None:
        revision = choice.revision
        assert revision is not None
        run.target = revision
        run.note = choice.note
        if choice.note:
            log.warn("recovery: {note}", note=choice.note)
        sink: BlobSink = self._host.content.recovered_blobs()
        fetcher = ParallelFetcher(
            revision,
            sink,
            self._clock,
            self._host.blocking,
            extra=[revision.node_state] if revision.node_state else None,
            on_dropped=lambda source, why, faulty: self._dropped(
                run, source, why, faulty
            ),
            on_progress=lambda: self._fetch_progress(run),
        )
        for source in self._sources(run, choice):
            fetcher.add_source(source)
        run.fetcher = fetcher
        self._fetch_started = self._clock.seconds()
        self._fetch_base = fetcher.bytes_done
        self._report(
            run,
            PHASE_FETCHING,
            revision=revision.number,
            message=choice.note or self._holders_text(fetcher),
            force=True,
        )
        self.attempts += 1
        try:
            await fetcher.run()
        except NoSourceLeft as error:
            self.blobs_fetched += fetcher.blobs_fetched
            self._check_stopped(run)
            self._report(
                run,
                PHASE_WAITING,
                message=f"{error}; waiting for a replica to come back",
                force=True,
            )
            return None
        finally:
            run.fetcher = None
        self.blobs_fetched += fetcher.blobs_fetched
        self._report(run, PHASE_VERIFYING, revision=revision.number, force=True)
        content = self._host.content
        missing = await self._host.blocking(lambda: content.missing_blob(revision))
        if missing is not None:
            # Cannot happen with a complete fetch; try again, resuming.
            log.error("recovery: blob {b} missing after the fetch", b=missing.hex())
            return None
        self._report(run, PHASE_INSTALLING, revision=revision.number, force=True)
        await self._host.blocking(lambda: content.install_revision(revision))
        self._host.recovered(revision, run.lost_state)
        sources = tuple(
            s.name for s in fetcher.sources if s.active and s.blobs_received
        )
        message = f"revision {revision.number} recovered from {len(sources)} replicas"
        if choice.note:
            message = f"{message} ({choice.note})"
        self._report(
            run,
            PHASE_DONE,
            revision=revision.number,
            message=message,
            done=revision.content_length,
            total=revision.content_length,
            force=True,
        )
        return RecoveryResult(
            revision=revision,
            sources=sources,
            bytes_fetched=fetcher.bytes_fetched,
            blobs_fetched=fetcher.blobs_fetched,
            note=choice.note,
            dropped=tuple(run.dropped),
        )

    @staticmethod
    def _holders_text(fetcher: ParallelFetcher) -> str:
        names = [source.name for source in fetcher.sources if source.active]
        return f"from {len(names)} replicas"

    # -- progress -----------------------------------------------------------

    def _fetch_progress(self, run: _Run) -> None:
        if self._clock.seconds() - self._reported_at < REPORT_EVERY_SECONDS:
            return
        fetcher = run.fetcher
        if fetcher is None:
            return
        revision = fetcher.revision
        for source in fetcher.sources:
            if source.active:
                self._emit(
                    run,
                    Progress(
                        phase=PHASE_FETCHING,
                        peer=source.name,
                        bytes_done=source.section_bytes,
                        bytes_total=revision.content_length,
                        revision=revision.number,
                        bytes_per_second=source.rate,
                    ),
                )
        self._report(
            run,
            PHASE_FETCHING,
            revision=revision.number,
            done=fetcher.bytes_done,
            total=revision.content_length,
            force=True,
        )

    def _report(
        self,
        run: _Run,
        phase: str,
        *,
        peer: str = "",
        message: str = "",
        revision: int = 0,
        done: int | None = None,
        total: int | None = None,
        force: bool = False,
    ) -> None:
        now = self._clock.seconds()
        if not force and now - self._reported_at < REPORT_EVERY_SECONDS:
            return
        run.phase = phase
        fetcher = run.fetcher
        target = run.target
        if done is None:
            done = fetcher.bytes_done if fetcher is not None else 0
        if total is None:
            total = target.content_length if target is not None else 0
        rate = eta = 0.0
        if phase == PHASE_FETCHING and fetcher is not None:
            elapsed = now - self._fetch_started
            if elapsed > 0:
                rate = max(0.0, (done - self._fetch_base) / elapsed)
            if rate > 0:
                eta = max(0.0, (total - done) / rate)
        progress = Progress(
            phase=phase,
            peer=peer,
            bytes_done=done,
            bytes_total=total,
            message=message,
            revision=revision or (target.number if target is not None else 0),
            bytes_per_second=rate,
            eta_seconds=eta,
        )
        if not peer:
            run.last = progress
            self._reported_at = now
        self._emit(run, progress)

    @staticmethod
    def _emit(run: _Run, progress: Progress) -> None:
        for report in list(run.reports):
            try:
                report(progress)
            except Exception:
                log.failure("a recovery progress listener failed")
                run.reports.remove(report)
