"""The backup schedule on a task.Clock: when runs start, coalescing, errors."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.sources.schedule import (
    MAX_RECORDED_WARNINGS,
    BackupScheduler,
    InvalidSchedule,
    RunOutcome,
    RunProgress,
    RunResult,
    format_interval,
    parse_interval,
)
from barterbackup.sources.walker import SkippedEntry

HOUR = 3600.0
START = 1_700_000_000.0  # the clock reads Unix time


class FakeRun:
    """The injected backup run: records each start; the test ends runs."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.starts: list[float] = []
        self.pending: list[Deferred[RunResult]] = []
        self.progress: list[Callable[[RunProgress], None]] = []
        self.revision = 0

    def __call__(self, progress: Callable[[RunProgress], None]) -> Deferred[RunResult]:
        self.starts.append(self.clock.seconds())
        self.progress.append(progress)
        deferred: Deferred[RunResult] = Deferred()
        self.pending.append(deferred)
        return deferred

    @property
    def in_progress(self) -> bool:
        return bool(self.pending) and not self.pending[-1].called

    def finish(self, committed: bool = True, **fields: int) -> None:
        if committed:
            self.revision += 1
        self.pending[-1].callback(
            RunResult(revision=self.revision, committed=committed, **fields)
        )

    def fail(self, message: str) -> None:
        self.pending[-1].errback(OSError(message))


class IntervalTests(SynchronousTestCase):
    def test_parse(self) -> None:
        for text, seconds in [
            ("30m", 1800),
            ("1h", 3600),
            ("1d", 86400),
            ("1h30m", 5400),
            (" 2H ", 7200),
            ("1w", 604800),
            ("90s", 90),
            ("off", 0),
            ("never", 0),
        ]:
            self.assertEqual(parse_interval(text), seconds, text)

    def test_refused(self) -> None:
        for text in ["", "1x", "59s", "30", "1m2", "-1h", "400d", "h", "1.5h"]:
            with self.assertRaises(InvalidSchedule, msg=text):
                parse_interval(text)

    def test_format(self) -> None:
        for seconds in [60, 90, 1800, 3600, 5400, 86400, 90061]:
            self.assertEqual(parse_interval(format_interval(seconds)), seconds)
        self.assertEqual(format_interval(0), "off")
        self.assertEqual(format_interval(5400), "1h30m")


class SchedulerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.run = FakeRun(self.clock)
        self.recorded: list[RunOutcome] = []

    def scheduler(
        self, every: float = HOUR, last: RunOutcome | None = None
    ) -> BackupScheduler:
        scheduler = BackupScheduler(
            self.clock,
            self.run,
            every_seconds=int(every),
            last_outcome=last,
            on_outcome=self.recorded.append,
        )
        scheduler.startService()
        self.addCleanup(scheduler.stopService)
        self.clock.advance(0)  # a run due at once starts on the next turn
        return scheduler

    def at(self, offset: float) -> None:
        """Advance the clock to START + offset."""
        self.clock.advance(START + offset - self.clock.seconds())


