"""The node's peers: who they are, whether we are connected, reconnecting.

The PeerManager owns the transport (Tor or plain TCP), the listening bbrpc
server and one authenticated connection per peer. It records every peer it
authenticates in Metadata (first/last seen, RTT, endpoint, whether it may be
shared in PeerExchange) and keeps reconnecting to peers we dialled, with
exponential backoff and jitter, until the node stops.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python.failure import Failure

from barterbackup import errors
from barterbackup._proto import bbrpc_pb2, clirpc_pb2, storedpb_pb2
from barterbackup.content.signing import VerifiedRevision
from barterbackup.keys import NodeKeys
from barterbackup.keys.onion import (
    InvalidOnionAddress,
    normalize_onion_address,
    onion_address_from_pubkey,
    pubkey_from_onion_address,
)
from barterbackup.logs import get_logger
from barterbackup.peer.connection import PeerConnection
from barterbackup.peer.factory import PeerServerFactory, connect_peer
from barterbackup.peer.handshake import HandshakeFailed
from barterbackup.peer.service import NodePeerService
from barterbackup.store.metadata import MetadataStore
from barterbackup.store.replicas import ReplicaStore
from barterbackup.transport.base import DestinationRefused, Transport

log = get_logger("barterbackup.peers")

# Reconnect schedule: 2 s, 4 s, ... capped at 5 minutes, ±25 % jitter so
# that peers restarting together do not retry in lockstep.
RECONNECT_FIRST_DELAY = 2.0
RECONNECT_MAX_DELAY = 300.0
RECONNECT_JITTER = 0.25
# Dialling a Tor onion can take a while on a fresh circuit.
CONNECT_TIMEOUT = 120.0
# Automatic sync waits this long after a commit or a reconnect, so a burst
# of commits (a script adding files one by one) makes one push, not many.
AUTO_SYNC_DELAY = 5.0


@dataclass
class _Reconnect:
    delay: float = RECONNECT_FIRST_DELAY
    call: Any = None  # an IDelayedCall while a retry is scheduled


class PeerManager:
    """Peers of one unlocked node (reactor thread only)."""

    def __init__(
        self,
        reactor: Any,
        keys: NodeKeys,
        transport: Transport,
        service: NodePeerService,
        metadata: MetadataStore,
        replicas: ReplicaStore,
        current_revision: Callable[[], VerifiedRevision | None] = lambda: None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._reactor = reactor
        self._keys = keys
        self.transport = transport
        self.service = service
        self._metadata = metadata
        self._replicas = replicas
        self._current_revision = current_revision
        self._now = now
        self._auto_sync_call: Any = None
        # One push at a time per peer; later ones wait for the earlier.
        self._push_tails: dict[bytes, Deferred[None]] = {}
        self._connections: dict[bytes, PeerConnection] = {}
        self._reconnects: dict[bytes, _Reconnect] = {}
        self._dialling: dict[bytes, Deferred[PeerConnection]] = {}
        self._listening: Any = None
        # Revisions being pushed right now, by content id (with a count of
        # pushes): garbage collection must keep their sections.
        self._pushing: dict[bytes, tuple[VerifiedRevision, int]] = {}
        self._stopping = False
        self._ready = False
        self._waiting: list[Deferred[None]] = []
        self.failure: str = ""

    # -- lifecycle -------------------------------------------------------

    @inlineCallbacks
    def start(self):  # type: ignore[no-untyped-def]
        """Start the transport and listen; ``ready`` fires when done."""
        try:
            yield defer.ensureDeferred(self.transport.start())
            factory = PeerServerFactory(
                self._reactor,
                self._keys,
                self.service,
                on_authenticated=self._authenticated,
                on_connection_lost=self._lost,
            )
            self._listening = yield self.transport.listen(cast(Any, factory))
        except Exception as e:
            self.failure = f"peer network failed to start: {e}"
            log.error("{failure}", failure=self.failure)
        else:
            log.info("peers reach us at {where}", where=self.transport.advertised)
        self._ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            self._fire_ready(d)
        if self.failure:
            return
        for record in self._metadata.get().peers:
            if record.endpoint or self.transport.name == "tor":
                self._schedule_reconnect(bytes(record.onion_pubkey), delay=0.0)

    @inlineCallbacks
    def stop(self):  # type: ignore[no-untyped-def]
        self._stopping = True
        if self._auto_sync_call is not None and self._auto_sync_call.active():
            self._auto_sync_call.cancel()
        for state in self._reconnects.values():
            if state.call is not None and state.call.active():
                state.call.cancel()
        for dialling in list(self._dialling.values()):
            dialling.cancel()
        for conn in list(self._connections.values()):
            conn.close()
        yield defer.ensureDeferred(self.transport.stop())

    @property
    def state(self) -> str:
        """The peer network: "starting", "ready" or "failed: <why>"."""
        if not self._ready:
            return "starting"
        return f"failed: {self.failure}" if self.failure else "ready"

    def wait_ready(self) -> Deferred[None]:
        """Fires once the transport listens; fails if it could not start."""
        d: Deferred[None] = Deferred()
        if self._ready:
            self._fire_ready(d)
        else:
            self._waiting.append(d)
        return d

    def _fire_ready(self, d: Deferred[None]) -> None:
        if self.failure:
            d.errback(errors.Unavailable(self.failure))
        else:
            d.callback(None)

    # -- connecting --------------------------------------------------------

    @inlineCallbacks
    def connect(self, request: clirpc_pb2.ConnectPeerRequest):  # type: ignore[no-untyped-def]
        """ConnectPeer: dial, authenticate, record; fires with a PeerInfo."""
        try:
            address = normalize_onion_address(request.onion_address)
        except InvalidOnionAddress as e:
            raise errors.InvalidArgument(str(e)) from None
        if address == self._keys.onion_address:
            raise errors.InvalidArgument("that is this node's own onion address")
        pubkey = pubkey_from_onion_address(address)
        yield self.wait_ready()
        hint = request.endpoint or self._record_endpoint(pubkey)
        self._remember(
            pubkey, endpoint=hint, share=request.share_in_exchange, dialled=True
        )
        if pubkey not in self._connections:
            try:
                yield self._dial(pubkey, address, hint)
            except DestinationRefused as e:
                raise errors.InvalidArgument(str(e)) from None
            except HandshakeFailed as e:
                raise errors.PermissionDenied(
                    f"{address} failed authentication: {e}"
                ) from None
            except defer.TimeoutError:
                raise errors.Unavailable(
                    f"{address} did not answer within {CONNECT_TIMEOUT:.0f} s"
                ) from None
            except Exception as e:
                raise errors.Unavailable(f"cannot reach {address}: {e}") from None
        return self.peer_info(pubkey)

    def _dial(self, pubkey: bytes, address: str, hint: str) -> Deferred[PeerConnection]:
        if pubkey in self._dialling:
            return _follow(self._dialling[pubkey])
        endpoint = self.transport.client_endpoint(address, hint or None)
        dialling = connect_peer(
            self._reactor, endpoint, self._keys, address, self.service
        )
        dialling.addTimeout(CONNECT_TIMEOUT, self._reactor)
        self._dialling[pubkey] = dialling

        def done(result: object) -> object:
            self._dialling.pop(pubkey, None)
            return result

        dialling.addBoth(done)
        dialling.addCallback(self._dialled)
        return _follow(dialling)

    def _dialled(self, conn: PeerConnection) -> PeerConnection:
        self._authenticated(conn)
        conn.when_closed().addCallback(self._lost)
        return conn

    def _authenticated(self, conn: PeerConnection) -> None:
        pubkey = _pubkey(conn)
        previous = self._connections.get(pubkey)
        self._connections[pubkey] = conn
        if previous is not None and previous is not conn:
            previous.close()
        state = self._reconnects.get(pubkey)
        if state is not None:
            state.delay = RECONNECT_FIRST_DELAY
        self._remember(pubkey)
        conn.ping().addCallbacks(
            lambda seconds: self._remember(pubkey, rtt_ms=int(seconds * 1000)),
            lambda failure: None,
        )
        log.info("peer {peer} connected", peer=onion_address_from_pubkey(pubkey))
        self.schedule_auto_sync()

    def _lost(self, conn: PeerConnection) -> None:
        pubkey = _pubkey(conn)
        if self._connections.get(pubkey) is conn:
            del self._connections[pubkey]
            log.info("peer {peer} disconnected", peer=onion_address_from_pubkey(pubkey))
            if pubkey in self._reconnects:
                self._schedule_reconnect(pubkey)

    def _schedule_reconnect(self, pubkey: bytes, delay: float | None = None) -> None:
        if self._stopping:
            return
        state = self._reconnects.setdefault(pubkey, _Reconnect())
        if state.call is not None and state.call.active():
            return
        wait = state.delay if delay is None else delay
        wait *= 1 + random.uniform(-RECONNECT_JITTER, RECONNECT_JITTER)
        state.call = self._reactor.callLater(wait, self._reconnect, pubkey)

    def _reconnect(self, pubkey: bytes) -> None:
        state = self._reconnects[pubkey]
        state.call = None
        if self._stopping or pubkey in self._connections:
            return
        address = onion_address_from_pubkey(pubkey)
        dialling = self._dial(pubkey, address, self._record_endpoint(pubkey))

        def failed(failure: Any) -> None:
            state.delay = min(state.delay * 2, RECONNECT_MAX_DELAY)
            log.info(
                "reconnecting to {peer} failed ({why}); next try in {delay:.0f} s",
                peer=address,
                why=failure.getErrorMessage(),
                delay=state.delay,
            )
            self._schedule_reconnect(pubkey)

        dialling.addErrback(failed)

    # -- records -----------------------------------------------------------

    def _record_endpoint(self, pubkey: bytes) -> str:
        for record in self._metadata.get().peers:
            if record.onion_pubkey == pubkey:
                return str(record.endpoint)
        return ""

    def _remember(
        self,
        pubkey: bytes,
        *,
        endpoint: str | None = None,
        share: bool | None = None,
        rtt_ms: int | None = None,
        held_revision: int | None = None,
        dialled: bool = False,
    ) -> None:
        now = int(self._now())

        def update(metadata: storedpb_pb2.Metadata) -> None:
            for record in metadata.peers:
                if record.onion_pubkey == pubkey:
                    break
            else:
                record = metadata.peers.add(onion_pubkey=pubkey, first_seen=now)
            if pubkey in self._connections:
                record.last_seen = now
            if endpoint is not None:
                record.endpoint = endpoint
            if share is not None:
                record.share_in_exchange = share
            if rtt_ms is not None:
                record.rtt_ms = rtt_ms
            if held_revision is not None:
                record.held_revision = held_revision

        self._metadata.update(update)
        if dialled:
            self._reconnects.setdefault(pubkey, _Reconnect())

    def peer_info(self, pubkey: bytes) -> clirpc_pb2.PeerInfo:
        for record in self._metadata.get().peers:
            if record.onion_pubkey == pubkey:
                return self._info(record)
        raise errors.NotFound(
            f"{onion_address_from_pubkey(pubkey)} is not a known peer"
        )

    def _info(self, record: storedpb_pb2.Peer) -> clirpc_pb2.PeerInfo:
        pubkey = bytes(record.onion_pubkey)
        held = self._replicas.held(pubkey)
        return clirpc_pb2.PeerInfo(
            onion_address=onion_address_from_pubkey(pubkey),
            connected=pubkey in self._connections,
            first_seen=record.first_seen,
            last_seen=record.last_seen,
            rtt_ms=record.rtt_ms,
            held_revision=record.held_revision,
            stored_bytes=held.stored_bytes if held else 0,
            shared_in_exchange=record.share_in_exchange,
            endpoint=record.endpoint,
        )

    def peers(self) -> list[clirpc_pb2.PeerInfo]:
        return [self._info(r) for r in self._metadata.get().peers]

    def shareable_peers(self) -> list[str]:
        return [
            onion_address_from_pubkey(bytes(r.onion_pubkey))
            for r in self._metadata.get().peers
            if r.share_in_exchange
        ]

    def connection(self, address: str) -> PeerConnection:
        try:
            pubkey = pubkey_from_onion_address(address)
        except InvalidOnionAddress as e:
            raise errors.InvalidArgument(str(e)) from None
        conn = self._connections.get(pubkey)
        if conn is None:
            raise errors.FailedPrecondition(
                f"{normalize_onion_address(address)} is not connected: "
                "`barterbackup peers connect` it first"
            )
        return conn

    def sections_in_flight(self) -> set[bytes]:
        """Section hashes of every revision being pushed to a peer now."""
        return {
            ref.sha256
            for revision, _ in self._pushing.values()
            for ref in revision.revision.sections
        }

    def connected_addresses(self) -> list[str]:
        return sorted(onion_address_from_pubkey(p) for p in self._connections)

    # -- replication -------------------------------------------------------

    def schedule_auto_sync(self) -> None:
        """Soon, push the current revision to peers holding an older one."""
        if self._stopping:
            return
        if self._auto_sync_call is not None and self._auto_sync_call.active():
            self._auto_sync_call.reset(AUTO_SYNC_DELAY)
            return
        self._auto_sync_call = self._reactor.callLater(AUTO_SYNC_DELAY, self._auto_sync)

    def _auto_sync(self) -> None:
        self._auto_sync_call = None
        current = self._current_revision()
        if current is None or self._stopping:
            return
        held = {
            bytes(r.onion_pubkey): r.held_revision for r in self._metadata.get().peers
        }
        for pubkey, conn in list(self._connections.items()):
            # Only peers that already hold our content: a first push to a
            # peer is the user's decision (`barterbackup replicate`).
            if 0 < held.get(pubkey, 0) < current.number:
                address = onion_address_from_pubkey(pubkey)
                log.info(
                    "syncing revision {number} to {peer}",
                    number=current.number,
                    peer=address,
                )
                pushing = self.replicate_to(conn, current, lambda _: None)
                pushing.addErrback(self._auto_sync_failed, address)

    def _auto_sync_failed(self, failure: Failure, address: str) -> None:
        # The next commit or reconnect tries again.
        log.info(
            "automatic sync to {peer} failed: {why}",
            peer=address,
            why=failure.getErrorMessage(),
        )

    def replicate_to(
        self,
        conn: PeerConnection,
        revision: VerifiedRevision,
        report: Callable[[clirpc_pb2.Progress], None],
    ) -> Deferred[Any]:
        """Push ``revision`` to one peer after any push already under way to
        it (a replica runs one sync per owner at a time)."""
        pubkey = _pubkey(conn)
        previous = self._push_tails.get(pubkey)
        if previous is None:
            result = self._replicate_now(conn, revision, report)
        else:
            waiting: Deferred[None] = Deferred()
            previous.addBoth(lambda _: waiting.callback(None))
            result = waiting.addCallback(
                lambda _: self._replicate_now(conn, revision, report)
            )
        tail: Deferred[None] = Deferred()
        self._push_tails[pubkey] = tail

        def settle(outcome: Any) -> Any:
            if self._push_tails.get(pubkey) is tail:
                del self._push_tails[pubkey]
            tail.callback(None)
            return outcome

        return result.addBoth(settle)

    @inlineCallbacks
    def _replicate_now(  # type: ignore[no-untyped-def]
        self,
        conn: PeerConnection,
        revision: VerifiedRevision,
        report: Callable[[clirpc_pb2.Progress], None],
    ):
        """Push ``revision`` to one peer; report progress; fire when held."""
        address = onion_address_from_pubkey(_pubkey(conn))
        started = self._reactor.seconds()
        _, count = self._pushing.get(revision.content_id, (revision, 0))
        self._pushing[revision.content_id] = (revision, count + 1)

        def on_progress(item: bbrpc_pb2.SetContentRevisionResponse) -> None:
            report(
                clirpc_pb2.Progress(
                    phase="syncing",
                    peer=address,
                    bytes_done=item.bytes_done,
                    bytes_total=item.bytes_total,
                    revision=item.revision,
                    message=f"{item.bytes_fetched} bytes fetched",
                )
            )

        try:
            final = yield self.service.push_revision(conn, revision, on_progress)
        finally:
            _, count = self._pushing[revision.content_id]
            if count > 1:
                self._pushing[revision.content_id] = (revision, count - 1)
            else:
                del self._pushing[revision.content_id]
        elapsed = self._reactor.seconds() - started
        self._remember(_pubkey(conn), held_revision=revision.number)
        report(
            clirpc_pb2.Progress(
                phase="done",
                peer=address,
                bytes_done=final.bytes_done,
                bytes_total=final.bytes_total,
                revision=revision.number,
                message=(f"{final.bytes_fetched} bytes transferred in {elapsed:.1f} s"),
            )
        )
        return final


def _pubkey(conn: PeerConnection) -> bytes:
    assert conn.peer_pubkey is not None, "only authenticated connections"
    return bytes(conn.peer_pubkey)


def _follow(source: Deferred[PeerConnection]) -> Deferred[PeerConnection]:
    """A Deferred with the result of ``source``, leaving ``source`` intact."""
    follower: Deferred[PeerConnection] = Deferred()

    def relay(result: Any) -> Any:
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            follower.callback(result)
        return result

    source.addBoth(relay)
    source.addErrback(lambda _: None)
    return follower
