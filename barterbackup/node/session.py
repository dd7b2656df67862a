"""The unlocked node: the one place its object graph is built and torn down.

``UnlockedSession.open`` opens the stores (off the reactor thread) with the
keys Unlock derived, and wires the data plane, the peer table, the
connection pool and the peer network. The session is a MultiService: the
peer network is its child, so starting and stopping the session starts and
stops everything, in order.

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
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from barterbackup import paths
from barterbackup.chat.offers import OfferRefused
from barterbackup.chat.outbox import Outbox, OutboxCorrupt
from barterbackup.chat.service import ChatService
from barterbackup.content.engine import ContentStore, FileNotInSet
from barterbackup.keys import NodeKeys, check_password_strength, derive_node_keys
from barterbackup.keys.derive import LABEL_CHAT_OUTBOX
from barterbackup.logs import get_logger
from barterbackup.node.handler import NodePeerHandler
from barterbackup.node.results import NodeConfig
from barterbackup.peers.network import PeerNetwork
from barterbackup.peers.pool import ConnectionPool
from barterbackup.peers.records import PeerRecords
from barterbackup.store.metadata import MetadataStore
from barterbackup.store.replicas import ReplicaStore
from barterbackup.sync.interfaces import Blocking, ReactorTime, run_inline
from barterbackup.sync.offers import OfferedContent
from barterbackup.sync.push import AutoSync, Pusher
from barterbackup.sync.replica import ReplicaService
from barterbackup.sync.serve import ContentServer
from barterbackup.transport.base import Transport
from barterbackup.transport.tcp import PlainTcpTransport

log = get_logger("barterbackup.node")


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
    # rng draws jitter for reconnects and schedules.
    rng: random.Random = field(default_factory=random.SystemRandom)
    # random_bytes draws secrets and nonces (chat keys, session nonces,
    # offer ids): the OS's random source except on the no-network swarm.
    random_bytes: Callable[[int], bytes] = os.urandom


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
        clock=reactor, blocking=blocking, make_transport=make_transport
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
        self.pusher = Pusher(clock, offers, pushed=self._pushed)
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
        self.autosync = AutoSync(
            clock,
            self.pusher,
            current_revision=lambda: content.current,
            connections=self.pool.connections,
            held_revision=records.held_revision,
        )
        self.pool.when_connected(lambda conn: self.autosync.schedule())

    @classmethod
    async def open(
        cls, env: NodeEnvironment, node_dir: Path, keys: NodeKeys
    ) -> UnlockedSession:
        """Open the stores of ``node_dir`` and build the session (not started)."""
        metadata = MetadataStore(paths.metadata_path(node_dir), keys.metadata_key)
        records = PeerRecords(metadata, env.clock, env.blocking)
        await env.blocking(records.load)
        content: ContentStore = await env.blocking(
            lambda: ContentStore.open(paths.content_dir(node_dir), keys, metadata)
        )
        try:
            replicas: ReplicaStore = await env.blocking(
                lambda: ReplicaStore.open(
                    paths.replicas_dir(node_dir), lambda: metadata.get().storage
                )
            )
        except BaseException:
            # Stay locked, with nothing left open.
            await env.blocking(content.close)
            raise
        outbox: Outbox = await env.blocking(
            lambda: _open_outbox(node_dir, keys.subkey(LABEL_CHAT_OUTBOX), env.clock)
        )
        return cls(env, keys, metadata, content, replicas, records, outbox)

    def _pushed(self, peer: bytes, number: int) -> None:
        self.records.remember(peer, int(self.env.now()), held_revision=number)

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.autosync.stop()
        self.chat.stop()
        await super().stopService()
        await self.records.flush()
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
