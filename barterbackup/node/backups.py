"""The node's backups: source folders, the schedule, and the runs.

``Backups`` is a child service of the unlocked session: it starts at
unlock and stops at lock or daemon stop, with the scheduler
(``sources.schedule``) inside it. A run (``sources.run.back_up``) takes the
node's update lock like a SetFile stream, walks and reads on a worker
thread of the daemon (no byte crosses gRPC or the reactor), commits one
revision (none when nothing changed) and tells the node, which pushes the
revision to the contracts and collects garbage.

Stopping sets the run's cancel flag and waits for its thread to leave: the
update is aborted and the last revision stays as it was. The source list,
the schedule and the last outcome live in the sealed Metadata.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from barterbackup import errors
from barterbackup._proto import storedpb_pb2
from barterbackup.content.engine import CommitResult, ContentStore
from barterbackup.logs import get_logger
from barterbackup.progress import Progress, ProgressReport
from barterbackup.sources.config import (
    InvalidSource,
    Source,
    SourceList,
    new_source,
)
from barterbackup.sources.run import RunCancelled, ScanCounts, back_up
from barterbackup.sources.schedule import (
    BackupScheduler,
    InvalidSchedule,
    RunOutcome,
    RunProgress,
    RunResult,
    ScheduleState,
    check_interval,
)
from barterbackup.sources.walker import WalkReport
from barterbackup.store.metadata import MetadataStore

log = get_logger("barterbackup.node.backups")


class Backups(MultiService):
    """Source folders, the schedule and the backup runs of one session."""

    def __init__(
        self,
        env: Any,
        node_dir: Path,
        metadata: MetadataStore,
        content: ContentStore,
        begin_update: Callable[[], Deferred[Any]],
        committed: Callable[[], None],
    ) -> None:
        super().__init__()
        self._env = env
        self._node_dir = node_dir
        self._metadata = metadata
        self._content = content
        self._begin_update = begin_update
        self._committed = committed
        stored = metadata.get()
        try:
            self._sources = SourceList.load(stored)
        except InvalidSource as error:
            # Never lose the user's data over a damaged list: say so, run
            # nothing until the user fixes it.
            log.error("the stored source list is invalid: {error}", error=str(error))
            self._sources = SourceList()
            self.load_error = str(error)
        else:
            self.load_error = ""
        last = None
        if stored.HasField("last_backup"):
            last = RunOutcome.from_record(stored.last_backup)
        every = stored.backup_schedule.every_seconds
        try:
            every = check_interval(every)
        except InvalidSchedule:
            every = 0
        self.scheduler = BackupScheduler(
            env.clock, self._run, every, last, self._record_outcome
        )
        self.scheduler.setServiceParent(self)
        self._thread_done: Deferred[None] | None = None

    # -- the service -------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await super().stopService()  # the scheduler cancels a running run
        if self._thread_done is not None:
            await self._thread_done

    # -- sources -----------------------------------------------------------

    @property
    def sources(self) -> SourceList:
        return self._sources

    async def add_source(
        self, path: str, name: str, excludes: list[str], replace: bool
    ) -> Source:
        try:
            source = new_source(path, name, excludes, node_dir=str(self._node_dir))
            changed = self._sources.added(source, replace=replace)
        except InvalidSource as error:
            raise errors.InvalidArgument(str(error)) from None
        await self._store(changed)
        return source

    async def remove_source(self, path: str, name: str) -> Source:
        try:
            changed, gone = self._sources.removed(path, name)
        except InvalidSource as error:
            raise errors.NotFound(str(error)) from None
        await self._store(changed)
        return gone

    async def _store(self, sources: SourceList) -> None:
        await self._env.blocking(lambda: self._metadata.update(sources.store))
        self._sources = sources
        self.load_error = ""

    # -- the schedule ------------------------------------------------------

    async def set_schedule(self, every_seconds: int) -> ScheduleState:
        try:
            every = check_interval(every_seconds)
        except InvalidSchedule as error:
            raise errors.InvalidArgument(str(error)) from None

        def store(metadata: storedpb_pb2.Metadata) -> None:
            metadata.backup_schedule.every_seconds = every

        await self._env.blocking(lambda: self._metadata.update(store))
        return self.scheduler.set_every(every)

    def state(self) -> ScheduleState:
        return self.scheduler.state()

    def backup_now(self, report: ProgressReport) -> Deferred[RunOutcome]:
        def relay(event: RunProgress) -> None:
            report(_progress(event))

        return self.scheduler.backup_now(relay)

    def _record_outcome(self, outcome: RunOutcome) -> None:
        def store(metadata: storedpb_pb2.Metadata) -> None:
            metadata.last_backup.CopyFrom(outcome.to_record())

        def failed(failure: Failure) -> None:
            log.failure("recording the backup outcome failed", failure)

        self._env.blocking(lambda: self._metadata.update(store)).addErrback(failed)

    # -- one run -----------------------------------------------------------

    def _run(self, progress: Callable[[RunProgress], None]) -> Deferred[RunResult]:
        """The scheduler's run: a Deferred whose cancel stops the thread."""
        cancelled = threading.Event()
        result: Deferred[RunResult] = Deferred(lambda _: cancelled.set())
        work = Deferred.fromCoroutine(self._run_backup(progress, cancelled))
        settled: Deferred[None] = Deferred()
        self._thread_done = settled

        def done(outcome: RunResult | Failure) -> None:
            if self._thread_done is settled:
                self._thread_done = None
            settled.callback(None)
            if result.called:
                return  # cancelled: the scheduler has its outcome already
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        work.addBoth(done)
        return result

    async def _run_backup(
        self, progress: Callable[[RunProgress], None], cancelled: threading.Event
    ) -> RunResult:
        sources = self._sources
        if self.load_error:
            raise errors.FailedPrecondition(
                f"the stored source list is invalid: {self.load_error}"
            )
        if not len(sources):
            raise errors.FailedPrecondition(
                "no source folders: add one with `barterbackup sources add PATH`"
            )
        update = await self._begin_update()
        try:
            if cancelled.is_set():
                raise RunCancelled("the backup run was stopped")
            estimate = self._estimate()
            call = self._env.call_from_thread

            def relay(event: RunProgress) -> None:
                call(progress, event)

            def work() -> tuple[ScanCounts, WalkReport, CommitResult]:
                report = WalkReport()
                try:
                    counts = back_up(
                        update,
                        sources.walk_roots(),
                        self._content.records(),
                        report,
                        skip_directories=[str(self._node_dir)],
                        progress=relay,
                        estimate=estimate,
                        cancelled=cancelled,
                    )
                    relay(RunProgress("committing", counts.files_seen))
                    committed = update.commit()
                except BaseException:
                    update.abort()
                    raise
                return counts, report, committed

            counts, report, committed = await self._env.blocking(work)
        finally:
            update.finish()
        if committed.changed:
            self._committed()
        revision = committed.revision
        return RunResult(
            revision=revision.number,
            committed=committed.changed,
            files=self._content.file_count,
            bytes=revision.content_length,
            read_bytes=counts.bytes_read,
            new_bytes=committed.new_section_bytes,
            warnings=tuple(report.skipped),
            warning_count=report.skipped_count,
            unavailable_sources=tuple(report.unavailable_sources),
        )

    def _estimate(self) -> tuple[int, int]:
        """(files, bytes) the last good run saw: the totals for progress."""
        last = self.scheduler.state().last_outcome
        if last is None or last.result is None:
            return (0, 0)
        return (last.result.files, last.result.bytes)


def _progress(event: RunProgress) -> Progress:
    return Progress(
        phase=event.phase,
        bytes_done=event.bytes_done,
        bytes_total=event.bytes_total,
        message=event.message,
        files_done=event.files_done,
        files_total=event.files_total,
    )
