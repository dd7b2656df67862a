"""Peer scores kept in the peer table (the machines' AuditScores).

Each check result updates the peer's beta reputation, and each attempt to
reach the peer for a check counts as one uptime probe, in the scoring
fields of its ``storedpb.Peer`` record (``contracts.scores`` has the
arithmetic and docs/contracts.md the parameters).
"""

from __future__ import annotations

from collections.abc import Callable

from barterbackup.contracts import scores
from barterbackup.contracts.collaborators import Contract
from barterbackup.peers.records import PeerRecords


class PeerScores:
    """AuditScores on PeerRecords; ``now()`` gives wall-clock seconds."""

    def __init__(self, records: PeerRecords, now: Callable[[], float]) -> None:
        self._records = records
        self._now = now

    def record_check(self, contract: Contract, passed: bool) -> float:
        now = self._now()
        updated = self._records.update(
            contract.peer_pubkey,
            int(now),
            lambda peer: scores.with_check_result(peer, passed, now),
        )
        return scores.audit_reputation_of(updated).score

    def audit_score(self, contract: Contract) -> float:
        return self.audit_score_of(contract.peer_pubkey)

    def audit_score_of(self, peer: bytes) -> float:
        record = self._records.get(peer)
        if record is None:
            return scores.NEW_PEER.score
        return scores.audit_reputation_of(record).score

    def uptime_score_of(self, peer: bytes) -> float:
        record = self._records.get(peer)
        if record is None:
            return scores.UPTIME_WITHOUT_PROBES
        return scores.uptime_score(scores.uptime_windows_of(record), self._now())

    def record_fault(self, peer: bytes) -> float:
        """Count a fault seen outside a check as a failed audit (recovery:
        a replica that offered a forged or stale root, or sent bad bytes).
        Only a peer of the table is scored: a stranger gets no record."""
        if self._records.get(peer) is None:
            return scores.NEW_PEER.score
        now = self._now()
        updated = self._records.update(
            peer, int(now), lambda record: scores.with_check_result(record, False, now)
        )
        return scores.audit_reputation_of(updated).score

    def probe(self, peer: bytes, answered: bool) -> None:
        """One attempt to reach ``peer``: it answered or not."""
        now = self._now()
        self._records.update(
            peer, int(now), lambda record: scores.with_probe(record, answered, now)
        )
