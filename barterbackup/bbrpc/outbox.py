"""The bytes of answers every connection of the process holds for peers
that do not read them, bounded in total.

Each connection bounds its own outbox (``PeerLimits.max_outbox_bytes``),
but 512 connections each just under that bound would hold ~1.5 GiB. The
ledger adds them up; past its limit the connection holding the most is
dropped, which is the one that stopped reading longest, not an honest peer
that reads what it asks (whose outbox stays empty).
"""

from __future__ import annotations

from typing import Protocol

# A handful of connections' worth (each holds at most ~3 MiB queued).
GLOBAL_OUTBOX_BYTES = 64 * 1024 * 1024


class Droppable(Protocol):
    def drop_for_outbox(self, total: int, limit: int) -> None: ...


class OutboxLedger:
    """Queued answer bytes per connection, and their sum."""

    def __init__(self, limit: int = GLOBAL_OUTBOX_BYTES) -> None:
        if limit <= 0:
            raise ValueError("the global outbox limit must be positive")
        self.limit = limit
        self.total = 0
        self._held: dict[Droppable, int] = {}

    def held_by(self, conn: Droppable) -> int:
        return self._held.get(conn, 0)

    def add(self, conn: Droppable, count: int) -> None:
        """``conn`` queued ``count`` more bytes; over the limit, the largest
        holder is dropped (it calls ``release`` as it closes)."""
        self._held[conn] = self._held.get(conn, 0) + count
        self.total += count
        while self.total > self.limit and self._held:
            largest = max(self._held, key=self._held.__getitem__)
            total = self.total
            self.release(largest)
            largest.drop_for_outbox(total, self.limit)

    def remove(self, conn: Droppable, count: int) -> None:
        """``conn`` sent ``count`` of its queued bytes."""
        held = self._held.get(conn, 0)
        count = min(count, held)
        self.total -= count
        if held - count:
            self._held[conn] = held - count
        else:
            self._held.pop(conn, None)

    def release(self, conn: Droppable) -> None:
        """``conn`` closed: nothing of it is held any more."""
        self.total -= self._held.pop(conn, 0)


# The process's ledger: every connection counts against it unless given
# its own (tests).
SHARED_LEDGER = OutboxLedger()
