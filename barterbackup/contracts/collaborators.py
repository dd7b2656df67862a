"""What a contract machine works through: the contract's facts, its local
timings, and one protocol per collaborator the node injects.

Collaborator methods start work and return at once; results come back as
machine inputs (``synced``, ``check_passed``…). They must not raise: an
exception inside a transition would leave the machine's follow-up inputs
(the save of the new state among them) unrun. A collaborator told to
``stop`` for a contract delivers no further inputs for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts.terms import CheckPolicy, InvalidTerms, SignedTerms

DAY = 24 * 3600.0


@dataclass(frozen=True)
class Contract:
    """The facts of one contract, seen from this node."""

    signed: SignedTerms
    our_pubkey: bytes

    def __post_init__(self) -> None:
        terms = self.signed.terms
        if self.our_pubkey not in (terms.proposer_pubkey, terms.acceptor_pubkey):
            raise InvalidTerms("this node is not a party to the contract")

    @property
    def contract_id(self) -> bytes:
        return self.signed.contract_id

    @property
    def we_proposed(self) -> bool:
        return self.our_pubkey == self.signed.terms.proposer_pubkey

    @property
    def peer_pubkey(self) -> bytes:
        terms = self.signed.terms
        return terms.acceptor_pubkey if self.we_proposed else terms.proposer_pubkey

    @property
    def we_keep_bytes(self) -> int:
        """How much of the peer's content this node keeps at most."""
        terms = self.signed.terms
        return (
            terms.proposer_keeps_bytes
            if self.we_proposed
            else terms.acceptor_keeps_bytes
        )

    @property
    def peer_keeps_bytes(self) -> int:
        """How much of this node's content the peer keeps at most."""
        terms = self.signed.terms
        return (
            terms.acceptor_keeps_bytes
            if self.we_proposed
            else terms.proposer_keeps_bytes
        )

    @property
    def check_policy(self) -> CheckPolicy:
        return self.signed.terms.check_policy


@dataclass(frozen=True)
class ContractTimings:
    """Local limits (not part of the signed terms); docs/contracts.md says why.

    The demo and tests shorten them; the defaults suit friends whose
    machines are off for a holiday and who may need their data back from
    us after losing theirs.
    """

    # An unanswered check is asked again this many times before it counts
    # as failed (Storj's containment).
    containment_retries: int = 3
    # A peer unreachable this long breaks the contract. Two weeks: a
    # holiday costs nothing.
    outage_limit_seconds: float = 14 * DAY
    # After a break for failed checks we keep the peer's data this long.
    grace_after_failed_checks_seconds: float = 7 * DAY
    # After a break for an outage we keep it longer: a peer whose machine
    # died needs exactly this copy to recover.
    grace_after_outage_seconds: float = 30 * DAY
    # A graceful end keeps the peer's data until it released it, or this
    # long at most.
    ending_keep_seconds: float = 14 * DAY


class SyncPusher(Protocol):
    """Pushes this node's current revision to the peer (sync/ data plane)."""

    def push(self, contract: Contract) -> None:
        """Bring the peer to our current revision, then feed ``synced()``.

        Keeps trying across disconnections; a newer revision supersedes the
        one being pushed. Calling it again while pushing changes nothing.
        """

    def stop(self, contract: Contract) -> None:
        """Push nothing more under this contract."""


class CheckScheduler(Protocol):
    """Runs spot checks on the peer; feeds check_passed / check_failed /
    check_unanswered / peer_unreachable."""

    def start(self, contract: Contract) -> None:
        """Check at jittered times around the policy interval until stopped.

        Idempotent. A peer that cannot be dialled is reported with
        ``peer_unreachable``; one that does not answer within the deadline
        with ``check_unanswered``.
        """

    def retry(self, contract: Contract) -> None:
        """Ask the pending (unanswered) challenge again, soon."""

    def stop(self, contract: Contract) -> None:
        """No further checks, and no results of checks under way."""


class ContractStore(Protocol):
    """Persists contract records, sealed and crash-safe."""

    def save(self, record: storedpb_pb2.ContractRecord) -> None:
        """Replace the record of ``record``'s contract."""


class PeerNotifier(Protocol):
    """Tells the peer about the contract (EndContract over bbrpc); delivers
    when the peer is next reachable."""

    def tell_ending(self, contract: Contract, reason: str, keep_until: float) -> None:
        """We end the contract; we keep the peer's data until keep_until."""

    def tell_broken(self, contract: Contract, reason: str, keep_until: float) -> None:
        """We consider the contract broken by the peer, and why."""

    def tell_released(self, contract: Contract) -> None:
        """Our content is safe elsewhere: the peer may drop it."""


class PeerDataKeeper(Protocol):
    """Keeps the peer's content here (the replica side of sync/)."""

    def allow(self, contract: Contract, max_bytes: int) -> None:
        """Accept the peer's revisions under this contract, up to max_bytes."""

    def freeze(self, contract: Contract) -> None:
        """Keep what is held, accept nothing new under this contract."""

    def drop(self, contract: Contract) -> None:
        """Delete the peer's content kept under this contract."""


class AuditScores(Protocol):
    """The peer's audit reputation (contracts.scores on its Peer record)."""

    def record_check(self, contract: Contract, passed: bool) -> float:
        """Count one check result; the audit score after it."""

    def audit_score(self, contract: Contract) -> float:
        """The current audit score."""
