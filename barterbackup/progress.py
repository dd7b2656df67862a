"""How far a long operation has come: the one progress record every
subsystem reports (sync, contracts, recovery, backups) and the CLI shows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One progress event of a long operation."""

    # phase names the step, such as "syncing", "done" or "failed".
    phase: str
    # peer is the onion address the event is about, if any.
    peer: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    # message is a human-readable detail, such as an error.
    message: str = ""
    # revision is the content revision the event is about, if any.
    revision: int = 0
    # bytes_per_second and eta_seconds: the measured rate and the time
    # left, when the operation knows them (recovery), else 0.
    bytes_per_second: float = 0.0
    eta_seconds: float = 0.0
    # files_done and files_total count files, for operations that go file
    # by file (a backup run, a restore); files_total 0: not known.
    files_done: int = 0
    files_total: int = 0


# Long operations take one of these and call it with each event.
ProgressReport = Callable[[Progress], None]


def ignore_progress(progress: Progress) -> None:
    """A ProgressReport for callers that do not show progress."""
