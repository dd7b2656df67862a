"""The node: the one API object the gRPC servicer, tests and the swarm call.

A Node starts locked. ``unlock`` derives every key from the main password
(in a worker: Argon2id is slow on purpose), checks it against the node
directory's identity file and only then opens the stores, as an
``UnlockedSession`` that becomes the node's child service. Methods that
need keys raise NodeLocked until then.

Conventions, for every method:

* they run on the reactor thread and return plain values or Deferreds of
  the domain records in results.py (never clirpc messages);
* a long operation takes a ``report`` callable that receives ``Progress``
  events as it goes, and returns a Deferred of its final result;
* the file-set update and file readers are worker-thread objects: the gRPC
  threads use them directly, so gigabytes never cross the reactor thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.python.failure import Failure

from barterbackup import errors
from barterbackup.bbrpc.handshake import HandshakeFailed
from barterbackup.content.engine import CommitResult, Update
from barterbackup.keys import WeakPassword, WrongPassword, generate_passphrase
from barterbackup.keys.onion import (
    InvalidOnionAddress,
    normalize_onion_address,
    onion_address_from_pubkey,
    pubkey_from_onion_address,
)
from barterbackup.logs import get_logger
from barterbackup.node.results import (
    NodeConfig,
    NodeStatus,
    Obligation,
    PeerInfo,
    StorageReport,
    UnlockResult,
)
from barterbackup.node.session import NodeEnvironment, UnlockedSession
from barterbackup.peers.pool import CONNECT_TIMEOUT
from barterbackup.progress import Progress, ProgressReport
from barterbackup.store.atomic import make_private_directory
from barterbackup.store.identity import CorruptIdentity, read_identity, write_identity
from barterbackup.store.replicas import effective_budget
from barterbackup.sync.push import PushResult
from barterbackup.transport.base import DestinationRefused

log = get_logger("barterbackup.node")

DEFAULT_MIN_REPLICAS = 2
MAX_MIN_REPLICAS = 64


class Node(MultiService):
    """The node's reactor-side API; a service holding the unlocked session."""

    def __init__(self, env: NodeEnvironment, config: NodeConfig) -> None:
        super().__init__()
        self.env = env
        self.config = config
        self.node_dir = config.node_dir
        self._session: UnlockedSession | None = None
        self._unlock_lock = DeferredLock()
        self._update_lock = DeferredLock()

    # -- helpers ---------------------------------------------------------

    def _require_unlocked(self) -> UnlockedSession:
        if self._session is None:
            raise errors.NodeLocked()
        return self._session

    @property
    def is_unlocked(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> UnlockedSession:
        """The unlocked session (NodeLocked before unlock)."""
        return self._require_unlocked()

    # -- unlock ----------------------------------------------------------

    def unlock(
        self,
        password: str,
        create_if_missing: bool = False,
        generate_passphrase_if_empty: bool = False,
    ) -> Deferred[UnlockResult]:
        """Derive the keys and open the node; fires with an UnlockResult.

        With ``generate_passphrase_if_empty`` and no password, a new node is
        set up under a generated passphrase, returned once in the result.
        """
        return self._unlock_lock.run(
            lambda: Deferred.fromCoroutine(
                self._unlock(password, create_if_missing, generate_passphrase_if_empty)
            )
        )

    async def _unlock(
        self, password: str, create_if_missing: bool, generate: bool
    ) -> UnlockResult:
        generated = ""
        if not password and generate:
            if self._session is not None or read_identity(self.node_dir) is not None:
                raise errors.FailedPrecondition("this node directory is already set up")
            password = generated = generate_passphrase()
            create_if_missing = True
        if not password:
            raise errors.InvalidArgument("the main password is empty")
        try:
            self.env.check_password(password)
        except WeakPassword as e:
            raise errors.InvalidArgument(str(e)) from None
        keys = await self.env.blocking(lambda: self.env.derive_keys(password))
        if self._session is not None:
            if self._session.keys.onion_address != keys.onion_address:
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
            await self.env.blocking(lambda: self._create_node_dir(keys.onion_address))
            created = True
        elif known != keys.onion_address:
            # Nothing has been written or opened: the directory is untouched.
            raise errors.PermissionDenied(str(WrongPassword()))
        session = await UnlockedSession.open(self.env, self.node_dir, keys)
        self._session = session
        session.setServiceParent(self)
        log.info("node {address} unlocked", address=keys.onion_address)
        return UnlockResult(keys.onion_address, created, generated)

    def _create_node_dir(self, onion_address: str) -> None:
        make_private_directory(self.node_dir)
        write_identity(self.node_dir, onion_address)

    # -- status ----------------------------------------------------------

    def status(self) -> NodeStatus:
        session = self._session
        if session is None:
            return NodeStatus(unlocked=False, transport=self.config.transport)
        current = session.content.current
        return NodeStatus(
            unlocked=True,
            onion_address=session.keys.onion_address,
            revision=current.number if current else 0,
            file_count=session.content.file_count,
            content_length=current.content_length if current else 0,
            transport=self.config.transport,
            peer_endpoint=session.transport.advertised,
            peer_network=session.network.state,
        )

    # -- the file set ----------------------------------------------------

    def iter_files(self) -> Iterator[str]:
        """A worker-thread iterator over the current file names, in manifest
        order (streamed: a million names never sit in memory at once)."""
        return self._require_unlocked().content.list_files()

    def file_size(self, name: str) -> Deferred[int]:
        content = self._require_unlocked().content
        return self.env.blocking(lambda: content.file_entry(name).size)

    def open_file(self, name: str) -> Iterator[bytes]:
        """A worker-thread iterator over the verified bytes of ``name``."""
        return self._require_unlocked().content.read_file(name)

    def begin_update(self) -> Deferred[FileSetUpdate]:
        """Fires with a FileSetUpdate; only one is open at a time.

        Later callers wait for the open one to finish (a second CLI adding
        files queues behind the first instead of failing).
        """
        return Deferred.fromCoroutine(self._begin_update())

    async def _begin_update(self) -> FileSetUpdate:
        content = self._require_unlocked().content
        await self._update_lock.acquire()
        try:
            update = await self.env.blocking(content.begin_update)
        except BaseException:
            self._update_lock.release()
            raise
        return FileSetUpdate(self, update)

    def _update_finished(self) -> None:
        self._update_lock.release()

    def collect_garbage(self) -> Deferred[int]:
        """Drop sections no kept revision or in-flight push needs.

        Called after each commit; fires with the bytes freed.
        """
        session = self._require_unlocked()
        keep = session.pusher.revisions_in_flight()
        return self.env.blocking(lambda: session.content.gc(keep))

    def revision_committed(self) -> None:
        """After a commit: sync peers that hold our content, collect garbage
        (both in the background)."""
        self._require_unlocked().autosync.schedule()

        def collected(freed: int) -> None:
            if freed:
                log.info("freed {freed} bytes of old sections", freed=freed)

        def failed(failure: Failure) -> None:
            log.failure("garbage collection failed", failure)

        self.collect_garbage().addCallbacks(collected, failed)

    # -- peers -------------------------------------------------------------

    def connect_peer(
        self, onion_address: str, endpoint: str = "", share: bool = False
    ) -> Deferred[PeerInfo]:
        """ConnectPeer: dial, authenticate, record; fires with the PeerInfo."""
        return Deferred.fromCoroutine(
            self._connect_peer(onion_address, endpoint, share)
        )

    async def _connect_peer(
        self, onion_address: str, endpoint: str, share: bool
    ) -> PeerInfo:
        session = self._require_unlocked()
        try:
            address = normalize_onion_address(onion_address)
        except InvalidOnionAddress as e:
            raise errors.InvalidArgument(str(e)) from None
        if address == session.keys.onion_address:
            raise errors.InvalidArgument("that is this node's own onion address")
        pubkey = pubkey_from_onion_address(address)
        await session.network.ready()
        hint = endpoint or session.records.endpoint(pubkey)
        session.records.remember(
            pubkey, int(self.env.now()), endpoint=hint, share=share
        )
        try:
            await session.pool.dial(pubkey, hint)
        except DestinationRefused as e:
            raise errors.InvalidArgument(str(e)) from None
        except Exception as e:
            raise _connect_error(address, e) from None
        return self._peer_info(pubkey)

    def peers(self) -> list[PeerInfo]:
        session = self._require_unlocked()
        return [self._peer_info(bytes(r.onion_pubkey)) for r in session.records]

    def _peer_info(self, pubkey: bytes) -> PeerInfo:
        session = self._require_unlocked()
        record = session.records.get(pubkey)
        if record is None:
            raise errors.NotFound(
                f"{onion_address_from_pubkey(pubkey)} is not a known peer"
            )
        held = session.replicas.held(pubkey)
        return PeerInfo(
            onion_address=onion_address_from_pubkey(pubkey),
            connected=session.pool.is_connected(pubkey),
            first_seen=record.first_seen,
            last_seen=record.last_seen,
            rtt_ms=record.rtt_ms,
            held_revision=record.held_revision,
            stored_bytes=held.stored_bytes if held else 0,
            shared_in_exchange=record.share_in_exchange,
            endpoint=record.endpoint,
        )

    # -- storage -----------------------------------------------------------

    def set_storage_config(
        self, total_bytes: int, per_peer_bytes: int, min_replicas: int
    ) -> Deferred[StorageReport]:
        session = self._require_unlocked()
        if per_peer_bytes > total_bytes > 0:
            raise errors.InvalidArgument(
                "per_peer_bytes cannot be larger than total_bytes"
            )
        if not 0 <= min_replicas <= MAX_MIN_REPLICAS:
            raise errors.InvalidArgument(
                f"min_replicas must be between 0 and {MAX_MIN_REPLICAS}"
            )

        def update() -> None:
            def change(metadata: Any) -> None:
                metadata.storage.total_bytes = total_bytes
                metadata.storage.per_peer_bytes = per_peer_bytes
                metadata.storage.min_replicas = min_replicas

            session.metadata.update(change)

        return self.env.blocking(update).addCallback(lambda _: self.storage_report())

    def storage_report(self) -> StorageReport:
        session = self._require_unlocked()
        config = session.metadata.get().storage
        replicas = session.replicas
        total, per_peer = effective_budget(config)
        used = replicas.used_bytes
        obligations = []
        for owner, stored in sorted(replicas.usage().items()):
            held = replicas.held(owner)
            obligations.append(
                Obligation(
                    onion_address=onion_address_from_pubkey(owner),
                    revision=held.shown.number if held else 0,
                    stored_bytes=stored,
                    granted_bytes=replicas.granted_bytes(owner),
                )
            )
        return StorageReport(
            total_bytes=total,
            per_peer_bytes=per_peer,
            min_replicas=config.min_replicas or DEFAULT_MIN_REPLICAS,
            used_bytes=used,
            free_bytes=max(total - used, 0),
            obligations=obligations,
        )

    # -- replication -------------------------------------------------------

    def replicate(
        self, onion_addresses: list[str], report: ProgressReport
    ) -> Deferred[list[PushResult | None]]:
        """Push the current revision to peers (all connected if none named).

        Each peer's progress goes to ``report``, ending with a "done" or a
        "failed" event; fires with one PushResult per peer (None where the
        push failed) once every peer is done.
        """
        session = self._require_unlocked()
        current = session.content.current
        if current is None:
            raise errors.FailedPrecondition("no content yet: add files first")
        connections = session.pool.connections()
        if onion_addresses:
            targets = [self._connected(address) for address in onion_addresses]
        else:
            targets = [connections[p] for p in sorted(connections)]
        if not targets:
            raise errors.FailedPrecondition(
                "no connected peers: `barterbackup peers connect ONION` first"
            )

        def one(conn: Any) -> Deferred[PushResult | None]:
            address = onion_address_from_pubkey(bytes(conn.peer_pubkey))

            def failed(failure: Failure) -> None:
                why = failure.getErrorMessage()
                report(Progress(phase="failed", peer=address, message=why))
                return None

            pushing: Deferred[Any] = session.pusher.push(conn, current, report)
            return pushing.addErrback(failed)

        return gatherResults([one(conn) for conn in targets])

    def _connected(self, onion_address: str) -> Any:
        session = self._require_unlocked()
        try:
            pubkey = pubkey_from_onion_address(onion_address)
        except InvalidOnionAddress as e:
            raise errors.InvalidArgument(str(e)) from None
        conn = session.pool.connection(pubkey)
        if conn is None:
            raise errors.FailedPrecondition(
                f"{normalize_onion_address(onion_address)} is not connected: "
                "`barterbackup peers connect` it first"
            )
        return conn


def _connect_error(address: str, error: Exception) -> errors.NodeError:
    if isinstance(error, HandshakeFailed):
        return errors.PermissionDenied(f"{address} failed authentication: {error}")
    if isinstance(error, DeferredTimeout):
        return errors.Unavailable(
            f"{address} did not answer within {CONNECT_TIMEOUT:.0f} s"
        )
    return errors.Unavailable(f"cannot reach {address}: {error}")


class FileSetUpdate:
    """One batch of file changes that commits as one revision.

    ``add_file``/``write``/``remove_file``/``commit``/``abort`` do disk work
    and must be called from a worker thread, never the reactor thread.
    ``finish`` (reactor thread) releases the node's update lock.
    """

    def __init__(self, node: Node, update: Update) -> None:
        self._node = node
        self._update = update
        self._writer: Any = None
        self.done = False

    def add_file(
        self,
        name: str,
        *,
        mode: int = 0o644,
        mtime_ns: int = 0,
        ctime_ns: int = 0,
        inode: int = 0,
        device: int = 0,
    ) -> None:
        """Start writing a file; its bytes follow with ``write``. The stat
        fields are recorded for the files cache."""
        self._close_writer()
        self._writer = self._update.add_file(
            name,
            mode=mode,
            mtime_ns=mtime_ns,
            ctime_ns=ctime_ns,
            inode=inode,
            device=device,
        )

    def write(self, data: bytes) -> None:
        if self._writer is None:
            raise errors.InvalidArgument(
                "file data arrived before any file header in the SetFile stream"
            )
        self._writer.write(data)

    def remove_file(self, name: str) -> None:
        self._close_writer()
        self._update.remove_file(name)

    def keep_file(self, name: str) -> None:
        """Keep the previous revision's ``name`` as it is, unread."""
        self._close_writer()
        self._update.keep_file(name)

    def commit(self) -> CommitResult:
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
