"""The keeper of peers' data: what each contract lets a peer store here.

Only a contract grants storage. ``StorageGrants`` is the replica store's
``grant(owner)``: the size of the peer's contract in force (syncing,
active, suspect), or 0. ``ReplicaKeeper`` is the machines' PeerDataKeeper:
``allow`` grants a contract's size, ``freeze`` keeps what is held but
grants nothing more (broken, ending), ``drop`` deletes the peer's data
once no contract of that peer keeps it any longer.

A peer has one replica here however many contracts it has with us (an
ending one and its successor, say): the grant is the largest allowance in
force, and the data goes only with the last contract keeping it.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from barterbackup.contracts.collaborators import Contract
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.store.replicas import ReplicaStore
from barterbackup.sync.interfaces import Blocking, run_inline

log = get_logger("barterbackup.contracts")

_FROZEN = -1


class StorageGrants:
    """Per peer and contract: the allowance in force, or frozen."""

    def __init__(self) -> None:
        self._by_peer: dict[bytes, dict[bytes, int]] = {}

    def __call__(self, owner: bytes) -> int:
        """What ``owner`` may keep here now (the replica store's grant)."""
        allowances = self._by_peer.get(owner, {}).values()
        return max((size for size in allowances if size != _FROZEN), default=0)

    def allow(self, peer: bytes, contract_id: bytes, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("an allowance is a positive number of bytes")
        self._by_peer.setdefault(peer, {})[contract_id] = max_bytes

    def freeze(self, peer: bytes, contract_id: bytes) -> None:
        self._by_peer.setdefault(peer, {})[contract_id] = _FROZEN

    def forget(self, peer: bytes, contract_id: bytes) -> None:
        contracts = self._by_peer.get(peer)
        if contracts is not None:
            contracts.pop(contract_id, None)
            if not contracts:
                del self._by_peer[peer]

    def keeps(self, peer: bytes) -> bool:
        """Whether some contract (in force or frozen) keeps the peer's data."""
        return bool(self._by_peer.get(peer))

    def peers(self) -> list[bytes]:
        return list(self._by_peer)


class ReplicaKeeper:
    """PeerDataKeeper on the replica store (reactor thread)."""

    def __init__(
        self,
        grants: StorageGrants,
        replicas: ReplicaStore,
        blocking: Blocking[Any] = run_inline,
    ) -> None:
        self._grants = grants
        self._replicas = replicas
        self._blocking = blocking

    def allow(self, contract: Contract, max_bytes: int) -> None:
        self._grants.allow(contract.peer_pubkey, contract.contract_id, max_bytes)

    def freeze(self, contract: Contract) -> None:
        self._grants.freeze(contract.peer_pubkey, contract.contract_id)

    def drop(self, contract: Contract) -> None:
        peer = contract.peer_pubkey
        self._grants.forget(peer, contract.contract_id)
        if self._grants.keeps(peer):
            return  # Another contract of this peer still keeps its data.
        address = onion_address_from_pubkey(peer)

        def deleted(_: object) -> None:
            log.info("dropped the data of {peer}", peer=address)

        def failed(failure: Failure) -> None:
            # A drop is repeated at the next restart (the record still says
            # broken or ending until the ended state is saved).
            log.failure("dropping the data of {peer} failed", failure, peer=address)

        self._blocking(lambda: self._replicas.delete(peer)).addCallbacks(
            deleted, failed
        )
