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

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.python.failure import Failure

from barterbackup import errors
from barterbackup.bbrpc.handshake import HandshakeFailed
from barterbackup.chat import peer_key as chat_keys
from barterbackup.chat.aead import ChatError
from barterbackup.chat.service import ChatAttachment, Listener
from barterbackup.chat.session import NoChatKey
from barterbackup.content.engine import CommitResult, RevisionNotKept, Update
from barterbackup.contracts import errors as contract_errors
from barterbackup.contracts.book import ContractView
from barterbackup.contracts.checking import KINDS as CHECK_KINDS
from barterbackup.contracts.entries import ContractEntry
from barterbackup.contracts.policy import AcceptancePolicy
from barterbackup.contracts.terms import InvalidTerms
from barterbackup.keys import WeakPassword, WrongPassword, generate_passphrase
from barterbackup.keys.onion import (
    InvalidOnionAddress,
    normalize_onion_address,
    onion_address_from_pubkey,
    pubkey_from_onion_address,
)
from barterbackup.logs import get_logger
from barterbackup.node.backups import AddPathsResult, PathToAdd
from barterbackup.node.results import (
    ChatKeyResult,
    ChatOverview,
    CheckReport,
    ContractInfo,
    NodeConfig,
    NodeStatus,
    Obligation,
    PeerInfo,
    RunOutcome,
    ScheduleState,
    Source,
    StorageReport,
    UnlockResult,
)
from barterbackup.node.session import NodeEnvironment, UnlockedSession
from barterbackup.peers.discovery import MAX_ASKED, Discovery, discover
from barterbackup.peers.pool import CONNECT_TIMEOUT
from barterbackup.progress import ProgressReport, ignore_progress
from barterbackup.recovery.recoverer import RecoveryFailed, RecoveryResult
from barterbackup.recovery.relay import ProgressRelay
from barterbackup.recovery.repair import ContentCheckReport
from barterbackup.recovery.restore import (
    RestoreOutcome,
    Restorer,
    RestoreRefused,
    check_selection,
)
from barterbackup.revisions import VerifiedRevision
from barterbackup.store.atomic import (
    atomic_delete,
    atomic_write,
    make_private_directory,
)
from barterbackup.store.identity import CorruptIdentity, read_identity, write_identity
from barterbackup.store.replicas import effective_total_bytes
from barterbackup.sync.push import PushResult
from barterbackup.transport.base import DestinationRefused

if TYPE_CHECKING:
    from barterbackup.content.engine import CommitResult, Update

log = get_logger("barterbackup.node")
T = TypeVar("T")

MAX_MIN_REPLICAS = 64
RECOVERY_MARKER = "recovering"


def recovery_marker(node_dir: Path) -> Path:
    """The file that says an automatic recovery is unfinished (resumed at
    the next unlock)."""
    return Path(node_dir) / RECOVERY_MARKER


