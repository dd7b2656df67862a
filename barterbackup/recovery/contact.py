"""Replicas keep contacting the owners whose data they hold.

After a total loss the owner's node comes back at the same onion address
but knows nobody: it cannot dial its replicas, they must dial it. So a
node dials every owner it holds a replica of (and keeps under a
contract) that is not connected: right after the node starts, and after
a failed attempt or a lost connection on a bounded schedule — every
``FIRST_HOUR_DELAYS`` step (at most 3 minutes apart) during the first hour
of unreachability, then ``LATER_DELAYS`` (up to an hour apart), with
±20 % jitter. Once connected, the owner asks what we hold
(``GetContentRevision``) if it needs it. Nobody else is ever dialled by
this: not strangers, not peers without a replica here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.sync.interfaces import ReactorTime

log = get_logger("barterbackup.recovery")

# Seconds between attempts while an owner has been unreachable for under
# an hour (the last step repeats), then afterwards.
FIRST_HOUR_DELAYS = (30.0, 60.0, 120.0, 180.0)
LATER_DELAYS = (900.0, 1800.0, 3600.0)
FIRST_HOUR = 3600.0
JITTER = 0.2


class Dialer(Protocol):
    """What contacting needs of the connection pool."""

    def dial(self, pubkey: bytes, hint: str = "") -> Deferred[Any]: ...

    def is_connected(self, pubkey: bytes) -> bool: ...

    def when_connected(self, listener: Callable[[Any], object]) -> None: ...

    def when_lost(self, listener: Callable[[Any], object]) -> None: ...


def next_delay(unreachable_for: float, attempts: int) -> float:
    """Seconds to the next attempt, before jitter."""
    if unreachable_for < FIRST_HOUR:
        return FIRST_HOUR_DELAYS[min(attempts, len(FIRST_HOUR_DELAYS) - 1)]
    later = max(0, attempts - len(FIRST_HOUR_DELAYS))
    return LATER_DELAYS[min(later, len(LATER_DELAYS) - 1)]


@dataclass
class _Owner:
    since: float
    attempts: int = 0
    call: Any = None


class OwnerContacts:
    """The schedule of dialling owners whose replicas we hold.

    ``owners()`` lists the owners to keep contacting (replicas held here
    under a contract); it is asked again at every attempt, so an owner
    whose contract ended is dropped.
    """

    def __init__(
        self,
        clock: ReactorTime,
        rng: random.Random,
        owners: Callable[[], list[bytes]],
        dialer: Dialer,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._owners = owners
        self._dialer = dialer
        self._waiting: dict[bytes, _Owner] = {}
        self._started = False
        self.attempts = 0

    def start(self) -> None:
        """Try every owner now, and listen to the pool."""
        if self._started:
            return
        self._started = True
        self._dialer.when_connected(self._connected)
        self._dialer.when_lost(self._lost)
        for owner in self._owners():
            self._schedule(owner, 0.0)

    def stop(self) -> None:
        self._started = False
        for state in self._waiting.values():
            if state.call is not None and state.call.active():
                state.call.cancel()
        self._waiting.clear()

    def waiting(self) -> list[bytes]:
        """Owners not reached yet (for status and tests)."""
        return list(self._waiting)

    def _schedule(self, owner: bytes, delay: float | None = None) -> None:
        if not self._started or self._dialer.is_connected(owner):
            return
        state = self._waiting.get(owner)
        if state is None:
            state = self._waiting[owner] = _Owner(since=self._clock.seconds())
        if state.call is not None and state.call.active():
            return
        if delay is None:
            unreachable = self._clock.seconds() - state.since
            delay = next_delay(unreachable, state.attempts)
            delay *= 1 + self._rng.uniform(-JITTER, JITTER)
        state.call = self._clock.callLater(delay, self._attempt, owner)

    def _attempt(self, owner: bytes) -> None:
        state = self._waiting.get(owner)
        if state is None or not self._started:
            return
        state.call = None
        if owner not in self._owners():
            del self._waiting[owner]
            return
        if self._dialer.is_connected(owner):
            del self._waiting[owner]
            return
        state.attempts += 1
        self.attempts += 1

        def failed(failure: Any) -> None:
            log.debug(
                "owner {peer} not reached: {why}",
                peer=onion_address_from_pubkey(owner),
                why=failure.getErrorMessage(),
            )
            self._schedule(owner)

        self._dialer.dial(owner).addErrback(failed)

    def _connected(self, conn: Any) -> None:
        key = conn.peer_pubkey
        if key is None:
            return
        state = self._waiting.pop(bytes(key), None)
        if state is not None and state.call is not None and state.call.active():
            state.call.cancel()

    def _lost(self, conn: Any) -> None:
        key = conn.peer_pubkey
        if key is not None and self._started and bytes(key) in self._owners():
            self._schedule(bytes(key))
