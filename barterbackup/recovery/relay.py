"""Progress from a worker thread to a reactor-side ``report``.

Restores and checks run in one worker thread (they read gigabytes); the
node's ``report`` callables belong to the reactor thread. The worker posts
snapshots as often as it likes; a timer on the reactor's clock forwards the
newest at most every ``interval`` seconds, plus the last event of every
phase that ended in between, so no phase goes unseen.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

from twisted.internet.task import LoopingCall

from barterbackup.progress import Progress, ProgressReport

T = TypeVar("T")

FORWARD_SECONDS = 0.5
# Ended phases waiting to be forwarded at most (a run has a handful).
MAX_WAITING_PHASES = 16


class ProgressRelay:
    """Posted Progress (any thread) → ``report`` (the clock's thread)."""

    def __init__(
        self, clock: Any, report: ProgressReport, interval: float = FORWARD_SECONDS
    ) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._latest: Progress | None = None
        self._ended: list[Progress] = []
        self._loop = LoopingCall(self._forward)
        self._loop.clock = clock
        self._loop.start(interval, now=False)

    def post(self, progress: Progress) -> None:
        """Note the newest progress (any thread; never blocks for long)."""
        with self._lock:
            latest = self._latest
            if latest is not None and latest.phase != progress.phase:
                if len(self._ended) >= MAX_WAITING_PHASES:
                    del self._ended[0]
                self._ended.append(latest)
            self._latest = progress

    def _forward(self) -> None:
        with self._lock:
            waiting = [*self._ended, self._latest] if self._latest else self._ended
            self._ended, self._latest = [], None
        for progress in waiting:
            self._report(progress)

    def close(self, result: T) -> T:
        """Stop the timer and forward what waits; passes ``result`` on (for
        ``addBoth``)."""
        if self._loop.running:
            self._loop.stop()
        self._forward()
        return result
