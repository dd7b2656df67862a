"""Recovery wired to the node's parts: the host a ``Recovery`` runs on, the
keeper of the node state sealed in every revision, and the notices that a
recovered node lost the replicas it kept.

* ``NodeStateKeeper`` builds the node state (``recovery.nodestate``) from
  the peer table, the contract book and the Metadata whenever the content
  engine commits, and makes a state-only revision when the state changed
  with no file change (a contract formed, a peer added or its chat key
  set), checked ``STATE_DELAY_SECONDS`` after a contract changes state and
  every ``STATE_CHECK_SECONDS``: the replicas must hold the state that
  recovery will need.
* ``SessionRecoveryHost`` is what ``recovery.recoverer`` asks of the node:
  connections, the content store, restoring a recovered node state into
  the peer table, the book and the Metadata, scoring faulty replicas, and
  what follows an installed revision.
* ``LostReplicaNotices`` tells every peer whose data this node had kept
  that it was lost (``ReplicaLost``), now and on its next connection
  until it answered, so it syncs to us at once instead of waiting for
  failed checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.content.engine import ContentStore, UpdateInProgress
from barterbackup.contracts.book import ContractBook
from barterbackup.contracts.entries import IN_FORCE, KEEPING
from barterbackup.keys import NodeKeys
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.peers.pool import ConnectionPool
from barterbackup.peers.records import PeerRecords
from barterbackup.recovery.nodestate import (
    LABEL_NODE_STATE,
    NODE_STATE_KEY_BYTES,
    build_node_state,
    seal_node_state,
)
from barterbackup.revisions import VerifiedRevision
from barterbackup.store.metadata import MetadataStore
from barterbackup.sync.interfaces import PeerConnectionLike


class UnlockedSession(Protocol):
    """What this module uses of ``node.session.UnlockedSession`` (named here
    so the session, which builds these objects, is not imported back)."""

    keys: NodeKeys
    book: ContractBook
    records: PeerRecords
    metadata: MetadataStore
    content: ContentStore
    pool: ConnectionPool
    # The session's NodeEnvironment and Recovery: typed Any, as node.session
    # (which imports this module) defines the one and holds the other.
    env: Any
    recovery: Any


log = get_logger("barterbackup.node")

STATE_DELAY_SECONDS = 5.0
STATE_CHECK_SECONDS = 600.0
DEFAULT_MIN_REPLICAS = 2


class NodeStateKeeper:
    """The sealed node state of the next revision, and state-only commits."""

    def __init__(
        self,
        session: UnlockedSession,
        committed: Callable[[], None],
    ) -> None:
        self._session = session
        self._committed = committed
        keys = session.keys
        self.key = keys.subkey(LABEL_NODE_STATE, NODE_STATE_KEY_BYTES)
        self._owner = keys.onion_pubkey
        self._call: Any = None
        self._periodic: Any = None
        self._stopped = False
        self._committing = False
        self.state_commits = 0

    def sealed(self) -> bytes:
        """The node state now, sealed (any thread: reads copies)."""
        session = self._session
        contracts = [
            storedpb_pb2.ContractFile(record=entry.record)
            for entry in session.book.entries()
        ]
        state = build_node_state(
            list(session.records), contracts, session.metadata.get()
        )
        return seal_node_state(state, self.key, self._owner)

    def start(self) -> None:
        self._session.book.when_state_changes(lambda entry, previous: self.soon())
        self._periodic = self._session.env.clock.callLater(
            STATE_CHECK_SECONDS, self._tick
        )

    def stop(self) -> None:
        self._stopped = True
        for call in (self._call, self._periodic):
            if call is not None and call.active():
                call.cancel()

    def soon(self) -> None:
        """Check the state shortly (after a burst of changes settles)."""
        if self._stopped or (self._call is not None and self._call.active()):
            return
        self._call = self._session.env.clock.callLater(STATE_DELAY_SECONDS, self.check)

    def _tick(self) -> None:
        self.check()
        if not self._stopped:
            self._periodic = self._session.env.clock.callLater(
                STATE_CHECK_SECONDS, self._tick
            )

    def check(self) -> Deferred[None]:
        """A state-only revision if the state differs from the current one."""
        return Deferred.fromCoroutine(self._check())

    async def _check(self) -> None:
        session = self._session
        content = session.content
        if (
            self._stopped
            or self._committing
            or content.current is None
            or session.recovery.running
        ):
            return
        self._committing = True
        try:
            result = await session.env.blocking(content.commit_node_state)
        except (UpdateInProgress, ValueError):
            return  # The update's own commit carries the state.
        except Exception:
            log.failure("committing the node state failed", Failure())
            return
        finally:
            self._committing = False
        if result.changed:
            self.state_commits += 1
            log.info(
                "node state changed: revision {n} carries it",
                n=result.revision.number,
            )
            self._committed()


class LostReplicaNotices:
    """ReplicaLost to each peer whose data we kept, until it answered."""

    def __init__(self, session: UnlockedSession) -> None:
        self._session = session
        self._waiting: dict[bytes, list[bytes]] = {}
        session.pool.when_connected(self._connected)

    def tell_all(self) -> None:
        """Every contract under which we keep a peer's data: it is lost."""
        for entry in self._session.book.entries():
            if entry.state in IN_FORCE or entry.state in KEEPING:
                self._waiting.setdefault(entry.peer, []).append(entry.contract_id)
        for peer in list(self._waiting):
            conn = self._session.pool.connection(peer)
            if conn is not None:
                self._deliver(peer, conn)
            else:
                self._session.pool.dial(peer).addErrback(lambda _: None)

    @property
    def waiting(self) -> int:
        return sum(len(ids) for ids in self._waiting.values())

    def _connected(self, conn: Any) -> None:
        if conn.peer_pubkey is not None and bytes(conn.peer_pubkey) in self._waiting:
            self._deliver(bytes(conn.peer_pubkey), conn)

    def _deliver(self, peer: bytes, conn: Any) -> None:
        async def deliver() -> None:
            for contract_id in list(self._waiting.get(peer, [])):
                request = bbrpc_pb2.ReplicaLostRequest(
                    contract_id=contract_id,
                    reason="this node lost its disk and recovered from its replicas",
                )
                try:
                    await conn.call("replica_lost_request", request)
                except PeerCallError as error:
                    log.info(
                        "{peer} does not take our ReplicaLost: {why}",
                        peer=onion_address_from_pubkey(peer),
                        why=error.message,
                    )
                except Exception:
                    return  # Told when it next connects.
                ids = self._waiting.get(peer, [])
                if contract_id in ids:
                    ids.remove(contract_id)
            if not self._waiting.get(peer):
                self._waiting.pop(peer, None)

        Deferred.fromCoroutine(deliver())


