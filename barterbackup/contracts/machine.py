"""One Automat machine per contract (TypeMachineBuilder).

States: proposed → syncing → active ⇄ suspect → broken → ended, and
ending → ended for a graceful end; docs/contracts.md has the diagram
generated from this module and what every state means.

Conventions (STYLE.md, "State machines"):

* Public inputs are events the node feeds (``ContractInputs``); only
  behaviour functions do work, through the collaborators of the core.
* Where an event's effect depends on the state's data (a count, a score),
  its behaviour decides and gives the machine a private follow-up input
  (``_contain``, ``_break``…); Automat queues it until the current
  transition is done. Private inputs also carry what the next state's data
  is built from, since a data factory only sees its input's arguments.
* Every transition that changes the state or its data first queues
  ``_entered``: run in the new state with the new data, it saves the record
  and sets the state's one alarm. Events that change nothing (a reachable
  peer while active) are loops without a save.
* Environment events (peer reachable or not, a new revision, a repeated
  end notice) are taken in every state where they can arrive; answers to
  what the machine asked for (synced, check results) only where it asked.
  Anything else raises automat.NoTransition and changes nothing.

Invariants the tests hold every event sequence to: the peer's data is
dropped only from broken or ending (never while syncing, active or
suspect), and the keeper is never allowed more than the contract's size.
"""

from __future__ import annotations

from typing import Any, Protocol

from automat import TypeMachineBuilder

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import scores
from barterbackup.contracts.alarm import Alarm, Clock
from barterbackup.contracts.collaborators import (
    AuditScores,
    CheckScheduler,
    Contract,
    ContractStore,
    ContractTimings,
    PeerDataKeeper,
    PeerNotifier,
    SyncPusher,
)
from barterbackup.contracts.states import (
    Active,
    BreakCause,
    Broken,
    Ended,
    Ending,
    InvalidRecord,
    StateData,
    Suspect,
    SuspectCause,
    Syncing,
    bounded_reason,
    decode_record,
    encode_record,
)
from barterbackup.logs import get_logger

log = get_logger("barterbackup.contracts")


class ContractInputs(Protocol):
    """The events a contract machine takes (and one query, ``snapshot``)."""

    def accepted(self) -> None:
        """Both sides signed the terms (the peer or our user accepted)."""

    def refused(self, reason: str) -> None:
        """The proposal was refused (by the peer, or by our user)."""

    def synced(self) -> None:
        """The peer holds our current revision completely."""

    def revision_committed(self) -> None:
        """We committed a new revision of our content."""

    def check_passed(self) -> None:
        """The peer answered a spot check correctly."""

    def check_failed(self, reason: str) -> None:
        """The peer answered a spot check wrongly, or said it lacks the data."""

    def check_unanswered(self) -> None:
        """The peer was reachable but did not answer within the deadline."""

    def peer_unreachable(self) -> None:
        """The peer could not be reached (dial failed, connection lost)."""

    def peer_reachable(self) -> None:
        """The peer is connected and authenticated again."""

    def outage_limit_reached(self) -> None:
        """The alarm: the peer has been unreachable for the outage limit."""

    def end_requested(self, reason: str) -> None:
        """This node ends the contract (the user, or the contract book)."""

    def peer_ended(self, reason: str) -> None:
        """The peer told us it ends the contract (or that we broke it)."""

    def peer_released(self) -> None:
        """The peer told us its content is safe elsewhere."""

    def data_moved(self) -> None:
        """Our content is safe elsewhere, so the peer may drop its copy."""

    def grace_expired(self) -> None:
        """The alarm: the time to keep the peer's data is over."""

    def restarted(self) -> None:
        """The node started again with this machine restored: resume work."""

    def snapshot(self) -> storedpb_pb2.ContractRecord:
        """The persisted form of the current state (never reentrant)."""


class _Inputs(ContractInputs, Protocol):
    """Follow-up inputs the machine gives itself."""

    def _entered(self) -> None: ...

    def _contain(self, cause: SuspectCause, needs_sync: bool) -> None: ...

    def _recover(self) -> None: ...

    def _break(self, cause: BreakCause, detail: str, grace_until: float) -> None: ...

    def _wind_down(self, reason: str, by_us: bool, keep_until: float) -> None: ...

    def _close(self, reason: str) -> None: ...


