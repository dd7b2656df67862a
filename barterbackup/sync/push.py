"""The owner side of sync: ask a replica to store a revision, report progress.

1. The owner calls ``SetContentRevision`` with its signed revision and
   remembers that this peer may download it (``OfferedContent``).
2. The replica plans the delta and calls ``Download`` back on the owner,
   on the same connection, for the sections it lacks (fetch.py, serve.py).
3. The replica streams progress and a final ``complete`` response.

``Pusher`` runs one push at a time per peer (a replica runs one sync per
owner at a time) and keeps the sections of every revision in flight out of
garbage collection. ``AutoSync`` keeps replicas current after commits and
reconnections.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.progress import Progress, ProgressReport
from barterbackup.revisions import VerifiedRevision
from barterbackup.sync.interfaces import (
    PeerConnectionLike,
    ReactorTime,
    authenticated_peer,
)
from barterbackup.sync.offers import OfferedContent

log = get_logger("barterbackup.sync")

# Automatic sync waits this long after a commit or a reconnect, so a burst
# of commits (a script adding files one by one) makes one push, not many.
# It is a deadline: later events never postpone a push already scheduled.
AUTO_SYNC_DELAY = 5.0


class PushFailed(Exception):
    """The replica ended SetContentRevision without confirming completion."""


@dataclass(frozen=True)
class PushResult:
    """What one completed push did."""

    peer: str
    revision: int
    bytes_total: int
    bytes_fetched: int
    seconds: float


def push_revision(
    conn: PeerConnectionLike,
    revision: VerifiedRevision,
    on_progress: Callable[[bbrpc_pb2.SetContentRevisionResponse], object],
    offers: OfferedContent | None = None,
) -> Deferred[bbrpc_pb2.SetContentRevisionResponse]:
    """Ask the peer behind ``conn`` to store ``revision``; relay progress.

    Fires with the final (complete) response; fails with the peer's error
    (e.g. quota exceeded) or PushFailed if the stream ends short. With
    ``offers``, the peer is first allowed to Download the revision.
    """
    if offers is not None:
        offers.offer(authenticated_peer(conn), revision)
    last: list[bbrpc_pb2.SetContentRevisionResponse] = []

    def on_item(response: bbrpc_pb2.SetContentRevisionResponse) -> None:
        last[:] = [response]
        on_progress(response)

    def ended(_: None) -> bbrpc_pb2.SetContentRevisionResponse:
        if not last or not last[0].complete or last[0].revision != revision.number:
            raise PushFailed("the peer ended the sync without storing the revision")
        return last[0]

    request = bbrpc_pb2.SetContentRevisionRequest(signed_root=revision.signed)
    # maybeDeferred: a revision too large for one frame fails the Deferred
    # (FrameTooLarge) instead of raising at the caller.
    d = defer.maybeDeferred(
        conn.call_stream, "set_content_revision_request", request, on_item
    )
    return d.addCallback(ended)


class Pusher:
    """Pushes our revisions to peers, one at a time per peer.

    ``pushed(peer_pubkey, revision_number)`` is told of every completed
    push (the node records which revision each peer holds).
    """

    def __init__(
        self,
        clock: ReactorTime,
        offers: OfferedContent,
        pushed: Callable[[bytes, int], object] = lambda peer, number: None,
    ) -> None:
        self._clock = clock
        self.offers = offers
        self._pushed = pushed
        # The end of the last push queued per peer; later ones wait for it.
        self._tails: dict[bytes, Deferred[None]] = {}
        # Revisions being pushed right now, by content id (with a count of
        # pushes): garbage collection must keep their sections.
        self._in_flight: dict[bytes, tuple[VerifiedRevision, int]] = {}

    def push(
        self,
        conn: PeerConnectionLike,
        revision: VerifiedRevision,
        report: ProgressReport,
    ) -> Deferred[PushResult]:
        """Push ``revision`` to one peer after any push already under way."""
        peer = authenticated_peer(conn)
        previous = self._tails.get(peer)
        if previous is None:
            result = self._push_now(conn, revision, report)
        else:
            waiting: Deferred[None] = Deferred()
            previous.addBoth(lambda _: waiting.callback(None))
            result = waiting.addCallback(
                lambda _: self._push_now(conn, revision, report)
            )
        tail: Deferred[None] = Deferred()
        self._tails[peer] = tail

        def settle(outcome: Any) -> Any:
            if self._tails.get(peer) is tail:
                del self._tails[peer]
            tail.callback(None)
            return outcome

        return result.addBoth(settle)

    def revisions_in_flight(self) -> list[VerifiedRevision]:
        """Every revision being pushed to a peer now: garbage collection
        keeps what they reference."""
        return [revision for revision, _ in self._in_flight.values()]

    def _push_now(
        self,
        conn: PeerConnectionLike,
        revision: VerifiedRevision,
        report: ProgressReport,
    ) -> Deferred[PushResult]:
        return Deferred.fromCoroutine(self._push(conn, revision, report))

    async def _push(
        self,
        conn: PeerConnectionLike,
        revision: VerifiedRevision,
        report: ProgressReport,
    ) -> PushResult:
        peer = authenticated_peer(conn)
        address = onion_address_from_pubkey(peer)
        started = self._clock.seconds()

        def on_progress(item: bbrpc_pb2.SetContentRevisionResponse) -> None:
            report(
                Progress(
                    phase="syncing",
                    peer=address,
                    bytes_done=item.bytes_done,
                    bytes_total=item.bytes_total,
                    revision=item.revision,
                    message=f"{item.bytes_fetched} bytes fetched",
                )
            )

        self._pin(revision)
        try:
            final = await push_revision(conn, revision, on_progress, self.offers)
        finally:
            self._unpin(revision)
        result = PushResult(
            peer=address,
            revision=revision.number,
            bytes_total=final.bytes_total,
            bytes_fetched=final.bytes_fetched,
            seconds=self._clock.seconds() - started,
        )
        self._pushed(peer, revision.number)
        report(
            Progress(
                phase="done",
                peer=address,
                bytes_done=final.bytes_done,
                bytes_total=final.bytes_total,
                revision=revision.number,
                message=(
                    f"{final.bytes_fetched} bytes transferred in {result.seconds:.1f} s"
                ),
            )
        )
        return result

    def _pin(self, revision: VerifiedRevision) -> None:
        _, count = self._in_flight.get(revision.content_id, (revision, 0))
        self._in_flight[revision.content_id] = (revision, count + 1)

    def _unpin(self, revision: VerifiedRevision) -> None:
        _, count = self._in_flight[revision.content_id]
        if count > 1:
            self._in_flight[revision.content_id] = (revision, count - 1)
        else:
            del self._in_flight[revision.content_id]


class AutoSync:
    """Soon after a commit or a reconnection, push the current revision to
    every connected peer that holds an older one.

    Only peers that already hold our content: a first push to a peer is the
    user's decision. ``connections()`` maps peer keys to authenticated
    connections, ``held_revision(peer)`` is the revision a peer is recorded
    to hold (0 for none).
    """

    def __init__(
        self,
        clock: ReactorTime,
        pusher: Pusher,
        current_revision: Callable[[], VerifiedRevision | None],
        connections: Callable[[], Mapping[bytes, PeerConnectionLike]],
        held_revision: Callable[[bytes], int],
        delay: float = AUTO_SYNC_DELAY,
    ) -> None:
        self._clock = clock
        self._pusher = pusher
        self._current_revision = current_revision
        self._connections = connections
        self._held_revision = held_revision
        self._delay = delay
        self._call: Any = None
        self._stopped = False

    def schedule(self) -> None:
        """Sync within ``delay`` seconds; an earlier deadline stands."""
        if self._stopped or (self._call is not None and self._call.active()):
            return
        self._call = self._clock.callLater(self._delay, self._run)

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _run(self) -> None:
        self._call = None
        current = self._current_revision()
        if current is None or self._stopped:
            return
        for peer, conn in list(self._connections().items()):
            if 0 < self._held_revision(peer) < current.number:
                address = onion_address_from_pubkey(peer)
                log.info(
                    "syncing revision {number} to {peer}",
                    number=current.number,
                    peer=address,
                )
                pushing = self._pusher.push(conn, current, lambda _: None)
                pushing.addErrback(self._failed, address)

    def _failed(self, failure: Failure, address: str) -> None:
        # The next commit or reconnect tries again.
        log.info(
            "automatic sync to {peer} failed: {why}",
            peer=address,
            why=failure.getErrorMessage(),
        )