class SessionRecoveryHost:
    """``recovery.recoverer.RecoveryHost`` on an unlocked session."""

    def __init__(self, session: UnlockedSession, node_state_key: bytes) -> None:
        self._session = session
        self.owner = session.keys.onion_pubkey
        self.node_state_key = node_state_key
        self.content = session.content
        self.clock = session.env.clock
        self.blocking = session.env.blocking
        self.lost_notices = LostReplicaNotices(session)
        # Called after a revision is installed (the facade: gc, pushes).
        self.after_install: Callable[[], None] = lambda: None

    def connection(self, peer: bytes) -> PeerConnectionLike | None:
        return self._session.pool.connection(peer)

    def connections(self) -> dict[bytes, PeerConnectionLike]:
        return dict(self._session.pool.connections())

    def dial(self, peer: bytes) -> Deferred[Any]:
        # Each replica over its own connection, so over Tor its own
        # circuit: the pool isolates every peer's circuits.
        return self._session.pool.dial(peer, isolation=f"recovery {peer.hex()}")

    def when_connected(self, listener: Callable[[Any], object]) -> None:
        self._session.pool.when_connected(listener)

    def known_peers(self) -> list[bytes]:
        return [bytes(record.onion_pubkey) for record in self._session.records]

    def replica_peers(self) -> list[bytes]:
        peers = []
        for entry in self._session.book.entries():
            if entry.in_force and entry.peer not in peers:
                peers.append(entry.peer)
        return peers

    def min_replicas(self) -> int:
        storage = self._session.metadata.get().storage
        return int(storage.min_replicas) or DEFAULT_MIN_REPLICAS

    def restore_node_state(self, state: storedpb_pb2.NodeState) -> None:
        session = self._session
        now = int(session.env.now())
        records = session.records
        for peer in state.peers:
            pubkey = bytes(peer.onion_pubkey)
            if len(pubkey) != 32 or pubkey == self.owner:
                continue
            records.remember(
                pubkey,
                int(peer.first_seen) or now,
                endpoint=peer.endpoint,
                share=peer.share_in_exchange,
            )
            if peer.aead_key:
                records.set_aead_key(pubkey, bytes(peer.aead_key), now)

        def settings(metadata: storedpb_pb2.Metadata) -> None:
            if state.HasField("storage") and not metadata.HasField("storage"):
                metadata.storage.CopyFrom(state.storage)
            if state.sources and not metadata.sources:
                metadata.sources.extend(state.sources)
            if state.HasField("backup_schedule") and not metadata.HasField(
                "backup_schedule"
            ):
                metadata.backup_schedule.CopyFrom(state.backup_schedule)

        session.metadata.update(settings)
        session.book.adopt(list(state.contracts))

    def lower_score(self, peer: bytes, why: str) -> None:
        self._session.book.scores.record_fault(peer)

    def recovered(self, revision: VerifiedRevision, lost_state: bool) -> None:
        session = self._session
        if lost_state:
            self.lost_notices.tell_all()
        for peer in self.replica_peers():
            session.records.remember(peer, int(session.env.now()))
        self.after_install()
