"""The node's own state, sealed inside its content.

What a node needs besides its files to carry on after a total loss: the
peer table (who its peers are, how to reach them, the chat keys agreed
with them), its contracts (the signed terms and each machine's state), its
storage budget and its backup sources and schedule. ``build_node_state``
takes the stable part of each (no scores, timings or check ledgers, which
change every hour and would make every check a new revision), and
``seal_node_state`` seals it deterministically with AES-SIV under the
subkey ``LABEL_NODE_STATE`` (associated data: a label and our key): equal
state gives equal bytes, so the node knows without opening anything
whether its current revision already carries it. The sealed blob is named
by the signed root (``RevisionRoot.node_state``) and stored and
replicated like a section; a replica learns only its length, and when it
changes.

Why a blob named by the root, not a reserved manifest entry: recovery
needs it *first* (one replica is enough to learn every other), and a blob
the root names is one Download, verified by its hash straight from the
signed root, without fetching a tree first; and no file listing, restore,
files cache or "no change, no revision" rule ever has to skip it.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from google.protobuf.message import DecodeError

from barterbackup._proto import storedpb_pb2

LABEL_NODE_STATE = "node state aes-siv"
NODE_STATE_KEY_BYTES = 64
NODE_STATE_AD = b"barterbackup v1 node state\x00"
NODE_STATE_FORMAT = 1
# The contract states kept as one in the node state (``stable_record``).
IN_FORCE_STATES = ("syncing", "active", "suspect")


class InvalidNodeState(ValueError):
    """A sealed node state does not open or is not a NodeState."""


def build_node_state(
    peers: Iterable[storedpb_pb2.Peer],
    contracts: Iterable[storedpb_pb2.ContractFile],
    metadata: storedpb_pb2.Metadata,
) -> storedpb_pb2.NodeState:
    """The stable part of the node's state, sorted (same state, same bytes)."""
    state = storedpb_pb2.NodeState(format=NODE_STATE_FORMAT)
    for peer in sorted(peers, key=lambda p: bytes(p.onion_pubkey)):
        state.peers.add(
            onion_pubkey=peer.onion_pubkey,
            aead_key=peer.aead_key,
            first_seen=peer.first_seen,
            share_in_exchange=peer.share_in_exchange,
            endpoint=peer.endpoint,
        )
    for contract in sorted(contracts, key=lambda c: bytes(c.record.signed_terms)):
        kept = state.contracts.add()
        kept.record.CopyFrom(stable_record(contract.record))
    if metadata.HasField("storage"):
        state.storage.CopyFrom(metadata.storage)
    state.sources.extend(metadata.sources)
    if metadata.HasField("backup_schedule"):
        state.backup_schedule.CopyFrom(metadata.backup_schedule)
    return state


def stable_record(record: storedpb_pb2.ContractRecord) -> storedpb_pb2.ContractRecord:
    """``record`` without what every revision changes.

    Each commit takes an active contract to syncing and back, each time
    with a new ``since``: kept as it is, the state would differ after
    every revision and every revision would call for a state-only one
    (a loop). And a check that fails takes it to suspect: a state-only
    revision then would push our content to the replica that lost it,
    healing it instead of letting the checks break the contract. So
    every state in force (syncing, active, suspect) is kept as "active
    since 0": a recovered contract resumes as active (its replica held
    our content) and the checks that follow find out if it no longer
    does.
    """
    stable = storedpb_pb2.ContractRecord()
    stable.CopyFrom(record)
    if record.state in IN_FORCE_STATES:
        stable.state = "active"
        stable.active.since = 0.0
    return stable


def seal_node_state(state: storedpb_pb2.NodeState, key: bytes, owner: bytes) -> bytes:
    """Deterministic AES-SIV sealing of ``state`` for the node ``owner``."""
    plain = state.SerializeToString(deterministic=True)
    return AESSIV(key).encrypt(plain, [NODE_STATE_AD + owner])


def open_node_state(sealed: bytes, key: bytes, owner: bytes) -> storedpb_pb2.NodeState:
    """The NodeState in ``sealed``; InvalidNodeState on any fault."""
    try:
        plain = AESSIV(key).decrypt(sealed, [NODE_STATE_AD + owner])
    except (InvalidTag, ValueError):
        raise InvalidNodeState("the node state does not open with our key") from None
    try:
        state = storedpb_pb2.NodeState.FromString(plain)
    except DecodeError:
        raise InvalidNodeState("the node state is not a valid record") from None
    if state.format != NODE_STATE_FORMAT:
        raise InvalidNodeState(f"unknown node state format {state.format}")
    return state
