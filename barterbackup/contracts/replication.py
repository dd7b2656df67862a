"""Keeping at least ``min_replicas`` healthy contracts for our content.

The planner looks at the book soon after anything changes (a contract's
state, a commit, a peer connecting) and every few minutes anyway:

* **Too few contracts in force** (counting ours still being proposed):
  it proposes to the best known peer (``selection.rank_candidates``: audit
  times uptime, then room), one proposal at a time. A peer that refuses or
  cannot be reached is left alone for ``retry_peer_after_seconds``. No
  peer to propose to leaves ``problem`` set, which ``status`` shows next
  to "under-replicated: 1 of 2".
* **Make before break**: a broken or ended contract's peer may still hold
  our data; it is told it may drop it (``data_moved`` →
  ``tell_released``) only once enough *other* contracts are active, that
  is, hold our current revision and pass their checks.

Automatic contracts are symmetric: each side keeps twice our content's
size (at least 64 MiB, in steps of 64 MiB, so a growing content does not
outgrow its contract at once), and never more than our budget has free.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import selection
from barterbackup.contracts.entries import IN_FORCE, BookAccess, ContractEntry
from barterbackup.contracts.errors import ContractError
from barterbackup.contracts.policy import StorageBudget, size_text
from barterbackup.contracts.settings import BookSettings
from barterbackup.contracts.terms import MAX_CONTRACT_BYTES, MIN_CONTRACT_BYTES
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.progress import ProgressReport
from barterbackup.revisions import VerifiedRevision
from barterbackup.sync.interfaces import ReactorTime

log = get_logger("barterbackup.contracts")

MIB = 1024 * 1024
AUTO_STEP_BYTES = 64 * MIB
AUTO_GROWTH = 2


class PlannerAccess(BookAccess, Protocol):
    """What the planner needs of the contract book."""

    settings: BookSettings
    our_pubkey: bytes

    def entries(self) -> list[ContractEntry]: ...

    def min_replicas(self) -> int: ...

    def healthy_count(self) -> int: ...

    def current_revision(self) -> VerifiedRevision | None: ...

    def budget(self, excluding: bytes = b"") -> StorageBudget: ...

    def now(self) -> float: ...

    def known_peers(self) -> list[storedpb_pb2.Peer]: ...

    def propose(
        self,
        peer: bytes,
        our_bytes: int,
        their_bytes: int,
        report: ProgressReport,
        wait_until_active: bool = True,
    ) -> Deferred[ContractEntry]: ...


def auto_contract_bytes(content_length: int) -> int:
    """The size of a contract the node proposes by itself."""
    wanted = max(AUTO_STEP_BYTES, AUTO_GROWTH * content_length)
    steps = -(-wanted // AUTO_STEP_BYTES)
    return min(MAX_CONTRACT_BYTES, steps * AUTO_STEP_BYTES)


class ReplicaPlanner:
    """Forms and releases contracts so our content keeps its replicas."""

    def __init__(
        self, book: PlannerAccess, clock: ReactorTime, rng: random.Random
    ) -> None:
        self._book = book
        self._clock = clock
        self._rng = rng
        self._timer: Any = None
        self._periodic: Any = None
        self._proposing = False
        self._resting: dict[bytes, float] = {}
        self._running = False
        # Why contracts are missing and cannot be formed, or "".
        self.problem = ""

    def start(self) -> None:
        self._running = True
        self._tick()

    def stop(self) -> None:
        self._running = False
        for call in (self._timer, self._periodic):
            if call is not None and call.active():
                call.cancel()

    def schedule(self) -> None:
        """Look at the replicas soon; an earlier deadline stands."""
        if not self._running or (self._timer is not None and self._timer.active()):
            return
        self._timer = self._clock.callLater(
            self._book.settings.replan_delay_seconds, self._run
        )

    def _tick(self) -> None:
        if not self._running:
            return
        self.schedule()
        every = self._book.settings.maintain_every_seconds
        self._periodic = self._clock.callLater(
            every * self._rng.uniform(0.75, 1.25), self._tick
        )

    # ---- one look ------------------------------------------------------------

    def _run(self) -> None:
        self._timer = None
        if not self._running:
            return
        try:
            self._release_moved()
            self._form_missing()
        except Exception:
            log.failure("looking after our replicas failed", Failure())

    def _release_moved(self) -> None:
        target = self._book.min_replicas()
        if self._book.healthy_count() < max(target, 1):
            return
        for entry in self._book.entries():
            if entry.in_force or entry.state == "proposed":
                continue
            if not entry.contract.signed.accepted or entry.ledger.released:
                continue
            entry.ledger.released = True
            self._book.save(entry.contract_id)
            self._book.feed(entry.contract_id, lambda m: m.data_moved(), "data_moved")

    def _form_missing(self) -> None:
        book = self._book
        target = book.min_replicas()
        current = book.current_revision()
        if target == 0 or current is None:
            self.problem = ""
            return
        counted = [
            e
            for e in book.entries()
            if e.in_force or (e.state == "proposed" and e.contract.we_proposed)
        ]
        if len(counted) >= target:
            self.problem = ""
            return
        if self._proposing:
            return
        size = auto_contract_bytes(current.content_length)
        free = book.budget().free_bytes
        theirs = min(size, free)
        if theirs < MIN_CONTRACT_BYTES:
            self.problem = (
                f"no room to offer peers: {size_text(free)} of our budget is free "
                "(`barterbackup storage set --total`)"
            )
            return
        now = book.now()
        busy = {
            e.peer
            for e in book.entries()
            if e.state in IN_FORCE or e.state in ("proposed", "broken", "ending")
        }
        resting = {peer for peer, until in self._resting.items() if until > now}
        candidates = [
            selection.Candidate.of(record, None, now)
            for record in book.known_peers()
            if bytes(record.onion_pubkey) != book.our_pubkey
        ]
        ranked = selection.rank_candidates(
            candidates, needed_bytes=size, exclude=busy | resting
        )
        if not ranked:
            self.problem = (
                f"{len(counted)} of {target} contracts: no other known peer can "
                "take one (connect more peers: `barterbackup peers connect`)"
            )
            return
        self.problem = ""
        best = ranked[0].pubkey
        self._proposing = True
        address = onion_address_from_pubkey(best)
        log.info(
            "{have} of {target} contracts: proposing one to {peer}",
            have=len(counted),
            target=target,
            peer=address,
        )
        proposing = book.propose(
            best, size, theirs, lambda event: None, wait_until_active=False
        )

        def done(result: object) -> None:
            self._proposing = False
            if isinstance(result, Failure):
                self._resting[best] = now + book.settings.retry_peer_after_seconds
                if result.check(ContractError) is not None:
                    log.info(
                        "{peer} did not take a contract: {why}",
                        peer=address,
                        why=result.getErrorMessage(),
                    )
                else:
                    log.failure("proposing to {peer} failed", result, peer=address)
            self.schedule()

        proposing.addBoth(done)
