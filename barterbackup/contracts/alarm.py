"""One timer slot per contract machine.

A machine waits for at most one deadline at a time (the outage limit while
suspect, the end of the grace period while broken or ending), so one slot
is enough. The deadline itself is in the state's data, which is persisted;
the slot is only its runtime shadow and is set again after a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class DelayedCall(Protocol):
    """The part of IDelayedCall an alarm uses."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """The part of IReactorTime contracts use (the reactor, task.Clock).

    A structural type, because mypy here has no zope.interface plugin to
    check interface providers.
    """

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object
    ) -> DelayedCall: ...


class Alarm:
    """Calls ``fire`` at time ``at``; setting it again replaces it."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._call: DelayedCall | None = None
        self._at: float | None = None

    @property
    def at(self) -> float | None:
        """When the alarm fires, or None when it is not set."""
        if self._call is not None and self._call.active():
            return self._at
        return None

    def set(self, at: float, fire: Callable[[], None]) -> None:
        """Fire at ``at`` (at once if it is past)."""
        self.cancel()
        delay = max(0.0, at - self._clock.seconds())
        self._at = at
        self._call = self._clock.callLater(delay, fire)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._at = None