class ContractCore:
    """What every behaviour works through: the contract and collaborators."""

    def __init__(
        self,
        *,
        contract: Contract,
        clock: Clock,
        store: ContractStore,
        sync: SyncPusher,
        checks: CheckScheduler,
        notifier: PeerNotifier,
        keeper: PeerDataKeeper,
        scores: AuditScores,
        timings: ContractTimings | None = None,
    ) -> None:
        self.contract = contract
        self.clock = clock
        self.store = store
        self.sync = sync
        self.checks = checks
        self.notifier = notifier
        self.keeper = keeper
        self.scores = scores
        self.timings = timings or ContractTimings()
        self.alarm = Alarm(clock)

    def now(self) -> float:
        return self.clock.seconds()

    def save(self, state: str, data: StateData | None) -> None:
        self.store.save(encode_record(self.contract.signed.encode(), state, data))

    def allow_peer_data(self) -> None:
        # Exactly the size the terms give us to keep, never more: the keeper
        # measures every revision the peer pushes against it.
        self.keeper.allow(self.contract, self.contract.we_keep_bytes)

    def grace_until(self, cause: BreakCause) -> float:
        timings = self.timings
        grace = (
            timings.grace_after_outage_seconds
            if cause is BreakCause.UNREACHABLE
            else timings.grace_after_failed_checks_seconds
        )
        return self.now() + grace

    def keep_until(self) -> float:
        return self.now() + self.timings.ending_keep_seconds


_builder = TypeMachineBuilder(_Inputs, ContractCore)


# Data factories: build the new state's data from the input's arguments.


def _new_syncing(inputs: _Inputs, core: ContractCore) -> Syncing:
    return Syncing(since=core.now())


def _new_active(inputs: _Inputs, core: ContractCore) -> Active:
    return Active(since=core.now())


def _new_suspect(
    inputs: _Inputs, core: ContractCore, cause: SuspectCause, needs_sync: bool
) -> Suspect:
    now = core.now()
    return Suspect(
        since=now,
        unanswered=1 if cause is SuspectCause.UNANSWERED else 0,
        unreachable_since=now if cause is SuspectCause.UNREACHABLE else None,
        needs_sync=needs_sync,
    )


def _new_broken(
    inputs: _Inputs,
    core: ContractCore,
    cause: BreakCause,
    detail: str,
    grace_until: float,
) -> Broken:
    return Broken(cause, bounded_reason(detail), core.now(), grace_until)


def _new_ending(
    inputs: _Inputs, core: ContractCore, reason: str, by_us: bool, keep_until: float
) -> Ending:
    return Ending(bounded_reason(reason), by_us, core.now(), keep_until)


def _new_ended(inputs: _Inputs, core: ContractCore, reason: str) -> Ended:
    return Ended(bounded_reason(reason), core.now())


proposed = _builder.state("proposed")
syncing = _builder.state("syncing", _new_syncing)
active = _builder.state("active", _new_active)
suspect = _builder.state("suspect", _new_suspect)
broken = _builder.state("broken", _new_broken)
ending = _builder.state("ending", _new_ending)
ended = _builder.state("ended", _new_ended)


# Helpers shared by behaviours (not behaviours themselves).


