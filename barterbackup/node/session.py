"""The unlocked node: the one place its object graph is built and torn down.

``UnlockedSession.open`` opens the stores (off the reactor thread) with the
keys Unlock derived, restores the contract book, and wires the data plane,
the peer table, the connection pool, the contracts and the peer network.
The session is a MultiService: the peer network is its child, so starting
and stopping the session starts and stops everything, in order.

What depends on the outside world (time, threads, randomness, the
transport, key derivation) comes in through ``NodeEnvironment``, so the
no-network swarm can run whole nodes on a ``task.Clock``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from barterbackup import paths
from barterbackup.chat.offers import OfferRefused
from barterbackup.chat.outbox import Outbox, OutboxCorrupt
from barterbackup.chat.service import ChatService
from barterbackup.content.engine import ContentStore, FileNotInSet
from barterbackup.contracts.book import ContractBook
from barterbackup.contracts.entries import IN_FORCE, KEEPING
from barterbackup.contracts.files import ContractFiles
from barterbackup.contracts.keeping import StorageGrants
from barterbackup.contracts.samplecheck import audit_key_of
from barterbackup.contracts.settings import BookSettings
from barterbackup.keys import NodeKeys, check_password_strength, derive_node_keys
from barterbackup.keys.derive import LABEL_CHAT_OUTBOX
from barterbackup.logs import get_logger
from barterbackup.node.handler import NodePeerHandler
from barterbackup.node.recovering import NodeStateKeeper, SessionRecoveryHost
from barterbackup.node.results import NodeConfig
from barterbackup.peers.network import PeerNetwork
from barterbackup.peers.pool import ConnectionPool
from barterbackup.peers.records import PeerRecords
from barterbackup.recovery.contact import OwnerContacts
from barterbackup.recovery.recoverer import Recovery
from barterbackup.recovery.repair import ContentRepair, Holder, ReplicaBlobFetcher
from barterbackup.store.crash import crash_point
from barterbackup.store.metadata import MetadataStore
from barterbackup.store.replicas import ReplicaStore
from barterbackup.sync.interfaces import (
    Blocking,
    PeerConnectionLike,
    ReactorTime,
    run_inline,
)
from barterbackup.sync.offers import OfferedContent
from barterbackup.sync.push import Pusher
from barterbackup.sync.replica import ReplicaService
from barterbackup.sync.serve import ContentServer
from barterbackup.transport.base import Transport
from barterbackup.transport.tcp import PlainTcpTransport

if TYPE_CHECKING:
    from barterbackup.content.engine import ContentStore
    from barterbackup.node.backups import Backups

log = get_logger("barterbackup.node")

# Subkeys of the replica store: directory names (a keyed hash of each
# owner) and the sealing of its records (docs/keys.md).
REPLICA_NAMES_LABEL = "replica directory names"
REPLICA_RECORDS_LABEL = "replica records aead"
# Subkeys of the contract files: their names and their sealing.
CONTRACT_NAMES_LABEL = "contract file names"
CONTRACT_RECORDS_LABEL = "contract files aead"


def open_content_store(
    content_dir: Path, keys: NodeKeys, metadata: MetadataStore
) -> ContentStore:
    """The node's own content engine (imported here: it is heavy)."""
    from barterbackup.content.engine import ContentStore

    return ContentStore.open(content_dir, keys, metadata)


@dataclass(frozen=True)
class NodeEnvironment:
    """Everything a node takes from the world outside its directory."""

    # clock is an IReactorTime: timers, timeouts, schedules.
    clock: ReactorTime
    # blocking runs disk and CPU-heavy work off the reactor thread.
    blocking: Blocking[Any] = run_inline
    # make_transport builds how peers reach us, for the derived keys.
    make_transport: Callable[[NodeKeys], Transport] = field(
        default=lambda keys: _no_transport()
    )
    # derive_keys turns the main password into the node's keys (Argon2id).
    derive_keys: Callable[[str], NodeKeys] = derive_node_keys
    # check_password refuses weak passwords (raises WeakPassword).
    check_password: Callable[[str], object] = check_password_strength
    # now gives wall-clock seconds (peer records, reports).
    now: Callable[[], float] = time.time
    # rng draws jitter for reconnects and schedules, and the nonces of
    # contracts and spot checks (SystemRandom: os.urandom).
    rng: random.Random = field(default_factory=random.SystemRandom)
    # open_content opens our own content store (the swarm may give a fake).
    open_content: Callable[[Path, NodeKeys, MetadataStore], Any] = open_content_store
    # contract_settings are the contract book's local timings.
    contract_settings: BookSettings = field(default_factory=BookSettings)
    # random_bytes draws secrets and nonces (chat keys, session nonces,
    # offer ids): the OS's random source except on the no-network swarm.
    random_bytes: Callable[[int], bytes] = os.urandom
    # recovery_window is how long a recovery collects replicas' offers
    # after the first one (docs/recovery.md).
    recovery_window: float = 30.0
    # call_from_thread hands a call from a worker thread to the reactor
    # thread (a backup run's progress); a direct call where work is inline.
    call_from_thread: Callable[..., object] = field(
        default=lambda function, *args: function(*args)
    )


