"""Why a contract operation asked by the user (or the node) cannot be done.

Messages are shown to users as they are: they say what is wrong and what
to do, and never carry a secret. The node facade maps each kind to the
status its API answers with.
"""

from __future__ import annotations


class ContractError(Exception):
    """Base class: a contract operation that cannot be done."""


class UnknownContract(ContractError):
    """No such contract (or no contract in force with that peer)."""


class ContractConflict(ContractError):
    """Another contract with the peer is in the way."""


class WrongState(ContractError):
    """The contract's state does not allow the operation."""


class NoRoom(ContractError):
    """Our own storage budget cannot take what the contract asks of us."""


class ProposalRefused(ContractError):
    """The peer refused the proposal; the message is its reason."""

    def __init__(self, reason: str, code: int = 0) -> None:
        super().__init__(reason)
        self.code = code


class PeerUnreachable(ContractError):
    """The peer could not be reached, or did not answer."""
