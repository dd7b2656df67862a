"""The machines' SyncPusher: our current revision to the peer, on sync.push.

``push(contract)`` wants the peer to hold our current revision: it dials
the peer if needed, pushes with ``sync.push.Pusher`` (one push per peer at
a time, stall deadline, offers only while the call lasts), and feeds the
machine ``synced`` once the peer holds the revision that is current then
(a commit meanwhile pushes again). A peer that cannot be reached is
reported with ``peer_unreachable`` and pushed to again when it connects; a
peer that refuses is asked again after a backoff.

Work starts on the next reactor turn (``callLater(0)``), never inside the
machine's transition that asked for it, and a contract told to ``stop``
gets no further input from here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from barterbackup.bbrpc.errors import PeerCallError, PeerConnectionLost
from barterbackup.contracts.collaborators import Contract
from barterbackup.contracts.entries import BookAccess
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.progress import Progress, ProgressReport
from barterbackup.revisions import VerifiedRevision
from barterbackup.sync.interfaces import PeerConnectionLike, ReactorTime
from barterbackup.sync.push import Pusher, PushResult

log = get_logger("barterbackup.contracts")

# A peer that refused a push (busy, over its grant, a fault) is asked again
# after this, doubling up to the maximum, with ±25 % jitter.
RETRY_FIRST_SECONDS = 30.0
RETRY_MAX_SECONDS = 900.0
RETRY_JITTER = 0.25


class PeerDialer(Protocol):
    """What contracts need of the connection pool."""

    def connection(self, pubkey: bytes) -> Any:
        """The authenticated connection to ``pubkey``, or None."""

    def dial(self, pubkey: bytes, hint: str = "") -> Deferred[Any]:
        """Connect (and keep reconnecting) to ``pubkey``."""


@dataclass
class _Push:
    contract: Contract
    generation: int
    running: bool = False
    again: bool = False
    unreachable_reported: bool = False
    retry_delay: float = RETRY_FIRST_SECONDS
    timer: Any = None
    waiters: list[Deferred[PushResult | None]] = field(default_factory=list)
    reports: list[ProgressReport] = field(default_factory=list)


class ContractPusher:
    """SyncPusher for every contract of the book."""

    def __init__(
        self,
        book: BookAccess,
        clock: ReactorTime,
        rng: random.Random,
        pusher: Pusher,
        dialer: PeerDialer,
        current: Callable[[], VerifiedRevision | None],
        held: Callable[[bytes, int], None],
    ) -> None:
        self._book = book
        self._clock = clock
        self._rng = rng
        self._pusher = pusher
        self._dialer = dialer
        self._current = current
        # held(contract_id, revision number): the peer confirmed holding it.
        self._held = held
        self._pushes: dict[bytes, _Push] = {}
        self._generation = 0
        self._stopped = False

    # ---- SyncPusher ----------------------------------------------------------

    def push(self, contract: Contract) -> None:
        cid = contract.contract_id
        state = self._pushes.get(cid)
        if state is None:
            self._generation += 1
            state = self._pushes[cid] = _Push(contract, self._generation)
        state.contract = contract
        if state.running:
            state.again = True
            return
        self._schedule(state, 0.0)

    def stop(self, contract: Contract) -> None:
        state = self._pushes.pop(contract.contract_id, None)
        if state is None:
            return
        self._cancel_timer(state)
        for waiter in state.waiters:
            waiter.callback(None)

    # ---- the book's use ------------------------------------------------------

    def pushing(self, contract_id: bytes) -> bool:
        return contract_id in self._pushes

    def wait(
        self, contract_id: bytes, report: ProgressReport
    ) -> Deferred[PushResult | None]:
        """Fires when the push under way for the contract completes (with its
        result), or with None once it meets an obstacle it goes on around in
        the background (unreachable, refused, stopped); ``report`` gets its
        progress meanwhile.
        """
        state = self._pushes.get(contract_id)
        waiter: Deferred[PushResult | None] = Deferred()
        if state is None:
            waiter.callback(None)
            return waiter
        state.waiters.append(waiter)
        state.reports.append(report)
        if not state.running and state.timer is not None:
            # Waiting out a backoff: the user asked, so try now.
            self._schedule(state, 0.0)
        return waiter

    def peer_connected(self, peer: bytes) -> None:
        """A peer is back: push to it what waits for it."""
        for state in list(self._pushes.values()):
            if state.contract.peer_pubkey == peer and not state.running:
                state.unreachable_reported = False
                self._schedule(state, 0.0)

    def shutdown(self) -> None:
        self._stopped = True
        for state in list(self._pushes.values()):
            self.stop(state.contract)

    # ---- internals -----------------------------------------------------------

    def _schedule(self, state: _Push, delay: float) -> None:
        self._cancel_timer(state)
        if self._stopped:
            return
        state.timer = self._clock.callLater(delay, self._start, state)

    def _cancel_timer(self, state: _Push) -> None:
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None

    def _live(self, state: _Push) -> bool:
        current = self._pushes.get(state.contract.contract_id)
        return current is state and not self._stopped

    def _start(self, state: _Push) -> None:
        state.timer = None
        if not self._live(state) or state.running:
            return
        state.running = True
        state.again = False
        Deferred.fromCoroutine(self._run(state)).addErrback(
            lambda failure: log.failure("contract push failed", failure)
        )

    async def _run(self, state: _Push) -> None:
        contract = state.contract
        cid = contract.contract_id
        try:
            revision = self._current()
            if revision is None:
                # Nothing to hold yet: the peer holds "our current revision".
                self._done(state, None)
                return
            conn = await self._connect(state)
            if conn is None:
                return
            try:
                result = await self._pusher.push(conn, revision, self._fan_out(state))
            except Exception as error:
                self._push_failed(state, conn, error)
                return
            if not self._live(state):
                return
            self._held(cid, result.revision)
            current = self._current()
            if state.again or (
                current is not None and current.content_id != revision.content_id
            ):
                # A newer revision was committed meanwhile: push that one.
                state.running = False
                self._schedule(state, 0.0)
                return
            self._done(state, result)
        finally:
            state.running = False

    def _done(self, state: _Push, result: PushResult | None) -> None:
        if not self._live(state):
            return
        cid = state.contract.contract_id
        del self._pushes[cid]
        waiters = state.waiters
        state.retry_delay = RETRY_FIRST_SECONDS
        self._book.feed(cid, lambda machine: machine.synced(), "synced")
        for waiter in waiters:
            waiter.callback(result)

    async def _connect(self, state: _Push) -> PeerConnectionLike | None:
        peer = state.contract.peer_pubkey
        conn = self._dialer.connection(peer)
        if conn is not None:
            return conn
        try:
            conn = await self._dialer.dial(peer)
        except Exception as error:
            if self._live(state):
                self._unreachable(state, f"cannot reach the peer: {error}")
            return None
        return conn if self._live(state) else None

    def _unreachable(self, state: _Push, why: str) -> None:
        # Pushed again when the peer connects (peer_connected); the pool
        # keeps redialling it.
        self._report(
            state, Progress(phase="waiting", peer=self._address(state), message=why)
        )
        self._release_waiters(state)
        if not state.unreachable_reported:
            state.unreachable_reported = True
            cid = state.contract.contract_id
            self._book.feed(
                cid, lambda machine: machine.peer_unreachable(), "peer_unreachable"
            )
        # Also try again later, in case no reconnection is ever announced.
        self._backoff(state)

    def _push_failed(self, state: _Push, conn: Any, error: Exception) -> None:
        if not self._live(state):
            return
        why = error.message if isinstance(error, PeerCallError) else str(error)
        if isinstance(error, PeerConnectionLost) or (
            self._dialer.connection(state.contract.peer_pubkey) is None
        ):
            self._unreachable(state, f"the connection was lost: {why}")
            return
        log.info(
            "sync to {peer} failed ({why}); trying again in {delay:.0f} s",
            peer=self._address(state),
            why=why,
            delay=state.retry_delay,
        )
        self._report(
            state, Progress(phase="retrying", peer=self._address(state), message=why)
        )
        self._release_waiters(state)
        self._backoff(state)

    def _release_waiters(self, state: _Push) -> None:
        waiters, state.waiters, state.reports = state.waiters, [], []
        for waiter in waiters:
            waiter.callback(None)

    def _backoff(self, state: _Push) -> None:
        delay = state.retry_delay * (1 + self._rng.uniform(-RETRY_JITTER, RETRY_JITTER))
        state.retry_delay = min(state.retry_delay * 2, RETRY_MAX_SECONDS)
        self._schedule(state, delay)

    def _fan_out(self, state: _Push) -> ProgressReport:
        def report(event: Progress) -> None:
            self._report(state, event)

        return report

    def _report(self, state: _Push, event: Progress) -> None:
        for report in list(state.reports):
            try:
                report(event)
            except Exception:
                log.failure("a progress listener failed", Failure())

    @staticmethod
    def _address(state: _Push) -> str:
        return onion_address_from_pubkey(state.contract.peer_pubkey)
