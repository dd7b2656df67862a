"""Fake collaborators of a contract machine, recording what it asks for.

Every fake appends to one shared ``events`` list, so a test asserts the
exact sequence of work a run of events caused (the magic-wormhole way).
The keeper also models the peer's data held here, so tests can check that
nothing is dropped while the contract is in force and that nothing grows
past what was allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import scores
from barterbackup.contracts.collaborators import Contract

Event = tuple[object, ...]


@dataclass
class ContractFakes:
    """All collaborators of a ContractCore, in one recorder."""

    events: list[Event] = field(default_factory=list)
    saved: list[storedpb_pb2.ContractRecord] = field(default_factory=list)
    reputation: scores.AuditReputation = field(default_factory=scores.long_good_record)
    # The keeper's model of the peer's data held here.
    allowed: int | None = None
    frozen: bool = False
    held: int = 0
    drops: int = 0

    def take(self) -> list[Event]:
        """The events so far, clearing them."""
        taken, self.events[:] = list(self.events), []
        return taken

    @property
    def last_saved(self) -> storedpb_pb2.ContractRecord:
        return self.saved[-1]

    def peer_stores(self, size: int) -> int:
        """The peer pushes ``size`` more bytes; what the keeper takes."""
        if self.allowed is None or self.frozen:
            return 0
        taken = max(0, min(size, self.allowed - self.held))
        self.held += taken
        return taken

    @property
    def store(self) -> _Store:
        return _Store(self)

    @property
    def sync(self) -> _Sync:
        return _Sync(self)

    @property
    def checks(self) -> _Checks:
        return _Checks(self)

    @property
    def notifier(self) -> _Notifier:
        return _Notifier(self)

    @property
    def keeper(self) -> _Keeper:
        return _Keeper(self)

    @property
    def scores(self) -> _Scores:
        return _Scores(self)


@dataclass
class _Store:
    fakes: ContractFakes

    def save(self, record: storedpb_pb2.ContractRecord) -> None:
        copy = storedpb_pb2.ContractRecord()
        copy.CopyFrom(record)
        self.fakes.saved.append(copy)
        self.fakes.events.append(("save", record.state))


@dataclass
class _Sync:
    fakes: ContractFakes

    def push(self, contract: Contract) -> None:
        self.fakes.events.append(("sync.push",))

    def stop(self, contract: Contract) -> None:
        self.fakes.events.append(("sync.stop",))


@dataclass
class _Checks:
    fakes: ContractFakes

    def start(self, contract: Contract) -> None:
        self.fakes.events.append(("checks.start",))

    def retry(self, contract: Contract) -> None:
        self.fakes.events.append(("checks.retry",))

    def stop(self, contract: Contract) -> None:
        self.fakes.events.append(("checks.stop",))


@dataclass
class _Notifier:
    fakes: ContractFakes

    def tell_ending(self, contract: Contract, reason: str, keep_until: float) -> None:
        self.fakes.events.append(("tell_ending", reason, keep_until))

    def tell_broken(self, contract: Contract, reason: str, keep_until: float) -> None:
        self.fakes.events.append(("tell_broken", reason, keep_until))

    def tell_released(self, contract: Contract) -> None:
        self.fakes.events.append(("tell_released",))


@dataclass
class _Keeper:
    fakes: ContractFakes

    def allow(self, contract: Contract, max_bytes: int) -> None:
        self.fakes.events.append(("keeper.allow", max_bytes))
        self.fakes.allowed = max_bytes
        self.fakes.frozen = False

    def freeze(self, contract: Contract) -> None:
        self.fakes.events.append(("keeper.freeze",))
        self.fakes.frozen = True

    def drop(self, contract: Contract) -> None:
        self.fakes.events.append(("keeper.drop",))
        self.fakes.held = 0
        self.fakes.allowed = None
        self.fakes.drops += 1


@dataclass
class _Scores:
    fakes: ContractFakes

    def record_check(self, contract: Contract, passed: bool) -> float:
        self.fakes.reputation = self.fakes.reputation.after_check(passed)
        self.fakes.events.append(("score", passed))
        return self.fakes.reputation.score

    def audit_score(self, contract: Contract) -> float:
        return self.fakes.reputation.score
