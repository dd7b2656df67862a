"""The peer table: what the node remembers of each peer, kept in Metadata.

Only peers the user connected to, or that a contract binds us to, have a
record (issue 13, finding 6): a stranger that merely authenticates leaves
nothing behind (``seen`` updates existing records only), so it can neither
grow the table nor make us redial it after a restart.

The table lives in memory (read on the reactor thread without disk I/O) and
is written back to the sealed Metadata off the reactor thread. Bursts of
changes (a login, an RTT sample, a completed push) are coalesced: a change
schedules one write within ``WRITE_DELAY`` seconds, and every change made
meanwhile goes out with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from barterbackup._proto import storedpb_pb2
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.store.metadata import MetadataStore
from barterbackup.sync.interfaces import Blocking, ReactorTime, run_inline

log = get_logger("barterbackup.peers")

# Changes wait at most this long before they are written.
WRITE_DELAY = 1.0


class PeerRecords:
    """The peer table of one unlocked node (reactor thread only)."""

    def __init__(
        self,
        metadata: MetadataStore,
        clock: ReactorTime,
        blocking: Blocking[Any] = run_inline,
        write_delay: float = WRITE_DELAY,
    ) -> None:
        self._metadata = metadata
        self._clock = clock
        self._blocking = blocking
        self._write_delay = write_delay
        self._records: dict[bytes, storedpb_pb2.Peer] = {}
        self._write_call: Any = None
        self._writing: Deferred[None] | None = None
        self._dirty = False

    def load(self) -> None:
        """Read the table from Metadata (blocking: call from a worker)."""
        for record in self._metadata.get().peers:
            self._records[bytes(record.onion_pubkey)] = record

    # -- reading ----------------------------------------------------------

    def get(self, pubkey: bytes) -> storedpb_pb2.Peer | None:
        return self._records.get(pubkey)

    def __contains__(self, pubkey: bytes) -> bool:
        return pubkey in self._records

    def __iter__(self) -> Iterator[storedpb_pb2.Peer]:
        return iter(list(self._records.values()))

    def endpoint(self, pubkey: bytes) -> str:
        record = self._records.get(pubkey)
        return str(record.endpoint) if record is not None else ""

    def held_revision(self, pubkey: bytes) -> int:
        record = self._records.get(pubkey)
        return int(record.held_revision) if record is not None else 0

    def aead_key(self, pubkey: bytes) -> bytes | None:
        """The peer's 32-byte chat key, or None when none is set."""
        record = self._records.get(pubkey)
        if record is None or not record.aead_key:
            return None
        return bytes(record.aead_key)

    def shareable(self) -> list[str]:
        """Onion addresses of the peers that allowed being shared."""
        return [
            onion_address_from_pubkey(pubkey)
            for pubkey, record in self._records.items()
            if record.share_in_exchange
        ]

    # -- changing -----------------------------------------------------------

    def remember(
        self,
        pubkey: bytes,
        now: int,
        *,
        seen: bool = False,
        endpoint: str | None = None,
        share: bool | None = None,
        rtt_ms: int | None = None,
        held_revision: int | None = None,
        known_by_user: bool = False,
    ) -> storedpb_pb2.Peer:
        """Create or update a peer's record; the write follows shortly.

        ``known_by_user`` marks the peer as one our user chose (connected
        to, or approved a contract with); it is never cleared here.
        """
        record = self._records.get(pubkey)
        if record is None:
            record = storedpb_pb2.Peer(onion_pubkey=pubkey, first_seen=now)
            self._records[pubkey] = record
        if seen:
            record.last_seen = now
        if endpoint is not None:
            record.endpoint = endpoint
        if share is not None:
            record.share_in_exchange = share
        if rtt_ms is not None:
            record.rtt_ms = rtt_ms
        if held_revision is not None:
            record.held_revision = held_revision
        if known_by_user:
            record.known_by_user = True
        self._schedule_write()
        return record

    def seen(self, pubkey: bytes, now: int, *, rtt_ms: int | None = None) -> None:
        """A known peer was heard from; a peer without a record stays so."""
        record = self._records.get(pubkey)
        if record is None:
            return
        record.last_seen = now
        if rtt_ms is not None:
            record.rtt_ms = rtt_ms
        self._schedule_write()

    def update(
        self,
        pubkey: bytes,
        now: int,
        change: Callable[[storedpb_pb2.Peer], storedpb_pb2.Peer],
    ) -> storedpb_pb2.Peer:
        """Replace a peer's record (created if missing) with ``change(copy)``.

        For the score functions of ``contracts.scores``, which return
        updated copies.
        """
        current = self._records.get(pubkey)
        if current is None:
            current = storedpb_pb2.Peer(onion_pubkey=pubkey, first_seen=now)
        updated = change(self._copy(current))
        if bytes(updated.onion_pubkey) != pubkey:
            raise ValueError("a peer record cannot change its key")
        self._records[pubkey] = updated
        self._schedule_write()
        return updated

    def set_aead_key(
        self, pubkey: bytes, key: bytes | None, now: int
    ) -> storedpb_pb2.Peer:
        """Set the peer's chat key (None clears it); the write follows shortly.

        A peer never seen gets a record: the user named it, which is what
        ConnectPeer does too. The key is never logged; ``flush`` makes the
        change durable.
        """
        if key is not None and len(key) != 32:
            raise ValueError(f"a chat key is 32 bytes, not {len(key)}")
        record = self._records.get(pubkey)
        if record is None:
            record = storedpb_pb2.Peer(onion_pubkey=pubkey, first_seen=now)
            self._records[pubkey] = record
        if key is None:
            record.ClearField("aead_key")
        else:
            record.aead_key = bytes(key)
        self._schedule_write()
        return record

    def flush(self) -> Deferred[None]:
        """Write pending changes now; fires once they are on disk."""
        if self._write_call is not None and self._write_call.active():
            self._write_call.cancel()
        self._write_call = None
        return self._write()

    # -- writing ------------------------------------------------------------

    def _schedule_write(self) -> None:
        self._dirty = True
        if self._write_call is None or not self._write_call.active():
            self._write_call = self._clock.callLater(self._write_delay, self._write)

    def _write(self) -> Deferred[None]:
        self._write_call = None
        if self._writing is not None:
            # One write at a time; this one's changes go out right after.
            writing = self._writing
            follow: Deferred[None] = Deferred()
            writing.addBoth(lambda _: self._write().chainDeferred(follow))
            return follow
        if not self._dirty:
            return succeed(None)
        self._dirty = False
        snapshot = [self._copy(r) for r in self._records.values()]

        def write() -> None:
            def replace(metadata: storedpb_pb2.Metadata) -> None:
                del metadata.peers[:]
                metadata.peers.extend(snapshot)

            self._metadata.update(replace)

        writing = self._blocking(write)
        self._writing = writing

        def done(result: object) -> None:
            self._writing = None
            if isinstance(result, Failure):
                # Keep the changes for the next write.
                self._dirty = True
                log.failure("writing the peer table failed", result)

        writing.addBoth(done)
        return writing

    @staticmethod
    def _copy(record: storedpb_pb2.Peer) -> storedpb_pb2.Peer:
        copy = storedpb_pb2.Peer()
        copy.CopyFrom(record)
        return copy