def duration_text(seconds: float) -> str:
    """A timing as a person says it: "14 days", "6 hours", "90 s"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size or (seconds >= size and seconds % size == 0):
            count = seconds / size
            return f"{count:g} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} s"


def _standing_after(core: ContractCore, passed: bool) -> tuple[float, scores.Standing]:
    score = core.scores.record_check(core.contract, passed)
    return score, scores.audit_standing(score)


def _break_for_score(
    inputs: _Inputs, core: ContractCore, score: float, why: str
) -> None:
    inputs._break(
        BreakCause.FAILED_CHECKS,
        f"{why}; audit score {score:.2f} is below {scores.AUDIT_BROKEN_BELOW:.2f}",
        core.grace_until(BreakCause.FAILED_CHECKS),
    )


def _settle(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    """Back to active once nothing keeps the contract suspect."""
    healthy = (
        data.unanswered == 0
        and data.unreachable_since is None
        and not data.needs_sync
        and scores.audit_standing(core.scores.audit_score(core.contract))
        is scores.Standing.GOOD
    )
    if healthy:
        inputs._recover()


def _stop_working(core: ContractCore) -> None:
    core.checks.stop(core.contract)
    core.sync.stop(core.contract)
    core.keeper.freeze(core.contract)


# proposed: waiting for the peer's (or our user's) answer.


@proposed.upon(_Inputs.accepted).to(syncing)
def _start_syncing(inputs: _Inputs, core: ContractCore) -> None:
    inputs._entered()
    core.allow_peer_data()
    core.sync.push(core.contract)


@proposed.upon(_Inputs.refused).to(ended)
def _refused(inputs: _Inputs, core: ContractCore, reason: str) -> None:
    inputs._entered()


@proposed.upon(_Inputs.end_requested).to(ended)
def _withdraw(inputs: _Inputs, core: ContractCore, reason: str) -> None:
    inputs._entered()
    core.notifier.tell_ending(core.contract, bounded_reason(reason), core.now())


@proposed.upon(_Inputs.peer_ended).to(ended)
def _withdrawn_by_peer(inputs: _Inputs, core: ContractCore, reason: str) -> None:
    inputs._entered()


proposed.upon(_Inputs.peer_reachable).loop().returns(None)
proposed.upon(_Inputs.peer_unreachable).loop().returns(None)
proposed.upon(_Inputs.revision_committed).loop().returns(None)
proposed.upon(_Inputs.restarted).loop().returns(None)


# syncing: the peer is receiving our current revision.


@syncing.upon(_Inputs.synced).to(active)
def _now_active(inputs: _Inputs, core: ContractCore, data: Syncing) -> None:
    inputs._entered()
    core.checks.start(core.contract)


@syncing.upon(_Inputs.revision_committed).loop()
def _push_newer(inputs: _Inputs, core: ContractCore, data: Syncing) -> None:
    core.sync.push(core.contract)


@syncing.upon(_Inputs.peer_unreachable).loop()
def _syncing_unreachable(inputs: _Inputs, core: ContractCore, data: Syncing) -> None:
    inputs._contain(SuspectCause.UNREACHABLE, True)


@syncing.upon(_Inputs.restarted).loop()
def _resume_syncing(inputs: _Inputs, core: ContractCore, data: Syncing) -> None:
    core.allow_peer_data()
    core.sync.push(core.contract)


syncing.upon(_Inputs.peer_reachable).loop().returns(None)


# active: the peer holds our current revision and passes its checks.


@active.upon(_Inputs.check_passed).loop()
def _passed(inputs: _Inputs, core: ContractCore, data: Active) -> None:
    core.scores.record_check(core.contract, True)


@active.upon(_Inputs.check_failed).loop()
def _failed(inputs: _Inputs, core: ContractCore, data: Active, reason: str) -> None:
    score, standing = _standing_after(core, passed=False)
    if standing is scores.Standing.BROKEN:
        _break_for_score(inputs, core, score, f"failed checks ({reason})")
    elif standing is scores.Standing.SUSPECT:
        inputs._contain(SuspectCause.LOW_AUDIT_SCORE, False)


@active.upon(_Inputs.check_unanswered).loop()
def _unanswered(inputs: _Inputs, core: ContractCore, data: Active) -> None:
    inputs._contain(SuspectCause.UNANSWERED, False)


@active.upon(_Inputs.peer_unreachable).loop()
def _unreachable(inputs: _Inputs, core: ContractCore, data: Active) -> None:
    inputs._contain(SuspectCause.UNREACHABLE, False)


@active.upon(_Inputs.revision_committed).to(syncing)
def _sync_newer(inputs: _Inputs, core: ContractCore, data: Active) -> None:
    # Checks name the current revision; until the peer has it they wait.
    inputs._entered()
    core.checks.stop(core.contract)
    core.sync.push(core.contract)


@active.upon(_Inputs.restarted).loop()
def _resume_checks(inputs: _Inputs, core: ContractCore, data: Active) -> None:
    core.allow_peer_data()
    core.checks.start(core.contract)


active.upon(_Inputs.peer_reachable).loop().returns(None)


def _contained(
    inputs: _Inputs,
    core: ContractCore,
    data: object,
    cause: SuspectCause,
    needs_sync: bool,
) -> None:
    inputs._entered()
    log.info(
        "contract {id} suspect: {cause}",
        id=core.contract.contract_id.hex()[:16],
        cause=cause.value,
    )
    if cause is SuspectCause.UNANSWERED:
        core.checks.retry(core.contract)


syncing.upon(_Inputs._contain).to(suspect)(_contained)
active.upon(_Inputs._contain).to(suspect)(_contained)


# suspect: contained, not broken; back to active when nothing keeps it.


@suspect.upon(_Inputs.check_passed).loop()
def _suspect_passed(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    inputs._entered()
    core.scores.record_check(core.contract, True)
    data.unanswered = 0
    data.unreachable_since = None
    _settle(inputs, core, data)


@suspect.upon(_Inputs.check_failed).loop()
def _suspect_failed(
    inputs: _Inputs, core: ContractCore, data: Suspect, reason: str
) -> None:
    inputs._entered()
    data.unanswered = 0
    data.unreachable_since = None
    score, standing = _standing_after(core, passed=False)
    if standing is scores.Standing.BROKEN:
        _break_for_score(inputs, core, score, f"failed checks ({reason})")
    else:
        _settle(inputs, core, data)


@suspect.upon(_Inputs.check_unanswered).loop()
def _suspect_unanswered(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    inputs._entered()
    data.unanswered += 1
    if data.unanswered <= core.timings.containment_retries:
        core.checks.retry(core.contract)
        return
    # Asked again containment_retries times: now it counts as failed, and
    # the next check is a fresh one.
    data.unanswered = 0
    score, standing = _standing_after(core, passed=False)
    if standing is scores.Standing.BROKEN:
        _break_for_score(
            inputs,
            core,
            score,
            f"did not answer a check asked {core.timings.containment_retries + 1} "
            "times",
        )
    else:
        _settle(inputs, core, data)


@suspect.upon(_Inputs.peer_unreachable).loop()
def _suspect_unreachable(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    if data.unreachable_since is None:
        inputs._entered()
        data.unreachable_since = core.now()


@suspect.upon(_Inputs.peer_reachable).loop()
def _suspect_reachable(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    if data.unreachable_since is None:
        return
    inputs._entered()
    data.unreachable_since = None
    if data.needs_sync:
        core.sync.push(core.contract)
    _settle(inputs, core, data)


@suspect.upon(_Inputs.synced).loop()
def _suspect_synced(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    # Taking a whole revision shows the peer is there and answering.
    inputs._entered()
    data.needs_sync = False
    data.unreachable_since = None
    data.unanswered = 0
    core.checks.start(core.contract)
    _settle(inputs, core, data)


@suspect.upon(_Inputs.revision_committed).loop()
def _suspect_newer(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    inputs._entered()
    # A pending challenge names the old revision: it is moot.
    data.needs_sync = True
    data.unanswered = 0
    core.checks.stop(core.contract)
    core.sync.push(core.contract)


@suspect.upon(_Inputs.outage_limit_reached).loop()
def _outage_too_long(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    if data.unreachable_since is None:
        return  # A late alarm: the peer came back meanwhile.
    inputs._break(
        BreakCause.UNREACHABLE,
        f"unreachable for more than {duration_text(core.timings.outage_limit_seconds)}",
        core.grace_until(BreakCause.UNREACHABLE),
    )


@suspect.upon(_Inputs.restarted).loop()
def _resume_suspect(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    core.allow_peer_data()
    _set_suspect_alarm(inputs, core, data)
    if data.needs_sync:
        core.sync.push(core.contract)
        return
    core.checks.start(core.contract)
    if data.unanswered:
        core.checks.retry(core.contract)


@suspect.upon(_Inputs._recover).to(active)
def _recovered(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    inputs._entered()
    core.checks.start(core.contract)


# Ending gracefully, from any state where the contract is in force.


def _end(inputs: _Inputs, core: ContractCore, data: object, reason: str) -> None:
    inputs._wind_down(reason, True, core.keep_until())


syncing.upon(_Inputs.end_requested).loop()(_end)
active.upon(_Inputs.end_requested).loop()(_end)
suspect.upon(_Inputs.end_requested).loop()(_end)


def _ended_by_peer(
    inputs: _Inputs, core: ContractCore, data: object, reason: str
) -> None:
    inputs._wind_down(reason, False, core.keep_until())


syncing.upon(_Inputs.peer_ended).loop()(_ended_by_peer)
active.upon(_Inputs.peer_ended).loop()(_ended_by_peer)
suspect.upon(_Inputs.peer_ended).loop()(_ended_by_peer)


def _winding_down(
    inputs: _Inputs,
    core: ContractCore,
    data: object,
    reason: str,
    by_us: bool,
    keep_until: float,
) -> None:
    inputs._entered()
    _stop_working(core)
    if by_us:
        core.notifier.tell_ending(core.contract, bounded_reason(reason), keep_until)


syncing.upon(_Inputs._wind_down).to(ending)(_winding_down)
active.upon(_Inputs._wind_down).to(ending)(_winding_down)
suspect.upon(_Inputs._wind_down).to(ending)(_winding_down)


def _broke(
    inputs: _Inputs,
    core: ContractCore,
    data: object,
    cause: BreakCause,
    detail: str,
    grace_until: float,
) -> None:
    inputs._entered()
    _stop_working(core)
    core.notifier.tell_broken(core.contract, bounded_reason(detail), grace_until)
    log.warn(
        "contract {id} broken: {detail}",
        id=core.contract.contract_id.hex()[:16],
        detail=bounded_reason(detail),
    )


active.upon(_Inputs._break).to(broken)(_broke)
suspect.upon(_Inputs._break).to(broken)(_broke)


# broken and ending: nothing new is taken; the peer's data is kept until
# the deadline or until the peer releases it.


def _deadline_over(inputs: _Inputs, core: ContractCore, data: object) -> None:
    core.keeper.drop(core.contract)
    kept = _keeping(data)
    if isinstance(kept, Broken):
        inputs._close(f"{kept.detail}; its data was kept until the grace period ended")
    else:
        inputs._close(kept.reason)


broken.upon(_Inputs.grace_expired).loop()(_deadline_over)
ending.upon(_Inputs.grace_expired).loop()(_deadline_over)


def _released_by_peer(inputs: _Inputs, core: ContractCore, data: object) -> None:
    core.keeper.drop(core.contract)
    kept = _keeping(data)
    reason = kept.detail if isinstance(kept, Broken) else kept.reason
    inputs._close(f"{reason}; the peer released its data")


broken.upon(_Inputs.peer_released).loop()(_released_by_peer)
ending.upon(_Inputs.peer_released).loop()(_released_by_peer)


def _release_ours(inputs: _Inputs, core: ContractCore, data: object) -> None:
    core.notifier.tell_released(core.contract)


broken.upon(_Inputs.data_moved).loop()(_release_ours)
ending.upon(_Inputs.data_moved).loop()(_release_ours)
ended.upon(_Inputs.data_moved).loop()(_release_ours)


def _resume_keeping(inputs: _Inputs, core: ContractCore, data: object) -> None:
    core.keeper.freeze(core.contract)
    _set_deadline_alarm(inputs, core, _keeping(data))


broken.upon(_Inputs.restarted).loop()(_resume_keeping)
ending.upon(_Inputs.restarted).loop()(_resume_keeping)


def _closed(inputs: _Inputs, core: ContractCore, data: object, reason: str) -> None:
    inputs._entered()


broken.upon(_Inputs._close).to(ended)(_closed)
ending.upon(_Inputs._close).to(ended)(_closed)


for _state in (broken, ending, ended):
    _state.upon(_Inputs.peer_reachable).loop().returns(None)
    _state.upon(_Inputs.peer_unreachable).loop().returns(None)
    _state.upon(_Inputs.revision_committed).loop().returns(None)
    _state.upon(_Inputs.peer_ended).loop().returns(None)
ended.upon(_Inputs.peer_released).loop().returns(None)
ended.upon(_Inputs.restarted).loop().returns(None)


# _entered: save the record and set the state's alarm; snapshot: the
# record. One pair per state.


def _set_suspect_alarm(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    if data.unreachable_since is None:
        core.alarm.cancel()
    else:
        core.alarm.set(
            data.unreachable_since + core.timings.outage_limit_seconds,
            inputs.outage_limit_reached,
        )


def _set_deadline_alarm(
    inputs: _Inputs, core: ContractCore, data: Broken | Ending
) -> None:
    at = data.grace_until if isinstance(data, Broken) else data.keep_until
    core.alarm.set(at, inputs.grace_expired)


@proposed.upon(_Inputs._entered).loop()
def _entered_proposed(inputs: _Inputs, core: ContractCore) -> None:
    core.save("proposed", None)


def _entered_without_alarm(inputs: _Inputs, core: ContractCore, data: object) -> None:
    core.alarm.cancel()
    core.save(_state_name(data), _state_data(data))


syncing.upon(_Inputs._entered).loop()(_entered_without_alarm)
active.upon(_Inputs._entered).loop()(_entered_without_alarm)
ended.upon(_Inputs._entered).loop()(_entered_without_alarm)


@suspect.upon(_Inputs._entered).loop()
def _entered_suspect(inputs: _Inputs, core: ContractCore, data: Suspect) -> None:
    core.save("suspect", data)
    _set_suspect_alarm(inputs, core, data)


def _entered_with_deadline(inputs: _Inputs, core: ContractCore, data: object) -> None:
    kept = _keeping(data)
    core.save(_state_name(kept), kept)
    _set_deadline_alarm(inputs, core, kept)


broken.upon(_Inputs._entered).loop()(_entered_with_deadline)
ending.upon(_Inputs._entered).loop()(_entered_with_deadline)


@proposed.upon(_Inputs.snapshot).loop()
def _snapshot_proposed(
    inputs: _Inputs, core: ContractCore
) -> storedpb_pb2.ContractRecord:
    return encode_record(core.contract.signed.encode(), "proposed", None)


def _snapshot(
    inputs: _Inputs, core: ContractCore, data: object
) -> storedpb_pb2.ContractRecord:
    return encode_record(
        core.contract.signed.encode(), _state_name(data), _state_data(data)
    )


syncing.upon(_Inputs.snapshot).loop()(_snapshot)
active.upon(_Inputs.snapshot).loop()(_snapshot)
suspect.upon(_Inputs.snapshot).loop()(_snapshot)
broken.upon(_Inputs.snapshot).loop()(_snapshot)
ending.upon(_Inputs.snapshot).loop()(_snapshot)
ended.upon(_Inputs.snapshot).loop()(_snapshot)


_NAME_OF_DATA: dict[type, str] = {
    Syncing: "syncing",
    Active: "active",
    Suspect: "suspect",
    Broken: "broken",
    Ending: "ending",
    Ended: "ended",
}


def _state_name(data: object) -> str:
    return _NAME_OF_DATA[type(data)]


def _state_data(data: object) -> StateData:
    # Behaviours shared by several states take their data as ``object``
    # (Automat checks the annotation with isinstance, which a union fails).
    assert isinstance(data, Syncing | Active | Suspect | Broken | Ending | Ended)
    return data


def _keeping(data: object) -> Broken | Ending:
    assert isinstance(data, Broken | Ending)
    return data


ContractMachine = _builder.build()
_STATES = {
    state.name: state
    for state in (proposed, syncing, active, suspect, broken, ending, ended)
}


def new_contract(core: ContractCore) -> ContractInputs:
    """A machine for a contract just proposed (by us or to us), saved.

    The first record is saved here: the proposed state has no transition
    into it to do so.
    """
    machine = ContractMachine(core)
    core.save("proposed", None)
    return machine


def restore_contract(
    core: ContractCore, record: storedpb_pb2.ContractRecord
) -> ContractInputs:
    """The machine as ``record`` left it; feed it ``restarted()`` to resume.

    Raises InvalidRecord for a damaged record or one of another contract.
    """
    if bytes(record.signed_terms) != core.contract.signed.encode():
        raise InvalidRecord("the record is of another contract than the core's")
    state_name, data = decode_record(record)
    state: Any = _STATES[state_name]
    if data is None:
        return ContractMachine(core, state)
    restored_data = data
    return ContractMachine(core, state, lambda inputs, core: restored_data)
