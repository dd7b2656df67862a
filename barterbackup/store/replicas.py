"""Other nodes' content stored here, each owner within its budget.

Layout under the node directory::

    replicas/<owner id>/record.sealed    sealed ReplicaRecord
    replicas/<owner id>/packs/           the owner's blobs (sections, tree
                                         nodes, manifest chunks) in packs
    replicas/quarantine/                 owner directories that failed to open

``<owner id>`` is a keyed hash of the owner's key, and the record is sealed,
so the directory tells a reader neither whom we store for nor what.

The record names the revision held completely (``held``), the one being
fetched (``pending``) and the packs that were installed when ``held``
became complete (``complete_packs``): a tree node in one of those has its
whole subtree stored, which is what lets a sync skip a subtree it holds
while never trusting a node an interrupted sync left without its children.

This store knows blobs, not trees: the data plane (``sync/``) walks the
trees, decides what to fetch and what stays live, and calls in here.

Crash safety (numbered points for the kill -9 tests, ``crash_point``):

* ``begin`` writes the record with the new ``pending`` (atomic write).
* ``store_blobs`` appends to an open pack (temp names); every
  ``INSTALL_EVERY_BYTES`` the pack is finished and installed (101-103), so
  an interrupted sync keeps what it fetched and resumes.
* ``finish`` installs the last pack (104-106), then writes the record with
  ``held`` = the pending revision (107: the commit point), then drops blobs
  no held revision needs (108). A crash before 107 leaves the old ``held``
  intact and the fetched blobs stored for the resumed sync; after it, the
  new revision is held and unneeded blobs go at the next finish or delete.
* ``delete`` renames the owner's directory aside (the commit point), then
  removes it; open removes a renamed directory a crash left.
* Open removes temp files and packs without an index (never referenced).

Quotas count every byte a peer makes us keep: its packs, their indexes and
its record. Only a contract grants storage: ``grant(owner)`` gives the most
an owner may keep here (its contract's size, or 0 without a contract in
force), and the contract book decides it; this store only enforces it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from barterbackup._proto import storedpb_pb2
from barterbackup.revisions import InvalidRevision, VerifiedRevision, verify_root
from barterbackup.store.atomic import (
    atomic_write,
    fsync_directory,
    make_private_directory,
    remove_leftovers,
    unused_path,
)
from barterbackup.store.packs import (
    INDEX_ENTRY,
    PackStore,
    PackWriter,
    SectionCorrupt,
    SectionMissing,
)
from barterbackup.store.sealed import SealedRecordError, open_sealed, seal

GIB = 1024 * 1024 * 1024
# The budget lent to peers while the user has not set one: enough for a
# small file set to be traded out of the box, small enough not to surprise.
DEFAULT_TOTAL_BYTES = 1 * GIB
RECORD_FILENAME = "record.sealed"
PACKS_DIRNAME = "packs"
QUARANTINE_DIRNAME = "quarantine"
# An owner directory being deleted is renamed to this prefix and its name
# (owner ids are hex: no owner's directory starts with it).
DELETING_PREFIX = ".deleting-"
RECORD_AD = b"barterbackup v2 replica record\x00"
MAX_RECORD_BYTES = 1024 * 1024
# Install the open pack once it holds this much: an interrupted sync loses
# at most this much work, and a resumed one refetches nothing else.
INSTALL_EVERY_BYTES = 64 * 1024 * 1024
OWNER_ID_BYTES = 16

CrashPoint = Callable[[int], None]


def _no_crash(number: int) -> None:
    """Crash points do nothing unless a test gives a real one."""


class ReplicaError(Exception):
    """Base class for replica store refusals; messages are fit for peers."""


class QuotaExceeded(ReplicaError):
    """Storing would exceed what the owner's contract grants."""


class NoContract(ReplicaError):
    """The owner has no contract in force here that grants it storage."""


class StaleRevision(ReplicaError):
    """The revision is older than (or conflicts with) the one held."""


class BadBlob(ReplicaError):
    """Blob bytes do not match their hash (or the length they must have)."""


class UnknownRevision(ReplicaError):
    """Nothing of that owner, or not that revision, is being stored here."""


class ReplicaRecordError(ReplicaError):
    """A replica record on disk is unreadable, tampered or foreign."""


def effective_total_bytes(config: storedpb_pb2.StorageConfig) -> int:
    """What all contracts together may oblige us to keep (0: the default)."""
    return config.total_bytes or DEFAULT_TOTAL_BYTES


