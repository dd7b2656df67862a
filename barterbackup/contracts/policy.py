"""Whether to take a proposed contract: Accept, Refuse(reason) or NeedsApproval.

Pure: the caller gathers the facts (the verified terms, our storage budget
and obligations, what we know of the proposer, the time) and acts on the
decision. Refusal reasons are written for the proposer's user, who sees
them in its CLI; they never contain anything secret.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.contracts import scores
from barterbackup.contracts.terms import ContractTerms

# A peer nobody vouched for (under `open`) keeps at most this much of its
# data here until it has passed scores.VETTING_CHECKS checks: enough to try
# the system out, too little to make us a free dump.
UNVETTED_MAX_BYTES = 256 * 1024 * 1024
# A proposal is answered within seconds; one written more than a day ago
# is a replay or a broken clock. Clocks may run an hour ahead of ours.
MAX_PROPOSAL_AGE_SECONDS = 24 * 3600
MAX_CLOCK_AHEAD_SECONDS = 3600


class AcceptancePolicy(enum.Enum):
    """Who may make a contract with this node."""

    # Peers the user connected to or accepted (the default).
    KNOWN = "known"
    # Anyone; peers not known are capped until vetted and must give as much
    # as they take.
    OPEN = "open"
    # Every proposal waits for the user's approval.
    MANUAL = "manual"


DEFAULT_ACCEPTANCE_POLICY = AcceptancePolicy.KNOWN


class RefusalCode(enum.Enum):
    """Why a proposal is refused; mirrors bbrpc.ContractRefusalCode."""

    BAD_TERMS = bbrpc_pb2.CONTRACT_REFUSAL_CODE_BAD_TERMS
    NO_CAPACITY = bbrpc_pb2.CONTRACT_REFUSAL_CODE_NO_CAPACITY
    NOT_KNOWN = bbrpc_pb2.CONTRACT_REFUSAL_CODE_NOT_KNOWN
    NOT_VETTED = bbrpc_pb2.CONTRACT_REFUSAL_CODE_NOT_VETTED
    UNFAIR = bbrpc_pb2.CONTRACT_REFUSAL_CODE_UNFAIR
    LOW_SCORE = bbrpc_pb2.CONTRACT_REFUSAL_CODE_LOW_SCORE
    DECLINED = bbrpc_pb2.CONTRACT_REFUSAL_CODE_DECLINED


@dataclass(frozen=True)
class StorageBudget:
    """What this node lends to peers, and how much of it is promised."""

    total_bytes: int
    obligations_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.obligations_bytes)


@dataclass(frozen=True)
class ProposerStanding:
    """What this node knows of the proposer."""

    known: bool
    vetted: bool
    audit_score: float

    @classmethod
    def of(cls, peer: storedpb_pb2.Peer | None) -> ProposerStanding:
        """From the peer's record (None for a peer never seen). Known means
        our user chose the peer, not merely that a record exists: a record
        made for a contract alone does not make a stranger known."""
        if peer is None:
            return cls(known=False, vetted=False, audit_score=scores.NEW_PEER.score)
        return cls(
            known=peer.known_by_user,
            vetted=scores.is_vetted(peer),
            audit_score=scores.audit_reputation_of(peer).score,
        )


@dataclass(frozen=True)
class Accept:
    """Take the contract: countersign and answer with the signed terms."""


@dataclass(frozen=True)
class Refuse:
    """Refuse the contract, telling the proposer why."""

    code: RefusalCode
    reason: str

    def to_proto(self) -> bbrpc_pb2.ContractRefusal:
        return bbrpc_pb2.ContractRefusal(code=self.code.value, reason=self.reason)


@dataclass(frozen=True)
class NeedsApproval:
    """Keep the proposal until this node's user approves or declines it."""

    reason: str


Decision = Accept | Refuse | NeedsApproval


def decide_proposal(
    terms: ContractTerms,
    *,
    our_pubkey: bytes,
    budget: StorageBudget,
    policy: AcceptancePolicy,
    proposer: ProposerStanding,
    now: float,
) -> Decision:
    """Decide on verified proposed terms.

    The budget check comes before the policy so that a manual approval is
    only asked for a contract that fits; the caller checks the budget again
    when the user approves (obligations may have grown meanwhile).
    """
    if terms.acceptor_pubkey != our_pubkey:
        return Refuse(
            RefusalCode.BAD_TERMS, "the proposal is addressed to another node"
        )
    age = now - terms.created_at
    if age > MAX_PROPOSAL_AGE_SECONDS:
        return Refuse(
            RefusalCode.BAD_TERMS,
            f"the proposal was written {age / 3600:.0f} hours ago; "
            "propose again (or check the proposer's clock)",
        )
    if -age > MAX_CLOCK_AHEAD_SECONDS:
        return Refuse(
            RefusalCode.BAD_TERMS,
            f"the proposal is dated {-age / 3600:.0f} hours in the future; "
            "check the proposer's clock",
        )
    if scores.audit_standing(proposer.audit_score) is scores.Standing.BROKEN:
        return Refuse(
            RefusalCode.LOW_SCORE,
            f"your node failed this node's spot checks recently (audit score "
            f"{proposer.audit_score:.2f}, contracts need "
            f"{scores.AUDIT_BROKEN_BELOW:.2f}); it recovers as checks pass",
        )
    asked = terms.acceptor_keeps_bytes
    if asked > budget.free_bytes:
        return Refuse(
            RefusalCode.NO_CAPACITY,
            f"this node has {size_text(budget.free_bytes)} free of the "
            f"{size_text(budget.total_bytes)} it lends to peers; the proposal "
            f"asks it to keep {size_text(asked)}",
        )
    if policy is AcceptancePolicy.KNOWN and not proposer.known:
        return Refuse(
            RefusalCode.NOT_KNOWN,
            "this node only makes contracts with peers its user connected "
            "to; ask its user to run `barterbackup peers connect` with your "
            "address",
        )
    if policy is AcceptancePolicy.OPEN and not proposer.known:
        offered = terms.proposer_keeps_bytes
        if offered < asked:
            return Refuse(
                RefusalCode.UNFAIR,
                f"a peer this node does not know must keep at least as much "
                f"as it asks: the proposal asks {size_text(asked)} and offers "
                f"{size_text(offered)}",
            )
        if not proposer.vetted and asked > UNVETTED_MAX_BYTES:
            return Refuse(
                RefusalCode.NOT_VETTED,
                f"new peers get at most {size_text(UNVETTED_MAX_BYTES)} until "
                f"they have passed {scores.VETTING_CHECKS} spot checks; the "
                f"proposal asks {size_text(asked)}",
            )
    if policy is AcceptancePolicy.MANUAL:
        return NeedsApproval(
            "this node's user approves every contract; the answer comes later"
        )
    return Accept()


def size_text(n: int) -> str:
    """A byte count as a person reads it (binary units, one decimal)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