class ScheduleTests(SchedulerTestCase):
    def test_first_run_at_once_then_every_interval_after_the_end(self) -> None:
        scheduler = self.scheduler()
        self.assertEqual(self.run.starts, [START])
        self.at(10)
        self.run.finish(files=3)
        self.assertEqual(scheduler.state().next_run, START + 10 + HOUR)
        self.at(10 + HOUR - 1)
        self.assertEqual(len(self.run.starts), 1)
        self.at(10 + HOUR)
        self.assertEqual(self.run.starts, [START, START + 10 + HOUR])
        self.assertEqual(self.recorded[0].trigger, "schedule")
        self.assertEqual(self.recorded[0].result.files, 3)  # type: ignore[union-attr]

    def test_nothing_but_a_finished_run_moves_the_deadline(self) -> None:
        scheduler = self.scheduler()
        self.run.finish()
        deadline = scheduler.state().next_run
        for offset in (60, 600, 1800):
            self.at(offset)
            scheduler.state()
            self.assertEqual(scheduler.state().next_run, deadline)
        # A finished "backup now" run is a finished run: it moves it.
        scheduler.backup_now()
        self.at(1900)
        self.run.finish()
        self.assertEqual(scheduler.state().next_run, START + 1900 + HOUR)
        self.at(1900 + HOUR)
        self.assertEqual(len(self.run.starts), 3)

    def test_deadline_passing_during_a_run_starts_no_second_run(self) -> None:
        scheduler = self.scheduler()
        self.run.finish()
        self.at(HOUR)  # the scheduled run starts
        self.assertEqual(len(self.run.starts), 2)
        self.at(3 * HOUR)  # two deadlines' worth later, still running
        self.assertEqual(len(self.run.starts), 2)
        self.assertIsNone(scheduler.state().next_run)
        self.assertTrue(scheduler.state().running)
        self.run.finish()
        self.assertEqual(len(self.run.starts), 2)
        self.assertEqual(scheduler.state().next_run, START + 4 * HOUR)

    def test_off_never_runs_by_itself(self) -> None:
        scheduler = self.scheduler(every=0)
        self.at(100 * HOUR)
        self.assertEqual(self.run.starts, [])
        self.assertIsNone(scheduler.state().next_run)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restored_from_the_last_outcome(self) -> None:
        last = RunOutcome("schedule", START - 1900, START - 1800, RunResult(4, True))
        scheduler = self.scheduler(last=last)
        self.assertEqual(scheduler.state().next_run, START + 1800)
        self.at(1799)
        self.assertEqual(self.run.starts, [])
        self.at(1800)
        self.assertEqual(self.run.starts, [START + 1800])

    def test_overdue_runs_at_once(self) -> None:
        last = RunOutcome("schedule", START - 9 * HOUR, START - 8 * HOUR)
        self.scheduler(last=last)
        self.assertEqual(self.run.starts, [START])

    def test_a_clock_that_went_back_waits_one_interval(self) -> None:
        last = RunOutcome("now", START + 50 * HOUR, START + 50 * HOUR)
        scheduler = self.scheduler(last=last)
        self.assertEqual(scheduler.state().next_run, START + HOUR)

    def test_changing_the_schedule_moves_the_deadline(self) -> None:
        scheduler = self.scheduler(every=24 * HOUR)
        self.run.finish()
        self.assertEqual(scheduler.state().next_run, START + 24 * HOUR)
        self.at(5 * HOUR)
        scheduler.set_every(int(HOUR))  # last run 5 h ago: due already
        self.clock.advance(0)
        self.assertEqual(len(self.run.starts), 2)
        self.run.finish()
        scheduler.set_every(0)
        self.assertIsNone(scheduler.state().next_run)
        self.at(100 * HOUR)
        self.assertEqual(len(self.run.starts), 2)
        scheduler.set_every(int(2 * HOUR))
        self.clock.advance(0)
        self.assertEqual(len(self.run.starts), 3)
        with self.assertRaises(InvalidSchedule):
            scheduler.set_every(30)
        self.assertEqual(scheduler.every_seconds, 2 * HOUR)


class BackupNowTests(SchedulerTestCase):
    def test_runs_at_once_and_reports_its_outcome(self) -> None:
        scheduler = self.scheduler(every=0)
        events: list[RunProgress] = []
        outcome = scheduler.backup_now(events.append)
        self.assertEqual(self.run.starts, [START])
        self.run.progress[0](RunProgress("scanning", files_done=10))
        self.assertEqual(scheduler.state().progress, RunProgress("scanning", 10))
        self.at(30)
        self.run.finish(committed=False)
        result = self.successResultOf(outcome)
        self.assertEqual(result.trigger, "now")
        self.assertEqual((result.started_at, result.finished_at), (START, START + 30))
        self.assertEqual(result.describe(), "no changes; revision 0 kept")
        self.assertEqual([e.phase for e in events], ["scanning", "done"])
        self.assertEqual(events[-1].message, "no changes; revision 0 kept")
        self.assertEqual(scheduler.state().last_outcome, result)

    def test_requests_during_a_run_share_one_run_after_it(self) -> None:
        scheduler = self.scheduler()  # the first scheduled run is running
        waiting: list[RunProgress] = []
        first = scheduler.backup_now(waiting.append)
        second = scheduler.backup_now()
        self.assertEqual(waiting, [RunProgress("waiting")])
        self.assertTrue(scheduler.state().run_queued)
        self.assertNoResult(first)
        self.run.finish()  # the scheduled run ends; the queued one starts
        self.assertEqual(len(self.run.starts), 2)
        self.assertNoResult(first)
        self.run.finish()
        self.assertEqual(len(self.run.starts), 2)
        outcome = self.successResultOf(first)
        self.assertIs(outcome, self.successResultOf(second))
        self.assertEqual(outcome.result.revision, 2)  # type: ignore[union-attr]
        self.assertEqual([o.trigger for o in self.recorded], ["schedule", "now"])

    def test_now_just_before_the_deadline_coalesces_with_it(self) -> None:
        scheduler = self.scheduler()
        self.run.finish()
        self.at(HOUR - 5)
        scheduler.backup_now()
        self.at(HOUR + 60)  # the deadline passes while it runs
        self.run.finish()
        self.assertEqual(len(self.run.starts), 2)
        self.assertEqual(scheduler.state().next_run, START + 2 * HOUR + 60)


