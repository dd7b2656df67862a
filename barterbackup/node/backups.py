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

import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from barterbackup import errors
from barterbackup._proto import storedpb_pb2
from barterbackup.content.engine import CommitResult, ContentStore
from barterbackup.content.names import InvalidFileName, validate_name
from barterbackup.logs import get_logger
from barterbackup.progress import Progress, ProgressReport
from barterbackup.sources.config import (
    InvalidSource,
    Source,
    SourceList,
    new_source,
)
from barterbackup.sources.run import (
    RunCancelled,
    ScanCounts,
    add_paths,
    back_up,
    entry_for_file,
)
from barterbackup.sources.schedule import (
    BackupScheduler,
    InvalidSchedule,
    RunOutcome,
    RunProgress,
    RunResult,
    ScheduleState,
    check_interval,
)
from barterbackup.sources.walker import FileEntry, WalkReport, WalkRoot, walk_sources
from barterbackup.store.metadata import MetadataStore

log = get_logger("barterbackup.node.backups")

# AddPaths takes at most this many paths (a shell glob, not a file list).
MAX_ADD_PATHS = 10_000


@dataclass(frozen=True)
class PathToAdd:
    """One path of ``files add`` and the (device, inode) the CLI saw there."""

    path: str
    name: str
    device: int
    inode: int


@dataclass(frozen=True)
class AddPathsResult:
    """What ``files add`` by path did: the commit, and what it skipped."""

    commit: CommitResult
    files_read: int
    bytes_read: int
    warnings: tuple[Any, ...]
    warning_count: int


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

    # -- files add, read by the daemon --------------------------------------

    async def add_paths(
        self, paths: Sequence[PathToAdd], report: ProgressReport
    ) -> AddPathsResult:
        """Add files and folders the daemon reads itself (``files add``).

        Each path must be absolute, and the daemon must see there the file
        the CLI saw (same device and inode: the same machine and mount
        namespace) and be able to read it; otherwise PermissionDenied, and
        the CLI streams the bytes instead. One revision, or none when
        nothing changed; nothing is removed.
        """
        roots, files = self._check_paths(paths)
        update = await self._begin_update()
        try:
            call = self._env.call_from_thread
            content = self._content

            def relay(event: RunProgress) -> None:
                call(report, _progress(event))

            def lookup(name: str) -> Any:
                try:
                    return content.file_entry(name)
                except KeyError:
                    return None

            def work() -> tuple[ScanCounts, WalkReport, CommitResult]:
                walk_report = WalkReport()
                try:
                    counts = add_paths(
                        update,
                        roots,
                        files,
                        lookup,
                        walk_report,
                        progress=relay,
                        estimate=_measure(roots, files),
                    )
                    relay(RunProgress("committing", counts.files_seen))
                    committed = update.commit()
                except BaseException:
                    update.abort()
                    raise
                return counts, walk_report, committed

            counts, walk_report, committed = await self._env.blocking(work)
        finally:
            update.finish()
        if committed.changed:
            self._committed()
        return AddPathsResult(
            commit=committed,
            files_read=counts.files_read,
            bytes_read=counts.bytes_read,
            warnings=tuple(walk_report.skipped),
            warning_count=walk_report.skipped_count,
        )

    def _check_paths(
        self, paths: Sequence[PathToAdd]
    ) -> tuple[list[WalkRoot], list[FileEntry]]:
        if not paths:
            raise errors.InvalidArgument("name at least one path to add")
        if len(paths) > MAX_ADD_PATHS:
            raise errors.InvalidArgument(f"at most {MAX_ADD_PATHS} paths at once")
        roots: list[WalkRoot] = []
        files: list[FileEntry] = []
        names: set[str] = set()
        node_dir = os.path.realpath(self._node_dir)
        for wanted in paths:
            path = wanted.path
            if not path.startswith("/") or "\x00" in path:
                raise errors.InvalidArgument(f"{path!r} is not an absolute path")
            try:
                validate_name(wanted.name)
            except InvalidFileName as error:
                raise errors.InvalidArgument(str(error)) from None
            if wanted.name in names:
                raise errors.InvalidArgument(f"two paths are named {wanted.name!r}")
            names.add(wanted.name)
            try:
                info = os.lstat(path)
            except OSError as error:
                raise errors.PermissionDenied(
                    f"the daemon cannot see {path}: {error.strerror}"
                ) from None
            if (info.st_dev, info.st_ino) != (wanted.device, wanted.inode):
                raise errors.PermissionDenied(
                    f"the daemon sees another file at {path} (another machine "
                    "or mount namespace)"
                )
            real = os.path.realpath(path)
            if real == node_dir or real.startswith(node_dir + "/"):
                raise errors.InvalidArgument(f"{path} is inside the node directory")
            if stat.S_ISDIR(info.st_mode):
                if not os.access(path, os.R_OK | os.X_OK):
                    raise errors.PermissionDenied(f"the daemon cannot read {path}")
                if "/" in wanted.name:
                    # A folder's name is its files' first component.
                    raise errors.InvalidArgument(
                        f"a folder's name must not contain '/': {wanted.name!r}"
                    )
                roots.append(WalkRoot(path, wanted.name))
            elif stat.S_ISREG(info.st_mode):
                if not os.access(path, os.R_OK):
                    raise errors.PermissionDenied(f"the daemon cannot read {path}")
                try:
                    files.append(entry_for_file(path, wanted.name))
                except OSError as error:
                    raise errors.PermissionDenied(
                        f"the daemon cannot read {path}: {error.strerror}"
                    ) from None
            else:
                raise errors.InvalidArgument(
                    f"{path} is not a regular file or a folder"
                )
        return roots, files

    def _estimate(self) -> tuple[int, int]:
        """(files, bytes) the last good run saw: the totals for progress."""
        last = self.scheduler.state().last_outcome
        if last is None or last.result is None:
            return (0, 0)
        return (last.result.files, last.result.bytes)


def _measure(roots: list[WalkRoot], files: list[FileEntry]) -> tuple[int, int]:
    """(files, bytes) under the paths: one walk of stats first, so the
    progress of ``files add`` has totals (and an ETA)."""
    report = WalkReport()
    count = len(files)
    size = sum(entry.size for entry in files)

    for entry in walk_sources(roots, report):
        count += 1
        size += entry.size
    return count, size


def _progress(event: RunProgress) -> Progress:
    return Progress(
        phase=event.phase,
        bytes_done=event.bytes_done,
        bytes_total=event.bytes_total,
        message=event.message,
        files_done=event.files_done,
        files_total=event.files_total,
    )
