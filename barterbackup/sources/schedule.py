"""When backups run: the schedule, "backup now", one run at a time.

Rules, in the order they matter:

* The next scheduled run is a deadline: ``every`` seconds after the end of
  the last run (whatever started it). Only a finished run or a change of the
  schedule moves it; nothing else the node does (peers connecting, files
  added by hand, status calls) postpones it. With no run ever, or a deadline
  already past (the machine was off), the run starts at once.
* "Backup now" starts a run at once. A scheduled deadline that falls while
  any run is in progress does not start another: the run's end moves it.
* One run at a time. A "now" request made while a run is in progress starts
  one more run after it; every request made meanwhile shares that one run.
* Every run's outcome (when, what it found and stored, warnings, or the
  error) is kept for ``status`` and handed to ``on_outcome`` to persist; a
  failed run is reported and the schedule goes on.

The run itself is injected: a callable that takes a progress callback and
returns a Deferred firing with a ``RunResult`` (the lead's backup run). Time
comes from the injected clock (``IReactorTime``; ``task.Clock`` in tests),
whose ``seconds()`` is also the Unix time written in outcomes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from barterbackup._proto import storedpb_pb2
from barterbackup.errors import NodeError
from barterbackup.logs import get_logger
from barterbackup.sources.walker import SkippedEntry

log = get_logger("barterbackup.sources.schedule")

MIN_INTERVAL_SECONDS = 60
MAX_INTERVAL_SECONDS = 366 * 24 * 3600
# How many skipped entries an outcome keeps (and Metadata stores).
MAX_RECORDED_WARNINGS = 100

TRIGGER_SCHEDULE = "schedule"
TRIGGER_NOW = "now"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_INTERVAL = re.compile(r"(?:\d+[smhdw])+")
_PART = re.compile(r"(\d+)([smhdw])")


class Timer(Protocol):
    """What ``callLater`` returns (twisted's IDelayedCall), as used here."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """The reactor's IReactorTime as used here; ``task.Clock`` in tests.

    A Protocol rather than the zope interface: mypy has no zope plugin here
    to check that a reactor provides IReactorTime.
    """

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Any, *args: Any, **kw: Any
    ) -> Timer: ...


class InvalidSchedule(ValueError):
    """A schedule interval is malformed or out of range."""


def parse_interval(text: str) -> int:
    """``"30m"``, ``"1h"``, ``"1d"``, ``"1h30m"``, or ``"off"`` → seconds (0: off)."""
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned in ("off", "never", "0"):
        return 0
    if not _INTERVAL.fullmatch(cleaned):
        raise InvalidSchedule(
            f"not an interval: {text!r} (examples: 30m, 1h, 6h, 1d, 1h30m, off)"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned))
    return check_interval(seconds)


def check_interval(seconds: int) -> int:
    """``seconds`` if it is 0 (off) or within the allowed range, else raise."""
    if seconds == 0:
        return 0
    if seconds < MIN_INTERVAL_SECONDS:
        raise InvalidSchedule("backups can run at most once a minute")
    if seconds > MAX_INTERVAL_SECONDS:
        raise InvalidSchedule("the interval must be at most 366 days")
    return seconds


def format_interval(seconds: int) -> str:
    """3600 → ``"1h"``, 5400 → ``"1h30m"``, 0 → ``"off"``."""
    if seconds <= 0:
        return "off"
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


@dataclass(frozen=True)
class RunProgress:
    """How far a run has come (the fields of clirpc's Progress)."""

    phase: str
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    message: str = ""


@dataclass(frozen=True)
class RunResult:
    """What a finished backup run returns.

    ``committed`` is false when nothing had changed and ``revision`` was
    kept. ``warnings`` are the first skipped entries, ``warning_count`` all
    of them; ``unavailable_sources`` the names of sources not read at all.
    """

    revision: int
    committed: bool
    files: int = 0
    bytes: int = 0
    read_bytes: int = 0
    new_bytes: int = 0
    warnings: tuple[SkippedEntry, ...] = ()
    warning_count: int = 0
    unavailable_sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunOutcome:
    """One run as ``status`` shows it: its result, or the error."""

    trigger: str
    started_at: float
    finished_at: float
    result: RunResult | None = None
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.result is not None and not self.error

    def describe(self) -> str:
        """One line for the log and the run's report."""
        if not self.succeeded or self.result is None:
            return f"backup failed: {self.error}"
        result = self.result
        if result.committed:
            text = (
                f"revision {result.revision}: {result.files} files, "
                f"{result.bytes} bytes, {result.read_bytes} read, "
                f"{result.new_bytes} new"
            )
        else:
            text = f"no changes; revision {result.revision} kept"
        if result.warning_count:
            text += f"; {result.warning_count} skipped"
        if result.unavailable_sources:
            text += f"; unavailable: {', '.join(result.unavailable_sources)}"
        return text

    def to_record(self) -> storedpb_pb2.BackupRunRecord:
        record = storedpb_pb2.BackupRunRecord(
            started_at=int(self.started_at),
            finished_at=int(self.finished_at),
            trigger=self.trigger,
            error=self.error,
        )
        result = self.result
        if result is not None:
            record.revision = result.revision
            record.committed = result.committed
            record.files = result.files
            record.bytes = result.bytes
            record.read_bytes = result.read_bytes
            record.new_bytes = result.new_bytes
            record.warning_count = result.warning_count
            for warning in result.warnings[:MAX_RECORDED_WARNINGS]:
                record.warnings.add(path=warning.path, reason=warning.reason)
            record.unavailable_sources.extend(result.unavailable_sources)
        return record

    @classmethod
    def from_record(cls, record: storedpb_pb2.BackupRunRecord) -> RunOutcome:
        result = None
        if not record.error:
            result = RunResult(
                revision=record.revision,
                committed=record.committed,
                files=record.files,
                bytes=record.bytes,
                read_bytes=record.read_bytes,
                new_bytes=record.new_bytes,
                warnings=tuple(SkippedEntry(w.path, w.reason) for w in record.warnings),
                warning_count=record.warning_count,
                unavailable_sources=tuple(record.unavailable_sources),
            )
        return cls(
            record.trigger,
            float(record.started_at),
            float(record.finished_at),
            result,
            record.error,
        )


ProgressListener = Callable[[RunProgress], object]
BackupRun = Callable[[Callable[[RunProgress], None]], Deferred[RunResult]]
OutcomeListener = Callable[[RunOutcome], object]


@dataclass
class _Run:
    """A run in progress or waiting: who asked, and who listens."""

    trigger: str
    listeners: list[ProgressListener] = field(default_factory=list)
    waiters: list[Deferred[RunOutcome]] = field(default_factory=list)
    started_at: float = 0.0
    deferred: Deferred[RunResult] | None = None
    last_progress: RunProgress | None = None


@dataclass(frozen=True)
class ScheduleState:
    """What ``status`` shows of the schedule (times in Unix seconds)."""

    every_seconds: int
    next_run: float | None
    running: bool
    run_queued: bool
    progress: RunProgress | None
    last_outcome: RunOutcome | None


class BackupScheduler(Service):
    """Starts backup runs on the schedule and on demand, one at a time."""

    def __init__(
        self,
        clock: Clock,
        run: BackupRun,
        every_seconds: int = 0,
        last_outcome: RunOutcome | None = None,
        on_outcome: OutcomeListener | None = None,
    ) -> None:
        self._clock = clock
        self._run = run
        self._every = check_interval(every_seconds)
        self._last_outcome = last_outcome
        self._on_outcome = on_outcome
        self._deadline: float | None = None
        self._timer: Timer | None = None
        self._running: _Run | None = None
        self._queued: _Run | None = None
        self._stopped: Deferred[None] | None = None

    # The service.

    def startService(self) -> None:
        super().startService()
        self._reschedule()

    def stopService(self) -> Deferred[None]:
        """Cancel the timer and any run; fires once the run has settled."""
        super().stopService()
        self._cancel_timer()
        queued, self._queued = self._queued, None
        if queued is not None:
            now = self._clock.seconds()
            self._deliver(
                queued, RunOutcome(queued.trigger, now, now, error="the daemon stopped")
            )
        running = self._running
        if running is None or running.deferred is None:
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        self._stopped = stopped
        running.deferred.cancel()  # may settle (and fire stopped) right here
        return stopped

    # What the node calls.

    @property
    def every_seconds(self) -> int:
        return self._every

    def set_every(self, seconds: int) -> ScheduleState:
        """Change the interval (0: off); the deadline follows from the last run."""
        self._every = check_interval(seconds)
        if self.running:
            self._reschedule()
        return self.state()

    def backup_now(
        self, progress: ProgressListener | None = None
    ) -> Deferred[RunOutcome]:
        """Run at once, or once the run in progress ends; fires with the outcome.

        The Deferred fires with the outcome whether the run succeeded or
        not (``RunOutcome.error`` says); ``progress`` hears that run's events.
        """
        if not self.running:
            raise RuntimeError("the backup scheduler is not running")
        waiter: Deferred[RunOutcome] = Deferred()
        if self._running is None:
            pending = _Run(TRIGGER_NOW)
            self._attach(pending, waiter, progress)
            self._start(pending)
        else:
            if self._queued is None:
                self._queued = _Run(TRIGGER_NOW)
            self._attach(self._queued, waiter, progress)
            if progress is not None:
                self._tell(progress, RunProgress("waiting"))
        return waiter

    def state(self) -> ScheduleState:
        running = self._running
        return ScheduleState(
            every_seconds=self._every,
            next_run=None if running is not None else self._deadline,
            running=running is not None,
            run_queued=self._queued is not None,
            progress=running.last_progress if running is not None else None,
            last_outcome=self._last_outcome,
        )

    # Inside.

    def _attach(
        self,
        pending: _Run,
        waiter: Deferred[RunOutcome],
        progress: ProgressListener | None,
    ) -> None:
        pending.waiters.append(waiter)
        if progress is not None:
            pending.listeners.append(progress)

    def _reschedule(self) -> None:
        """Set the deadline from the last run's end, and the timer to it."""
        self._cancel_timer()
        if not self._every or not self.running:
            self._deadline = None
            return
        now = self._clock.seconds()
        last = self._last_outcome
        deadline = now if last is None else last.finished_at + self._every
        # Past (the machine was off): at once. Further than one interval
        # (the clock went back since that run): one interval from now.
        deadline = min(max(deadline, now), now + self._every)
        self._deadline = deadline
        if self._running is None:
            self._timer = self._clock.callLater(deadline - now, self._due)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _due(self) -> None:
        self._timer = None
        if self._running is None:
            self._start(_Run(TRIGGER_SCHEDULE))

    def _start(self, pending: _Run) -> None:
        self._cancel_timer()
        self._running = pending
        pending.started_at = self._clock.seconds()
        log.info("backup run started ({trigger})", trigger=pending.trigger)

        def progress(event: RunProgress) -> None:
            pending.last_progress = event
            for listener in list(pending.listeners):
                self._tell(listener, event)

        deferred = maybeDeferred(self._run, progress)
        pending.deferred = deferred
        deferred.addBoth(self._finished, pending)

    def _tell(self, listener: ProgressListener, event: RunProgress) -> None:
        try:
            listener(event)
        except Exception:
            log.failure("a backup progress listener failed")

    def _finished(self, result: RunResult | Failure, pending: _Run) -> None:
        now = self._clock.seconds()
        if isinstance(result, Failure):
            if result.check(CancelledError):
                error = "cancelled: the daemon stopped"
            elif result.check(NodeError):
                # Told to the user in so many words (no sources yet…): the
                # outcome says it; a traceback in the log would not help.
                error = result.getErrorMessage()
            else:
                error = result.getErrorMessage() or repr(result.value)
                log.failure("backup run failed", result)
            outcome = RunOutcome(pending.trigger, pending.started_at, now, error=error)
        elif not isinstance(result, RunResult):
            outcome = RunOutcome(
                pending.trigger,
                pending.started_at,
                now,
                error=f"the backup run returned {type(result).__name__}",
            )
        else:
            kept = result.warnings[:MAX_RECORDED_WARNINGS]
            outcome = RunOutcome(
                pending.trigger, pending.started_at, now, replace(result, warnings=kept)
            )
        log.info("backup run ended: {summary}", summary=outcome.describe())
        self._last_outcome = outcome
        self._running = None
        if self._on_outcome is not None:
            try:
                self._on_outcome(outcome)
            except Exception:
                log.failure("recording the backup outcome failed")
        self._deliver(pending, outcome)
        if self._stopped is not None:
            stopped, self._stopped = self._stopped, None
            stopped.callback(None)
            return
        queued, self._queued = self._queued, None
        if queued is not None:
            self._start(queued)
        else:
            self._reschedule()

    def _deliver(self, pending: _Run, outcome: RunOutcome) -> None:
        final = RunProgress(
            "failed" if outcome.error else "done", message=outcome.describe()
        )
        for listener in pending.listeners:
            self._tell(listener, final)
        for waiter in pending.waiters:
            waiter.callback(outcome)