# StatFiles answers at most this many names a call.
MAX_STAT_NAMES = 10_000


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
        # Revisions a restore or a check is reading: garbage collection
        # keeps their blobs until it ends.
        self._reading: list[VerifiedRevision] = []

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
        session.attach_backups(
            self.node_dir, self.begin_update, self.revision_committed
        )
        self._session = session
        session.recovery_host.after_install = self._recovery_installed
        session.setServiceParent(self)
        log.info("node {address} unlocked", address=keys.onion_address)
        if session.content.current is None and (
            (created and not generated) or recovery_marker(self.node_dir).exists()
        ):
            # The same password on an empty directory: a machine lost, most
            # likely. Wait for the replicas in the background (no address
            # typed); a new node merely waits, and stops at its first files.
            self._recover_in_background(session)
        return UnlockResult(keys.onion_address, created, generated)

    def _recover_in_background(self, session: UnlockedSession) -> None:
        marker = recovery_marker(self.node_dir)
        if not marker.exists():
            atomic_write(marker, b"recovering\n")

        def failed(failure: Failure) -> None:
            log.info("background recovery ended: {why}", why=failure.getErrorMessage())

        session.recovery.recover(ignore_progress).addErrback(failed)

    def _create_node_dir(self, onion_address: str) -> None:
        make_private_directory(self.node_dir)
        write_identity(self.node_dir, onion_address)

    # -- status ----------------------------------------------------------

    # -- recovery ----------------------------------------------------------

    def recover(
        self, from_peers: list[str], revision: int, report: ProgressReport
    ) -> Deferred[RecoveryResult]:
        """RecoverContent: our content back from the replicas (or follow
        the recovery running); fires with the RecoveryResult once the
        revision is installed as current (docs/recovery.md)."""
        session = self._require_unlocked()
        peers = [self._peer_pubkey(address) for address in from_peers]
        current = session.content.current
        if current is not None and revision and revision <= current.number:
            raise errors.InvalidArgument(
                f"revision {revision} is not newer than the current revision "
                f"{current.number}"
            )
        for pubkey in peers:
            session.records.remember(pubkey, int(self.env.now()))

        async def run() -> RecoveryResult:
            try:
                return await session.recovery.recover(report, peers, revision)
            except RecoveryFailed as error:
                raise errors.Unavailable(str(error)) from None

        return Deferred.fromCoroutine(run())

    def _recovery_installed(self) -> None:
        marker = recovery_marker(self.node_dir)
        if marker.exists():
            atomic_delete(marker)
        self.collect_garbage().addErrback(
            lambda failure: log.failure("gc after recovery failed", failure)
        )

    def status(self) -> NodeStatus:
        session = self._session
        if session is None:
            return NodeStatus(unlocked=False, transport=self.config.transport)
        current = session.content.current
        replication = session.book.replication()
        problems = []
        if replication.under_replicated and replication.problem:
            # The headline says "under-replicated"; this says why.
            problems.append(replication.problem)
        for path, reason in session.book.quarantined():
            problems.append(f"a contract file was put aside ({path.name}): {reason}")
        for bad in session.replicas.quarantined:
            problems.append(f"a replica was put aside ({bad.path.name}): {bad.reason}")
        backups = session.backups
        if backups.load_error:
            problems.append(f"the source list is invalid: {backups.load_error}")
        schedule = backups.state()
        return NodeStatus(
            unlocked=True,
            onion_address=session.keys.onion_address,
            revision=current.number if current else 0,
            file_count=session.content.file_count,
            content_length=current.content_length if current else 0,
            transport=self.config.transport,
            peer_endpoint=session.transport.advertised,
            peer_network=session.network.state,
            min_replicas=replication.min_replicas,
            replicas_current=replication.healthy,
            replicas_older=replication.older,
            checks_passed=replication.checks_passed,
            checks_failed=replication.checks_failed,
            last_check=replication.last_check_at,
            errors=tuple(problems),
            recovery=session.recovery.status(),
            revision_time=session.content.revision_time(),
            source_count=len(backups.sources),
            schedule=schedule,
            last_backup=schedule.last_outcome,
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
        """Drop blobs no kept revision or in-flight push needs.

        Called after each commit; fires with the bytes freed.
        """
        session = self._require_unlocked()
        if session.recovery.running:
            # The blobs a recovery fetched are referenced by no revision of
            # ours until it installs one: collecting now would drop them.
            return succeed(0)
        keep = [*session.pusher.revisions_in_flight(), *self._reading]
        return self.env.blocking(lambda: session.content.gc(keep))

    def revision_committed(self) -> None:
        """After a commit: every contract's peer gets the new revision, and
        garbage is collected (both in the background)."""
        session = self._require_unlocked()
        if session.recovery.waiting:
            # Files of its own before any replica offered ours: a new node,
            # not a lost one. Stop waiting (gc is held while it waits).
            session.recovery.stop()
            marker = recovery_marker(self.node_dir)
            if marker.exists():
                atomic_delete(marker)
        session.book.revision_committed()

        def collected(freed: int) -> None:
            if freed:
                log.info("freed {freed} bytes of old sections", freed=freed)

        def failed(failure: Failure) -> None:
            log.failure("garbage collection failed", failure)

        self.collect_garbage().addCallbacks(collected, failed)

    # -- restore and check (docs/restore-and-check.md) ----------------------

    def restore_files(
        self,
        directory: str,
        names: Sequence[str],
        revision: int,
        overwrite: bool,
        report: ProgressReport,
    ) -> Deferred[RestoreOutcome]:
        """RestoreFiles: write a stored revision's files (all, or those
        ``names`` select: files or directory prefixes) under ``directory``,
        an absolute path of this machine; ``revision`` 0 is the current one.

        Fires with the outcome, whose failures (damaged files, unsafe
        paths) are listed in it rather than raised; a bad directory or
        selection fails at once and writes nothing.
        """
        session = self._require_unlocked()
        if not directory or not Path(directory).is_absolute():
            raise errors.InvalidArgument(
                "the directory to restore into must be an absolute path"
            )
        try:
            selection = check_selection(list(names))
            verified = session.content.revision(revision)
        except RestoreRefused as e:
            raise errors.InvalidArgument(str(e)) from None
        except RevisionNotKept as e:
            raise errors.NotFound(str(e)) from None
        relay = ProgressRelay(self.env.clock, report)
        restorer = Restorer(
            session.content,
            Path(directory),
            selection,
            verified.number,
            overwrite,
            relay.post,
        )
        restoring: Deferred[RestoreOutcome] = self.env.blocking(restorer.run)
        restoring.addBoth(relay.close)
        restoring.addErrback(_restore_error)
        return self._reading_while(verified, restoring)

    def check_content(
        self, read_data: bool, repair: bool, report: ProgressReport
    ) -> Deferred[ContentCheckReport]:
        """CheckContent: verify our own store (with ``read_data``, every
        byte); with ``repair``, fetch what is damaged back from replicas and
        check again. Fires with the report; damage is in it, not an error.
        """
        session = self._require_unlocked()
        content = session.content
        checking: Deferred[ContentCheckReport] = session.repair.check(
            read_data, repair, report
        )
        for number in content.kept_revision_numbers():
            try:
                checking = self._reading_while(content.revision(number), checking)
            except Exception:
                continue  # the check reports it
        return checking

    def _reading_while(self, revision: VerifiedRevision, d: Deferred[T]) -> Deferred[T]:
        """Keep ``revision``'s blobs from garbage collection until ``d`` fires."""
        self._reading.append(revision)

        def done(result: T) -> T:
            self._reading.remove(revision)
            return result

        return d.addBoth(done)

    # -- backups -----------------------------------------------------------

    def sources(self) -> list[Source]:
        """The source folders, sorted by name."""
        return list(self._require_unlocked().backups.sources)

    def add_source(
        self,
        path: str,
        name: str = "",
        excludes: list[str] | None = None,
        replace: bool = False,
    ) -> Deferred[Source]:
        """Back up the folder ``path`` (absolute, readable by the daemon)
        under ``name``; durable when the Deferred fires."""
        backups = self._require_unlocked().backups
        return Deferred.fromCoroutine(
            backups.add_source(path, name, list(excludes or ()), replace)
        )

    def remove_source(self, path: str = "", name: str = "") -> Deferred[Source]:
        """Stop backing up a folder (named by path or name). Its files stay
        in the file set as the last run left them."""
        backups = self._require_unlocked().backups
        return Deferred.fromCoroutine(backups.remove_source(path, name))

    def set_schedule(self, every_seconds: int) -> Deferred[ScheduleState]:
        """Back up every ``every_seconds`` (0: off), counted from the end of
        the last run."""
        backups = self._require_unlocked().backups
        return Deferred.fromCoroutine(backups.set_schedule(every_seconds))

    def schedule(self) -> ScheduleState:
        return self._require_unlocked().backups.state()

    def add_paths(
        self, paths: list[PathToAdd], report: ProgressReport
    ) -> Deferred[AddPathsResult]:
        """``files add`` read by the daemon itself (see Backups.add_paths):
        unchanged files are not read; one revision, or none."""
        backups = self._require_unlocked().backups
        return Deferred.fromCoroutine(backups.add_paths(paths, report))

    def stat_files(self, names: list[str]) -> Deferred[tuple[int, list[Any]]]:
        """The current revision's number and the record of each name (None
        when absent): what a streaming ``files add`` needs of the files
        cache to send only changed files."""
        if len(names) > MAX_STAT_NAMES:
            raise errors.InvalidArgument(f"at most {MAX_STAT_NAMES} names at once")
        content = self._require_unlocked().content

        def look_up() -> tuple[int, list[Any]]:
            current = content.current
            records: list[Any] = []
            for name in names:
                try:
                    records.append(content.file_entry(name))
                except (KeyError, ValueError):
                    records.append(None)
            return (current.number if current else 0), records

        return self.env.blocking(look_up)

    def backup_now(self, report: ProgressReport) -> Deferred[RunOutcome]:
        """Back up the sources now (or after the run in progress); fires
        with the run's outcome, failed runs included (``error`` says)."""
        return self._require_unlocked().backups.backup_now(report)

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
        pubkey = self._peer_pubkey(onion_address)
        await session.network.ready()
        hint = endpoint or session.records.endpoint(pubkey)
        session.records.remember(
            pubkey, int(self.env.now()), endpoint=hint, share=share, known_by_user=True
        )
        try:
            await session.pool.dial(pubkey, hint)
        except DestinationRefused as e:
            raise errors.InvalidArgument(str(e)) from None
        except Exception as e:
            raise _connect_error(onion_address_from_pubkey(pubkey), e) from None
        return self._peer_info(pubkey)

    def discover_peers(self, onion_addresses: Sequence[str]) -> Deferred[Discovery]:
        """DiscoverPeers: ask known peers (the named ones, else every known
        peer connected now) for the peers they share; nothing is recorded."""
        session = self._require_unlocked()
        if len(onion_addresses) > MAX_ASKED:
            raise errors.InvalidArgument(f"ask at most {MAX_ASKED} peers at once")
        targets = list(dict.fromkeys(self._peer_pubkey(a) for a in onion_addresses))
        for pubkey in targets:
            if session.records.get(pubkey) is None:
                raise errors.NotFound(
                    f"{onion_address_from_pubkey(pubkey)} is not a known peer: "
                    "connect it first"
                )
        return Deferred.fromCoroutine(
            discover(
                session.pool,
                self.env.clock,
                lambda pubkey: session.records.get(pubkey) is not None,
                session.records.endpoint,
                session.keys.onion_address,
                targets,
            )
        )

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
        scores = session.book.scores
        chat_key = session.chat.peer_key(pubkey)
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
            audit_score=scores.audit_score_of(pubkey),
            uptime_score=scores.uptime_score_of(pubkey),
            checks_passed=record.checks_passed,
            checks_failed=record.checks_failed,
            last_check=record.last_check_at,
            chat_key_fingerprint=chat_key.fingerprint() if chat_key else "",
        )

    def _peer_pubkey(self, onion_address: str) -> bytes:
        """The key of a peer the user named; never our own address."""
        session = self._require_unlocked()
        try:
            address = normalize_onion_address(onion_address)
        except InvalidOnionAddress as e:
            raise errors.InvalidArgument(str(e)) from None
        if address == session.keys.onion_address:
            raise errors.InvalidArgument("that is this node's own onion address")
        return pubkey_from_onion_address(address)

    # -- chat --------------------------------------------------------------

    def set_chat_key(
        self,
        onion_address: str,
        *,
        key: bytes = b"",
        key_text: str = "",
        generate: bool = False,
        clear: bool = False,
    ) -> Deferred[ChatKeyResult]:
        """SetAeadKeyForPeer: set, generate or clear the peer's chat key.

        Exactly one of ``key`` (32 bytes), ``key_text`` (as ``peers key
        --generate`` printed it), ``generate`` and ``clear``. Durable when
        the Deferred fires. A peer never seen gets a record (the user named
        it). Neither the key nor what was typed ever reaches an error.
        """
        return Deferred.fromCoroutine(
            self._set_chat_key(onion_address, key, key_text, generate, clear)
        )

    async def _set_chat_key(
        self, onion_address: str, key: bytes, key_text: str, generate: bool, clear: bool
    ) -> ChatKeyResult:
        session = self._require_unlocked()
        pubkey = self._peer_pubkey(onion_address)
        given = sum((bool(key), bool(key_text), generate, clear))
        if given != 1:
            raise errors.InvalidArgument(
                "give exactly one of a key, a key as text, generate or clear"
            )
        secret: bytes | None
        if clear:
            secret = None
        elif generate:
            secret = session.chat.generate_key()
        elif key_text:
            try:
                secret = chat_keys.decode(key_text)
            except chat_keys.PeerKeyError as e:
                raise errors.InvalidArgument(str(e)) from None
        elif len(key) != chat_keys.KEY_LENGTH:
            raise errors.InvalidArgument(
                f"a chat key is {chat_keys.KEY_LENGTH} bytes, not {len(key)}"
            )
        else:
            secret = bytes(key)
        await session.chat.set_key(pubkey, secret)
        return ChatKeyResult(
            onion_address=onion_address_from_pubkey(pubkey),
            fingerprint=chat_keys.fingerprint(secret) if secret else "",
            key_text=chat_keys.encode(secret) if generate and secret else "",
        )

    def open_chat(
        self, onion_address: str, listener: Listener, plain: bool = False
    ) -> Deferred[ChatAttachment]:
        """Attach ``listener`` to the chat with a peer (the Chat RPC).

        Encrypted whenever a key is set for the peer; plain only when
        ``plain`` is asked for. The attachment takes the user's actions;
        what happens comes to ``listener`` as the updates of results.py.
        """
        return Deferred.fromCoroutine(self._open_chat(onion_address, listener, plain))

    async def _open_chat(
        self, onion_address: str, listener: Listener, plain: bool
    ) -> ChatAttachment:
        session = self._require_unlocked()
        pubkey = self._peer_pubkey(onion_address)
        await session.network.ready()
        try:
            return session.chat.attach(pubkey, listener, plain=plain)
        except NoChatKey as e:
            raise errors.FailedPrecondition(str(e)) from None
        except ChatError as e:
            raise errors.ResourceExhausted(str(e)) from None

    def chat_overview(self) -> list[ChatOverview]:
        """What `chat --list` shows: queued messages, offers, sessions."""
        return self._require_unlocked().chat.overview()

    # -- storage -----------------------------------------------------------

    def set_storage_config(
        self,
        total_bytes: int | None = None,
        min_replicas: int | None = None,
        acceptance_policy: str | None = None,
    ) -> Deferred[StorageReport]:
        """Change what is given (None keeps a value); fires with the report."""
        session = self._require_unlocked()
        if total_bytes is not None and total_bytes < 0:
            raise errors.InvalidArgument("total_bytes cannot be negative")
        if min_replicas is not None and not 0 <= min_replicas <= MAX_MIN_REPLICAS:
            raise errors.InvalidArgument(
                f"min_replicas must be between 0 and {MAX_MIN_REPLICAS}"
            )
        if acceptance_policy is not None:
            try:
                AcceptancePolicy(acceptance_policy)
            except ValueError:
                names = ", ".join(p.value for p in AcceptancePolicy)
                raise errors.InvalidArgument(
                    f"the acceptance policy is one of {names}, "
                    f"not {acceptance_policy!r}"
                ) from None

        def update() -> None:
            def change(metadata: Any) -> None:
                if total_bytes is not None:
                    metadata.storage.total_bytes = total_bytes
                if min_replicas is not None:
                    metadata.storage.min_replicas = min_replicas
                if acceptance_policy is not None:
                    metadata.storage.acceptance_policy = acceptance_policy

            session.metadata.update(change)

        def updated(_: object) -> StorageReport:
            # A new minimum or budget may call for contracts.
            session.book.planner.schedule()
            return self.storage_report()

        return self.env.blocking(update).addCallback(updated)

    def storage_report(self) -> StorageReport:
        session = self._require_unlocked()
        book = session.book
        replicas = session.replicas
        budget = book.budget()
        obligations = [
            Obligation(
                onion_address=onion_address_from_pubkey(o.peer),
                revision=o.revision,
                stored_bytes=o.stored_bytes,
                granted_bytes=o.granted_bytes,
                contract_id=o.contract_id,
                state=o.state,
            )
            for o in book.obligations()
        ]
        config = session.metadata.get().storage
        return StorageReport(
            total_bytes=effective_total_bytes(config),
            min_replicas=book.min_replicas(),
            used_bytes=replicas.used_bytes,
            free_bytes=budget.free_bytes,
            obligations=obligations,
            obligated_bytes=budget.obligations_bytes,
            acceptance_policy=book.acceptance_policy().value,
        )

    # -- contracts ---------------------------------------------------------

    def contracts(self) -> list[ContractInfo]:
        """Every contract, in the order they were made."""
        session = self._require_unlocked()
        views = sorted(session.book.views(), key=lambda v: (v.created_at, v.peer))
        return [_contract_info(view) for view in views]

    def propose_contract(
        self,
        onion_address: str,
        our_bytes: int,
        their_bytes: int,
        report: ProgressReport,
    ) -> Deferred[ContractInfo]:
        """ProposeContract: negotiating → syncing → active, reported as it
        goes; fires with the contract (refusals fail with the peer's reason).
        """
        session = self._require_unlocked()
        pubkey = self._peer_pubkey(onion_address)

        async def run() -> ContractInfo:
            await session.network.ready()
            try:
                entry = await session.book.propose(
                    pubkey, our_bytes, their_bytes, report
                )
            except Exception as error:
                raise _contract_error(error) from None
            return self._info(entry)

        return Deferred.fromCoroutine(run())

    def check_contract(
        self,
        contract_id: bytes,
        onion_address: str,
        kind: str,
        samples: int,
        report: ProgressReport,
    ) -> Deferred[CheckReport]:
        """CheckContract: challenge → answer → verdict, reported as it goes."""
        session = self._require_unlocked()
        if kind and kind not in CHECK_KINDS:
            raise errors.InvalidArgument(
                f"a check is {' or '.join(CHECK_KINDS)}, not {kind!r}"
            )
        if samples and not 1 <= samples <= 4096:
            raise errors.InvalidArgument("samples must be between 1 and 4096")
        entry = self._find_contract(contract_id, onion_address)

        async def run() -> CheckReport:
            try:
                outcome = await session.book.check_now(entry, report, kind, samples)
            except Exception as error:
                raise _contract_error(error) from None
            return CheckReport(
                contract=self._info(entry),
                kind=outcome.kind,
                passed=outcome.passed,
                verdict=outcome.verdict,
                positions=outcome.positions,
                confidence=outcome.confidence,
            )

        return Deferred.fromCoroutine(run())

    def end_contract(
        self, contract_id: bytes, onion_address: str, reason: str = ""
    ) -> ContractInfo:
        """End a contract gracefully: the peer is told, data kept until moved."""
        session = self._require_unlocked()
        entry = self._find_contract(contract_id, onion_address)
        try:
            session.book.end(entry, reason)
        except Exception as error:
            raise _contract_error(error) from None
        return self._info(entry)

    def answer_contract(
        self, contract_id: bytes, accept: bool, reason: str = ""
    ) -> Deferred[ContractInfo]:
        """Approve or decline a proposal waiting for the user (policy manual)."""
        session = self._require_unlocked()
        entry = self._find_contract(contract_id, "")
        try:
            sending = session.book.answer_pending(entry, accept, reason)
        except Exception as error:
            raise _contract_error(error) from None
        return sending.addCallback(lambda _: self._info(entry))

    def _find_contract(self, contract_id: bytes, onion_address: str) -> ContractEntry:
        session = self._require_unlocked()
        if bool(contract_id) == bool(onion_address):
            raise errors.InvalidArgument("name either a contract id or a peer")
        if contract_id and len(contract_id) != 32:
            raise errors.InvalidArgument("a contract id is 32 bytes (64 hex digits)")
        peer = self._peer_pubkey(onion_address) if onion_address else b""
        try:
            return session.book.find(contract_id, peer)
        except Exception as error:
            raise _contract_error(error) from None

    def _info(self, entry: ContractEntry) -> ContractInfo:
        return _contract_info(self._require_unlocked().book.view(entry))

    # -- replication -------------------------------------------------------

    def replicate(
        self, onion_addresses: list[str], report: ProgressReport
    ) -> Deferred[list[PushResult | None]]:
        """Sync my contracts now: bring every peer under a contract in force
        (or those named) to our current revision, reporting progress ("done"
        or "failed" per peer); fires once every peer is done.
        """
        session = self._require_unlocked()
        current = session.content.current
        if current is None:
            raise errors.FailedPrecondition("no content yet: add files first")
        peers = [self._peer_pubkey(address) for address in onion_addresses]
        book = session.book
        under_contract = {e.peer for e in book.entries() if e.in_force}
        for pubkey in peers:
            if pubkey not in under_contract:
                raise errors.FailedPrecondition(
                    f"{onion_address_from_pubkey(pubkey)} keeps our content only "
                    "under a contract: `barterbackup contracts propose` first"
                )
        if not under_contract:
            raise errors.FailedPrecondition(
                "no contract in force: `barterbackup contracts propose ONION "
                "--ours SIZE --theirs SIZE` first"
            )
        return book.sync_now(peers, report)


