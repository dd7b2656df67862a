"""The content engine: a file set → encrypted sections, trees, signed roots.

Layout under ``NODE/content/`` (docs/storage-format.md)::

    packs/<id>.pack, packs/<id>.idx   sections, tree nodes, manifest chunks
    revisions/<number>.rev            SignedRoot bytes, 20-digit number
    revisions/<number>.names          sealed name index and file count
    current                           the committed revision's number, ASCII

An update streams files through the packing pipeline (``pipeline``) and
journals its changes on disk (``journal``); its commit merge-joins the
previous manifest with those changes into a new section tree and manifest
(``commit``), whose nodes and chunks go into the same packs as the
sections. The commit makes the packs durable, then the name index, the
signed root, ``current`` (the commit point) and the sealed Metadata; a
crash at any instant leaves the last committed revision readable, and
``ContentStore.open`` removes what a crash left behind. Nothing held in
memory grows with the content's size or its number of files, beyond the
name index (about 110 bytes per 64 files).
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from barterbackup._proto import storedpb_pb2
from barterbackup.content.blobs import CommitSink, PackSource
from barterbackup.content.commit import NotInPreviousRevision, OldRevision, merge
from barterbackup.content.journal import PendingFile, UpdateJournal
from barterbackup.content.manifest import (
    FileRecord,
    InvalidManifest,
    ManifestError,
    ManifestIndex,
    ManifestKeys,
    ManifestReader,
    ManifestWriter,
    PlacedRecord,
)
from barterbackup.content.nameindex import (
    InvalidNameIndex,
    NameIndex,
    name_index_key_of,
    read_name_index,
    write_name_index,
)
from barterbackup.content.names import InvalidFileName, validate_name
from barterbackup.content.pipeline import (
    BATCH_BYTES,
    ENCRYPTION_THREADS,
    PIPELINE_DEPTH,
    BufferPool,
    EncryptionWorker,
    FileWriter,
    SmallFileBatcher,
)
from barterbackup.content.private import InvalidPrivateField, PrivateFields
from barterbackup.content.recovered import RecoveredBlobs
from barterbackup.content.sections import SectionKeyDeriver, section_encryptor
from barterbackup.keys.derive import NodeKeys
from barterbackup.logs import get_logger
from barterbackup.revisions import (
    MAX_SIGNED_ROOT_BYTES,
    InvalidRevision,
    VerifiedRevision,
    new_root,
    sign_root,
    verify_root,
)
from barterbackup.store.atomic import (
    atomic_delete,
    atomic_write,
    make_private_directory,
    remove_leftovers,
)
from barterbackup.store.crash import crash_point
from barterbackup.store.metadata import MetadataStore
from barterbackup.store.packs import (
    PackMarks,
    PackStore,
    SectionCorrupt,
    SectionMissing,
)
from barterbackup.tree import (
    ENTRY_BYTES,
    NodeCache,
    NodeRef,
    TreeBuilder,
    TreeError,
    TreeRoot,
    iter_packed,
    read_node,
)
from barterbackup.tree.nodes import HEADER_BYTES, Internal, Leaf

__all__ = [
    "BATCH_BYTES",
    "CommitResult",
    "ContentStore",
    "CorruptContent",
    "FileNotInSet",
    "FileRecord",
    "FileWriter",
    "IncompleteRevision",
    "InvalidFileName",
    "ManifestChunk",
    "RevisionNotKept",
    "SectionMissing",
    "Update",
    "UpdateInProgress",
]

log = get_logger("barterbackup.content")

_ENTRY = struct.Struct(">Q32s48s")
# The manifest's bounds of the stat fields (FileRecord checks them again).
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_U64_MAX = 2**64 - 1
# What a read of stored content may raise when the store is damaged.
_DAMAGE = (
    SectionCorrupt,
    SectionMissing,
    TreeError,
    InvalidManifest,
    InvalidPrivateField,
    OSError,
)


# Section tree nodes the readers keep decoded (~0.5-3 KB each).
READ_CACHE_NODES = 512


class _LockedCache:
    """A view of a shared NodeCache that takes its lock for each read."""

    def __init__(self, cache: NodeCache, lock: threading.Lock) -> None:
        self._cache = cache
        self._lock = lock

    def read(self, ref: NodeRef) -> Leaf | Internal:
        with self._lock:
            return self._cache.read(ref)


class CorruptContent(Exception):
    """Stored content fails its checks; the message names what is bad."""


class RevisionNotKept(LookupError):
    """The revision asked for is not (or no longer) stored here."""


@dataclass(frozen=True)
class ManifestChunk:
    """One chunk of a revision's manifest, as a check or a restore sees it.

    ``records`` are the chunk's files with their first sections; a chunk
    that cannot be read has none and ``error`` says why, while the name
    index still tells which files it held: those from ``first_name`` on,
    with the sections [first_section, stop_section).
    """

    number: int
    first_name: str
    first_section: int
    stop_section: int
    records: tuple[PlacedRecord, ...] = ()
    error: str = ""
    # blob is the damaged blob's hash when the error names one.
    blob: bytes = b""


class FileNotInSet(KeyError):
    """No file of that name is in the file set."""

    def __str__(self) -> str:
        return f"no file named {self.args[0]!r} in the file set"


class UpdateInProgress(Exception):
    """Another update of the file set is open."""


class IncompleteRevision(Exception):
    """A revision to install references a blob that is not stored."""


# node_state(): the sealed node state to name in the next revision (the
# session sets it; docs/recovery.md, "Node state"). None: no state.
NodeStateSource = Callable[[], bytes | None]


@dataclass(frozen=True)
class CommitResult:
    """What one update's commit did.

    ``changed`` is False when the update left the file set exactly as it
    was: nothing was written and ``revision`` is the revision kept.
    """

    revision: VerifiedRevision
    changed: bool
    files_written: int
    files_removed: int
    bytes_written: int
    new_section_bytes: int
    content_length: int
    # Bytes of new tree nodes and manifest chunks the commit stored (what a
    # replica fetches besides the new sections).
    new_tree_bytes: int = 0

    @property
    def summary(self) -> str:
        """One line for people: what the commit made or kept."""
        if not self.changed:
            return f"no changes; revision {self.revision.number} kept"
        return f"revision {self.revision.number}"


class Update:
    """One batch of changes to the file set; ``commit`` or ``abort`` it.

    Files not named by the update are kept as the previous revision has
    them. ``add_file`` (re)writes a file, ``remove_file`` drops one,
    ``keep_file`` keeps the previous revision's record and sections
    without reading anything (the files cache's "unchanged"); the last
    operation on a name wins. Changes are journaled on disk as they come,
    so an update of any size holds little memory.
    """

    def __init__(self, store: ContentStore) -> None:
        self._store = store
        # Enough idle buffers for a full pipeline: the queue, one batch per
        # worker and the one being filled.
        self._buffers = BufferPool(PIPELINE_DEPTH + ENCRYPTION_THREADS + 1)
        # Serializes the worker's claims of stored sections with gc (which
        # marks the journal): see EncryptionWorker.
        self.claim_lock = threading.Lock()
        self.journal = UpdateJournal(
            store._dir, store._random_bytes, before_run=self._drain
        )
        try:
            self._worker = EncryptionWorker(
                store._keys.content_key,
                store._private,
                store._packs,
                self._buffers,
                self.journal,
                self.claim_lock,
            )
        except BaseException:
            self.journal.close()
            raise
        self._small_files = SmallFileBatcher(self._worker, self._buffers)
        self._lock = threading.Lock()
        self._open_writers: set[FileWriter] = set()
        self._written = 0
        self.finished = False

    def _drain(self) -> None:
        """Every closed file's sections stored and journaled."""
        self._small_files.flush()
        self._worker.drain()

    def add_file(
        self,
        name: str,
        *,
        mode: int = 0o644,
        mtime_ns: int = 0,
        ctime_ns: int = 0,
        inode: int = 0,
        device: int = 0,
    ) -> FileWriter:
        """Start (re)writing ``name``; it replaces any earlier version when
        closed. The stat fields are recorded for the files cache."""
        self._check_open()
        validate_name(name)
        if not (
            _I64_MIN <= mtime_ns <= _I64_MAX
            and _I64_MIN <= ctime_ns <= _I64_MAX
            and 0 <= inode <= _U64_MAX
            and 0 <= device <= _U64_MAX
        ):
            raise ValueError(f"file {name!r}: a stat field is out of range")
        pending = PendingFile(name, mode & 0o7777, mtime_ns, ctime_ns, inode, device)
        writer = FileWriter(
            pending,
            self._worker,
            self._buffers,
            self._small_files,
            self._check_open,
            self._file_closed,
        )
        with self._lock:
            self._open_writers.add(writer)
        return writer

    def _file_closed(self, writer: FileWriter) -> None:
        with self._lock:
            self._open_writers.discard(writer)
            self._written += 1
            self.journal.write(writer.pending)

    def remove_file(self, name: str) -> None:
        """Drop ``name`` from the file set.

        FileNotInSet if the name is in neither the previous revision nor
        this update: raised here when that is certain (nothing written yet),
        else by ``commit``.
        """
        self._check_open()
        validate_name(name)
        with self._lock:
            if not self._written and not self._store._has_committed_file(name):
                raise FileNotInSet(name)
            self.journal.remove(name)

    def keep_file(self, name: str) -> None:
        """Keep the previous revision's record and sections of ``name``.

        Reads nothing (the files cache's answer for an unchanged file); it
        undoes earlier writes or removals of the name in this update.
        ``commit`` raises FileNotInSet if the previous revision lacks it.
        """
        self._check_open()
        validate_name(name)
        with self._lock:
            self.journal.keep(name)

    def _check_open(self) -> None:
        if self.finished:
            raise ValueError("this update is already committed or aborted")

    def commit(self) -> CommitResult:
        """Make the update durable as a new revision (see the module doc),
        or keep the current one if nothing changed."""
        self._check_open()
        if self._open_writers:
            names = sorted(w.pending.name for w in self._open_writers)
            raise ValueError(f"files still being written: {names}")
        try:
            self._small_files.flush()
            self._worker.finish()
            return self._store._commit(self, self._worker)
        except BaseException:
            self.abort()
            raise
        finally:
            self.finished = True
            self._worker.stop()
            self.journal.close()

    def abort(self) -> None:
        """Drop everything this update wrote (no revision references it)."""
        if self.finished and self._store._update is not self:
            return
        self.finished = True
        self._small_files.discard()
        try:
            self._worker.drain()
        except BaseException:
            pass  # aborting anyway
        self._worker.stop()
        for number, _ in self._worker.writers:
            self._store._packs.release(number)
        self._worker.writers.clear()
        self._store._packs.discard_packs(self._worker.installed)
        self._worker.installed.clear()
        self.journal.close()
        self._store._update_ended(self)


class ContentStore:
    """The node's own content: its file set and its committed revisions.

    Safe to use from several threads: reads and commits are serialized by
    a lock, and iterators (``read_file``, ``list_files``) read one revision
    without holding it.
    """

    def __init__(
        self,
        content_dir: Path,
        keys: NodeKeys,
        metadata: MetadataStore,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._keys = keys
        self._random_bytes = random_bytes
        self._manifest_keys = ManifestKeys.from_node_keys(keys)
        self._private = PrivateFields.from_node_keys(keys)
        self._section_keys = SectionKeyDeriver(keys.content_key)
        self._name_index_key = name_index_key_of(keys)
        self._dir = make_private_directory(Path(content_dir))
        self._packs_dir = make_private_directory(self._dir / "packs")
        self._revisions_dir = make_private_directory(self._dir / "revisions")
        self._lock = threading.RLock()
        self._update: Update | None = None
        remove_leftovers(self._dir)
        try:
            self._packs = PackStore(self._packs_dir)
        except SectionCorrupt as error:
            raise CorruptContent(str(error)) from None
        self._source = PackSource(self._packs)
        # Verified section tree nodes, shared by every reader (under their
        # own lock): reading files one by one re-reads the nodes near the
        # root each time.
        self._nodes = NodeCache(self._source, READ_CACHE_NODES)
        self._nodes_lock = threading.Lock()
        self.metadata = metadata
        # Set by the node's session: what every commit seals into its root.
        self.node_state: NodeStateSource | None = None
        # Told the hash of every stored blob a read finds damaged (any
        # thread): the node repairs it from a replica in the background.
        self.damage_listener: Callable[[bytes], None] | None = None
        self._current: VerifiedRevision | None = None
        self._names: NameIndex | None = None
        self._reader: ManifestReader | None = None
        self._load_current()

    @classmethod
    def open(
        cls,
        content_dir: Path,
        keys: NodeKeys,
        metadata: MetadataStore,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> ContentStore:
        """Open (creating if needed) the content store in ``content_dir``.

        ``metadata`` is the node's Metadata (opened once by its owner): the
        store records each commit's revision there. ``random_bytes`` draws
        the update journal's key and file names.
        """
        return cls(content_dir, keys, metadata, random_bytes)

    # -- revisions on disk ------------------------------------------------

    def _revision_path(self, number: int) -> Path:
        return self._revisions_dir / f"{number:020d}.rev"

    def _publish(self, verified: VerifiedRevision, names: NameIndex) -> None:
        """Write a new revision's name index, root and pointer (crash points
        4 and 5 between them; the pointer is the commit point)."""
        number = verified.number
        write_name_index(
            self._names_path(number), self._name_index_key, verified.content_id, names
        )
        crash_point(4)
        atomic_write(self._revision_path(number), verified.signed)
        crash_point(5)
        atomic_write(self._dir / "current", str(number).encode("ascii"))

    def _names_path(self, number: int) -> Path:
        return self._revisions_dir / f"{number:020d}.names"

    def _load_revision(self, number: int) -> VerifiedRevision:
        path = self._revision_path(number)
        try:
            with path.open("rb") as handle:
                # One byte past the bound is enough for verify_root to
                # refuse it: a file grown to 2**40 bytes is never read whole.
                signed = handle.read(MAX_SIGNED_ROOT_BYTES + 1)
            verified = verify_root(signed, self._keys.onion_pubkey)
        except FileNotFoundError:
            raise CorruptContent(f"revision file {path} is missing") from None
        except InvalidRevision as error:
            raise CorruptContent(f"revision file {path}: {error}") from None
        if verified.number != number:
            raise CorruptContent(
                f"revision file {path} holds revision {verified.number}"
            )
        return verified

    def _load_current(self) -> None:
        pointer = self._dir / "current"
        number = 0
        if pointer.exists():
            with pointer.open("rb") as handle:
                text = handle.read(21)  # a number of at most 20 digits
            if not text.isdigit() or len(text) > 20:
                raise CorruptContent(f"revision pointer {pointer} is not a number")
            number = int(text)
            verified = self._load_revision(number)
            self._install_current(verified, self._load_names(verified))
        # Revisions above the pointer were written by a commit that crashed
        # before its commit point.
        for path in self._revisions_dir.iterdir():
            stem = path.name.split(".", 1)[0]
            if stem.isdigit() and int(stem) > number:
                atomic_delete(path)
        recorded = self.metadata.get().revision
        if recorded > number and self._current is not None:
            raise CorruptContent(
                f"revision pointer {pointer} names revision {number} but metadata "
                f"records revision {recorded}"
            )
        if self._current is not None and recorded < number:
            # The crash came between the commit point and the metadata write.
            self._record_in_metadata(self._current)

    def _load_names(self, verified: VerifiedRevision) -> NameIndex:
        """The revision's name index; rebuilt from the manifest if damaged."""
        path = self._names_path(verified.number)
        try:
            names = read_name_index(
                path,
                self._name_index_key,
                verified.content_id,
                verified.manifest.entry_count,
            )
            if names.index.chunk_count != verified.manifest.entry_count:
                raise InvalidNameIndex(f"name index {path} is not this revision's")
            return names
        except InvalidNameIndex as error:
            log.warn("{error}: rebuilding it from the manifest", error=str(error))
        return self._build_names(verified)

    def _build_names(self, verified: VerifiedRevision) -> NameIndex:
        """Read the whole manifest (verified) and write its name index."""
        path = self._names_path(verified.number)
        reader = self._manifest_reader(verified, None)
        files = 0
        try:
            for _ in reader.records():
                files += 1
        except _DAMAGE as error:
            raise CorruptContent(
                f"manifest of revision {verified.number}: {error}"
            ) from None
        names = NameIndex(files, reader.index())
        write_name_index(path, self._name_index_key, verified.content_id, names)
        return names

    def _manifest_reader(
        self, verified: VerifiedRevision, index: ManifestIndex | None
    ) -> ManifestReader:
        try:
            return ManifestReader(
                verified.manifest,
                self._manifest_keys,
                verified.owner_pubkey,
                self._source,
                self._source,
                verified.section_count,
                index,
            )
        except InvalidManifest as error:
            raise CorruptContent(
                f"manifest of revision {verified.number}: {error}"
            ) from None

    def _install_current(self, verified: VerifiedRevision, names: NameIndex) -> None:
        self._current = verified
        self._names = names
        self._reader = self._manifest_reader(verified, names.index)

    def _record_in_metadata(self, verified: VerifiedRevision) -> None:
        def record(metadata: storedpb_pb2.Metadata) -> None:
            metadata.revision = verified.number
            metadata.content_id = verified.content_id
            metadata.content_length = verified.content_length
            metadata.content_sha256 = verified.content_sha256

        self.metadata.update(record)

    # -- blobs (what the data plane serves and replicates) ----------------

    @property
    def current(self) -> VerifiedRevision | None:
        """The committed revision (None before the first commit)."""
        return self._current

    def revision_time(self) -> float:
        """When the current revision was committed, in Unix seconds (its
        signed root file's mtime; 0 before the first commit)."""
        current = self._current
        if current is None:
            return 0.0
        try:
            return self._revision_path(current.number).stat().st_mtime
        except OSError:
            return 0.0

    @property
    def file_count(self) -> int:
        """Files in the current revision (from its name index: no read)."""
        return self._names.file_count if self._names is not None else 0

    @property
    def bytes_read(self) -> int:
        """Blob bytes read from packs so far (for tests and benchmarks)."""
        return self._packs.bytes_read

    def read_blob(self, sha256: bytes) -> bytes:
        """Any stored blob of ours (section, tree node, manifest chunk),
        checked against its hash; SectionMissing if it is not stored,
        CorruptContent if it fails its hash."""
        try:
            return self._packs.read(sha256)
        except SectionCorrupt as error:
            self._note_damage(error)
            raise CorruptContent(str(error)) from None
        except OSError as error:
            raise CorruptContent(f"blob {sha256.hex()}: {error}") from None

    def _note_damage(self, error: BaseException, missing_too: bool = False) -> None:
        """Tell the damage listener which blob ``error`` is about.

        A missing blob counts only where our own tree names it
        (``missing_too``): a peer may ask for any hash.
        """
        listener = self.damage_listener
        sha256 = getattr(error, "sha256", b"")
        if listener is None or not sha256:
            return
        if isinstance(error, SectionMissing) and not missing_too:
            return
        try:
            listener(sha256)
        except Exception:
            log.failure("the damage listener failed")

    def has_blob(self, sha256: bytes) -> bool:
        return self._packs.has(sha256)

    # The data plane's older names for the same two calls.
    read_section = read_blob
    has_section = has_blob

    # -- reading the file set ---------------------------------------------

    def _snapshot(self) -> VerifiedRevision | None:
        with self._lock:
            return self._current

    def records(self) -> Iterator[FileRecord]:
        """The current revision's file records in manifest order, streamed
        and verified (a files cache merge-joins a walk with this)."""
        current = self._snapshot()
        if current is None:
            return iter(())
        return self._records(current)

    def _records(self, verified: VerifiedRevision) -> Iterator[FileRecord]:
        reader = self._manifest_reader(verified, None)
        try:
            for placed in reader.records():
                yield placed.record
        except _DAMAGE as error:
            raise CorruptContent(
                f"manifest of revision {verified.number}: {error}"
            ) from None

    def list_files(self) -> Iterator[str]:
        """The current file names in manifest order, streamed."""
        return (record.name for record in self.records())

    def _find(self, name: str) -> PlacedRecord | None:
        """The current record of ``name`` (locked; one chunk read)."""
        if self._reader is None or self._current is None:
            return None
        try:
            return self._reader.find(name)
        except InvalidManifest as error:
            raise CorruptContent(
                f"manifest of revision {self._current.number}: {error}"
            ) from None
        except ManifestError as error:
            raise InvalidFileName(str(error)) from None
        except _DAMAGE as error:
            self._note_damage(error, missing_too=True)
            raise CorruptContent(
                f"manifest of revision {self._current.number}: {error}"
            ) from None

    def _has_committed_file(self, name: str) -> bool:
        with self._lock:
            return self._find(name) is not None

    def file_entry(self, name: str) -> FileRecord:
        """The current record of ``name``; FileNotInSet if there is none."""
        with self._lock:
            placed = self._find(name)
        if placed is None:
            raise FileNotInSet(name)
        return placed.record

    def read_file(self, name: str) -> Iterator[bytes]:
        """The file's plaintext, one verified section at a time.

        Each section's entry is read from the tree (verified node by node),
        its plaintext hash unwrapped, its ciphertext read and checked
        against the entry's hash, decrypted, and checked against the
        plaintext hash before a byte of it is returned; any failure raises
        CorruptContent naming the file and the section.
        """
        with self._lock:
            placed = self._find(name)
            current = self._current
        if placed is None or current is None:
            raise FileNotInSet(name)
        return self._read_sections(name, current.sections, placed)

    def _read_sections(
        self, name: str, tree: TreeRoot, placed: PlacedRecord
    ) -> Iterator[bytes]:
        derive_key = self._section_keys.key
        position = 0
        total = 0
        where = f"file {name!r}: section tree"
        try:
            for packed in iter_packed(
                tree,
                self._source,
                placed.first_section,
                placed.stop_section,
                cache=_LockedCache(self._nodes, self._nodes_lock),
            ):
                for length, sha256, private in _ENTRY.iter_unpack(packed):
                    where = f"file {name!r}: section {position} of the file"
                    plain_sha256 = self._private.plaintext_sha256(sha256, private)
                    ciphertext = self._packs.read(sha256)
                    if len(ciphertext) != length:
                        raise CorruptContent(f"{where} has the wrong length")
                    # CTR decryption is the same keystream XOR as encryption.
                    plain = section_encryptor(derive_key(plain_sha256)).update(
                        ciphertext
                    )
                    if hashlib.sha256(plain).digest() != plain_sha256:
                        raise CorruptContent(f"{where} decrypts to wrong bytes")
                    total += len(plain)
                    position += 1
                    yield plain
                where = f"file {name!r}: section tree"
        except _DAMAGE as error:
            self._note_damage(error, missing_too=True)
            raise CorruptContent(f"{where}: {error}") from None
        if total != placed.record.size:
            raise CorruptContent(f"file {name!r}: sections do not add up to its size")

    # -- stored revisions, for restoring and checking ----------------------

    def kept_revision_numbers(self) -> list[int]:
        """The revisions stored here, newest first: the current one and the
        one before it, if its file is still there."""
        with self._lock:
            return [
                number
                for number in self._kept_revision_numbers()
                if self._revision_path(number).exists()
            ]

    def revision(self, number: int = 0) -> VerifiedRevision:
        """A stored revision by number (0: the current one), verified.

        RevisionNotKept if it is not stored (any more); CorruptContent if
        its file fails its checks.
        """
        with self._lock:
            if self._current is None:
                raise RevisionNotKept("no revision yet: add files first")
            if number in (0, self._current.number):
                return self._current
            if number not in self.kept_revision_numbers():
                kept = ", ".join(str(n) for n in self.kept_revision_numbers())
                raise RevisionNotKept(
                    f"revision {number} is not stored here (stored: {kept})"
                )
            return self._load_revision(number)

    def manifest_chunks(self, revision: VerifiedRevision) -> Iterator[ManifestChunk]:
        """Every chunk of ``revision``'s manifest in order, each read and
        verified on its own: a damaged chunk is reported and the next ones
        are still read (the name index says where each starts)."""
        with self._lock:
            index = self._index_of(revision)
        if index is None:
            yield ManifestChunk(
                0,
                "",
                0,
                revision.section_count,
                error=f"the manifest of revision {revision.number} cannot be "
                "read, nor its name index: no file of it can be listed",
            )
            return
        reader = self._manifest_reader(revision, index)
        count = index.chunk_count
        for number in range(count):
            first = index.first_sections[number]
            stop = (
                index.first_sections[number + 1]
                if number + 1 < count
                else revision.section_count
            )
            first_name = index.first_keys[number].replace(b"\x00", b"/")
            name = first_name.decode("utf-8", "replace")
            try:
                records = []
                position = first
                for record, _ in reader.chunk_records(number):
                    records.append(PlacedRecord(record, position))
                    position += record.section_count
            except (*_DAMAGE, IndexError) as error:
                yield ManifestChunk(
                    number,
                    name,
                    first,
                    stop,
                    error=f"manifest chunk {number} of revision "
                    f"{revision.number}: {error}",
                    blob=getattr(error, "sha256", b""),
                )
                continue
            yield ManifestChunk(number, name, first, stop, tuple(records))

    def _index_of(self, revision: VerifiedRevision) -> ManifestIndex | None:
        """The revision's name index (locked): the current one's in memory,
        another's from its file, else rebuilt by reading the manifest;
        None when the manifest cannot be read either."""
        if self._current is not None and revision.number == self._current.number:
            assert self._names is not None
            return self._names.index
        path = self._names_path(revision.number)
        try:
            names = read_name_index(path, self._name_index_key, revision.content_id)
            if names.index.chunk_count == revision.manifest.entry_count:
                return names.index
        except InvalidNameIndex:
            pass
        try:
            return self._manifest_reader(revision, None).index()
        except (*_DAMAGE, CorruptContent):
            return None

    def read_placed(
        self, revision: VerifiedRevision, placed: PlacedRecord
    ) -> Iterator[bytes]:
        """``read_file`` for a record of any stored revision (from
        ``manifest_chunks``): the same verified reads."""
        return self._read_sections(placed.record.name, revision.sections, placed)

    @property
    def packs(self) -> PackStore:
        """The pack store (a check reads its index and pack sizes)."""
        return self._packs

    def replace_blobs(self, blobs: Iterable[tuple[bytes, bytes]]) -> int:
        """Store verified copies of damaged or missing blobs (a repair),
        dropping the damaged copies; see ``PackStore.replace_blobs``."""
        with self._lock:
            return self._packs.replace_blobs(blobs)

    # -- updating ---------------------------------------------------------

    def begin_update(self) -> Update:
        """Open an update; UpdateInProgress if one is already open."""
        with self._lock:
            if self._update is not None:
                raise UpdateInProgress("an update of the file set is already open")
            self._update = Update(self)
            return self._update

    def _update_ended(self, update: Update) -> None:
        with self._lock:
            if self._update is update:
                self._update = None

    def _unchanged(self, update: Update, worker: EncryptionWorker) -> CommitResult:
        assert self._current is not None
        for number, _ in worker.writers:
            self._packs.release(number)
        worker.writers.clear()
        # Filled packs were installed: with no change they hold nothing new
        # that the revision needs (sections written and dropped again).
        self._packs.discard_packs(worker.installed)
        worker.installed.clear()
        self._update = None
        return CommitResult(
            revision=self._current,
            changed=False,
            files_written=0,
            files_removed=0,
            bytes_written=0,
            new_section_bytes=0,
            content_length=self._current.content_length,
        )

    def _commit(self, update: Update, worker: EncryptionWorker) -> CommitResult:
        with self._lock:
            old = self._current
            if old is not None and update.journal.operations == 0:
                return self._unchanged(update, worker)
            sink = CommitSink(self._packs, worker)
            sections = TreeBuilder(sink)
            manifest = ManifestWriter(
                self._manifest_keys, self._keys.onion_pubkey, sink, sink
            )
            previous = None
            if old is not None:
                assert self._reader is not None and self._names is not None
                previous = OldRevision(
                    sections=old.sections,
                    manifest=old.manifest,
                    index=self._names.index,
                    section_count=old.section_count,
                    open_chunk=self._reader.chunk_records,
                )
            try:
                counts = merge(
                    old=previous,
                    changes=update.journal.changes(),
                    journal=update.journal,
                    source=self._source,
                    sections=sections,
                    manifest=manifest,
                )
            except NotInPreviousRevision as error:
                raise FileNotInSet(error.args[0]) from None
            except _DAMAGE as error:
                number = old.number if old is not None else 0
                raise CorruptContent(f"revision {number}: {error}") from None
            section_root = sections.finish()
            summary = manifest.finish()
            sink.flush()
            if (
                summary.section_count != section_root.entry_count
                or summary.file_count != counts.files
            ):
                raise CorruptContent(
                    "the merged manifest and section tree disagree: the name "
                    f"index of revision {old.number if old else 0} is wrong"
                )
            if (
                old is not None
                and section_root == old.sections
                and summary.tree == old.manifest
            ):
                return self._unchanged(update, worker)
            number = max(self.metadata.get().revision, old.number if old else 0) + 1
            node_state = self._put_node_state(sink.put)
            sink.flush()
            verified = sign_root(
                new_root(
                    self._keys.onion_pubkey,
                    number,
                    section_root,
                    summary.tree,
                    node_state,
                ),
                self._keys.signing_key,
            )
            for _, writer in worker.writers:
                writer.finish()
            crash_point(1)
            self._packs.install_all([n for n, _ in worker.writers], crash_point)
            worker.writers.clear()
            names = NameIndex(summary.file_count, summary.index)
            self._publish(verified, names)
            # Committed: the packs filled during the update are the
            # revision's now, whatever fails next (an abort must not touch
            # them).
            worker.installed.clear()
            crash_point(6)
            self._install_current(verified, names)
            self._update = None
            self._record_in_metadata(verified)
            crash_point(7)
            self._drop_old_revisions()
            return CommitResult(
                revision=verified,
                changed=True,
                files_written=counts.files_written,
                files_removed=counts.files_removed,
                bytes_written=counts.bytes_written,
                new_section_bytes=worker.new_section_bytes,
                content_length=verified.content_length,
                new_tree_bytes=sink.bytes_written,
            )

    def _put_node_state(
        self, put: Callable[[bytes, bytes], None]
    ) -> tuple[bytes, int] | None:
        """Store the sealed node state as a blob; its (hash, length)."""
        if self.node_state is None:
            return None
        sealed = self.node_state()
        if not sealed:
            return None
        sha256 = hashlib.sha256(sealed).digest()
        put(sha256, sealed)
        return sha256, len(sealed)

    def commit_node_state(self) -> CommitResult:
        """A new revision with the same files and the current node state.

        For state that changed with no file change (a contract formed, a
        peer added): the replicas must hold it for recovery. Keeps the
        revision (``changed`` False) when the state is the one it names, or
        when there is no revision yet. Same commit order and crash points
        as a commit (docs/storage-format.md).
        """
        with self._lock:
            old = self._current
            if self._update is not None:
                raise UpdateInProgress("an update of the file set is open")
            if old is None or self.node_state is None:
                raise ValueError("no revision to carry the node state yet")
            sealed = self.node_state()
            if not sealed or old.node_state == (
                hashlib.sha256(sealed).digest(),
                len(sealed),
            ):
                return self._kept(old)
            assert self._names is not None
            writer_number, writer = self._packs.new_writer()
            try:

                def put(sha256: bytes, data: bytes) -> None:
                    if not self._packs.claim_or_reserve(sha256, set()):
                        first = writer.append(data, [(sha256, len(data))])
                        self._packs.reserve(writer_number, first, [sha256])

                node_state = self._put_node_state(put)
                number = max(self.metadata.get().revision, old.number) + 1
                verified = sign_root(
                    new_root(
                        self._keys.onion_pubkey,
                        number,
                        old.sections,
                        old.manifest,
                        node_state,
                    ),
                    self._keys.signing_key,
                )
                writer.finish()
                crash_point(1)
                self._packs.install_all([writer_number], crash_point)
            except BaseException:
                self._packs.release(writer_number)
                raise
            names = self._names
            self._publish(verified, names)
            crash_point(6)
            self._install_current(verified, names)
            self._record_in_metadata(verified)
            crash_point(7)
            self._drop_old_revisions()
            return CommitResult(
                revision=verified,
                changed=True,
                files_written=0,
                files_removed=0,
                bytes_written=0,
                new_section_bytes=0,
                content_length=verified.content_length,
                new_tree_bytes=len(sealed),
            )

    def _kept(self, revision: VerifiedRevision) -> CommitResult:
        return CommitResult(
            revision=revision,
            changed=False,
            files_written=0,
            files_removed=0,
            bytes_written=0,
            new_section_bytes=0,
            content_length=revision.content_length,
        )

    # -- recovery: installing a revision fetched from replicas ------------

    def recovered_blobs(self) -> RecoveredBlobs:
        """A sink for blobs fetched back from replicas (content.recovered)."""
        return RecoveredBlobs(self._packs, crash_point)

    def missing_blob(self, revision: VerifiedRevision) -> bytes | None:
        """The first blob ``revision`` references that is not stored (None:
        complete). Walks both trees from the signed root, verifying every
        node; a stored node that fails its check counts as missing."""
        state = revision.node_state
        if state is not None and not self._packs.has(state[0]):
            return state[0]
        for tree in (revision.sections, revision.manifest):
            stack: list[NodeRef] = [tree.ref()]
            while stack:
                ref = stack.pop()
                try:
                    node = read_node(self._source, ref)
                except _DAMAGE:
                    return ref.hash
                if isinstance(node, Internal):
                    stack.extend(node.children)
                    continue
                assert isinstance(node, Leaf)
                data = node.data
                for start in range(HEADER_BYTES + 8, len(data), ENTRY_BYTES):
                    sha256 = data[start : start + 32]
                    if not self._packs.has(sha256):
                        return bytes(sha256)
        return None

    def install_revision(self, revision: VerifiedRevision) -> None:
        """Make a revision fetched from replicas the current one.

        ``revision`` must be ours (verified with our key), newer than the
        current one and than the Metadata's number, and every blob it
        references must be in installed packs (IncompleteRevision names
        the first that is not). Then, as a commit does: the name index
        (built by reading the whole manifest, verified) (crash point 14),
        the revision file (15), ``current`` — the commit point — (16), the
        Metadata (17). A crash before 16 leaves the previous state (the
        files above ``current`` are deleted on open); the fetched packs
        stay for a resumed recovery.
        """
        if revision.owner_pubkey != self._keys.onion_pubkey:
            raise InvalidRevision("that revision belongs to another node")
        with self._lock:
            if self._update is not None:
                raise UpdateInProgress("an update of the file set is open")
            old = self._current
            floor = max(self.metadata.get().revision, old.number if old else 0)
            if revision.number <= floor:
                raise ValueError(
                    f"revision {revision.number} is not newer than revision "
                    f"{floor} of this node"
                )
            missing = self.missing_blob(revision)
            if missing is not None:
                raise IncompleteRevision(
                    f"revision {revision.number}: blob {missing.hex()[:16]} "
                    "is not stored"
                )
            names = self._build_names(revision)
            crash_point(14)
            atomic_write(self._revision_path(revision.number), revision.signed)
            crash_point(15)
            atomic_write(self._dir / "current", str(revision.number).encode("ascii"))
            crash_point(16)
            self._install_current(revision, names)
            self._record_in_metadata(revision)
            crash_point(17)
            self._drop_old_revisions()

    def _kept_revision_numbers(self) -> list[int]:
        if self._current is None:
            return []
        number = self._current.number
        return [number, number - 1] if number > 1 else [number]

    def _drop_old_revisions(self) -> None:
        kept = set(self._kept_revision_numbers())
        for path in self._revisions_dir.iterdir():
            stem = path.name.split(".", 1)[0]
            if stem.isdigit() and int(stem) not in kept:
                atomic_delete(path)

    # -- garbage collection -----------------------------------------------

    def gc(self, keep: Iterable[VerifiedRevision] = ()) -> int:
        """Drop every blob that no kept revision and no open update needs.

        Kept: the current revision and the one before it, ``keep`` (e.g.
        revisions being pushed), and the sections an open update has
        written or reuses. Live blobs are marked by walking the kept trees
        (a bit per pack index entry, never a set of hashes); a tree node of
        the current or previous revision that is missing or corrupt stops
        the collection before anything is deleted. Returns bytes freed.
        """
        with self._lock:
            marks = self._packs.new_marks()
            # Tree nodes walked, marked exactly: ``marks`` also takes blobs
            # that only share a partial hash with a live one (mark_many),
            # which must never make a node look walked.
            walked = self._packs.new_marks()
            for number in self._kept_revision_numbers():
                if self._current is not None and number == self._current.number:
                    revision = self._current
                elif self._revision_path(number).exists():
                    revision = self._load_revision(number)
                else:
                    continue
                self._mark_revision(marks, walked, revision, strict=True)
            for revision in keep:
                self._mark_revision(marks, walked, revision, strict=False)
            update = self._update
            if update is None:
                return self._packs.sweep(marks)
            with update.claim_lock:
                self._packs.mark_many(marks, update.journal.iter_entry_hashes())
                return self._packs.sweep(marks)

    def _mark_revision(
        self,
        marks: PackMarks,
        walked: PackMarks,
        revision: VerifiedRevision,
        strict: bool,
    ) -> None:
        if revision.node_state is not None:
            self._packs.mark(marks, revision.node_state[0])
        for tree in (revision.sections, revision.manifest):
            self._mark_tree(marks, walked, tree, revision.number, strict)

    def _mark_tree(
        self,
        marks: PackMarks,
        walked: PackMarks,
        tree: TreeRoot,
        number: int,
        strict: bool,
    ) -> None:
        """Mark every node of ``tree`` and every blob its leaves name.

        A node already in ``walked`` was walked with its whole subtree (by
        an earlier tree sharing it), so it is not entered again: the
        previous revision costs only its differences from the current one.
        Leaf entries are marked in bulk by candidates (mark_many). A node
        that is missing or corrupt raises CorruptContent when ``strict``,
        else only its subtree is skipped (what it names cannot be reached).
        """
        mark = self._packs.mark
        stack: list[NodeRef] = [tree.ref()]
        while stack:
            ref = stack.pop()
            try:
                newly = mark(walked, ref.hash)
                if newly is None:
                    raise SectionMissing(f"tree node {ref.hash.hex()} is not stored")
                if not newly:
                    continue
                mark(marks, ref.hash)
                node = read_node(self._source, ref)
            except _DAMAGE as error:
                if strict:
                    raise CorruptContent(
                        f"revision {number} cannot be walked, nothing was "
                        f"collected: {error}"
                    ) from None
                log.warn(
                    "gc: revision {number} to keep is incomplete: {error}",
                    number=number,
                    error=str(error),
                )
                continue
            if isinstance(node, Internal):
                stack.extend(node.children)
                continue
            assert isinstance(node, Leaf)
            data = node.data
            self._packs.mark_many(
                marks,
                (
                    data[start : start + 32]
                    for start in range(HEADER_BYTES + 8, len(data), ENTRY_BYTES)
                ),
            )

    def close(self) -> None:
        """Abort an open update and release file descriptors."""
        with self._lock:
            if self._update is not None:
                self._update.abort()
            self._packs.close()
