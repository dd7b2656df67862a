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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks
from twisted.internet.threads import deferToThreadPool

from barterbackup import __version__, errors
from barterbackup.identity import CorruptIdentity, read_identity, write_identity
from barterbackup.keys import (
    NodeKeys,
    WeakPassword,
    WrongPassword,
    check_password_strength,
    derive_node_keys,
)
from barterbackup.logs import get_logger
from barterbackup.store.atomic import make_private_directory

if TYPE_CHECKING:
    from barterbackup.content.engine import ContentStore

log = get_logger("barterbackup.node")


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


@dataclass
class _Unlocked:
    """What exists only while the node is unlocked."""

    keys: NodeKeys
    content: ContentStore
    extras: dict[str, object] = field(default_factory=dict)


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
        self._unlocked = _Unlocked(keys=keys, content=content)
        log.info("node {address} unlocked", address=keys.onion_address)
        return UnlockResult(keys.onion_address, created=created)

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
        return NodeStatus(
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

    # -- peers and storage (the peer network) ----------------------------

    def connect_peer(self, request: object) -> Deferred:
        self._require_unlocked()
        raise errors.NotBuiltYet("ConnectPeer", "peer network")

    def connected_peers(self) -> list[object]:
        self._require_unlocked()
        raise errors.NotBuiltYet("ConnectedPeers", "peer network")

    def set_storage_config(self, request: object) -> object:
        self._require_unlocked()
        raise errors.NotBuiltYet("SetStorageConfig", "peer network")

    def get_storage_config(self) -> object:
        self._require_unlocked()
        raise errors.NotBuiltYet("GetStorageConfig", "peer network")

    def replicate_content(self, peers: list[str], events: object) -> None:
        self._require_unlocked()
        raise errors.NotBuiltYet("ReplicateContent", "peer network")


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
