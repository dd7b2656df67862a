"""The replica side of sync: what we store for an owner, and storing more.

``GetContentRevision`` tells the caller which of its revisions we hold;
``SetContentRevision`` checks the revision it asks us to store (signature,
owner, number, and that a contract in force grants the caller that much:
the replica store's ``grant``), then fetches the sections we lack from it
(fetch.py) and reports progress until the revision is complete. The
caller's identity is always ``conn.peer_pubkey`` (proved by the handshake),
so a peer can only store, inspect or delete its *own* content here.

Errors reach the peer as PeerCallError with a bbrpc ErrorCode and a message
that never carries a secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import ErrorCode, PeerCallError
from barterbackup.revisions import InvalidRevision, VerifiedRevision
from barterbackup.store.replicas import (
    BadBlob,
    NoContract,
    QuotaExceeded,
    ReplicaStore,
    StaleRevision,
)
from barterbackup.sync.fetch import FetchFailed, RevisionFetcher
from barterbackup.sync.interfaces import (
    Blocking,
    PeerConnectionLike,
    ReactorTime,
    authenticated_peer,
    run_inline,
)

Send = Callable[[Any], Awaitable[Any]]

# How each replica-store refusal reaches the owner.
_REFUSALS: tuple[tuple[type[Exception], ErrorCode], ...] = (
    (InvalidRevision, bbrpc_pb2.ERROR_CODE_BAD_REQUEST),
    (NoContract, bbrpc_pb2.ERROR_CODE_PERMISSION_DENIED),
    (QuotaExceeded, bbrpc_pb2.ERROR_CODE_QUOTA_EXCEEDED),
    (StaleRevision, bbrpc_pb2.ERROR_CODE_STALE),
    (FetchFailed, bbrpc_pb2.ERROR_CODE_BAD_REQUEST),
    (BadBlob, bbrpc_pb2.ERROR_CODE_BAD_REQUEST),
)


class ReplicaService:
    """Stores owners' revisions in the replica store, one sync per owner.

    ``clock`` rate-limits progress reports; ``blocking`` runs disk work (the
    node passes a thread-pool runner; the default runs it inline).
    """

    def __init__(
        self,
        replicas: ReplicaStore,
        clock: ReactorTime,
        blocking: Blocking[Any] = run_inline,
    ) -> None:
        self._replicas = replicas
        self._clock = clock
        self._blocking = blocking
        self._syncing: set[bytes] = set()
        # Disk work of each owner's call still running on the worker thread.
        # A cancelled call's thread work cannot be stopped: the owner stays
        # "syncing" until it is done, so a delete that follows the cancel
        # cannot run before (and be undone by) the begin still running.
        self._in_thread: dict[bytes, set[defer.Deferred[Any]]] = {}

    def get_content_revision(
        self, conn: PeerConnectionLike
    ) -> bbrpc_pb2.GetContentRevisionResponse:
        owner = authenticated_peer(conn)
        response = bbrpc_pb2.GetContentRevisionResponse(
            granted_bytes=self._replicas.granted_bytes(owner)
        )
        held = self._replicas.held(owner)
        if held is not None:
            # Report what can be served back (the complete revision) while a
            # newer one is still being fetched; the owner re-pushes to resume.
            response.signed_root = held.shown.signed
            response.complete = held.held is not None
            response.stored_bytes = held.stored_bytes
            if held.held is not None and held.pending is not None:
                # Recovery falls back from a revision no replica holds
                # whole: it needs to see that one exists.
                response.pending_signed_root = held.pending.signed
        return response

    async def set_content_revision(
        self,
        conn: PeerConnectionLike,
        request: bbrpc_pb2.SetContentRevisionRequest,
        send: Send,
    ) -> None:
        owner = authenticated_peer(conn)
        if owner in self._syncing:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_BUSY, "a sync of your content is already running"
            )
        self._syncing.add(owner)
        blocking = self._tracked(owner)
        try:
            if request.delete:
                await blocking(lambda: self._replicas.delete(owner))
                await send(bbrpc_pb2.SetContentRevisionResponse(complete=True))
                return
            await self._store(conn, owner, bytes(request.signed_root), send, blocking)
        finally:
            self._release_when_idle(owner)

    def _tracked(self, owner: bytes) -> Blocking[Any]:
        """``blocking`` for one owner's call: each piece of work is awaited
        through a Deferred of its own, so cancelling the call does not make
        the work look finished while its thread still runs."""
        running = self._in_thread.setdefault(owner, set())

        def run(work: Callable[[], Any]) -> defer.Deferred[Any]:
            inner = self._blocking(work)
            running.add(inner)
            outer: defer.Deferred[Any] = defer.Deferred()

            def finished(result: Any) -> None:
                running.discard(inner)
                if not outer.called:
                    outer.callback(result)  # a Failure errbacks
                if not running and owner not in self._syncing:
                    self._in_thread.pop(owner, None)

            inner.addBoth(finished)
            return outer

        return run

    def _release_when_idle(self, owner: bytes) -> None:
        running = self._in_thread.get(owner)
        if not running:
            self._in_thread.pop(owner, None)
            self._syncing.discard(owner)
            return
        # Cancelled with work still on the thread: busy until it ends.
        pending = list(running)
        done = defer.DeferredList(pending, consumeErrors=True)
        done.addBoth(lambda _: self._release_when_idle(owner))

    async def _store(
        self,
        conn: PeerConnectionLike,
        owner: bytes,
        signed: bytes,
        send: Send,
        blocking: Blocking[Any],
    ) -> None:
        try:
            revision = await blocking(lambda: self._replicas.begin(owner, signed))
            held = self._replicas.held(owner)
            if held is not None and held.held is not None:
                if held.held.content_id == revision.content_id:
                    # Held already: nothing to fetch, say so at once.
                    await send(_complete(revision))
                    return
            fetcher = RevisionFetcher(
                conn, self._replicas, owner, revision, send, self._clock, blocking
            )
            await fetcher.run()
        except PeerCallError as error:
            # The owner refused our Download: report it, do not relay codes
            # that would blame us (e.g. its NOT_FOUND).
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_BAD_REQUEST,
                f"downloading the revision from you failed: {error.message}",
            ) from None
        except Exception as error:
            for kind, code in _REFUSALS:
                if isinstance(error, kind):
                    raise PeerCallError(code, str(error)) from None
            raise


def _complete(revision: VerifiedRevision) -> bbrpc_pb2.SetContentRevisionResponse:
    return bbrpc_pb2.SetContentRevisionResponse(
        revision=revision.number,
        bytes_done=revision.content_length,
        bytes_total=revision.content_length,
        complete=True,
    )