# grant(owner): the most ``owner`` may keep here, 0 without a contract.
Grant = Callable[[bytes], int]


@dataclass(frozen=True)
class HeldReplica:
    """One owner's content as held here."""

    # held is the newest revision stored completely (what can be served
    # back), pending the one being fetched.
    held: VerifiedRevision | None
    pending: VerifiedRevision | None
    stored_bytes: int

    @property
    def shown(self) -> VerifiedRevision:
        """What to report as held: the complete revision, else the pending."""
        shown = self.held or self.pending
        assert shown is not None, "a HeldReplica always has a revision"
        return shown

    def revision_for(self, content_id: bytes) -> VerifiedRevision | None:
        """The held or pending revision named ``content_id``."""
        for revision in (self.held, self.pending):
            if revision is not None and revision.content_id == content_id:
                return revision
        return None


@dataclass(frozen=True)
class Quarantined:
    """An owner directory that failed to open and was moved aside."""

    path: Path
    reason: str


class _Owner:
    """One owner's directory: its record, its packs, the open writer."""

    def __init__(
        self,
        owner: bytes,
        directory: Path,
        packs: PackStore,
        held: VerifiedRevision | None,
        pending: VerifiedRevision | None,
        complete_packs: set[str],
    ) -> None:
        self.owner = owner
        self.directory = directory
        self.packs = packs
        self.held = held
        self.pending = pending
        self.complete_packs = complete_packs
        self.writer: tuple[int, PackWriter] | None = None
        # Held while blobs are appended to the writer, outside the store's
        # lock: the reactor's has_blob and read_blob never wait on a disk
        # write. Taken before the store's lock, never after.
        self.write_lock = threading.Lock()
        self.record_bytes = 0
        self.disk_bytes = packs.disk_bytes()

    @property
    def stored_bytes(self) -> int:
        writing = 0
        if self.writer is not None:
            _, writer = self.writer
            writing = writer.size + INDEX_ENTRY.size * writer.count
        return self.disk_bytes + self.record_bytes + writing


