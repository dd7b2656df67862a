"""Backups through the node (no-network swarm, task.Clock): sources, the
schedule driven by the session, backup now, the outcome kept for status."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup import errors
from barterbackup.progress import Progress
from barterbackup.testing.swarm import Swarm

HOUR = 3600


class BackupNodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="bb-backups-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.swarm = Swarm(self.base / "swarm", 1)
        self.addCleanup(self.swarm.stop)
        self.member = self.swarm.nodes[0]
        self.node = self.member.node
        self.folder = self.base / "Documents"
        (self.folder / "letters").mkdir(parents=True)
        (self.folder / "letters/one.txt").write_bytes(b"dear friend")
        (self.folder / "todo.md").write_bytes(b"- back up")

    def add_source(self, **kw: object) -> None:
        self.swarm.wait(self.node.add_source(str(self.folder), **kw))  # type: ignore[arg-type]

    def test_sources_are_validated_stored_and_listed(self) -> None:
        self.add_source(excludes=["*.tmp"])
        (source,) = self.node.sources()
        self.assertEqual((source.path, source.name), (str(self.folder), "Documents"))
        self.assertEqual(source.excludes, ("*.tmp",))
        for bad, expected in [
            ("relative/path", "not absolute"),
            (str(self.base / "missing"), "does not exist"),
            (str(self.folder / "letters"), "inside the source"),
            (str(self.member.node_dir), "inside the node directory"),
        ]:
            failure = self.swarm.wait_failure(self.node.add_source(bad))
            self.assertIsInstance(failure.value, errors.InvalidArgument)
            self.assertIn(expected, str(failure.value))
        failure = self.swarm.wait_failure(self.node.add_source(str(self.folder)))
        self.assertIn("a source already", str(failure.value))
        bad_pattern = self.node.add_source(str(self.base), excludes=["[oops"])
        self.assertIn("is not closed", str(self.swarm.wait_failure(bad_pattern).value))
        # Stored sealed in Metadata: a restart keeps the list.
        restarted = self.swarm.restart_node(self.member)
        self.assertEqual(restarted.node.sources(), [source])
        gone = self.swarm.wait(restarted.node.remove_source(name="Documents"))
        self.assertEqual(gone, source)
        self.assertEqual(restarted.node.sources(), [])
        missing = restarted.node.remove_source(name="Documents")
        self.assertIsInstance(self.swarm.wait_failure(missing).value, errors.NotFound)

    def test_backup_now_commits_then_keeps(self) -> None:
        self.add_source()
        events: list[Progress] = []
        outcome = self.swarm.wait(self.node.backup_now(events.append))
        self.assertEqual(outcome.error, "")
        assert outcome.result is not None
        self.assertTrue(outcome.result.committed)
        self.assertEqual(outcome.result.files, 2)
        self.assertEqual(
            sorted(self.node.iter_files()),
            ["Documents/letters/one.txt", "Documents/todo.md"],
        )
        self.assertEqual(events[0].phase, "scanning")
        self.assertEqual(events[-1].phase, "done")
        again = self.swarm.wait(self.node.backup_now(lambda _: None))
        assert again.result is not None
        self.assertFalse(again.result.committed)
        self.assertEqual(again.describe(), "no changes; revision 1 kept")
        status = self.node.status()
        self.assertEqual(status.source_count, 1)
        self.assertEqual(status.last_backup, again)
        self.assertGreater(status.revision_time, 0)

    def test_backup_without_sources_fails_clearly(self) -> None:
        outcome = self.swarm.wait(self.node.backup_now(lambda _: None))
        self.assertIn("sources add", outcome.error)
        self.assertEqual(self.node.status().last_backup, outcome)

    def test_schedule_runs_on_the_clock_and_reports(self) -> None:
        self.add_source()
        state = self.swarm.wait(self.node.set_schedule(HOUR))
        # Never backed up: due at once.
        self.assertEqual(state.next_run, self.swarm.clock.seconds())
        self.swarm.advance(1)
        first = self.node.status().last_backup
        assert first is not None and first.result is not None
        self.assertEqual(first.trigger, "schedule")
        self.assertTrue(first.result.committed)
        next_run = self.node.schedule().next_run
        self.assertEqual(next_run, first.finished_at + HOUR)
        (self.folder / "todo.md").write_bytes(b"- back up\n- more")
        self.swarm.advance(HOUR - 10, step=60)
        self.assertEqual(self.node.status().last_backup, first)
        self.swarm.advance(20)
        second = self.node.status().last_backup
        assert second is not None and second.result is not None
        self.assertTrue(second.result.committed)
        self.assertEqual(second.result.revision, 2)
        self.assertEqual(
            b"".join(self.node.open_file("Documents/todo.md")), b"- back up\n- more"
        )
        # Off: nothing more runs.
        self.swarm.wait(self.node.set_schedule(0))
        self.swarm.advance(3 * HOUR, step=600)
        self.assertEqual(self.node.status().last_backup, second)
        with self.assertRaises(errors.InvalidArgument):
            self.swarm.wait(self.node.set_schedule(30))

    def test_schedule_and_last_outcome_survive_a_restart(self) -> None:
        self.add_source()
        self.swarm.wait(self.node.set_schedule(HOUR))
        self.swarm.advance(1)
        last = self.node.status().last_backup
        self.swarm.stop_node(self.member)
        # The machine was off for three hours: the overdue run starts at once.
        self.swarm.advance(3 * HOUR, step=600)
        restarted = self.swarm.restart_node(self.member)
        self.assertEqual(restarted.node.schedule().every_seconds, HOUR)
        self.assertEqual(restarted.node.status().last_backup, last)
        self.swarm.advance(1)
        self.assertNotEqual(restarted.node.status().last_backup, last)
        latest = restarted.node.status().last_backup
        assert latest is not None and latest.result is not None
        self.assertEqual(latest.result.revision, 1)  # no change: kept
        self.assertFalse(latest.result.committed)

    def test_locking_stops_the_schedule(self) -> None:
        self.add_source()
        self.swarm.wait(self.node.set_schedule(HOUR))
        self.swarm.advance(1)
        scheduler = self.node.session.backups.scheduler
        self.assertTrue(self.timers_of(scheduler))
        self.swarm.stop_node(self.member)
        self.assertEqual(self.timers_of(scheduler), [])

    def timers_of(self, owner: object) -> list[object]:
        return [
            call
            for call in self.swarm.clock.getDelayedCalls()
            if getattr(call.func, "__self__", None) is owner
        ]