def _no_transport() -> Transport:
    raise RuntimeError("this node environment has no transport")


def production_environment(reactor: Any, config: NodeConfig) -> NodeEnvironment:
    """The daemon's environment: the reactor, its thread pool, real keys."""

    def blocking(work: Callable[[], Any]) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)

    def make_transport(keys: NodeKeys) -> Transport:
        if config.transport == "tcp":
            return PlainTcpTransport(
                reactor,
                config.tcp_listen_port,
                config.tcp_interface,
                trusted_lan=config.tcp_trusted_lan,
            )
        from barterbackup.transport.tor import TorTransport

        return TorTransport(
            reactor,
            keys,
            paths.tor_dir(config.node_dir),
            control_endpoint=config.tor_control,
            extra_torrc=config.extra_torrc,
            tor_binary=config.tor_binary,
            defences=config.onion_defences,
        )

    return NodeEnvironment(
        clock=reactor,
        blocking=blocking,
        make_transport=make_transport,
        contract_settings=config.contract_settings or BookSettings(),
        call_from_thread=reactor.callFromThread,
    )


class UnlockedSession(MultiService):
    """Everything that exists only while the node is unlocked."""

    def __init__(
        self,
        env: NodeEnvironment,
        keys: NodeKeys,
        metadata: MetadataStore,
        content: ContentStore,
        replicas: ReplicaStore,
        records: PeerRecords,
        grants: StorageGrants,
        contract_files: ContractFiles,
        outbox: Outbox,
    ) -> None:
        super().__init__()
        self.env = env
        self.keys = keys
        self.metadata = metadata
        self.content = content
        self.replicas = replicas
        self.records = records
        clock = env.clock
        offers = OfferedContent()
        self.pusher = Pusher(clock, offers)
        handler = NodePeerHandler(
            shareable_peers=records.shareable,
            replica=ReplicaService(replicas, clock, env.blocking),
            server=ContentServer(content, replicas, offers, env.blocking),
        )
        self.transport = env.make_transport(keys)
        self.pool = ConnectionPool(
            clock, keys, self.transport, handler, records, env.now, env.rng
        )
        self.chat = ChatService(
            clock=clock,
            blocking=env.blocking,
            random_bytes=env.random_bytes,
            local_onion=keys.onion_pubkey,
            keys=records,
            connections=self.pool,
            outbox=outbox,
            stored_files=FileSetFiles(content),
        )
        handler.serve_chat_with(self.chat)
        self.pool.when_connected(self.chat.peer_connected)
        self.network = PeerNetwork(clock, keys, self.transport, self.pool)
        self.network.setServiceParent(self)
        # Only the book pushes, and only to peers under contract.
        self.book = ContractBook(
            keys=keys,
            clock=clock,
            now=env.now,
            rng=env.rng,
            files=contract_files,
            grants=grants,
            replicas=replicas,
            records=records,
            pool=self.pool,
            pusher=self.pusher,
            content=content,
            storage_config=lambda: metadata.get().storage,
            audit_key=audit_key_of(keys),
            blocking=env.blocking,
            settings=env.contract_settings,
        )
        handler.contracts = self.book
        # Recovery (docs/recovery.md): the node state sealed in every
        # revision, the owner's side, and the replica's side (contacting
        # the owners whose data we hold).
        self.state_keeper = NodeStateKeeper(
            self, lambda: self.book.revision_committed()
        )
        content.node_state = self.state_keeper.sealed
        self.recovery_host = SessionRecoveryHost(self, self.state_keeper.key)
        self.recovery = Recovery(self.recovery_host, window_seconds=env.recovery_window)
        self.owner_contacts = OwnerContacts(
            clock, env.rng, self._owners_to_contact, self.pool
        )

        # Self-repair: `check --repair`, and reads that meet damage, fetch
        # damaged blobs back from the peers that keep our content.
        self.repair = ContentRepair(
            content,
            ReplicaBlobFetcher(
                keys.onion_pubkey, self._repair_holders, self._repair_connection, clock
            ),
            clock,
            env.blocking,
            current_revision=lambda: content.current.number if content.current else 0,
        )
        if hasattr(content, "damage_listener"):  # the swarm's fake engine has none
            content.damage_listener = self.repair.note_damaged

    def _owners_to_contact(self) -> list[bytes]:
        """Owners whose replica we hold under a contract (never others)."""
        return [
            owner
            for owner in self.replicas.owners()
            if self.replicas.held(owner) is not None and self.book.grants.keeps(owner)
        ]

    def _repair_holders(self) -> list[Holder]:
        """The peers that may keep our content: their contracts are in force
        or still keep our data."""
        return [
            Holder(entry.peer, entry.ledger.peer_revision)
            for entry in self.book.entries()
            if entry.state in IN_FORCE or entry.state in KEEPING
        ]

    async def _repair_connection(self, peer: bytes) -> PeerConnectionLike:
        conn = self.pool.connection(peer)
        if conn is not None:
            return conn
        await self.network.ready()
        dialled: PeerConnectionLike = await self.pool.dial(
            peer, self.records.endpoint(peer)
        )
        return dialled

    @classmethod
    async def open(
        cls, env: NodeEnvironment, node_dir: Path, keys: NodeKeys
    ) -> UnlockedSession:
        """Open the stores of ``node_dir`` and build the session (not started)."""
        metadata = MetadataStore(paths.metadata_path(node_dir), keys.metadata_key)
        records = PeerRecords(metadata, env.clock, env.blocking)
        await env.blocking(records.load)
        content: ContentStore = await env.blocking(
            lambda: env.open_content(paths.content_dir(node_dir), keys, metadata)
        )
        # The grants of the contracts in force: the replica store's only
        # source of what a peer may keep here. Filled as the book restores.
        grants = StorageGrants()
        try:
            replicas: ReplicaStore = await env.blocking(
                lambda: ReplicaStore.open(
                    paths.replicas_dir(node_dir),
                    grants,
                    naming_key=keys.subkey(REPLICA_NAMES_LABEL),
                    sealing_key=keys.subkey(REPLICA_RECORDS_LABEL),
                    crash_point=crash_point,
                )
            )
        except BaseException:
            # Stay locked, with nothing left open.
            await env.blocking(content.close)
            raise
        contract_files = ContractFiles(
            paths.contracts_dir(node_dir),
            sealing_key=keys.subkey(CONTRACT_RECORDS_LABEL),
            naming_key=keys.subkey(CONTRACT_NAMES_LABEL),
            blocking=env.blocking,
        )
        try:
            outbox: Outbox = await env.blocking(
                lambda: _open_outbox(
                    node_dir, keys.subkey(LABEL_CHAT_OUTBOX), env.clock
                )
            )
        except BaseException:
            await env.blocking(replicas.close)
            await env.blocking(content.close)
            raise
        session = cls(
            env,
            keys,
            metadata,
            content,
            replicas,
            records,
            grants,
            contract_files,
            outbox,
        )
        try:
            await session.book.restore()
        except BaseException:
            await env.blocking(replicas.close)
            await env.blocking(content.close)
            raise
        return session

    def attach_backups(
        self,
        node_dir: Path,
        begin_update: Callable[[], Deferred[Any]],
        committed: Callable[[], None],
    ) -> Backups:
        """Source folders, the schedule and the runs (a child service: they
        start and stop with the session). The node gives its update lock
        (``begin_update``) and what follows a commit (``committed``)."""
        from barterbackup.node.backups import Backups

        self.backups = Backups(
            self.env, node_dir, self.metadata, self.content, begin_update, committed
        )
        self.backups.setServiceParent(self)
        return self.backups

    def startService(self) -> None:
        super().startService()
        self.book.start()
        self.state_keeper.start()
        # After the peer network is up: dialling needs the transport.
        ready = self.network.ready()
        ready.addCallback(lambda _: self.owner_contacts.start())
        ready.addErrback(lambda _: None)  # status reports the network's failure
        self.repair.start()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.repair.stop()
        self.chat.stop()
        self.owner_contacts.stop()
        self.state_keeper.stop()
        await self.recovery.stop()
        await self.book.stop()
        await super().stopService()
        await self.records.flush()
        await self.env.blocking(self.replicas.close)
        await self.env.blocking(self.content.close)


