"""The contract book: every contract of the node, its machine and its work.

The book is the one owner of the node's contracts. It

* restores every machine at unlock from its sealed file
  (``contracts.files``: one per contract) and resumes its work;
* implements the machines' collaborators on the node's real parts: the
  sync pusher (``pushing``), the check scheduler (``checking``), the
  notifier (``notices``), the keeper of the peer's data (``keeping``, the
  replica store's grant), the audit scores (``scorekeeping``, the peer
  table) and persistence (here);
* feeds the machines what happens: commits, connections made and lost,
  check results, the peer's notices;
* negotiates (``propose``, and the peer's ProposeContract / AnswerContract
  calls), ends contracts, answers the peer's spot checks (``answering``);
* keeps at least ``min_replicas`` healthy contracts for our content
  (``replication.ReplicaPlanner``).

Everything runs on the reactor thread; disk work goes through
``blocking``. Inputs from the network reach a machine only through
``feed``, which takes an input the machine has no transition for as the
protocol noise it is (a repeated notice, a late answer) and changes
nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from automat import NoTransition
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.contracts import policy as policies
from barterbackup.contracts import terms as contract_terms
from barterbackup.contracts.answering import SpotCheckAnswerer
from barterbackup.contracts.checking import CheckOutcome, ContractChecks, OwnContent
from barterbackup.contracts.collaborators import Contract
from barterbackup.contracts.entries import (
    IN_FORCE,
    KEEPING,
    ContractEntry,
    Event,
)
from barterbackup.contracts.errors import (
    ContractConflict,
    NoRoom,
    PeerUnreachable,
    ProposalRefused,
    UnknownContract,
    WrongState,
)
from barterbackup.contracts.files import ContractFiles
from barterbackup.contracts.keeping import ReplicaKeeper, StorageGrants
from barterbackup.contracts.machine import (
    ContractCore,
    new_contract,
    restore_contract,
)
from barterbackup.contracts.notices import ContractNotices
from barterbackup.contracts.pushing import ContractPusher
from barterbackup.contracts.replication import ReplicaPlanner
from barterbackup.contracts.scorekeeping import PeerScores
from barterbackup.contracts.settings import BookSettings
from barterbackup.contracts.states import (
    Broken,
    Ended,
    Ending,
    InvalidRecord,
    Suspect,
    bounded_reason,
)
from barterbackup.contracts.terms import (
    InvalidTerms,
    SignedTerms,
)
from barterbackup.keys import NodeKeys
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.peers.records import PeerRecords
from barterbackup.progress import Progress, ProgressReport
from barterbackup.revisions import VerifiedRevision
from barterbackup.store.replicas import ReplicaStore, effective_total_bytes
from barterbackup.sync.interfaces import Blocking, ReactorTime, run_inline
from barterbackup.sync.push import Pusher, PushResult

log = get_logger("barterbackup.contracts")

DEFAULT_MIN_REPLICAS = 2
# Proposals waiting for our user's approval (policy "manual"): a stranger
# can make us keep no more than this many.
MAX_PENDING_APPROVALS = 16
# Ended contracts are listed this long, then forgotten.
KEEP_ENDED_SECONDS = 30 * 24 * 3600.0
# Ledger changes that may be lost in a crash are written this soon, together.
LEDGER_WRITE_DELAY = 10.0


class ConnectionPoolLike(Protocol):
    """What the book needs of peers.pool.ConnectionPool."""

    def connection(self, pubkey: bytes) -> Any: ...

    def dial(self, pubkey: bytes, hint: str = "") -> Deferred[Any]: ...

    def is_connected(self, pubkey: bytes) -> bool: ...

    def when_connected(self, listener: Callable[[Any], object]) -> None: ...

    def when_lost(self, listener: Callable[[Any], object]) -> None: ...


@dataclass(frozen=True)
class ContractView:
    """One contract as the user sees it."""

    contract_id: bytes
    peer: bytes
    state: str
    we_proposed: bool
    our_bytes: int
    their_bytes: int
    stored_bytes: int
    peer_revision: int
    last_check_at: float
    last_check_passed: bool
    last_verdict: str
    next_check_at: float | None
    detail: str
    since: float
    created_at: int
    audit_score: float
    uptime_score: float
    pending_notices: int


@dataclass(frozen=True)
class ReplicationStatus:
    """How well our content is kept by peers, for ``status``."""

    min_replicas: int
    # Contracts whose peer holds our current revision and is in good
    # standing (active).
    healthy: int
    # Contracts in force whose peer holds only an older revision.
    older: int
    # Contracts being formed (proposed by us, or syncing for the first time).
    forming: int
    checks_passed: int
    checks_failed: int
    last_check_at: float
    # Why the book cannot form the contracts it lacks, if it cannot.
    problem: str = ""

    @property
    def under_replicated(self) -> bool:
        return self.healthy < self.min_replicas


@dataclass(frozen=True)
class ObligationView:
    """What we keep for one peer under one contract."""

    contract_id: bytes
    peer: bytes
    state: str
    granted_bytes: int
    stored_bytes: int
    revision: int


def signed_terms_of(blob: bytes) -> SignedTerms:
    """The signed terms in a record: accepted, or a proposal."""
    message = storedpb_pb2.SignedContractTerms()
    message.ParseFromString(blob)
    if message.acceptor_signature:
        return contract_terms.verify_signed_terms(blob)
    return contract_terms.verify_proposal(blob)


class _RecordSink:
    """The ContractStore of one machine: records go to the book."""

    def __init__(self, book: ContractBook, contract_id: bytes) -> None:
        self._book = book
        self._contract_id = contract_id
        self.last: storedpb_pb2.ContractRecord | None = None

    def save(self, record: storedpb_pb2.ContractRecord) -> None:
        copy = storedpb_pb2.ContractRecord()
        copy.CopyFrom(record)
        self.last = copy
        self._book._record_saved(self._contract_id, copy)


class ContractBook:
    """Every contract of one unlocked node (reactor thread only)."""

    def __init__(
        self,
        *,
        keys: NodeKeys,
        clock: ReactorTime,
        now: Callable[[], float],
        rng: random.Random,
        files: ContractFiles,
        grants: StorageGrants,
        replicas: ReplicaStore,
        records: PeerRecords,
        pool: ConnectionPoolLike,
        pusher: Pusher,
        content: OwnContent,
        storage_config: Callable[[], storedpb_pb2.StorageConfig],
        audit_key: bytes,
        blocking: Blocking[Any] = run_inline,
        settings: BookSettings | None = None,
    ) -> None:
        self._keys = keys
        self.our_pubkey = keys.onion_pubkey
        self._clock = clock
        self._now = now
        self._rng = rng
        self._files = files
        self.grants = grants
        self._replicas = replicas
        self._records = records
        self._pool = pool
        self._content = content
        self._storage_config = storage_config
        self._blocking = blocking
        self.settings = settings or BookSettings()
        self._entries: dict[bytes, ContractEntry] = {}
        self._probes: dict[bytes, Any] = {}
        self._unsaved: set[bytes] = set()
        self._save_call: Any = None
        self._started = False
        self._stopped = False
        self.scores = PeerScores(records, now)
        self.keeper = ReplicaKeeper(grants, replicas, blocking)
        self.pusher = ContractPusher(
            self, clock, rng, pusher, pool, lambda: content.current, self._held
        )
        self.checks = ContractChecks(
            self,
            clock,
            rng,
            pool,
            content,
            self.scores,
            audit_key,
            blocking,
            self.settings.max_checks_at_once,
        )
        self.notices = ContractNotices(self, clock, pool)
        self.answerer = SpotCheckAnswerer(replicas, self.keeps, blocking, clock)
        self.planner = ReplicaPlanner(self, clock, rng)
        # Listeners of state changes: (entry, previous state).
        self._state_listeners: list[Callable[[ContractEntry, str], object]] = []

    # ---- lifecycle -----------------------------------------------------------

    async def restore(self) -> None:
        """Rebuild every machine from its file and resume its work."""
        files = await self._blocking(self._files.load)
        restored = []
        for contract_file in files:
            entry = self._restore_one(contract_file)
            if entry is not None:
                restored.append(entry)
        for entry in restored:
            self._safely(entry, lambda machine: machine.restarted(), "restarted")

    def _restore_one(
        self, contract_file: storedpb_pb2.ContractFile
    ) -> ContractEntry | None:
        record = contract_file.record
        try:
            signed = signed_terms_of(bytes(record.signed_terms))
            contract = Contract(signed, self.our_pubkey)
            core = self._core(contract)
            machine = restore_contract(core, record)
        except (InvalidTerms, InvalidRecord, ValueError) as error:
            log.error("a contract record does not restore: {error}", error=error)
            return None
        if (
            record.state == "ended"
            and record.ended.since < self._now() - KEEP_ENDED_SECONDS
        ):
            self._files.forget(contract.contract_id)
            return None
        entry = ContractEntry(core, machine, record, contract_file.ledger)
        self._entries[contract.contract_id] = entry
        return entry

    def start(self) -> None:
        """Listen to the pool and start looking after our replicas."""
        if self._started:
            return
        self._started = True
        self._pool.when_connected(self._peer_connected)
        self._pool.when_lost(self._peer_lost)
        for entry in list(self._entries.values()):
            if entry.state == "proposed" and entry.contract.we_proposed:
                self._resend_later(entry)
            if self._pool.is_connected(entry.peer):
                self._peer_connected_key(entry.peer)
        self.planner.start()

    def stop(self) -> Deferred[None]:
        """Stop all work and timers; fires once every record is written."""
        self._stopped = True
        self.planner.stop()
        self.pusher.shutdown()
        self.checks.shutdown()
        self.notices.shutdown()
        for call in self._probes.values():
            if call.active():
                call.cancel()
        self._probes.clear()
        for entry in self._entries.values():
            entry.core.alarm.cancel()
        self._write_unsaved()
        return self._files.flush()

    def when_state_changes(
        self, listener: Callable[[ContractEntry, str], object]
    ) -> None:
        self._state_listeners.append(listener)

    # ---- BookAccess ----------------------------------------------------------

    def entry(self, contract_id: bytes) -> ContractEntry | None:
        return self._entries.get(contract_id)

    def entries_of(self, peer: bytes) -> list[ContractEntry]:
        return [e for e in self._entries.values() if e.peer == peer]

    def entries(self) -> list[ContractEntry]:
        return list(self._entries.values())

    def feed(self, contract_id: bytes, event: Event, what: str) -> None:
        entry = self._entries.get(contract_id)
        if entry is None or self._stopped:
            return
        self._safely(entry, event, what)

    def save(self, contract_id: bytes) -> None:
        entry = self._entries.get(contract_id)
        if entry is not None:
            self._write(entry)

    def save_soon(self, contract_id: bytes) -> None:
        self._unsaved.add(contract_id)
        if self._save_call is None or not self._save_call.active():
            self._save_call = self._clock.callLater(
                LEDGER_WRITE_DELAY, self._write_unsaved
            )

    def _write_unsaved(self) -> None:
        if self._save_call is not None and self._save_call.active():
            self._save_call.cancel()
        self._save_call = None
        unsaved, self._unsaved = self._unsaved, set()
        for contract_id in unsaved:
            self.save(contract_id)

    def now(self) -> float:
        return self._now()

    def quarantined(self) -> list[tuple[Path, str]]:
        """Contract files that did not open, and why."""
        return list(self._files.quarantined)

    def current_revision(self) -> VerifiedRevision | None:
        return self._content.current

    def known_peers(self) -> list[storedpb_pb2.Peer]:
        """The peer table's records (peers the user connected, or with a
        contract)."""
        return list(self._records)

    def keeps(self, peer: bytes, contract_id: bytes) -> bool:
        """Whether we keep ``peer``'s data under that contract."""
        entry = self._entries.get(contract_id)
        return (
            entry is not None
            and entry.peer == peer
            and (entry.state in IN_FORCE or entry.state in KEEPING)
        )

    # ---- machines ------------------------------------------------------------

    def _core(self, contract: Contract) -> ContractCore:
        return ContractCore(
            contract=contract,
            clock=self._clock,
            store=_RecordSink(self, contract.contract_id),
            sync=self.pusher,
            checks=self.checks,
            notifier=self.notices,
            keeper=self.keeper,
            scores=self.scores,
            timings=self.settings.timings,
        )

    def _create(self, signed: SignedTerms, record_peer: bool = True) -> ContractEntry:
        contract = Contract(signed, self.our_pubkey)
        core = self._core(contract)
        machine = new_contract(core)
        sink = core.store
        assert isinstance(sink, _RecordSink) and sink.last is not None
        entry = ContractEntry(core, machine, sink.last, storedpb_pb2.ContractLedger())
        self._entries[contract.contract_id] = entry
        self._write(entry)
        # A peer we have a contract with is recorded (and so redialled).
        if record_peer:
            self._records.remember(contract.peer_pubkey, int(self._now()))
        return entry

    def _safely(self, entry: ContractEntry, event: Event, what: str) -> None:
        if self._stopped:
            # Stopping wrote every record and cancelled every timer: an
            # event now (a dial failing as the node shuts down) would change
            # a state nobody saves and set a timer nobody cancels.
            log.debug(
                "contract {id}: {what} after the book stopped, ignored",
                id=entry.contract_id.hex()[:16],
                what=what,
            )
            return
        try:
            event(entry.machine)
        except NoTransition:
            log.debug(
                "contract {id} in {state} takes no {what}",
                id=entry.contract_id.hex()[:16],
                state=entry.state,
                what=what,
            )

    def _record_saved(
        self, contract_id: bytes, record: storedpb_pb2.ContractRecord
    ) -> None:
        entry = self._entries.get(contract_id)
        if entry is None:
            return  # The first record: _create writes it.
        previous = entry.record.state
        entry.record = record
        self._write(entry)
        if previous != record.state:
            # Never inside the transition that saved it.
            self._clock.callLater(0, self._state_changed, entry, previous)

    def _write(self, entry: ContractEntry) -> None:
        self._unsaved.discard(entry.contract_id)
        self._files.save(
            entry.contract_id,
            storedpb_pb2.ContractFile(record=entry.record, ledger=entry.ledger),
        )

    def _state_changed(self, entry: ContractEntry, previous: str) -> None:
        log.info(
            "contract {id} with {peer}: {previous} -> {state}",
            id=entry.contract_id.hex()[:16],
            peer=onion_address_from_pubkey(entry.peer),
            previous=previous,
            state=entry.state,
        )
        for listener in list(self._state_listeners):
            try:
                listener(entry, previous)
            except Exception:
                log.failure("a contract state listener failed", Failure())
        self.planner.schedule()

    def _held(self, contract_id: bytes, number: int) -> None:
        entry = self._entries.get(contract_id)
        if entry is None:
            return
        entry.ledger.peer_revision = number
        self._write(entry)
        self._records.remember(entry.peer, int(self._now()), held_revision=number)

    # ---- events --------------------------------------------------------------

    def revision_committed(self) -> None:
        """We committed a new revision: every contract's peer needs it."""
        for entry in list(self._entries.values()):
            self._safely(
                entry,
                lambda machine: machine.revision_committed(),
                "revision_committed",
            )
        self.planner.schedule()

    def _peer_connected(self, conn: Any) -> None:
        if conn.peer_pubkey is not None:
            self._peer_connected_key(bytes(conn.peer_pubkey))

    def _peer_connected_key(self, peer: bytes) -> None:
        if self._stopped:
            return
        probe = self._probes.pop(peer, None)
        if probe is not None and probe.active():
            probe.cancel()
        entries = self.entries_of(peer)
        if not entries:
            return
        for entry in entries:
            self._safely(
                entry, lambda machine: machine.peer_reachable(), "peer_reachable"
            )
            if entry.state == "proposed" and entry.contract.we_proposed:
                self._resend_later(entry)
        self.pusher.peer_connected(peer)
        self.notices.peer_connected(peer)
        self.planner.schedule()

    def _peer_lost(self, conn: Any) -> None:
        if conn.peer_pubkey is None or self._stopped:
            return
        peer = bytes(conn.peer_pubkey)
        if not any(e.in_force for e in self.entries_of(peer)):
            return
        if peer not in self._probes:
            self._probes[peer] = self._clock.callLater(
                self.settings.probe_delay_seconds, self._probe, peer
            )

    def _probe(self, peer: bytes) -> None:
        self._probes.pop(peer, None)
        if self._stopped or self._pool.is_connected(peer):
            return

        def failed(failure: Failure) -> None:
            for entry in self.entries_of(peer):
                if entry.in_force:
                    self._safely(
                        entry,
                        lambda machine: machine.peer_unreachable(),
                        "peer_unreachable",
                    )

        # Success comes back through the pool's "connected" listener.
        self._pool.dial(peer).addErrback(failed)

    # ---- proposing -----------------------------------------------------------

    def propose(
        self,
        peer: bytes,
        our_bytes: int,
        their_bytes: int,
        report: ProgressReport,
        wait_until_active: bool = True,
    ) -> Deferred[ContractEntry]:
        """Propose a contract: the peer keeps ``our_bytes`` of ours, we keep
        ``their_bytes`` of theirs.

        Reports negotiating → syncing (with bytes) → active. Fires with the
        contract once the peer accepted and, with ``wait_until_active``,
        holds our current revision (or the sync met an obstacle it goes on
        around in the background); fails with ProposalRefused (the peer's
        reason), PeerUnreachable, ContractConflict, NoRoom or InvalidTerms.
        """
        return Deferred.fromCoroutine(
            self._propose(peer, our_bytes, their_bytes, report, wait_until_active)
        )

    async def _propose(
        self,
        peer: bytes,
        our_bytes: int,
        their_bytes: int,
        report: ProgressReport,
        wait_until_active: bool,
    ) -> ContractEntry:
        address = onion_address_from_pubkey(peer)
        if peer == self.our_pubkey:
            raise ContractConflict("a node cannot make a contract with itself")
        for other in self.entries_of(peer):
            if other.in_force or other.state == "proposed":
                raise ContractConflict(
                    f"a contract with {address} is already {other.state} "
                    f"({other.contract_id.hex()[:16]}); end it first"
                )
        budget = self.budget()
        if their_bytes > budget.free_bytes:
            raise NoRoom(
                f"this node has {policies.size_text(budget.free_bytes)} free of the "
                f"{policies.size_text(budget.total_bytes)} it lends to peers; the "
                f"contract would oblige it to keep {policies.size_text(their_bytes)} "
                "(`barterbackup storage set --total`)"
            )
        terms = contract_terms.new_terms(
            proposer_pubkey=self.our_pubkey,
            acceptor_pubkey=peer,
            acceptor_keeps_bytes=our_bytes,
            proposer_keeps_bytes=their_bytes,
            now=self._now(),
            random_bytes=self._rng.randbytes,
            check_policy=self.settings.check_policy,
        )
        signed = contract_terms.propose(terms, self._keys.signing_key)
        report(
            Progress(
                phase="negotiating",
                peer=address,
                message=(
                    f"proposing: they keep {policies.size_text(our_bytes)} of ours, "
                    f"we keep {policies.size_text(their_bytes)} of theirs"
                ),
            )
        )
        conn = self._pool.connection(peer)
        if conn is None:
            try:
                conn = await self._pool.dial(peer)
            except Exception as error:
                raise PeerUnreachable(f"cannot reach {address}: {error}") from None
        entry = self._create(signed)
        response = await self._send_proposal(entry, conn)
        if response is None:
            self.feed(
                entry.contract_id,
                lambda m: m.end_requested("the proposal got no answer"),
                "end_requested",
            )
            raise PeerUnreachable(f"{address} did not answer the proposal")
        self._answered(entry, response)
        if entry.state == "ended":
            data = entry.data()
            reason = data.reason if isinstance(data, Ended) else "refused"
            raise ProposalRefused(reason, response.refused.code)
        if entry.state == "proposed":
            report(
                Progress(
                    phase="waiting",
                    peer=address,
                    message="the peer's user decides; the answer comes later",
                )
            )
            return entry
        report(Progress(phase="syncing", peer=address, message="the peer accepted"))
        if wait_until_active:
            await self._until_synced(entry, report)
        return entry

    async def _send_proposal(
        self, entry: ContractEntry, conn: Any
    ) -> bbrpc_pb2.ProposeContractResponse | None:
        request = bbrpc_pb2.ProposeContractRequest(
            signed_terms=entry.contract.signed.encode()
        )
        call: Deferred[bbrpc_pb2.ProposeContractResponse] = Deferred.fromCoroutine(
            _call(conn, "propose_contract_request", request)
        )
        call.addTimeout(self.settings.proposal_timeout_seconds, self._clock)
        try:
            return await call
        except PeerCallError as error:
            # An answer after all: a refusal in the form of an error.
            return bbrpc_pb2.ProposeContractResponse(
                refused=bbrpc_pb2.ContractRefusal(
                    code=bbrpc_pb2.CONTRACT_REFUSAL_CODE_BAD_TERMS,
                    reason=f"the peer refused the call: {error.message}",
                )
            )
        except Exception as error:
            log.info(
                "proposal {id} got no answer: {why}",
                id=entry.contract_id.hex()[:16],
                why=error,
            )
            return None

    def _answered(
        self, entry: ContractEntry, response: bbrpc_pb2.ProposeContractResponse
    ) -> None:
        kind = response.WhichOneof("answer")
        cid = entry.contract_id
        if entry.state != "proposed":
            return
        if kind == "accepted_terms":
            try:
                accepted = contract_terms.verify_signed_terms(
                    bytes(response.accepted_terms),
                    proposer=self.our_pubkey,
                    acceptor=entry.peer,
                )
                if accepted.terms_bytes != entry.contract.signed.terms_bytes:
                    raise InvalidTerms("the peer signed other terms than proposed")
            except InvalidTerms as error:
                why = f"the peer's answer is invalid: {error}"
                self.feed(cid, lambda m: m.end_requested(why), "end_requested")
                return
            entry.core.contract = Contract(accepted, self.our_pubkey)
            self.feed(cid, lambda m: m.accepted(), "accepted")
        elif kind == "refused":
            reason = bounded_reason(response.refused.reason)
            self.feed(cid, lambda m: m.refused(reason), "refused")
        elif kind == "pending":
            return
        else:
            self.feed(
                cid,
                lambda m: m.end_requested("the peer's answer is empty"),
                "end_requested",
            )

    async def _until_synced(self, entry: ContractEntry, report: ProgressReport) -> None:
        address = onion_address_from_pubkey(entry.peer)
        if self.pusher.pushing(entry.contract_id):
            result = await self.pusher.wait(entry.contract_id, report)
            if result is None and entry.state not in ("active",):
                report(
                    Progress(
                        phase="waiting",
                        peer=address,
                        message="the sync goes on in the background",
                    )
                )
                return
        # synced() is fed on the reactor turn after the push completes.
        if entry.state == "syncing":
            await _next_turn(self._clock)
        if entry.state == "active":
            report(
                Progress(
                    phase="active",
                    peer=address,
                    revision=entry.ledger.peer_revision,
                    message="the contract is active",
                )
            )

    def _resend_later(self, entry: ContractEntry) -> None:
        """A proposal of ours still unanswered: send it again (once)."""

        async def resend() -> None:
            conn = self._pool.connection(entry.peer)
            if conn is None or entry.state != "proposed":
                return
            age = self._now() - entry.contract.signed.terms.created_at
            if age > policies.MAX_PROPOSAL_AGE_SECONDS:
                self.feed(
                    entry.contract_id,
                    lambda m: m.end_requested("the proposal got no answer for a day"),
                    "end_requested",
                )
                return
            response = await self._send_proposal(entry, conn)
            if response is not None:
                self._answered(entry, response)

        self._clock.callLater(0, lambda: Deferred.fromCoroutine(resend()))

    # ---- the peer's calls ----------------------------------------------------

    def handle_proposal(
        self, peer: bytes, request: bbrpc_pb2.ProposeContractRequest
    ) -> bbrpc_pb2.ProposeContractResponse:
        """ProposeContract from an authenticated peer."""
        blob = bytes(request.signed_terms)
        try:
            proposal = contract_terms.verify_proposal(
                blob, proposer=peer, acceptor=self.our_pubkey
            )
        except InvalidTerms as error:
            return _refusal(
                policies.RefusalCode.BAD_TERMS, f"invalid proposal: {error}"
            )
        existing = self._entries.get(proposal.contract_id)
        if existing is not None:
            return self._answer_again(existing)
        for other in self.entries_of(peer):
            if other.in_force:
                return _refusal(
                    policies.RefusalCode.BAD_TERMS,
                    "a contract between our nodes is already in force; end it first",
                )
            if other.state != "proposed":
                continue
            if not other.contract.we_proposed:
                return _refusal(
                    policies.RefusalCode.BAD_TERMS,
                    "an earlier proposal of yours waits for this node's user",
                )
            # Crossed proposals: the one from the smaller key stands.
            if peer < self.our_pubkey:
                self.feed(
                    other.contract_id,
                    lambda m: m.end_requested("crossed proposals: yours stands"),
                    "end_requested",
                )
            else:
                return _refusal(
                    policies.RefusalCode.BAD_TERMS,
                    "our proposal to you crossed yours; it stands",
                )
        decision = policies.decide_proposal(
            proposal.terms,
            our_pubkey=self.our_pubkey,
            budget=self.budget(),
            policy=self.acceptance_policy(),
            proposer=policies.ProposerStanding.of(self._records.get(peer)),
            now=self._now(),
        )
        if isinstance(decision, policies.Refuse):
            log.info(
                "refused a contract from {peer}: {reason}",
                peer=onion_address_from_pubkey(peer),
                reason=decision.reason,
            )
            return bbrpc_pb2.ProposeContractResponse(refused=decision.to_proto())
        if isinstance(decision, policies.NeedsApproval):
            waiting = sum(
                1
                for e in self._entries.values()
                if e.state == "proposed" and not e.contract.we_proposed
            )
            if waiting >= MAX_PENDING_APPROVALS:
                return _refusal(
                    policies.RefusalCode.DECLINED,
                    "too many proposals wait for this node's user; try later",
                )
            # Not recorded (nor redialled) while it waits: a stranger's
            # proposal leaves no peer record unless our user approves it.
            entry = self._create(proposal, record_peer=False)
            return bbrpc_pb2.ProposeContractResponse(
                pending=bbrpc_pb2.ContractPending(reason=decision.reason)
            )
        accepted = contract_terms.accept(proposal, self._keys.signing_key)
        entry = self._create(accepted)
        self.feed(entry.contract_id, lambda m: m.accepted(), "accepted")
        log.info(
            "accepted a contract from {peer}", peer=onion_address_from_pubkey(peer)
        )
        return bbrpc_pb2.ProposeContractResponse(accepted_terms=accepted.encode())

    def _answer_again(self, entry: ContractEntry) -> bbrpc_pb2.ProposeContractResponse:
        """A proposal we know (sent again): answer as we did."""
        if entry.contract.we_proposed:
            return _refusal(policies.RefusalCode.BAD_TERMS, "that is our own proposal")
        if entry.state == "proposed":
            return bbrpc_pb2.ProposeContractResponse(
                pending=bbrpc_pb2.ContractPending(reason="waiting for this node's user")
            )
        if entry.contract.signed.accepted and entry.state != "ended":
            return bbrpc_pb2.ProposeContractResponse(
                accepted_terms=entry.contract.signed.encode()
            )
        data = entry.data()
        reason = data.reason if isinstance(data, Ended) else "the contract is over"
        return _refusal(policies.RefusalCode.DECLINED, reason)

    def handle_answer(
        self, peer: bytes, request: bbrpc_pb2.AnswerContractRequest
    ) -> bbrpc_pb2.AnswerContractResponse:
        """AnswerContract: the deferred answer to a proposal of ours."""
        entry = self._entries.get(bytes(request.contract_id))
        if entry is None or entry.peer != peer or not entry.contract.we_proposed:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_NOT_FOUND, "no proposal of ours to you has that id"
            )
        if entry.state == "proposed":
            kind = request.WhichOneof("answer")
            response = bbrpc_pb2.ProposeContractResponse()
            if kind == "accepted_terms":
                response.accepted_terms = request.accepted_terms
            elif kind == "refused":
                response.refused.CopyFrom(request.refused)
            else:
                raise PeerCallError(
                    bbrpc_pb2.ERROR_CODE_BAD_REQUEST, "the answer is empty"
                )
            self._answered(entry, response)
        return bbrpc_pb2.AnswerContractResponse()

    def handle_end(
        self, peer: bytes, request: bbrpc_pb2.EndContractRequest
    ) -> bbrpc_pb2.EndContractResponse:
        """EndContract: the peer ends the contract, broke it, or releases."""
        entry = self._entries.get(bytes(request.contract_id))
        if entry is None or entry.peer != peer:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_NOT_FOUND, "no contract with you has that id"
            )
        reason = bounded_reason(request.reason)
        kind = request.kind
        if kind in (
            bbrpc_pb2.CONTRACT_END_KIND_ENDING,
            bbrpc_pb2.CONTRACT_END_KIND_BROKEN,
        ):
            if kind == bbrpc_pb2.CONTRACT_END_KIND_BROKEN:
                reason = f"the peer considers the contract broken: {reason}"
            self.feed(entry.contract_id, lambda m: m.peer_ended(reason), "peer_ended")
        elif kind == bbrpc_pb2.CONTRACT_END_KIND_RELEASED:
            if entry.in_force:
                raise PeerCallError(
                    bbrpc_pb2.ERROR_CODE_BAD_REQUEST,
                    "the contract is in force; end it before releasing its data",
                )
            self.feed(entry.contract_id, lambda m: m.peer_released(), "peer_released")
        else:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_BAD_REQUEST, "unknown kind of contract end"
            )
        return bbrpc_pb2.EndContractResponse()

    def handle_replica_lost(
        self, peer: bytes, request: bbrpc_pb2.ReplicaLostRequest
    ) -> bbrpc_pb2.ReplicaLostResponse:
        """ReplicaLost: the peer lost our content it kept (it recovered
        from a total loss): push our current revision to it at once."""
        entry = self._entries.get(bytes(request.contract_id))
        if entry is None or entry.peer != peer:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_NOT_FOUND, "no contract with you has that id"
            )
        log.info(
            "{peer} lost our content it kept ({why}): syncing it again",
            peer=onion_address_from_pubkey(peer),
            why=bounded_reason(request.reason),
        )
        entry.ledger.peer_revision = 0
        self.save_soon(entry.contract_id)
        self._records.remember(peer, int(self._now()), held_revision=0)
        if entry.in_force:
            # A commit's input: the machine pushes the current revision.
            self._safely(
                entry,
                lambda machine: machine.revision_committed(),
                "revision_committed",
            )
        return bbrpc_pb2.ReplicaLostResponse()

    def adopt(self, files: Iterable[storedpb_pb2.ContractFile]) -> int:
        """Take contracts recovered from our content (the node state of a
        recovery): each is written, restored and resumed as at unlock.
        Contracts the book has already are left as they are. Returns how
        many were adopted."""
        adopted = []
        for contract_file in files:
            try:
                signed = signed_terms_of(bytes(contract_file.record.signed_terms))
            except (InvalidTerms, ValueError) as error:
                log.error("a recovered contract does not restore: {e}", e=error)
                continue
            contract_id = signed.contract_id
            if contract_id in self._entries:
                continue
            entry = self._restore_one(contract_file)
            if entry is None:
                continue
            self._write(entry)
            self._records.remember(entry.peer, int(self._now()))
            adopted.append(entry)
        for entry in adopted:
            self._safely(entry, lambda machine: machine.restarted(), "restarted")
            if self._started and self._pool.is_connected(entry.peer):
                self._peer_connected_key(entry.peer)
        if adopted:
            self.planner.schedule()
        return len(adopted)

    def handle_spot_check(
        self, peer: bytes, request: bbrpc_pb2.SpotCheckRequest
    ) -> Deferred[bbrpc_pb2.SpotCheckResponse]:
        return Deferred.fromCoroutine(self.answerer.answer(peer, request))

    # ---- the user's operations -----------------------------------------------

    def find(self, contract_id: bytes = b"", peer: bytes = b"") -> ContractEntry:
        """The contract with that id, or the live one with that peer."""
        if contract_id:
            entry = self._entries.get(contract_id)
            if entry is None:
                raise UnknownContract(f"no contract {contract_id.hex()[:16]}…")
            return entry
        live = [
            e
            for e in self.entries_of(peer)
            if e.state in IN_FORCE or e.state == "proposed"
        ]
        if not live:
            live = [e for e in self.entries_of(peer) if e.state in KEEPING]
        if not live:
            raise UnknownContract(
                f"no contract in force with {onion_address_from_pubkey(peer)}"
            )
        return live[-1]

    def end(self, entry: ContractEntry, reason: str) -> None:
        """End a contract gracefully (the peer is told)."""
        if entry.state not in IN_FORCE and entry.state != "proposed":
            raise WrongState(f"the contract is {entry.state}: nothing to end")
        why = bounded_reason(reason or "ended by the user")
        self.feed(entry.contract_id, lambda m: m.end_requested(why), "end_requested")

    def answer_pending(
        self, entry: ContractEntry, accept: bool, reason: str
    ) -> Deferred[None]:
        """Our user approves or declines a proposal waiting for them."""
        if entry.state != "proposed" or entry.contract.we_proposed:
            raise WrongState("that contract does not wait for an approval")
        cid = entry.contract_id
        answer = bbrpc_pb2.AnswerContractRequest(contract_id=cid)
        if accept:
            budget = self.budget(excluding=cid)
            asked = entry.contract.we_keep_bytes
            if asked > budget.free_bytes:
                raise NoRoom(
                    f"this node has {policies.size_text(budget.free_bytes)} free; "
                    f"the contract would oblige it to keep {policies.size_text(asked)}"
                )
            accepted = contract_terms.accept(
                entry.contract.signed, self._keys.signing_key
            )
            entry.core.contract = Contract(accepted, self.our_pubkey)
            # Our user chose this peer: recorded (it was not while waiting).
            self._records.remember(entry.peer, int(self._now()), known_by_user=True)
            self.feed(cid, lambda m: m.accepted(), "accepted")
            answer.accepted_terms = accepted.encode()
        else:
            why = bounded_reason(reason or "this node's user declined")
            self.feed(cid, lambda m: m.refused(why), "refused")
            answer.refused.code = bbrpc_pb2.CONTRACT_REFUSAL_CODE_DECLINED
            answer.refused.reason = why
        return Deferred.fromCoroutine(self._send_answer(entry.peer, answer))

    async def _send_answer(
        self, peer: bytes, answer: bbrpc_pb2.AnswerContractRequest
    ) -> None:
        # Best effort: a proposer that missed it sends its proposal again
        # and gets the same answer (_answer_again).
        try:
            conn = self._pool.connection(peer) or await self._pool.dial(peer)
            await conn.call("answer_contract_request", answer)
        except Exception as error:
            log.info("the answer to a proposal is not delivered yet: {why}", why=error)

    def check_now(
        self,
        entry: ContractEntry,
        report: ProgressReport,
        kind: str = "",
        samples: int = 0,
    ) -> Deferred[CheckOutcome]:
        """Spot-check the contract's peer now (CheckContract)."""
        data = entry.data()
        checkable = entry.state == "active" or (
            isinstance(data, Suspect) and not data.needs_sync
        )
        if not checkable:
            raise WrongState(
                f"the contract is {entry.state}: checks run once the peer holds "
                "our current revision"
            )
        return self.checks.check_now(entry.contract, report, kind, samples)

    def sync_now(
        self, peers: Iterable[bytes], report: ProgressReport
    ) -> Deferred[list[PushResult | None]]:
        """Bring every contract's peer (or those named) to our current
        revision now, reporting progress; fires with one result per
        contract (None where the peer already held it or the sync goes on in
        the background)."""
        wanted = set(peers)
        targets = [
            e
            for e in self._entries.values()
            if e.in_force and (not wanted or e.peer in wanted)
        ]
        return Deferred.fromCoroutine(self._sync_now(targets, report))

    async def _sync_now(
        self, targets: list[ContractEntry], report: ProgressReport
    ) -> list[PushResult | None]:
        current = self._content.current
        results: list[PushResult | None] = []
        waits = []
        for entry in targets:
            address = onion_address_from_pubkey(entry.peer)
            if self.pusher.pushing(entry.contract_id):
                waits.append((entry, self.pusher.wait(entry.contract_id, report)))
                continue
            report(
                Progress(
                    phase="done",
                    peer=address,
                    revision=entry.ledger.peer_revision,
                    bytes_done=current.content_length if current else 0,
                    bytes_total=current.content_length if current else 0,
                    message="already held",
                )
            )
            results.append(None)
        for entry, waiting in waits:
            result = await waiting
            if result is None:
                report(
                    Progress(
                        phase="failed",
                        peer=onion_address_from_pubkey(entry.peer),
                        message=(
                            "not synced yet; it goes on in the background "
                            f"(the contract is {entry.state})"
                        ),
                    )
                )
            results.append(result)
        return results

    # ---- views ---------------------------------------------------------------

    def view(self, entry: ContractEntry) -> ContractView:
        contract = entry.contract
        held = self._replicas.held(entry.peer)
        data = entry.data()
        since = getattr(data, "since", float(contract.signed.terms.created_at))
        return ContractView(
            contract_id=entry.contract_id,
            peer=entry.peer,
            state=entry.state,
            we_proposed=contract.we_proposed,
            our_bytes=contract.peer_keeps_bytes,
            their_bytes=contract.we_keep_bytes,
            stored_bytes=held.stored_bytes
            if held is not None and self.keeps(entry.peer, entry.contract_id)
            else 0,
            peer_revision=entry.ledger.peer_revision,
            last_check_at=entry.ledger.last_check_at,
            last_check_passed=entry.ledger.last_check_passed,
            last_verdict=entry.ledger.last_verdict,
            next_check_at=self.checks.next_check_at(entry.contract_id),
            detail=self._detail(entry),
            since=float(since),
            created_at=contract.signed.terms.created_at,
            audit_score=self.scores.audit_score_of(entry.peer),
            uptime_score=self.scores.uptime_score_of(entry.peer),
            pending_notices=len(entry.ledger.notices),
        )

    def views(self) -> list[ContractView]:
        return [self.view(e) for e in self._entries.values()]

    def _detail(self, entry: ContractEntry) -> str:
        data = entry.data()
        if entry.state == "proposed":
            if entry.contract.we_proposed:
                return "waiting for the peer's answer"
            return (
                "waiting for your approval: `barterbackup contracts approve "
                f"{entry.contract_id.hex()}`"
            )
        if isinstance(data, Suspect):
            causes = []
            if data.unreachable_since is not None:
                causes.append("unreachable")
            if data.unanswered:
                causes.append(f"a check unanswered {data.unanswered} time(s)")
            if data.needs_sync:
                causes.append("our new revision is not synced to it yet")
            if not causes:
                causes.append("low audit score")
            return "; ".join(causes)
        if isinstance(data, Broken):
            return data.detail
        if isinstance(data, Ending):
            return f"{'we' if data.by_us else 'the peer'} ended it: {data.reason}"
        if isinstance(data, Ended):
            return data.reason
        return ""

    def budget(self, excluding: bytes = b"") -> policies.StorageBudget:
        """What we lend to peers and how much of it contracts promise."""
        total = effective_total_bytes(self._storage_config())
        promised = 0
        for entry in self._entries.values():
            if entry.contract_id == excluding:
                continue
            if entry.in_force or entry.state == "proposed":
                promised += entry.contract.we_keep_bytes
            elif entry.state in KEEPING:
                held = self._replicas.held(entry.peer)
                promised += min(
                    entry.contract.we_keep_bytes, held.stored_bytes if held else 0
                )
        return policies.StorageBudget(total_bytes=total, obligations_bytes=promised)

    def acceptance_policy(self) -> policies.AcceptancePolicy:
        name = self._storage_config().acceptance_policy
        try:
            return (
                policies.AcceptancePolicy(name)
                if name
                else (policies.DEFAULT_ACCEPTANCE_POLICY)
            )
        except ValueError:
            return policies.DEFAULT_ACCEPTANCE_POLICY

    def min_replicas(self) -> int:
        config = self._storage_config()
        if config.HasField("min_replicas"):
            return int(config.min_replicas)
        return DEFAULT_MIN_REPLICAS

    def obligations(self) -> list[ObligationView]:
        found = []
        for entry in self._entries.values():
            if not self.keeps(entry.peer, entry.contract_id):
                continue
            held = self._replicas.held(entry.peer)
            found.append(
                ObligationView(
                    contract_id=entry.contract_id,
                    peer=entry.peer,
                    state=entry.state,
                    granted_bytes=entry.contract.we_keep_bytes if entry.in_force else 0,
                    stored_bytes=held.stored_bytes if held else 0,
                    revision=held.shown.number if held else 0,
                )
            )
        return found

    def healthy_count(self) -> int:
        """Contracts whose peer holds our current revision, in good standing."""
        return self.replication().healthy

    def replication(self) -> ReplicationStatus:
        current = self._content.current
        number = current.number if current else 0
        healthy = older = forming = passed = failed = 0
        last = 0.0
        for entry in self._entries.values():
            if entry.state == "proposed" and entry.contract.we_proposed:
                forming += 1
            if not entry.in_force:
                continue
            holds = entry.ledger.peer_revision
            if entry.state == "active" and (not number or holds == number):
                healthy += 1
            elif holds and holds < number:
                older += 1
            elif not holds:
                forming += 1
            if entry.ledger.last_check_at:
                last = max(last, entry.ledger.last_check_at)
                if entry.ledger.last_check_passed:
                    passed += 1
                else:
                    failed += 1
        return ReplicationStatus(
            min_replicas=self.min_replicas(),
            healthy=healthy,
            older=older,
            forming=forming,
            checks_passed=passed,
            checks_failed=failed,
            last_check_at=last,
            problem=self.planner.problem,
        )


def _refusal(
    code: policies.RefusalCode, reason: str
) -> bbrpc_pb2.ProposeContractResponse:
    return bbrpc_pb2.ProposeContractResponse(
        refused=policies.Refuse(code, reason).to_proto()
    )


async def _call(conn: Any, field_name: str, request: Any) -> Any:
    return await conn.call(field_name, request)


def _next_turn(clock: ReactorTime) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    clock.callLater(0, d.callback, None)
    return d
