"""Ranking peers for a replacement contract."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import scores
from barterbackup.contracts.selection import Candidate, rank_candidates

GiB = 1024**3
T0 = 20_254 * 86400.0


def candidate(
    name: str,
    audit: float = 1.0,
    uptime: float = 1.0,
    free: int | None = 10 * GiB,
    passed: int = 100,
) -> Candidate:
    return Candidate(name.encode().ljust(32, b"."), audit, uptime, free, passed)


def names(ranked: list[Candidate]) -> list[str]:
    return [c.pubkey.rstrip(b".").decode() for c in ranked]


class RankingTests(SynchronousTestCase):
    def test_reliability_first(self) -> None:
        ranked = rank_candidates(
            [
                candidate("flaky", uptime=0.6),
                candidate("solid"),
                candidate("doubted", audit=0.92),
            ],
            needed_bytes=GiB,
        )
        self.assertEqual(names(ranked), ["solid", "doubted", "flaky"])

    def test_near_ties_go_to_the_roomier_peer(self) -> None:
        ranked = rank_candidates(
            [
                candidate("tight", uptime=0.997, free=2 * GiB),
                candidate("roomy", uptime=0.992, free=50 * GiB),
            ],
            needed_bytes=GiB,
        )
        self.assertEqual(names(ranked), ["roomy", "tight"])

    def test_unknown_capacity_after_known_room(self) -> None:
        ranked = rank_candidates(
            [candidate("silent", free=None), candidate("small", free=GiB)],
            needed_bytes=GiB,
        )
        self.assertEqual(names(ranked), ["small", "silent"])

    def test_longer_record_breaks_remaining_ties(self) -> None:
        ranked = rank_candidates(
            [candidate("new", passed=3), candidate("old", passed=900)],
            needed_bytes=GiB,
        )
        self.assertEqual(names(ranked), ["old", "new"])

    def test_left_out(self) -> None:
        ranked = rank_candidates(
            [
                candidate("holder"),
                candidate("suspect", audit=0.85),
                candidate("broken", audit=0.5),
                candidate("full", free=GiB - 1),
                candidate("fine"),
            ],
            needed_bytes=GiB,
            exclude=[candidate("holder").pubkey],
        )
        self.assertEqual(names(ranked), ["fine"])

    def test_from_peer_record(self) -> None:
        peer = storedpb_pb2.Peer(onion_pubkey=b"p" * 32)
        for hour in range(10):
            peer = scores.with_probe(peer, answered=hour % 2 == 0, at=T0 + hour * 3600)
        peer = scores.with_check_result(peer, passed=True, at=T0)
        c = Candidate.of(peer, free_bytes=5 * GiB, now=T0 + 36000)
        self.assertEqual(c.pubkey, b"p" * 32)
        self.assertEqual(c.uptime_score, 0.5)
        self.assertEqual(c.checks_passed, 1)
        self.assertEqual(c.audit_score, 1.0)

    @given(
        st.lists(
            st.tuples(
                st.floats(0, 1),
                st.floats(0, 1),
                st.one_of(st.none(), st.integers(0, 100 * GiB)),
                st.integers(0, 1000),
            ),
            max_size=20,
        )
    )
    @settings(max_examples=100, deadline=None)
    def test_order_is_stable_and_filters_hold(
        self, rows: list[tuple[float, float, int | None, int]]
    ) -> None:
        pool = [
            Candidate(i.to_bytes(32, "big"), audit, uptime, free, passed)
            for i, (audit, uptime, free, passed) in enumerate(rows)
        ]
        ranked = rank_candidates(pool, needed_bytes=GiB)
        self.assertEqual(ranked, rank_candidates(reversed(pool), needed_bytes=GiB))
        for c in ranked:
            self.assertGreaterEqual(c.audit_score, scores.AUDIT_SUSPECT_BELOW)
            self.assertTrue(c.free_bytes is None or c.free_bytes >= GiB)
        for better, worse in itertools.pairwise(ranked):
            self.assertGreaterEqual(better.reliability + 0.01, worse.reliability)