class ReplicaStore:
    """Peers' content on disk, with quotas; safe to call from any thread.

    ``grant(owner)`` gives the most an owner may keep here (0: nothing, it
    has no contract in force); ``naming_key`` turns owner keys into
    directory names and ``sealing_key`` seals the records (both subkeys of
    this node's keys).
    """

    def __init__(
        self,
        root: Path,
        grant: Grant,
        naming_key: bytes,
        sealing_key: bytes,
        crash_point: CrashPoint = _no_crash,
        install_every_bytes: int = INSTALL_EVERY_BYTES,
    ) -> None:
        self._root = root
        self._install_every = install_every_bytes
        self._grant = grant
        self._naming_key = naming_key
        self._sealing_key = sealing_key
        self._crash_point = crash_point
        self._owners: dict[bytes, _Owner] = {}
        self._lock = threading.RLock()
        self.quarantined: list[Quarantined] = []

    @classmethod
    def open(
        cls,
        root: Path,
        grant: Grant,
        naming_key: bytes,
        sealing_key: bytes,
        crash_point: CrashPoint = _no_crash,
        install_every_bytes: int = INSTALL_EVERY_BYTES,
    ) -> ReplicaStore:
        """Open (creating) ``root``: clean leftovers, load every owner.

        An owner directory that does not open (a tampered or foreign record,
        a stray directory) is moved to ``quarantine/`` and listed in
        ``quarantined``: one bad entry never stops the node from unlocking.
        """
        root = make_private_directory(Path(root))
        store = cls(
            root, grant, naming_key, sealing_key, crash_point, install_every_bytes
        )
        for directory in sorted(root.iterdir()):
            if directory.name == QUARANTINE_DIRNAME:
                continue
            if directory.name.startswith(DELETING_PREFIX):
                # A delete the process did not finish: its commit point (the
                # rename) was passed, so what is left goes.
                if directory.is_dir() and not directory.is_symlink():
                    shutil.rmtree(directory)
                else:
                    directory.unlink()
                fsync_directory(root)
                continue
            try:
                if not directory.is_dir() or directory.is_symlink():
                    raise ReplicaRecordError("not an owner directory")
                state = store._load(directory)
            except (ReplicaRecordError, OSError, SectionCorrupt) as error:
                store._quarantine(directory, str(error))
                continue
            store._owners[state.owner] = state
        return store

    # ---- queries -----------------------------------------------------

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(state.stored_bytes for state in self._owners.values())

    def usage(self) -> dict[bytes, int]:
        with self._lock:
            return {o: s.stored_bytes for o, s in self._owners.items()}

    def granted_bytes(self, owner: bytes) -> int:
        """The most ``owner`` may store here right now (0: no contract)."""
        return max(0, self._grant(owner))

    def owners(self) -> list[bytes]:
        """Every owner with a directory here (held, pending or empty)."""
        with self._lock:
            return list(self._owners)

    def held(self, owner: bytes) -> HeldReplica | None:
        with self._lock:
            state = self._owners.get(owner)
            if state is None or (state.held is None and state.pending is None):
                return None
            return HeldReplica(state.held, state.pending, state.stored_bytes)

    def has_blob(self, owner: bytes, sha256: bytes) -> bool:
        """Whether an installed pack of ``owner`` holds the blob."""
        with self._lock:
            state = self._owners.get(owner)
            return state is not None and state.packs.has(sha256)

    def holds_subtree(self, owner: bytes, node_hash: bytes) -> bool:
        """Whether the tree node's whole subtree is stored (see module doc)."""
        with self._lock:
            state = self._owners.get(owner)
            if state is None:
                return False
            pack = state.packs.pack_of(node_hash)
            return pack is not None and pack in state.complete_packs

    def read_blob(self, owner: bytes, sha256: bytes) -> bytes:
        """A stored blob, checked against its hash."""
        with self._lock:
            state = self._owners.get(owner)
            if state is None:
                raise UnknownRevision("no content of that node is held here")
            packs = state.packs
        try:
            return packs.read(sha256)
        except SectionMissing:
            raise UnknownRevision(
                f"blob {sha256.hex()[:16]} is not stored here"
            ) from None
        except SectionCorrupt as error:
            raise BadBlob(f"a stored blob is corrupted on disk: {error}") from None

    # ---- sync ----------------------------------------------------------

    def begin(self, owner: bytes, signed_root: bytes) -> VerifiedRevision:
        """Check a revision the owner asks us to store; make it pending.

        Raises InvalidRevision, StaleRevision or QuotaExceeded, and then
        changes nothing on disk. Asking again for the revision already held
        or pending changes nothing either.
        """
        revision = verify_root(signed_root, expected_owner=owner)
        with self._lock:
            state = self._owners.get(owner)
            held = state.held if state else None
            pending = state.pending if state else None
            _refuse_stale(revision, held, pending)
            for known in (held, pending):
                if known is not None and known.content_id == revision.content_id:
                    return revision
            # The sections and manifest chunks alone take this much; nodes
            # and what is shared with the held revision are settled as the
            # blobs arrive (store_blob checks every write).
            needed = revision.content_length + revision.manifest.byte_count
            if revision.node_state is not None:
                needed += revision.node_state[1]
            self._refuse_over_budget(owner, needed, "the revision")
            if state is None:
                state = self._create(owner)
            state.pending = revision
            self._write_record(state)
            return revision

    def store_blobs(
        self, owner: bytes, content_id: bytes, blobs: list[tuple[bytes, bytes]]
    ) -> None:
        """Keep blobs (hash, bytes) of the pending revision, checked.

        The hashes are checked first; BadBlob, UnknownRevision or
        QuotaExceeded write nothing of the batch.
        """
        for sha256, data in blobs:
            if hashlib.sha256(data).digest() != sha256:
                raise BadBlob(f"blob {sha256.hex()[:16]} does not match its hash")
        with self._lock:
            state = self._pending_state(owner, content_id)
        with state.write_lock:
            with self._lock:
                if self._pending_state(owner, content_id) is not state:
                    raise UnknownRevision("that sync was ended meanwhile")
                known = state.packs.claim_or_reserve_many(
                    [sha256 for sha256, _ in blobs], set()
                )
                fresh: list[tuple[bytes, bytes]] = []
                seen: set[bytes] = set()
                for (sha256, data), stored in zip(blobs, known, strict=True):
                    # Stored, or written earlier in this sync: nothing to do.
                    if stored or sha256 in seen:
                        continue
                    seen.add(sha256)
                    fresh.append((sha256, data))
                if not fresh:
                    return
                adding = sum(len(data) + INDEX_ENTRY.size for _, data in fresh)
                self._refuse_over_budget(
                    owner, state.stored_bytes + adding, "storing these blobs"
                )
                if state.writer is None:
                    state.writer = state.packs.new_writer()
                number, writer = state.writer
            first = writer.append(
                b"".join(data for _, data in fresh),
                [(sha256, len(data)) for sha256, data in fresh],
            )
            with self._lock:
                state.packs.reserve(number, first, [sha256 for sha256, _ in fresh])
            if writer.size >= self._install_every:
                self._install(state, offset=100)

    def checkpoint(self, owner: bytes) -> None:
        """Make what an unfinished sync stored durable (it resumes from it)."""
        with self._lock:
            state = self._owners.get(owner)
        if state is None:
            return
        with state.write_lock:
            self._install(state, offset=100)

    def finish(
        self, owner: bytes, content_id: bytes, live: Callable[[], Iterable[bytes]]
    ) -> HeldReplica:
        """Make the pending revision the held one, then drop what it does
        not need.

        ``live()`` gives the hash of every blob the revision references
        (walked by the caller, which knows trees): those are kept, the rest
        goes. The caller has checked that every one of them is stored.
        """
        with self._lock:
            state = self._pending_state(owner, content_id)
        # The disk work (the last pack's fsync, walking the tree, the sweep)
        # runs under the owner's write lock only: the reactor's reads of
        # this and every other replica go on meanwhile.
        with state.write_lock:
            self._install(state, offset=103)
            with self._lock:
                if self._pending_state(owner, content_id) is not state:
                    raise UnknownRevision("that sync was ended meanwhile")
                state.held, state.pending = state.pending, None
                state.complete_packs = set(state.packs.pack_ids())
                self._write_record(state)
            self._crash_point(107)
            # Marks, a bit per index entry, not a set of every hash: a
            # 20 GiB replica's 1.2 million blobs cost ~150 KB, not ~130 MB.
            marks = state.packs.new_marks()
            for sha256 in live():
                state.packs.mark(marks, sha256)
            state.packs.sweep(marks)
            self._crash_point(108)
            with self._lock:
                state.disk_bytes = state.packs.disk_bytes()
                held = self.held(owner)
        assert held is not None
        return held

    def delete(self, owner: bytes) -> None:
        """Forget everything held for ``owner``.

        Under the store's lock only the directory is renamed aside (the
        commit point: open no longer loads it, and the owner's directory
        name is free for a new sync); its files are removed after, outside
        the lock. Removing a 1 GiB replica took
        over a second, and every query of every replica — the reactor's
        too — waited for it. A crash before the removal ends leaves the
        renamed directory, which the next open removes.
        """
        with self._lock:
            state = self._owners.get(owner)
        if state is None:
            return
        with state.write_lock:
            with self._lock:
                if self._owners.get(owner) is not state:
                    return
                del self._owners[owner]
                if state.writer is not None:
                    state.packs.release(state.writer[0])
                state.packs.close()
                doomed = unused_path(self._root, DELETING_PREFIX + state.directory.name)
                os.replace(state.directory, doomed)
            fsync_directory(self._root)
            shutil.rmtree(doomed)
            fsync_directory(self._root)

    def close(self) -> None:
        """Drop open packs (their blobs are fetched again) and close files."""
        with self._lock:
            states = list(self._owners.values())
        for state in states:
            with state.write_lock, self._lock:
                if state.writer is not None:
                    state.packs.release(state.writer[0])
                    state.writer = None
                state.packs.close()

    # ---- internals ----------------------------------------------------

    def _pending_state(self, owner: bytes, content_id: bytes) -> _Owner:
        state = self._owners.get(owner)
        if state is None or state.pending is None:
            raise UnknownRevision("no revision of that node is being stored")
        if state.pending.content_id != content_id:
            raise UnknownRevision("that revision is not the one being stored")
        return state

    def _install(self, state: _Owner, offset: int) -> None:
        """Install the owner's open pack. The caller holds its write lock;
        the fsyncs run outside the store's lock (the writer stays counted
        in ``stored_bytes`` until the installed pack is)."""
        with self._lock:
            if state.writer is None:
                return
            number, _ = state.writer
        self._crash_point(offset + 1)
        state.packs.install_all(
            [number], lambda point: self._crash_point(offset + point)
        )
        with self._lock:
            state.writer = None
            state.disk_bytes = state.packs.disk_bytes()

    def _refuse_over_budget(self, owner: bytes, needed: int, what: str) -> None:
        """NoContract or QuotaExceeded unless ``owner`` may hold ``needed``
        bytes in all (the one place quota arithmetic happens)."""
        granted = self.granted_bytes(owner)
        if granted <= 0:
            raise NoContract(
                "this node keeps your content only under a contract in force"
            )
        if needed > granted:
            raise QuotaExceeded(
                f"{what} needs {needed} bytes here but your contract lets you "
                f"store at most {granted} bytes"
            )

    def _owner_id(self, owner: bytes) -> str:
        digest = hmac.digest(self._naming_key, owner, "sha256")
        return digest[:OWNER_ID_BYTES].hex()

    def _create(self, owner: bytes) -> _Owner:
        directory = self._root / self._owner_id(owner)
        make_private_directory(directory / PACKS_DIRNAME)
        fsync_directory(self._root)
        state = _Owner(
            owner, directory, PackStore(directory / PACKS_DIRNAME), None, None, set()
        )
        self._owners[owner] = state
        return state

    def _write_record(self, state: _Owner) -> None:
        record = storedpb_pb2.ReplicaRecord(
            owner_pubkey=state.owner,
            held=state.held.signed if state.held else b"",
            pending=state.pending.signed if state.pending else b"",
            complete_packs=sorted(state.complete_packs),
        )
        # Bound to its directory: a record cannot be passed off as another
        # owner's (the directory name is the owner's keyed hash).
        sealed = seal(
            self._sealing_key,
            record.SerializeToString(deterministic=True),
            RECORD_AD + state.directory.name.encode("ascii"),
        )
        atomic_write(state.directory / RECORD_FILENAME, sealed)
        state.record_bytes = len(sealed)

    def _load(self, directory: Path) -> _Owner:
        where = f"replica directory {directory.name}"
        remove_leftovers(directory)
        path = directory / RECORD_FILENAME
        try:
            with path.open("rb") as handle:
                # Sized before reading: a record damaged to 2**40 bytes must
                # not be read into memory to find out it is too large.
                if os.fstat(handle.fileno()).st_size > MAX_RECORD_BYTES:
                    raise ReplicaRecordError(f"{where}: its record is too large")
                sealed = handle.read()
        except FileNotFoundError:
            raise ReplicaRecordError(f"{where} has no record") from None
        record = self._open_record(sealed, directory, where)
        owner = bytes(record.owner_pubkey)
        if len(owner) != 32 or self._owner_id(owner) != directory.name:
            raise ReplicaRecordError(f"{where} does not belong to its record")
        try:
            held = verify_root(record.held, owner) if record.held else None
            pending = verify_root(record.pending, owner) if record.pending else None
        except InvalidRevision as error:
            raise ReplicaRecordError(f"{where}: {error}") from None
        if held is not None and pending is not None and pending.number <= held.number:
            pending = None  # a crash between finishing and dropping pending
        packs = PackStore(directory / PACKS_DIRNAME)
        state = _Owner(
            owner, directory, packs, held, pending, set(record.complete_packs)
        )
        state.record_bytes = len(sealed)
        return state

    def _open_record(
        self, sealed: bytes, directory: Path, where: str
    ) -> storedpb_pb2.ReplicaRecord:
        try:
            plain = open_sealed(
                self._sealing_key,
                sealed,
                RECORD_AD + directory.name.encode("ascii", "replace"),
                f"{where}'s record",
            )
            return storedpb_pb2.ReplicaRecord.FromString(plain)
        except SealedRecordError as error:
            raise ReplicaRecordError(str(error)) from None
        except DecodeError:
            raise ReplicaRecordError(f"{where}: its record does not parse") from None

    def _quarantine(self, directory: Path, reason: str) -> None:
        quarantine = make_private_directory(self._root / QUARANTINE_DIRNAME)
        target = unused_path(quarantine, directory.name)
        os.replace(directory, target)
        fsync_directory(self._root)
        self.quarantined.append(Quarantined(target, reason))


def _refuse_stale(
    revision: VerifiedRevision,
    held: VerifiedRevision | None,
    pending: VerifiedRevision | None,
) -> None:
    for known in (held, pending):
        if known is None:
            continue
        if revision.number < known.number:
            raise StaleRevision(
                f"revision {revision.number} is older than revision "
                f"{known.number} held here"
            )
        if revision.number == known.number and revision.content_id != known.content_id:
            raise StaleRevision(
                f"a different revision {known.number} is already held here"
            )