class FileSetFiles:
    """The current revision's files, as chat offers them (worker threads)."""

    def __init__(self, content: ContentStore) -> None:
        self._content = content

    def size(self, name: str) -> int:
        try:
            return int(self._content.file_entry(name).size)
        except FileNotInSet:
            raise OfferRefused(f"{name!r} is not in the file set") from None

    def open(self, name: str) -> Iterator[bytes]:
        try:
            return self._content.read_file(name)
        except FileNotInSet:
            raise OfferRefused(f"{name!r} is not in the file set") from None


def _open_outbox(node_dir: Path, key: bytes, clock: ReactorTime) -> Outbox:
    """The chat outbox; one that does not open is moved aside, not fatal.

    An outbox that fails authentication (damaged, or written under another
    key) cannot be read by anyone without that key; the chat should not
    stop working for it. Its bytes are kept beside it for inspection.
    """
    path = paths.chat_outbox_path(node_dir)
    try:
        return Outbox(path, key, clock)
    except OutboxCorrupt as error:
        aside = path.with_name(f"{path.name}.unreadable-{int(clock.seconds())}")
        os.replace(path, aside)
        log.error(
            "the chat outbox does not open ({error}); moved it to {aside} and "
            "started an empty one",
            error=error,
            aside=str(aside),
        )
        return Outbox(path, key, clock)
