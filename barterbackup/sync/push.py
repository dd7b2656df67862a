"""The owner side of sync: ask a replica to store a revision, report progress.

1. The owner calls ``SetContentRevision`` with its signed revision and
   lets this peer download it while the call lasts (``OfferedContent``).
2. The replica plans the delta and calls ``Download`` back on the owner,
   on the same connection, for the sections it lacks (fetch.py, serve.py).
3. The replica streams progress and a final ``complete`` response; the
   offer is withdrawn however the call ends.

``Pusher`` runs one push at a time per peer (a replica runs one sync per
owner at a time), gives up on a push whose replica stops reporting, and
keeps the sections of every revision in flight out of garbage collection.
Who is pushed to, and when, is the contract book's decision: only peers
under a contract in force (``contracts``).
"""

from __future__ import annotations

from collections.abc import Callable
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

# A replica reports progress at least every PROGRESS_EVERY_SECONDS (0.5 s)
# while it fetches; one silent this long is stuck or stalling on purpose
# (issue 13, finding 11), and the push is cancelled.
PUSH_STALL_SECONDS = 120.0


class PushFailed(Exception):
    """The replica ended SetContentRevision without confirming completion."""


class PushStalled(PushFailed):
    """The replica reported nothing for PUSH_STALL_SECONDS."""


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
    clock: ReactorTime | None = None,
    stall_seconds: float = PUSH_STALL_SECONDS,
) -> Deferred[bbrpc_pb2.SetContentRevisionResponse]:
    """Ask the peer behind ``conn`` to store ``revision``; relay progress.

    Fires with the final (complete) response; fails with the peer's error
    (e.g. quota exceeded) or PushFailed if the stream ends short. With
    ``offers``, the peer may Download the revision while the call lasts.
    With ``clock``, a replica silent for ``stall_seconds`` fails the push
    with PushStalled.
    """
    peer = authenticated_peer(conn)
    if offers is not None:
        offers.offer(peer, revision)
    last: list[bbrpc_pb2.SetContentRevisionResponse] = []
    watchdog: list[Any] = []

    def rearm() -> None:
        if clock is None:
            return
        if watchdog and watchdog[0].active():
            watchdog[0].reset(stall_seconds)
        else:
            watchdog[:] = [clock.callLater(stall_seconds, stalled)]

    def stalled() -> None:
        stuck.append(True)
        d.cancel()

    stuck: list[bool] = []

    def on_item(response: bbrpc_pb2.SetContentRevisionResponse) -> None:
        last[:] = [response]
        rearm()
        on_progress(response)

    def ended(_: None) -> bbrpc_pb2.SetContentRevisionResponse:
        if not last or not last[0].complete or last[0].revision != revision.number:
            raise PushFailed("the peer ended the sync without storing the revision")
        return last[0]

    def settle(outcome: Any) -> Any:
        if watchdog and watchdog[0].active():
            watchdog[0].cancel()
        if offers is not None:
            offers.withdraw(peer, revision.content_id)
        if stuck and isinstance(outcome, Failure):
            raise PushStalled(
                f"the peer reported nothing for {stall_seconds:.0f} s; "
                "the sync was cancelled"
            )
        return outcome

    request = bbrpc_pb2.SetContentRevisionRequest(signed_root=revision.signed)
    # maybeDeferred: a revision too large for one frame fails the Deferred
    # (FrameTooLarge) instead of raising at the caller.
    d = defer.maybeDeferred(
        conn.call_stream, "set_content_revision_request", request, on_item
    )
    rearm()
    return d.addCallback(ended).addBoth(settle)


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
        stall_seconds: float = PUSH_STALL_SECONDS,
    ) -> None:
        self._clock = clock
        self.offers = offers
        self._pushed = pushed
        self._stall_seconds = stall_seconds
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
            final = await push_revision(
                conn,
                revision,
                on_progress,
                self.offers,
                self._clock,
                self._stall_seconds,
            )
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
