"""The node: the one reactor-side API object the gRPC servicer and tests call.

A Node starts locked. ``unlock`` derives every key from the main password
(in a worker thread: Argon2id is slow on purpose), checks it against the node
directory's identity file and only then opens the stores. Methods that need
keys raise NodeLocked until then.

Methods return Deferreds and run on the reactor thread. Work that reads or
writes file bytes is done by objects documented as worker-thread objects
(the file-set update, file readers): the gRPC threads already are worker
threads, and tests drive them with deferToThread.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, DeferredLock, inlineCallbacks
from twisted.internet.threads import deferToThreadPool

from barterbackup import __version__, errors
from barterbackup._proto import clirpc_pb2, storedpb_pb2
from barterbackup.identity import CorruptIdentity, read_identity, write_identity
from barterbackup.keys import (
    NodeKeys,
    WeakPassword,
    WrongPassword,
    check_password_strength,
    derive_node_keys,
)
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.peer.service import NodePeerService
from barterbackup.peers import PeerManager
from barterbackup.store.atomic import make_private_directory
from barterbackup.store.replicas import ReplicaStore, effective_budget
from barterbackup.transport.base import Transport
from barterbackup.transport.tcp import PlainTcpTransport

if TYPE_CHECKING:
    from barterbackup.content.engine import ContentStore

log = get_logger("barterbackup.node")

REPLICAS_DIRNAME = "replicas"
TOR_DIRNAME = "tor"
DEFAULT_MIN_REPLICAS = 2
MAX_MIN_REPLICAS = 64


@dataclass(frozen=True)
class NodeConfig:
    """How the daemon was started (twistd options)."""

    node_dir: Path
    transport: str = "tor"
    tcp_listen_port: int = 0
    tor_control: str | None = None
    tor_binary: str = "tor"
    extra_torrc: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class UnlockResult:
    onion_address: str
    created: bool


@dataclass(frozen=True)
class NodeStatus:
    unlocked: bool
    onion_address: str = ""
    revision: int = 0
    file_count: int = 0
    content_length: int = 0
    version: str = __version__
    transport: str = ""
    peer_endpoint: str = ""
    peer_network: str = ""


@dataclass
class _Unlocked:
    """What exists only while the node is unlocked."""

    keys: NodeKeys
    content: ContentStore
    replicas: ReplicaStore | None = None
    peers: PeerManager | None = None


class Node:
    """The node's reactor-side API."""

    def __init__(self, reactor: Any, config: NodeConfig) -> None:
        self._reactor = reactor
        self.config = config
        self.node_dir = Path(config.node_dir)
        self._unlocked: _Unlocked | None = None
        self._unlock_lock = DeferredLock()
        self._update_lock = DeferredLock()

    # -- helpers ---------------------------------------------------------

    def _in_thread(self, fn, *args):  # type: ignore[no-untyped-def]
        return deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            fn,
            *args,
        )

    def _require_unlocked(self) -> _Unlocked:
        if self._unlocked is None:
            raise errors.NodeLocked()
        return self._unlocked

    @property
    def is_unlocked(self) -> bool:
        return self._unlocked is not None

    @property
    def keys(self) -> NodeKeys:
        return self._require_unlocked().keys

    @property
    def content(self) -> ContentStore:
        return self._require_unlocked().content

    # -- unlock ----------------------------------------------------------

    def unlock(self, password: str, create_if_missing: bool = False) -> Deferred:
        """Derive the keys and open the node; fires with an UnlockResult."""
        return self._unlock_lock.run(self._unlock, password, create_if_missing)

    @inlineCallbacks
    def _unlock(self, password: str, create_if_missing: bool):  # type: ignore[no-untyped-def]
        if not password:
            raise errors.InvalidArgument("the main password is empty")
        try:
            check_password_strength(password)
        except WeakPassword as e:
            raise errors.InvalidArgument(str(e)) from None
        keys = yield self._in_thread(derive_node_keys, password)
        if self._unlocked is not None:
            if self._unlocked.keys.onion_address != keys.onion_address:
                raise errors.PermissionDenied(str(WrongPassword()))
            return UnlockResult(keys.onion_address, created=False)
        try:
            known = read_identity(self.node_dir)
        except CorruptIdentity as e:
            raise errors.FailedPrecondition(str(e)) from None
        created = False
        if known is None:
            if not create_if_missing:
                raise errors.FailedPrecondition(
                    f"{self.node_dir} holds no node yet: run `barterbackup init` "
                    "for a new node, or `barterbackup unlock --create` to set "
                    "it up with your existing main password (e.g. to recover)"
                )
            yield self._in_thread(self._create_node_dir, keys)
            created = True
        elif known != keys.onion_address:
            # Nothing has been written or opened: the directory is untouched.
            raise errors.PermissionDenied(str(WrongPassword()))
        content = yield self._in_thread(self._open_content, keys)
        unlocked = _Unlocked(keys=keys, content=content)
        try:
            unlocked.replicas = yield self._in_thread(
                ReplicaStore.open,
                self.node_dir / REPLICAS_DIRNAME,
                lambda: content.metadata.get().storage,
            )
        except BaseException:
            # Stay locked, with nothing left open.
            yield self._in_thread(content.close)
            raise
        unlocked.peers = self._start_peers(unlocked)
        self._unlocked = unlocked
        log.info("node {address} unlocked", address=keys.onion_address)
        return UnlockResult(keys.onion_address, created=created)

    def _start_peers(self, unlocked: _Unlocked) -> PeerManager:
        """Build the peer network; it starts in the background (Tor takes
        a while to bootstrap) and peer calls wait until it is ready."""
        assert unlocked.replicas is not None
        transport = self._make_transport(unlocked.keys)
        holder: list[PeerManager] = []
        service = NodePeerService(
            reactor=self._reactor,
            content=unlocked.content,
            replicas=unlocked.replicas,
            shareable_peers=lambda: holder[0].shareable_peers(),
            blocking=lambda work: self._in_thread(work),
        )
        manager = PeerManager(
            self._reactor,
            unlocked.keys,
            transport,
            service,
            unlocked.content.metadata,
            unlocked.replicas,
            current_revision=lambda: unlocked.content.current,
        )
        holder.append(manager)
        manager.start()
        return manager

    def _make_transport(self, keys: NodeKeys) -> Transport:
        if self.config.transport == "tcp":
            return PlainTcpTransport(self._reactor, self.config.tcp_listen_port)
        from barterbackup.transport.tor import TorTransport

        return TorTransport(
            self._reactor,
            keys,
            self.node_dir / TOR_DIRNAME,
            control_endpoint=self.config.tor_control,
            extra_torrc=self.config.extra_torrc,
            tor_binary=self.config.tor_binary,
        )

    def _create_node_dir(self, keys: NodeKeys) -> None:
        make_private_directory(self.node_dir)
        write_identity(self.node_dir, keys.onion_address)

    def _open_content(self, keys: NodeKeys) -> ContentStore:
        from barterbackup.content.engine import ContentStore

        return ContentStore.open(self.node_dir, keys)

    # -- status ----------------------------------------------------------

    def status(self) -> NodeStatus:
        if self._unlocked is None:
            return NodeStatus(unlocked=False, transport=self.config.transport)
        current = self._unlocked.content.current
        manifest = self._unlocked.content.manifest
        peers = self._unlocked.peers
        return NodeStatus(
            peer_endpoint=peers.transport.advertised if peers else "",
            peer_network=peers.state if peers else "",
            unlocked=True,
            onion_address=self._unlocked.keys.onion_address,
            revision=current.number if current else 0,
            file_count=len(manifest.files) if manifest else 0,
            content_length=current.revision.content_length if current else 0,
            transport=self.config.transport,
        )

    # -- the file set ----------------------------------------------------

    def list_files(self) -> Deferred:
        content = self._require_unlocked().content
        return self._in_thread(content.list_files)

    def file_size(self, name: str) -> Deferred:
        content = self._require_unlocked().content
        return self._in_thread(lambda: content.file_entry(name).size)

    def open_file(self, name: str) -> Iterator[bytes]:
        """A worker-thread iterator over the verified bytes of ``name``."""
        return self._require_unlocked().content.read_file(name)

    @inlineCallbacks
    def begin_update(self):  # type: ignore[no-untyped-def]
        """Fires with a FileSetUpdate; only one is open at a time.

        Later callers wait for the open one to finish (a second CLI adding
        files queues behind the first instead of failing).
        """
        content = self._require_unlocked().content
        yield self._update_lock.acquire()
        try:
            update = yield self._in_thread(content.begin_update)
        except BaseException:
            self._update_lock.release()
            raise
        return FileSetUpdate(self, update)

    def _update_finished(self) -> None:
        self._update_lock.release()

    def collect_garbage(self) -> Deferred:
        """Drop sections no kept revision or in-flight push needs.

        Called after each commit; fires with the bytes freed. Runs on the
        thread pool (it may rewrite pack files).
        """
        unlocked = self._require_unlocked()
        keep = unlocked.peers.sections_in_flight() if unlocked.peers else set()
        return self._in_thread(unlocked.content.gc, keep)

    def revision_committed(self) -> None:
        """After a commit: sync peers that hold our content, collect garbage
        (both in the background)."""
        peers = self._require_unlocked().peers
        if peers is not None:
            peers.schedule_auto_sync()

        def collected(freed: int) -> None:
            if freed:
                log.info("freed {freed} bytes of old sections", freed=freed)

        def failed(failure: Any) -> None:
            log.failure("garbage collection failed", failure)

        self.collect_garbage().addCallbacks(collected, failed)

    # -- peers and storage (the peer network) ----------------------------

    def _peers(self) -> PeerManager:
        unlocked = self._require_unlocked()
        assert unlocked.peers is not None
        return unlocked.peers

    def connect_peer(self, request: clirpc_pb2.ConnectPeerRequest) -> Deferred:
        return self._peers().connect(request)

    def connected_peers(self) -> list[clirpc_pb2.PeerInfo]:
        return self._peers().peers()

    def set_storage_config(
        self, request: clirpc_pb2.SetStorageConfigRequest
    ) -> clirpc_pb2.GetStorageConfigResponse:
        unlocked = self._require_unlocked()
        if request.per_peer_bytes > request.total_bytes > 0:
            raise errors.InvalidArgument(
                "per_peer_bytes cannot be larger than total_bytes"
            )
        if request.min_replicas > MAX_MIN_REPLICAS:
            raise errors.InvalidArgument(
                f"min_replicas must be at most {MAX_MIN_REPLICAS}"
            )

        def update(metadata: storedpb_pb2.Metadata) -> None:
            metadata.storage.total_bytes = request.total_bytes
            metadata.storage.per_peer_bytes = request.per_peer_bytes
            metadata.storage.min_replicas = request.min_replicas

        unlocked.content.metadata.update(update)
        return self.get_storage_config()

    def get_storage_config(self) -> clirpc_pb2.GetStorageConfigResponse:
        unlocked = self._require_unlocked()
        config = unlocked.content.metadata.get().storage
        replicas = unlocked.replicas
        assert replicas is not None
        total, per_peer = effective_budget(config)
        used = replicas.used_bytes
        response = clirpc_pb2.GetStorageConfigResponse(
            total_bytes=total,
            per_peer_bytes=per_peer,
            min_replicas=config.min_replicas or DEFAULT_MIN_REPLICAS,
            used_bytes=used,
            free_bytes=max(total - used, 0),
        )
        for owner, stored in sorted(replicas.usage().items()):
            held = replicas.held(owner)
            shown = (held.readable or held.pending) if held else None
            response.obligations.add(
                onion_address=onion_address_from_pubkey(owner),
                revision=shown.number if shown else 0,
                stored_bytes=stored,
                granted_bytes=replicas.granted_bytes(owner),
            )
        return response

    def replicate_content(self, peers: list[str], events: queue.Queue[object]) -> None:
        """Push the current revision to ``peers`` (all connected if empty).

        Progress messages go on ``events`` (read by a gRPC thread), then None
        when every peer is done, or a NodeError if any failed.
        """
        unlocked = self._require_unlocked()
        manager = self._peers()
        current = unlocked.content.current
        if current is None:
            raise errors.FailedPrecondition("no content yet: add files first")
        targets = peers or manager.connected_addresses()
        if not targets:
            raise errors.FailedPrecondition(
                "no connected peers: `barterbackup peers connect ONION` first"
            )
        connections = [manager.connection(address) for address in targets]
        failures: list[str] = []

        def one(conn: Any) -> Deferred:
            d = manager.replicate_to(conn, current, events.put)

            def failed(failure: Any) -> None:
                address = onion_address_from_pubkey(bytes(conn.peer_pubkey))
                failures.append(f"{address}: {failure.getErrorMessage()}")
                events.put(
                    clirpc_pb2.Progress(
                        phase="failed", peer=address, message=failure.getErrorMessage()
                    )
                )

            return d.addErrback(failed)

        def finished(_: object) -> None:
            events.put(None)

        DeferredList([one(c) for c in connections]).addCallback(finished)

    @inlineCallbacks
    def shutdown(self):  # type: ignore[no-untyped-def]
        """Stop the peer network (and a tor we launched), close the stores."""
        unlocked = self._unlocked
        if unlocked is None:
            return
        if unlocked.peers is not None:
            yield unlocked.peers.stop()
        yield self._in_thread(unlocked.content.close)


