"""Events from the reactor thread to one gRPC stream's worker thread,
bounded whatever a peer makes the reactor report.

A slow CLI reader, or a peer that makes an operation report progress very
often, must not grow these without bound: progress events are snapshots,
so a newer one replaces a waiting one of the same kind.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.python.failure import Failure

from barterbackup.node.results import ChatUpdate, MessageIn, TransferProgress
from barterbackup.progress import Progress

# Phases that end a peer's part of an operation: never replaced.
FINAL_PHASES = frozenset({"done", "failed"})
# Progress events waiting at most (distinct peers and phases, in practice).
MAX_WAITING_PROGRESS = 1024


@dataclass(frozen=True)
class Finished:
    """A long operation ended well, with this value."""

    value: Any


class ProgressQueue:
    """Progress of one long operation, then its end (or its failure).

    A waiting event is replaced by a newer one for the same peer and phase,
    so the queue holds one event per (peer, phase) at most; beyond
    ``MAX_WAITING_PROGRESS`` the oldest waiting non-final event is dropped.
    """

    def __init__(self, limit: int = MAX_WAITING_PROGRESS) -> None:
        self.limit = limit
        self._items: deque[Progress] = deque()
        self._ended: Failure | Finished | None = None
        self._ready = threading.Condition()

    def put(self, progress: Progress) -> None:
        """Queue ``progress`` (the reactor thread; never blocks)."""
        with self._ready:
            if progress.phase not in FINAL_PHASES:
                for index, waiting in enumerate(self._items):
                    if (waiting.peer, waiting.phase) == (progress.peer, progress.phase):
                        self._items[index] = progress
                        return
            if len(self._items) >= self.limit:
                for index, waiting in enumerate(self._items):
                    if waiting.phase not in FINAL_PHASES:
                        del self._items[index]
                        break
            self._items.append(progress)
            self._ready.notify()

    def end(self, result: object) -> None:
        """The operation ended: with a Failure, or with its value."""
        with self._ready:
            self._ended = result if isinstance(result, Failure) else Finished(result)
            self._ready.notify()

    def get(self, timeout: float) -> Progress | Failure | Finished | None:
        """The next event, then how the operation ended (its Failure or
        Finished); None after ``timeout`` seconds with nothing new."""
        with self._ready:
            if not self._items and self._ended is None:
                self._ready.wait(timeout)
            if self._items:
                return self._items.popleft()
            return self._ended

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)


OVERFLOWED = "overflowed"


class ChatEventQueue:
    """Chat updates from the reactor thread to one gRPC stream, bounded.

    A progress update replaces a progress update of the same fetch that is
    still waiting, so a slow reader costs no memory per MiB transferred. If
    ``limit`` updates wait anyway the client has stopped reading: the queue
    empties, ``on_overflow`` gets the messages it held (for the node to keep
    for the next attachment) and ``get`` answers OVERFLOWED from then on.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.on_overflow: Callable[[list[MessageIn]], object] = lambda unread: None
        self._items: deque[ChatUpdate] = deque()
        self._ready = threading.Condition()
        self._overflowed = False

    def put(self, update: ChatUpdate) -> None:
        """Queue ``update`` (the reactor thread; never blocks)."""
        unread: list[MessageIn] = []
        with self._ready:
            if self._overflowed:
                return
            if isinstance(update, TransferProgress) and self._replaced(update):
                return
            if len(self._items) < self.limit:
                self._items.append(update)
                self._ready.notify()
                return
            self._overflowed = True
            unread = [i for i in self._items if isinstance(i, MessageIn)]
            self._items.clear()
            self._ready.notify()
        if isinstance(update, MessageIn):
            unread.append(update)
        self.on_overflow(unread)

    def _replaced(self, update: TransferProgress) -> bool:
        for index, waiting in enumerate(self._items):
            if (
                isinstance(waiting, TransferProgress)
                and waiting.offer_id == update.offer_id
                and waiting.phase == update.phase
            ):
                self._items[index] = update
                return True
        return False

    def get(self, timeout: float) -> ChatUpdate | str | None:
        """The next update, OVERFLOWED, or None after ``timeout`` seconds."""
        with self._ready:
            if not self._items and not self._overflowed:
                self._ready.wait(timeout)
            if self._overflowed:
                return OVERFLOWED
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)
