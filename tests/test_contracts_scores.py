"""Peer scores: the audit reputation and the uptime windows."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import scores as s

DAY = 24 * 3600.0
# Midnight UTC, so hours of one test day fall in one window.
T0 = 20_254 * DAY


class AuditTests(SynchronousTestCase):
    def test_new_peer_starts_trusted_but_thin(self) -> None:
        self.assertEqual(s.NEW_PEER.score, 1.0)
        self.assertEqual(s.failures_until_below(s.NEW_PEER, s.AUDIT_SUSPECT_BELOW), 2)
        self.assertEqual(s.failures_until_below(s.NEW_PEER, s.AUDIT_BROKEN_BELOW), 3)

    def test_long_good_record_tolerates_a_dozen_failures(self) -> None:
        good = s.long_good_record()
        self.assertAlmostEqual(good.alpha + good.beta, 50.0)
        self.assertEqual(s.failures_until_below(good, s.AUDIT_SUSPECT_BELOW), 6)
        self.assertEqual(s.failures_until_below(good, s.AUDIT_BROKEN_BELOW), 12)

    def test_a_day_of_passes_builds_trust(self) -> None:
        reputation = s.NEW_PEER
        for _ in range(s.VETTING_CHECKS):
            reputation = reputation.after_check(passed=True)
        self.assertEqual(s.failures_until_below(reputation, s.AUDIT_BROKEN_BELOW), 6)

    def test_update_rule(self) -> None:
        after = s.AuditReputation(10.0, 2.0).after_check(passed=False)
        self.assertAlmostEqual(after.alpha, 9.8)
        self.assertAlmostEqual(after.beta, 2.96)
        after = after.after_check(passed=True)
        self.assertAlmostEqual(after.alpha, 9.8 * 0.98 + 1)

    def test_standing(self) -> None:
        self.assertIs(s.audit_standing(0.95), s.Standing.GOOD)
        self.assertIs(s.audit_standing(0.9), s.Standing.GOOD)
        self.assertIs(s.audit_standing(0.89), s.Standing.SUSPECT)
        self.assertIs(s.audit_standing(0.8), s.Standing.SUSPECT)
        self.assertIs(s.audit_standing(0.79), s.Standing.BROKEN)

    def test_steady_failure_rate_is_the_score(self) -> None:
        reputation = s.NEW_PEER
        for index in range(2000):
            reputation = reputation.after_check(passed=index % 10 != 0)
        self.assertTrue(0.88 <= reputation.score <= 0.92, reputation.score)

    def test_peer_record_update(self) -> None:
        peer = storedpb_pb2.Peer(onion_pubkey=b"k" * 32)
        self.assertEqual(s.audit_reputation_of(peer), s.NEW_PEER)
        updated = s.with_check_result(peer, passed=False, at=T0)
        self.assertEqual(peer.checks_failed, 0, "the input is not modified")
        self.assertEqual(updated.checks_failed, 1)
        self.assertEqual(updated.checks_passed, 0)
        self.assertEqual(updated.last_check_at, T0)
        self.assertAlmostEqual(updated.audit_alpha, 9.8)
        self.assertAlmostEqual(updated.audit_beta, 1.0)
        self.assertAlmostEqual(updated.audit_score, 9.8 / 10.8)
        self.assertEqual(s.audit_reputation_of(updated), s.AuditReputation(9.8, 1.0))
        updated = s.with_check_result(updated, passed=True, at=T0 + 1)
        self.assertEqual(updated.checks_passed, 1)

    def test_damaged_record_falls_back_to_the_prior(self) -> None:
        for alpha, beta in ((-1.0, 0.0), (math.nan, 1.0), (math.inf, 0.0)):
            peer = storedpb_pb2.Peer(audit_alpha=alpha, audit_beta=beta)
            self.assertEqual(s.audit_reputation_of(peer), s.NEW_PEER)

    def test_vetting(self) -> None:
        peer = storedpb_pb2.Peer()
        for index in range(s.VETTING_CHECKS):
            self.assertFalse(s.is_vetted(peer))
            peer = s.with_check_result(peer, passed=True, at=T0 + index)
        self.assertTrue(s.is_vetted(peer))
        for index in range(8):
            peer = s.with_check_result(peer, passed=False, at=T0 + 100 + index)
        self.assertFalse(s.is_vetted(peer), "passed enough, but score is low")

    @given(st.lists(st.booleans(), max_size=300))
    @settings(max_examples=100, deadline=None)
    def test_score_stays_in_range(self, results: list[bool]) -> None:
        reputation = s.NEW_PEER
        for passed in results:
            reputation = reputation.after_check(passed)
            self.assertTrue(0.0 <= reputation.score <= 1.0)
            self.assertLessEqual(reputation.alpha + reputation.beta, 50.0 + 1e-9)


class UptimeTests(SynchronousTestCase):
    def test_no_probes_is_presumed_up(self) -> None:
        self.assertEqual(s.uptime_score((), T0), 1.0)

    def test_daily_windows(self) -> None:
        windows: tuple[s.UptimeWindow, ...] = ()
        windows = s.record_probe(windows, T0, answered=True)
        windows = s.record_probe(windows, T0 + 60, answered=False)
        windows = s.record_probe(windows, T0 + DAY, answered=True)
        self.assertEqual(
            windows,
            (
                s.UptimeWindow(s.day_of(T0), 2, 1),
                s.UptimeWindow(s.day_of(T0) + 1, 1, 1),
            ),
        )
        self.assertAlmostEqual(s.uptime_score(windows, T0 + DAY), 2 / 3)

    def test_a_week_away_is_forgotten_after_thirty_days(self) -> None:
        windows: tuple[s.UptimeWindow, ...] = ()
        for day in range(60):
            for hour in range(24):
                away = 10 <= day < 17
                windows = s.record_probe(
                    windows, T0 + day * DAY + hour * 3600, answered=not away
                )
            self.assertLessEqual(len(windows), s.UPTIME_WINDOWS)
            if day == 20:
                self.assertAlmostEqual(
                    s.uptime_score(windows, T0 + day * DAY), 1 - 7 / 21, places=6
                )
        self.assertEqual(s.uptime_score(windows, T0 + 59 * DAY), 1.0)

    def test_old_windows_do_not_count(self) -> None:
        windows = (s.UptimeWindow(s.day_of(T0), 10, 0),)
        self.assertEqual(s.uptime_score(windows, T0 + 31 * DAY), 1.0)
        self.assertEqual(s.uptime_score(windows, T0 + 29 * DAY), 0.0)

    def test_clock_going_back_counts_in_the_newest_window(self) -> None:
        windows = s.record_probe((), T0 + DAY, answered=True)
        windows = s.record_probe(windows, T0, answered=False)
        self.assertEqual(windows, (s.UptimeWindow(s.day_of(T0) + 1, 2, 1),))

    def test_peer_record_update(self) -> None:
        peer = storedpb_pb2.Peer()
        peer = s.with_probe(peer, answered=True, at=T0)
        peer = s.with_probe(peer, answered=False, at=T0 + 1)
        self.assertEqual(len(peer.uptime_windows), 1)
        self.assertEqual(peer.uptime_windows[0].probes, 2)
        self.assertAlmostEqual(peer.uptime_score, 0.5)
        # A damaged window (more answers than probes) is left out.
        peer.uptime_windows.add(day=s.day_of(T0) + 1, probes=1, answered=5)
        self.assertEqual(len(s.uptime_windows_of(peer)), 1)
