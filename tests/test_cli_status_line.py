"""The status headline: protected, or at risk and why."""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.status_line import (
    LastBackup,
    NodeSafety,
    human_age,
    safety_from_status,
    status_line,
)

NOW = 1_700_000_000.0
HOUR = 3600

SAFE = NodeSafety(
    unlocked=True,
    revision=12,
    revision_time=NOW - 2 * HOUR,
    min_replicas=2,
    replicas_current=2,
    checks_passed=2,
    source_count=1,
    schedule_every=HOUR,
    last_backup=LastBackup(finished_at=NOW - 600, revision=12),
    peer_network="ready",
)


class StatusLineTests(SynchronousTestCase):
    def assert_at_risk(self, state: NodeSafety, reason: str) -> None:
        line = status_line(state, NOW)
        self.assertTrue(line.at_risk, line.text)
        self.assertTrue(line.text.startswith("at risk: "), line.text)
        self.assertIn(reason, line.reasons)
        self.assertIn(reason, line.text)

    def test_protected(self) -> None:
        line = status_line(SAFE, NOW)
        self.assertEqual(
            line.text,
            "protected: revision 12 (2 h ago) held by 2 of 2 replicas, "
            "last checks passed",
        )
        self.assertFalse(line.at_risk)
        self.assertEqual(line.reasons, ())

    def test_protected_details(self) -> None:
        line = status_line(replace(SAFE, checks_passed=0), NOW)
        self.assertTrue(line.text.endswith("not spot-checked yet"))
        self.assertFalse(line.at_risk)
        running = status_line(replace(SAFE, backup_running=True), NOW)
        self.assertTrue(running.text.endswith("; backup running"))
        skipped = replace(SAFE, last_backup=LastBackup(NOW - 60, warning_count=3))
        self.assertTrue(
            status_line(skipped, NOW).text.endswith("the last backup skipped 3 entries")
        )
        older = status_line(replace(SAFE, replicas_older=1), NOW)
        self.assertIn("(1 more hold an older revision)", older.text)
        self.assertFalse(older.at_risk)

    def test_locked(self) -> None:
        self.assert_at_risk(
            NodeSafety(unlocked=False),
            "locked: nothing is backed up until `barterbackup unlock`",
        )

    def test_nothing_backed_up(self) -> None:
        state = NodeSafety(unlocked=True, min_replicas=2)
        self.assert_at_risk(
            state, "nothing backed up yet (add a folder: `barterbackup sources add`)"
        )
        self.assert_at_risk(replace(state, source_count=1), "nothing backed up yet")

    def test_too_few_replicas(self) -> None:
        self.assert_at_risk(
            replace(SAFE, replicas_current=1, replicas_older=1),
            "under-replicated: 1 of 2 replicas holds revision 12 (2 h ago) "
            "(1 more hold an older revision)",
        )
        self.assert_at_risk(
            replace(SAFE, replicas_current=0, min_replicas=1),
            "under-replicated: 0 of 1 replica hold revision 12 (2 h ago)",
        )

    def test_no_replica_required(self) -> None:
        self.assert_at_risk(
            replace(SAFE, min_replicas=0),
            "revision 12 (2 h ago) is on this machine only (min_replicas is 0)",
        )

    def test_failed_checks(self) -> None:
        self.assert_at_risk(
            replace(SAFE, checks_failed=1), "the last check failed for 1 replica"
        )

    def test_failed_backup(self) -> None:
        failed = LastBackup(finished_at=NOW - 300, error="no space left on device")
        self.assert_at_risk(
            replace(SAFE, last_backup=failed),
            "last backup failed 5 min ago: no space left on device",
        )

    def test_unreadable_source(self) -> None:
        partial = LastBackup(finished_at=NOW - 60, unavailable_sources=("usb", "nas"))
        self.assert_at_risk(
            replace(SAFE, last_backup=partial),
            "the last backup could not read: usb, nas",
        )

    def test_overdue_schedule(self) -> None:
        stale = replace(SAFE, last_backup=LastBackup(finished_at=NOW - 3 * HOUR))
        self.assert_at_risk(
            stale, "the last backup was 3 h ago, though scheduled every 1h"
        )
        # Not overdue while a run is in progress, nor with the schedule off.
        self.assertFalse(status_line(replace(stale, backup_running=True), NOW).at_risk)
        self.assertFalse(status_line(replace(stale, schedule_every=0), NOW).at_risk)

    def test_peer_network_and_errors(self) -> None:
        self.assert_at_risk(
            replace(SAFE, peer_network="failed: tor exited"),
            "peer network failed: tor exited",
        )
        self.assert_at_risk(
            replace(SAFE, errors=("the pack store is full",)), "the pack store is full"
        )

    def test_every_reason_is_listed(self) -> None:
        state = replace(SAFE, replicas_current=1, checks_failed=2)
        line = status_line(state, NOW)
        self.assertEqual(len(line.reasons), 2)
        self.assertEqual(line.text, "at risk: " + "; ".join(line.reasons))

    def test_ages(self) -> None:
        self.assertEqual(human_age(5), "just now")
        self.assertEqual(human_age(-5), "just now")
        self.assertEqual(human_age(300), "5 min ago")
        self.assertEqual(human_age(2 * HOUR + 5), "2 h ago")
        self.assertEqual(human_age(3 * 86400), "3 days ago")


class FromStatusTests(SynchronousTestCase):
    def test_reads_get_status(self) -> None:
        status = clirpc_pb2.GetStatusResponse(
            unlocked=True,
            revision=12,
            revision_time=int(NOW - 2 * HOUR),
            min_replicas=2,
            replicas_current=2,
            checks_passed=2,
            source_count=1,
            peer_network="ready",
            schedule=clirpc_pb2.ScheduleInfo(every_seconds=HOUR),
            last_backup=clirpc_pb2.BackupRunInfo(
                finished_at=int(NOW - 600), revision=12
            ),
        )
        self.assertEqual(
            safety_from_status(status),
            replace(SAFE, last_backup=LastBackup(finished_at=NOW - 600, revision=12)),
        )
        self.assertFalse(status_line(safety_from_status(status), NOW).at_risk)

    def test_no_backup_yet(self) -> None:
        status = clirpc_pb2.GetStatusResponse(unlocked=True)
        self.assertIsNone(safety_from_status(status).last_backup)
