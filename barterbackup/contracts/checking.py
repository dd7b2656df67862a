"""The machines' CheckScheduler: spot checks of the peer, on the wire.

Each contract being checked gets one timer: the next check falls at a
random time around the policy interval (uniformly within ±50 %, so a
replica cannot tell when the next one comes), and at most
``max_at_once`` checks run at a time over all contracts (more wait their
turn). A check:

1. reaches the peer (dialling if needed): each attempt is one uptime
   probe; a peer that cannot be dialled is reported ``peer_unreachable``;
2. asks one challenge for our **current** revision: a digest check when we
   hold the revision's sections (the answer is compared with our own copy,
   read through the tree), else a sample check against the audit samples
   of the tree entries (we need only the tree);
3. waits for the answer until the policy's deadline: no answer is
   ``check_unanswered`` (the machine then asks ``retry``: the same
   challenge again, sooner, Storj's containment), a wrong answer or a
   replica saying it lacks the revision is ``check_failed``, a right one
   ``check_passed``. The result is stated as a confidence
   (``confidence.CheckResult``) and kept in the contract's ledger.

A replica cannot fetch the checked bytes from us while it is checked: we
offer our content to a peer only while we push it (``sync.offers``), and
checks run only once the peer holds the current revision (the machine
stops them while a sync is due).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError, PeerConnectionLost
from barterbackup.contracts import digestcheck, samplecheck
from barterbackup.contracts.collaborators import Contract
from barterbackup.contracts.confidence import CheckResult
from barterbackup.contracts.entries import BookAccess
from barterbackup.contracts.pushing import PeerDialer
from barterbackup.contracts.readers import CachedNodes, DataMissing, TreeContent
from barterbackup.contracts.scorekeeping import PeerScores
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.progress import Progress, ProgressReport
from barterbackup.revisions import VerifiedRevision
from barterbackup.sync.interfaces import Blocking, ReactorTime, run_inline
from barterbackup.tree import TreeError, entry_at

log = get_logger("barterbackup.contracts")

DIGEST = "digest"
SAMPLE = "sample"
KINDS = (DIGEST, SAMPLE)
# Checks at random times within interval * [1 - JITTER, 1 + JITTER].
INTERVAL_JITTER = 0.5
# How many checks run at once over all contracts: each costs the replica a
# few hundred random reads, and over Tor a circuit's round trips.
MAX_CHECKS_AT_ONCE = 4
# An unanswered challenge is asked again after a quarter of the interval,
# at most this long, never sooner than its deadline.
RETRY_AT_MOST_SECONDS = 600.0
# Every contract checks the same revision of ours: the tree nodes read for
# one check serve the next. 16 MiB of node bytes holds every node of about
# 1.8 GiB of content (~9 MiB of nodes a GiB; decoded, about twice that in
# memory) and the upper levels of any.
OWN_NODE_CACHE_BYTES = 16 * 1024 * 1024


class OwnContent(Protocol):
    """What checking needs of our own content store."""

    @property
    def current(self) -> VerifiedRevision | None: ...

    def read_blob(self, sha256: bytes) -> bytes: ...

    def has_blob(self, sha256: bytes) -> bool: ...


@dataclass(frozen=True)
class CheckOutcome:
    """What one check found; ``passed`` is None when nothing was judged."""

    contract_id: bytes
    kind: str
    passed: bool | None
    verdict: str
    positions: int = 0
    confidence: float = 0.0
    seconds: float = 0.0
    revision: int = 0


@dataclass
class _Challenge:
    """A challenge asked, kept while it may be asked again."""

    kind: str
    revision: VerifiedRevision
    request: bbrpc_pb2.SpotCheckRequest
    verify: Callable[[bbrpc_pb2.SpotCheckResponse], CheckResult]
    positions: int


@dataclass
class _Schedule:
    contract: Contract
    timer: Any = None
    due_at: float | None = None
    pending: _Challenge | None = None
    running: bool = False
    # Set when the machine asked retry() or stop() while a result was fed.
    rescheduled: bool = False
    waiting: bool = False


@dataclass
class _Slots:
    free: int
    queue: deque[_Schedule] = field(default_factory=deque)


class ContractChecks:
    """CheckScheduler for every contract of the book."""

    def __init__(
        self,
        book: BookAccess,
        clock: ReactorTime,
        rng: random.Random,
        dialer: PeerDialer,
        content: OwnContent,
        scores: PeerScores,
        audit_key: bytes,
        blocking: Blocking[Any] = run_inline,
        max_at_once: int = MAX_CHECKS_AT_ONCE,
    ) -> None:
        self._book = book
        self._clock = clock
        self._rng = rng
        self._dialer = dialer
        self._content = content
        self._scores = scores
        self._audit_key = audit_key
        self._blocking = blocking
        self._schedules: dict[bytes, _Schedule] = {}
        self._slots = _Slots(max_at_once)
        self._own_nodes: tuple[bytes, CachedNodes] | None = None
        self._stopped = False

    # ---- CheckScheduler ------------------------------------------------------

    def start(self, contract: Contract) -> None:
        cid = contract.contract_id
        schedule = self._schedules.get(cid)
        if schedule is not None:
            schedule.contract = contract
            return
        schedule = self._schedules[cid] = _Schedule(contract)
        self._schedule_next(schedule)

    def retry(self, contract: Contract) -> None:
        schedule = self._schedules.get(contract.contract_id)
        if schedule is None:
            schedule = self._schedules[contract.contract_id] = _Schedule(contract)
        policy = contract.check_policy
        delay = max(
            float(policy.answer_deadline_seconds),
            min(policy.interval_seconds / 4, RETRY_AT_MOST_SECONDS),
        )
        schedule.rescheduled = True
        self._set_timer(schedule, delay * (1 + self._rng.uniform(0, 0.25)))

    def stop(self, contract: Contract) -> None:
        schedule = self._schedules.pop(contract.contract_id, None)
        if schedule is None:
            return
        schedule.rescheduled = True
        self._cancel_timer(schedule)
        if schedule in self._slots.queue:
            self._slots.queue.remove(schedule)

    # ---- the book's use ------------------------------------------------------

    def next_check_at(self, contract_id: bytes) -> float | None:
        schedule = self._schedules.get(contract_id)
        if schedule is None or schedule.timer is None or not schedule.timer.active():
            return None
        return schedule.due_at

    def is_checked(self, contract_id: bytes) -> bool:
        return contract_id in self._schedules

    def check_now(
        self,
        contract: Contract,
        report: ProgressReport,
        kind: str = "",
        samples: int = 0,
    ) -> Deferred[CheckOutcome]:
        """Check the contract's peer now, whatever the schedule (the user).

        The result counts like a scheduled check's; the regular schedule
        goes on from it.
        """
        if kind and kind not in KINDS:
            raise ValueError(f"a check is {' or '.join(KINDS)}, not {kind!r}")
        schedule = self._schedules.get(contract.contract_id)
        if schedule is None:
            schedule = _Schedule(contract)
        return Deferred.fromCoroutine(
            self._check(schedule, report, kind, samples, on_demand=True)
        )

    def shutdown(self) -> None:
        self._stopped = True
        for schedule in list(self._schedules.values()):
            self.stop(schedule.contract)

    # ---- scheduling ----------------------------------------------------------

    def _schedule_next(self, schedule: _Schedule) -> None:
        interval = schedule.contract.check_policy.interval_seconds
        jitter = self._rng.uniform(1 - INTERVAL_JITTER, 1 + INTERVAL_JITTER)
        self._set_timer(schedule, interval * jitter)

    def _set_timer(self, schedule: _Schedule, delay: float) -> None:
        self._cancel_timer(schedule)
        if self._stopped:
            return
        schedule.due_at = self._clock.seconds() + delay
        schedule.timer = self._clock.callLater(delay, self._due, schedule)

    def _cancel_timer(self, schedule: _Schedule) -> None:
        if schedule.timer is not None and schedule.timer.active():
            schedule.timer.cancel()
        schedule.timer = None

    def _live(self, schedule: _Schedule) -> bool:
        return (
            self._schedules.get(schedule.contract.contract_id) is schedule
            and not self._stopped
        )

    def _due(self, schedule: _Schedule) -> None:
        schedule.timer = None
        if not self._live(schedule) or schedule.running:
            return
        if self._slots.free <= 0:
            if not schedule.waiting:
                schedule.waiting = True
                self._slots.queue.append(schedule)
            return
        self._slots.free -= 1
        schedule.running = True
        d = Deferred.fromCoroutine(
            self._check(schedule, lambda event: None, "", 0, on_demand=False)
        )
        d.addErrback(lambda failure: log.failure("a spot check failed", failure))
        d.addBoth(lambda _: self._slot_freed(schedule))

    def _slot_freed(self, schedule: _Schedule) -> None:
        schedule.running = False
        self._slots.free += 1
        while self._slots.queue and self._slots.free > 0:
            waiting = self._slots.queue.popleft()
            waiting.waiting = False
            if self._live(waiting):
                self._due(waiting)

    # ---- one check -----------------------------------------------------------

    async def _check(
        self,
        schedule: _Schedule,
        report: ProgressReport,
        kind: str,
        samples: int,
        on_demand: bool,
    ) -> CheckOutcome:
        contract = schedule.contract
        cid = contract.contract_id
        peer = contract.peer_pubkey
        address = onion_address_from_pubkey(peer)
        revision = self._content.current
        if revision is None or revision.content_length == 0:
            outcome = CheckOutcome(cid, kind or DIGEST, None, "nothing to check yet")
            self._after(schedule, outcome, None, on_demand)
            return outcome
        report(Progress(phase="connecting", peer=address, revision=revision.number))
        conn = self._dialer.connection(peer)
        if conn is None:
            try:
                conn = await self._dialer.dial(peer)
            except Exception as error:
                self._scores.probe(peer, False)
                outcome = CheckOutcome(
                    cid, kind or DIGEST, None, f"unreachable: {error}", revision=0
                )
                self._after(schedule, outcome, "peer_unreachable", on_demand)
                return outcome
        self._scores.probe(peer, True)
        try:
            challenge = await self._challenge(schedule, revision, kind, samples)
        except (DataMissing, TreeError, ValueError) as error:
            outcome = CheckOutcome(
                cid,
                kind or DIGEST,
                None,
                f"cannot check: our own copy of the revision is unreadable ({error})",
                revision=revision.number,
            )
            self._after(schedule, outcome, None, on_demand)
            return outcome
        report(
            Progress(
                phase="challenge",
                peer=address,
                revision=revision.number,
                message=(
                    f"{challenge.kind} check of revision {revision.number}: "
                    f"{challenge.positions} positions"
                ),
            )
        )
        deadline = contract.check_policy.answer_deadline_seconds
        started = self._clock.seconds()
        call: Deferred[bbrpc_pb2.SpotCheckResponse] = defer.maybeDeferred(
            conn.call, "spot_check_request", challenge.request
        )
        call.addTimeout(deadline, self._clock)
        try:
            response = await call
        except defer.TimeoutError:
            outcome = CheckOutcome(
                cid,
                challenge.kind,
                None,
                f"unanswered within {deadline} s",
                challenge.positions,
                revision=revision.number,
            )
            self._after(schedule, outcome, "check_unanswered", on_demand)
            return outcome
        except PeerConnectionLost as error:
            outcome = CheckOutcome(
                cid,
                challenge.kind,
                None,
                f"the connection was lost during the check: {error}",
                challenge.positions,
                revision=revision.number,
            )
            self._after(schedule, outcome, "peer_unreachable", on_demand)
            return outcome
        except PeerCallError as error:
            return self._refused(schedule, challenge, error, on_demand, report)
        seconds = self._clock.seconds() - started
        report(
            Progress(
                phase="answer",
                peer=address,
                revision=revision.number,
                message=f"answered in {seconds:.1f} s",
            )
        )
        try:
            result = await self._blocking(lambda: challenge.verify(response))
        except (DataMissing, TreeError) as error:
            outcome = CheckOutcome(
                cid,
                challenge.kind,
                None,
                f"cannot judge the answer: our own copy is unreadable ({error})",
                challenge.positions,
                revision=revision.number,
            )
            self._after(schedule, outcome, None, on_demand)
            return outcome
        outcome = CheckOutcome(
            cid,
            challenge.kind,
            result.passed,
            result.summary(),
            result.positions,
            result.confidence() if result.passed else 0.0,
            seconds,
            revision.number,
        )
        report(
            Progress(
                phase="verdict",
                peer=address,
                revision=revision.number,
                message=outcome.verdict,
            )
        )
        self._after(
            schedule,
            outcome,
            "check_passed" if result.passed else "check_failed",
            on_demand,
        )
        return outcome

    def _refused(
        self,
        schedule: _Schedule,
        challenge: _Challenge,
        error: PeerCallError,
        on_demand: bool,
        report: ProgressReport,
    ) -> CheckOutcome:
        code = error.code
        cid = schedule.contract.contract_id
        number = challenge.revision.number
        if code in (bbrpc_pb2.ERROR_CODE_STALE, bbrpc_pb2.ERROR_CODE_NOT_FOUND):
            verdict = (
                f"failed: the peer does not hold revision {number} ({error.message})"
            )
            event: str | None = "check_failed"
        elif code == bbrpc_pb2.ERROR_CODE_PERMISSION_DENIED:
            verdict = f"failed: the peer refuses the check ({error.message})"
            event = "check_failed"
        else:
            # Busy, a fault on its side: as good as no answer.
            verdict = f"unanswered: {error.message}"
            event = "check_unanswered"
        report(
            Progress(
                phase="verdict",
                peer=onion_address_from_pubkey(schedule.contract.peer_pubkey),
                revision=number,
                message=verdict,
            )
        )
        outcome = CheckOutcome(
            cid,
            challenge.kind,
            False if event == "check_failed" else None,
            verdict,
            challenge.positions,
            revision=number,
        )
        self._after(schedule, outcome, event, on_demand)
        return outcome

    def _after(
        self,
        schedule: _Schedule,
        outcome: CheckOutcome,
        event: str | None,
        on_demand: bool,
    ) -> None:
        """Record the outcome, feed the machine, plan the next check."""
        cid = schedule.contract.contract_id
        live = self._live(schedule)
        if not live and not on_demand:
            return  # Stopped meanwhile: no results of checks under way.
        entry = self._book.entry(cid)
        if entry is not None and outcome.passed is not None:
            ledger = entry.ledger
            ledger.last_check_at = self._clock.seconds()
            ledger.last_check_passed = outcome.passed
            ledger.last_verdict = outcome.verdict
            self._book.save_soon(cid)
        schedule.rescheduled = False
        if event is not None:
            self._feed(cid, event, outcome.verdict)
        if not schedule.rescheduled:
            # Only a challenge the machine asked to retry is asked again:
            # after an answer, or once an unanswered one counted as failed,
            # the next check is a fresh one.
            schedule.pending = None
            if self._live(schedule):
                self._schedule_next(schedule)

    def _feed(self, cid: bytes, event: str, verdict: str) -> None:
        if event == "check_passed":
            self._book.feed(cid, lambda m: m.check_passed(), event)
        elif event == "check_failed":
            self._book.feed(cid, lambda m: m.check_failed(verdict), event)
        elif event == "check_unanswered":
            self._book.feed(cid, lambda m: m.check_unanswered(), event)
        elif event == "peer_unreachable":
            self._book.feed(cid, lambda m: m.peer_unreachable(), event)

    # ---- challenges ----------------------------------------------------------

    async def _challenge(
        self,
        schedule: _Schedule,
        revision: VerifiedRevision,
        kind: str,
        samples: int,
    ) -> _Challenge:
        pending = schedule.pending
        if (
            pending is not None
            and pending.revision.content_id == revision.content_id
            and (not kind or kind == pending.kind)
        ):
            return pending  # Containment: the same challenge asked again.
        positions = samples or schedule.contract.check_policy.samples
        if not kind:
            holds = await self._blocking(lambda: self._holds(revision))
            kind = DIGEST if holds else SAMPLE
        if kind == DIGEST:
            challenge = self._digest(schedule.contract, revision, positions)
        else:
            challenge = await self._blocking(
                lambda: self._sample(schedule.contract, revision, positions)
            )
        schedule.pending = challenge
        return challenge

    def _own(self, revision: VerifiedRevision) -> TreeContent:
        """Our copy of ``revision``, with the node cache its checks share."""
        cached = self._own_nodes
        if cached is None or cached[0] != revision.content_id:
            cached = (
                revision.content_id,
                CachedNodes(self._content.read_blob, OWN_NODE_CACHE_BYTES),
            )
            self._own_nodes = cached
        return TreeContent(revision, self._content.read_blob, nodes=cached[1])

    def _holds(self, revision: VerifiedRevision) -> bool:
        """Whether we hold the revision's sections (a look at the first)."""
        first = entry_at(revision.sections, 0, _Nodes(self._content.read_blob))
        return self._content.has_blob(first.entry.sha256)

    def _digest(
        self, contract: Contract, revision: VerifiedRevision, positions: int
    ) -> _Challenge:
        challenge = digestcheck.new_digest_challenge(
            revision.content_id, self._rng.randbytes, positions=positions
        )
        request = bbrpc_pb2.SpotCheckRequest(
            contract_id=contract.contract_id, digest=challenge.to_proto()
        )

        def verify(response: bbrpc_pb2.SpotCheckResponse) -> CheckResult:
            answer = (
                bytes(response.digest)
                if response.WhichOneof("answer") == "digest"
                else b""
            )
            own = self._own(revision)
            return digestcheck.verify_digest_answer(
                challenge, revision.content_length, own, answer
            )

        count = len(digestcheck.digest_positions(challenge, revision.content_length))
        return _Challenge(DIGEST, revision, request, verify, count)

    def _sample(
        self, contract: Contract, revision: VerifiedRevision, positions: int
    ) -> _Challenge:
        entry = self._book.entry(contract.contract_id)
        number = 0
        if entry is not None:
            ledger = entry.ledger
            if bytes(ledger.sample_content_id) != revision.content_id:
                ledger.sample_content_id = revision.content_id
                ledger.sample_checks = 0
            number = ledger.sample_checks
            ledger.sample_checks += 1
            self._book.save_soon(contract.contract_id)
        index = self._own(revision)
        challenge, expectation = samplecheck.new_sample_challenge(
            content_id=revision.content_id,
            index=index,
            audit_key=self._audit_key,
            check_number=number,
            random_bytes=self._rng.randbytes,
            positions=positions,
        )
        request = bbrpc_pb2.SpotCheckRequest(
            contract_id=contract.contract_id, sample=challenge.to_proto()
        )

        def verify(response: bbrpc_pb2.SpotCheckResponse) -> CheckResult:
            answer = (
                bytes(response.samples)
                if response.WhichOneof("answer") == "samples"
                else b""
            )
            return samplecheck.verify_sample_answer(expectation, answer)

        return _Challenge(SAMPLE, revision, request, verify, expectation.positions)


class _Nodes:
    """A NodeSource over ``read_blob`` (one lookup, no cache)."""

    def __init__(self, read_blob: Callable[[bytes], bytes]) -> None:
        self._read_blob = read_blob

    def get(self, node_hash: bytes) -> bytes:
        try:
            return self._read_blob(node_hash)
        except Exception as error:
            raise DataMissing(f"tree node {node_hash.hex()[:16]}: {error}") from None
