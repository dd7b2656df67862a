"""One contract as the book holds it, and what the book's parts share.

The book's collaborators (pushing, checking, notices) find contracts and
give their machines inputs through ``BookAccess``, a narrow view of the
book, so none of them holds the book itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts.collaborators import Contract
from barterbackup.contracts.machine import ContractCore, ContractInputs
from barterbackup.contracts.states import StateData, decode_record

# The states in which a contract binds both sides: the peer's data is
# allowed here, ours is pushed there and checked.
IN_FORCE = frozenset({"syncing", "active", "suspect"})
# The states in which we still keep the peer's data, granting nothing more.
KEEPING = frozenset({"broken", "ending"})

Event = Callable[[ContractInputs], None]


@dataclass
class ContractEntry:
    """A contract's machine, its last saved record and its ledger."""

    core: ContractCore
    machine: ContractInputs
    record: storedpb_pb2.ContractRecord
    ledger: storedpb_pb2.ContractLedger

    @property
    def contract(self) -> Contract:
        return self.core.contract

    @property
    def contract_id(self) -> bytes:
        return self.core.contract.contract_id

    @property
    def peer(self) -> bytes:
        return self.core.contract.peer_pubkey

    @property
    def state(self) -> str:
        return self.record.state

    @property
    def in_force(self) -> bool:
        return self.state in IN_FORCE

    def data(self) -> StateData | None:
        """The state's data as last saved."""
        return decode_record(self.record)[1]


class BookAccess(Protocol):
    """What the book's parts need of the book."""

    def entry(self, contract_id: bytes) -> ContractEntry | None:
        """The contract with that id, if the book holds it."""

    def entries_of(self, peer: bytes) -> list[ContractEntry]:
        """Every contract with ``peer``, oldest first."""

    def feed(self, contract_id: bytes, event: Event, what: str) -> None:
        """Give the contract's machine an input (ignored if it takes none)."""

    def save(self, contract_id: bytes) -> None:
        """Persist the contract's record and ledger as they are now."""

    def save_soon(self, contract_id: bytes) -> None:
        """Persist the ledger within a few seconds, with other changes.

        For what may be lost in a crash (the last check's verdict): a check
        a minute on fifty contracts then costs a few writes, not fifty.
        """