def _contract_info(view: ContractView) -> ContractInfo:
    return ContractInfo(
        contract_id=view.contract_id,
        peer=onion_address_from_pubkey(view.peer),
        state=view.state,
        our_bytes=view.our_bytes,
        their_bytes=view.their_bytes,
        stored_bytes=view.stored_bytes,
        peer_revision=view.peer_revision,
        audit_score=view.audit_score,
        uptime_score=view.uptime_score,
        last_check=view.last_check_at,
        last_check_passed=view.last_check_passed,
        last_verdict=view.last_verdict,
        next_check=view.next_check_at or 0.0,
        detail=view.detail,
        we_proposed=view.we_proposed,
        since=view.since,
        created_at=view.created_at,
    )


def _contract_error(error: Exception) -> Exception:
    """The node API's error for a contract operation's failure."""
    if isinstance(error, errors.NodeError):
        return error
    text = str(error)
    if isinstance(error, contract_errors.UnknownContract):
        return errors.NotFound(text)
    if isinstance(error, contract_errors.PeerUnreachable):
        return errors.Unavailable(text)
    if isinstance(error, contract_errors.ProposalRefused):
        return errors.FailedPrecondition(f"the peer refused: {text}")
    if isinstance(error, contract_errors.ContractError):
        return errors.FailedPrecondition(text)
    if isinstance(error, InvalidTerms):
        return errors.InvalidArgument(text)
    return error


def _restore_error(failure: Failure) -> Failure:
    """A restore that could not start, as the node API's error."""
    error = failure.value
    if isinstance(error, RestoreRefused):
        raise errors.InvalidArgument(str(error))
    if isinstance(error, RevisionNotKept):
        raise errors.NotFound(str(error))
    return failure


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