class FileSetUpdate:
    """One batch of file changes that commits as one revision.

    ``add_file``/``write``/``remove_file``/``commit``/``abort`` do disk work
    and must be called from a worker thread, never the reactor thread.
    ``finish`` (reactor thread) releases the node's update lock.
    """

    def __init__(self, node: Node, update) -> None:  # type: ignore[no-untyped-def]
        self._node = node
        self._update = update
        self._writer: Any = None
        self.done = False

    def add_file(self, name: str, mode: int = 0o644, mtime: int = 0) -> None:
        self._close_writer()
        self._writer = self._update.add_file(name, mode=mode, mtime=mtime)

    def write(self, data: bytes) -> None:
        if self._writer is None:
            raise errors.InvalidArgument(
                "file data arrived before any file header in the SetFile stream"
            )
        self._writer.write(data)

    def remove_file(self, name: str) -> None:
        self._close_writer()
        self._update.remove_file(name)

    def commit(self):  # type: ignore[no-untyped-def]
        self._close_writer()
        result = self._update.commit()
        self.done = True
        return result

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        self._writer = None
        self._update.abort()

    def _close_writer(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def finish(self) -> None:
        """Release the update lock (reactor thread)."""
        self._node._update_finished()


def default_node_dir() -> Path:
    env = os.environ.get("BARTERBACKUP_NODE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".barterbackup"
