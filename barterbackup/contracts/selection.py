"""Which known peer to propose a replacement contract to (pure).

The contract book asks this when a contract breaks or a peer leaves and it
has fewer than min_replicas healthy contracts. Candidates are ranked by
reliability (audit score times uptime score), then by free capacity, then
by how long a record they have, so the choice is stable and explainable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import scores

# Reliabilities this close are a tie: 0.991 against 0.993 is noise, and
# then the peer with more room should win.
RELIABILITY_STEP = 0.01


@dataclass(frozen=True)
class Candidate:
    """A peer that could take a contract."""

    pubkey: bytes
    audit_score: float
    uptime_score: float
    # What the peer said it can still take; None when it has not said.
    free_bytes: int | None
    checks_passed: int = 0

    @classmethod
    def of(
        cls, peer: storedpb_pb2.Peer, free_bytes: int | None, now: float
    ) -> Candidate:
        """From the peer's record, its scores computed at ``now``."""
        return cls(
            pubkey=bytes(peer.onion_pubkey),
            audit_score=scores.audit_reputation_of(peer).score,
            uptime_score=scores.uptime_score(scores.uptime_windows_of(peer), now),
            free_bytes=free_bytes,
            checks_passed=peer.checks_passed,
        )

    @property
    def reliability(self) -> float:
        return self.audit_score * self.uptime_score


def rank_candidates(
    candidates: Iterable[Candidate],
    *,
    needed_bytes: int,
    exclude: Iterable[bytes] = (),
) -> list[Candidate]:
    """The candidates worth proposing to, best first.

    Left out: the ``exclude``d peers (those already holding our content,
    the one being replaced), peers whose audit score is not in good
    standing, and peers known to lack ``needed_bytes`` of room. A peer that
    has not told its capacity stays in, after those known to have room:
    the proposal will find out.
    """
    excluded = set(exclude)
    eligible = [
        c
        for c in candidates
        if c.pubkey not in excluded
        and scores.audit_standing(c.audit_score) is scores.Standing.GOOD
        and (c.free_bytes is None or c.free_bytes >= needed_bytes)
    ]

    def order(c: Candidate) -> tuple[int, int, int, int, bytes]:
        step = math.floor(c.reliability / RELIABILITY_STEP + 1e-9)
        capacity_known = 0 if c.free_bytes is not None else 1
        return (-step, capacity_known, -(c.free_bytes or 0), -c.checks_passed, c.pubkey)

    return sorted(eligible, key=order)