class ErrorTests(SchedulerTestCase):
    def test_a_failed_run_is_reported_and_the_schedule_goes_on(self) -> None:
        scheduler = self.scheduler()
        self.at(20)
        self.run.fail("disk on fire")
        self.flushLoggedErrors(OSError)
        outcome = self.recorded[0]
        self.assertFalse(outcome.succeeded)
        self.assertEqual(outcome.error, "disk on fire")
        self.assertEqual(outcome.describe(), "backup failed: disk on fire")
        self.assertEqual(scheduler.state().last_outcome, outcome)
        self.at(20 + HOUR)
        self.assertEqual(len(self.run.starts), 2)

    def test_a_run_that_raises_at_once(self) -> None:
        def broken(progress: Callable[[RunProgress], None]) -> Deferred[RunResult]:
            raise ValueError("no sources configured")

        scheduler = BackupScheduler(self.clock, broken, every_seconds=0)
        scheduler.startService()
        outcome = self.successResultOf(scheduler.backup_now())
        self.flushLoggedErrors(ValueError)
        self.assertEqual(outcome.error, "no sources configured")

    def test_a_failing_listener_or_recorder_does_not_break_runs(self) -> None:
        def bad(_event: object) -> None:
            raise RuntimeError("listener bug")

        scheduler = BackupScheduler(
            self.clock, lambda progress: fail(OSError("x")), on_outcome=bad
        )
        scheduler.startService()
        outcome = self.successResultOf(scheduler.backup_now(bad))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.flushLoggedErrors(OSError)
        self.assertEqual(outcome.error, "x")

    def test_not_started(self) -> None:
        scheduler = BackupScheduler(self.clock, self.run)
        with self.assertRaises(RuntimeError):
            scheduler.backup_now()


class StopTests(SchedulerTestCase):
    def test_stop_cancels_the_run_and_the_queue(self) -> None:
        scheduler = BackupScheduler(self.clock, self.run, every_seconds=int(HOUR))
        scheduler.startService()
        self.clock.advance(0)  # the scheduled run starts
        queued = scheduler.backup_now()
        stopped = scheduler.stopService()
        self.successResultOf(stopped)
        self.assertEqual(self.successResultOf(queued).error, "the daemon stopped")
        self.assertEqual(
            scheduler.state().last_outcome.error,  # type: ignore[union-attr]
            "cancelled: the daemon stopped",
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.run.starts), 1)

    def test_stop_when_idle(self) -> None:
        scheduler = BackupScheduler(self.clock, self.run, every_seconds=int(HOUR))
        scheduler.startService()
        self.clock.advance(0)
        self.run.finish()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(scheduler.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OutcomeRecordTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        result = RunResult(
            revision=12,
            committed=True,
            files=2000,
            bytes=10**9,
            read_bytes=10**6,
            new_bytes=5 * 10**5,
            warnings=(SkippedEntry("/home/u/fifo", "FIFO"),),
            warning_count=1,
            unavailable_sources=("usb",),
        )
        outcome = RunOutcome("schedule", START, START + 5, result)
        self.assertEqual(RunOutcome.from_record(outcome.to_record()), outcome)
        failed = RunOutcome("now", START, START + 1, error="boom")
        self.assertEqual(RunOutcome.from_record(failed.to_record()), failed)

    def test_warnings_are_capped(self) -> None:
        many = tuple(SkippedEntry(f"/x/{i}", "FIFO") for i in range(500))
        outcome = RunOutcome("now", START, START, RunResult(1, True, warnings=many))
        record = outcome.to_record()
        self.assertEqual(len(record.warnings), MAX_RECORDED_WARNINGS)

    def test_describe(self) -> None:
        outcome = RunOutcome(
            "now",
            START,
            START,
            RunResult(
                7,
                True,
                files=3,
                bytes=30,
                read_bytes=10,
                new_bytes=5,
                warning_count=2,
                unavailable_sources=("usb",),
            ),
        )
        self.assertEqual(
            outcome.describe(),
            "revision 7: 3 files, 30 bytes, 10 read, 5 new; 2 skipped; "
            "unavailable: usb",
        )
