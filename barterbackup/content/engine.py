"""The content engine: a file set → encrypted, sectioned, signed revisions.

Layout under ``NODE/content/`` (see docs/storage-format.md)::

    packs/<id>.pack, packs/<id>.idx   encrypted sections, by ciphertext hash
    revisions/<number>.rev            SignedRevision bytes, 20-digit number
    current                           the committed revision's number, ASCII

A commit makes its packs durable, then its signed revision, then ``current``
(the commit point), then the sealed Metadata; a crash at any instant leaves
the last committed revision readable, and ``ContentStore.open`` removes what
a crash left behind. Writing is a two-thread pipeline: the caller's thread
cuts and hashes plaintext, a worker encrypts, hashes and appends ciphertext
(hashlib releases the GIL while hashing, so the two overlap), and a third
thread fdatasyncs the open pack meanwhile so the commit's fsync is short.
"""

from __future__ import annotations

import hashlib
import queue
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pyfastcdc.cy import FastCDC

from barterbackup._proto import storedpb_pb2
from barterbackup.content.crash import crash_point
from barterbackup.content.names import InvalidFileName, validate_name
from barterbackup.content.sections import (
    NORMALIZED_CHUNKING,
    SECTION_AVERAGE_BYTES,
    SECTION_MAX_BYTES,
    SECTION_MIN_BYTES,
    SectionKeyDeriver,
    content_sha256,
    section_cipher,
    section_encryptor,
    section_key,
)
from barterbackup.keys.derive import NodeKeys
from barterbackup.revisions import (
    REVISION_FORMAT,
    InvalidRevision,
    VerifiedRevision,
    sign_revision_lean,
    verify_revision,
)
from barterbackup.store.atomic import (
    atomic_delete,
    atomic_write,
    make_private_directory,
    remove_leftovers,
)
from barterbackup.store.metadata import MetadataStore
from barterbackup.store.packs import (
    PACK_TARGET_BYTES,
    PackStore,
    PackWriter,
    SectionCorrupt,
    SectionMissing,
)
from barterbackup.store.sealed import SealedRecordError, open_sealed, seal

__all__ = [
    "CommitResult",
    "ContentStore",
    "CorruptContent",
    "FileNotInSet",
    "FileWriter",
    "InvalidFileName",
    "SectionMissing",
    "Update",
    "UpdateInProgress",
]

MANIFEST_AD_LABEL = b"barterbackup v1 manifest\x00"
# Plaintext is cut in batches of this size: memory stays flat for any file.
BATCH_BYTES = 1024 * 1024
# Batches queued for the encryption threads.
PIPELINE_DEPTH = 2
# Encryption threads. One: with ~17 KiB sections every hashlib/cipher call
# releases and retakes the GIL, and two encryption threads measured slower
# than one here (1.2 s vs 0.9 s for 512 MiB), while splitting the work
# between the caller (cut + plaintext hash) and one worker measured best.
ENCRYPTION_THREADS = 1
# The pack's bytes are handed to the kernel's disk writes (fdatasync in a
# helper thread) every this many bytes: left to the commit, the fsync of
# 256 MiB took ~0.15 s here, as long as hashing it; overlapped, ~0.01 s.
SYNC_EVERY_BYTES = 32 * 1024 * 1024
# One record per section while an update is built: u64be plaintext length,
# plaintext SHA-256, ciphertext SHA-256.
_RECORD = struct.Struct(">Q32s32s")


class CorruptContent(Exception):
    """Stored content fails its checks; the message names what is bad."""


class FileNotInSet(KeyError):
    """No file of that name is in the file set."""

    def __str__(self) -> str:
        return f"no file named {self.args[0]!r} in the file set"


class UpdateInProgress(Exception):
    """Another update of the file set is open."""


@dataclass(frozen=True)
class CommitResult:
    """What one committed update did."""

    revision: VerifiedRevision
    files_written: int
    files_removed: int
    bytes_written: int
    new_section_bytes: int
    content_length: int


@dataclass
class _FileState:
    name: str
    mode: int
    mtime: int
    size: int = 0
    records: bytearray = field(default_factory=bytearray)


def manifest_associated_data(owner_pubkey: bytes, number: int) -> bytes:
    """Binds a sealed manifest to its owner and revision number."""
    return MANIFEST_AD_LABEL + owner_pubkey + struct.pack(">Q", number)


class _EncryptionWorker:
    """Pipeline stage 2: derive keys, encrypt, hash ciphertext, dedupe, append.

    ENCRYPTION_THREADS threads take whole batches in turn; storing (dedupe,
    records, pack append) happens strictly in submission order, so sections
    land in the order they were written whatever the thread count.
    """

    def __init__(
        self, content_key: bytes, packs: PackStore, buffers: _BufferPool
    ) -> None:
        self._section_keys = SectionKeyDeriver(content_key)
        self._packs = packs
        self._buffers = buffers
        self._sync_requests: queue.Queue[PackWriter | None] = queue.Queue(maxsize=1)
        self._unsynced_bytes = 0
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=PIPELINE_DEPTH)
        self._submit_lock = threading.Lock()
        self._submitted = 0
        self._turn = threading.Condition()
        self._next_to_store = 0
        self.error: BaseException | None = None
        self.writers: list[tuple[int, PackWriter]] = []
        self.reused: set[bytes] = set()
        self.new_section_bytes = 0
        self._threads = [
            threading.Thread(target=self._run, name=f"content-encrypt-{i}", daemon=True)
            for i in range(ENCRYPTION_THREADS)
        ]
        self._syncer = threading.Thread(
            target=self._sync_packs, name="content-pack-sync", daemon=True
        )
        self._syncer.start()
        for thread in self._threads:
            thread.start()

    def submit(
        self, state: _FileState, data: bytearray, cuts: list[tuple[int, int, bytes]]
    ) -> None:
        with self._submit_lock:
            self._queue.put(_Batch(self._submitted, state, data, cuts))
            self._submitted += 1

    def drain(self) -> None:
        """Wait for every submitted batch; re-raise a worker failure."""
        self._queue.join()
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait for every batch and pack sync; re-raise any failure."""
        self.drain()
        self.stop()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """End the threads (idempotent).

        The sync thread is joined before anyone may finish or discard a
        writer, so it never syncs a closed descriptor.
        """
        for thread in self._threads:
            if thread.is_alive():
                self._queue.put(None)
        for thread in self._threads:
            thread.join()
        if self._syncer.is_alive():
            self._sync_requests.put(None)
            self._syncer.join()

    def _sync_packs(self) -> None:
        while (writer := self._sync_requests.get()) is not None:
            try:
                if self.error is None:
                    writer.sync_data()
            except BaseException as error:
                # Linux may clear a write error once reported: a later fsync
                # could succeed, so this one must fail the update.
                self.error = error

    def _request_sync(self, writer: PackWriter, appended: int) -> None:
        self._unsynced_bytes += appended
        if self._unsynced_bytes >= SYNC_EVERY_BYTES:
            try:
                self._sync_requests.put_nowait(writer)
            except queue.Full:
                return  # a sync is under way; the next append asks again
            self._unsynced_bytes = 0

    def _run(self) -> None:
        out = bytearray(BATCH_BYTES + SECTION_MAX_BYTES + 64)
        while True:
            batch = self._queue.get()
            if batch is None:
                self._queue.task_done()
                return
            hashes: list[bytes] = []
            try:
                if self.error is None:
                    hashes = self._encrypt(batch, out)
            except BaseException as error:  # handed to the committing thread
                self.error = error
            with self._turn:
                while self._next_to_store != batch.sequence:
                    self._turn.wait()
                try:
                    if self.error is None:
                        self._store(batch, out, hashes)
                except BaseException as error:
                    self.error = error
                finally:
                    self._next_to_store += 1
                    self._turn.notify_all()
            self._buffers.give(batch.data)
            self._queue.task_done()

    def _encrypt(self, batch: _Batch, out: bytearray) -> list[bytes]:
        """Encrypt the batch's sections into ``out``; their ciphertext hashes.

        The hot loop of packing (one pass per ~17 KiB section): names are
        bound to locals and nothing is allocated that can be avoided.
        """
        source = memoryview(batch.data)
        target = memoryview(out)
        derive_key = self._section_keys.key
        encryptor = section_encryptor
        sha256 = hashlib.sha256
        position = 0
        hashes: list[bytes] = []
        append = hashes.append
        for offset, length, plain_sha256 in batch.cuts:
            end = position + length
            encryptor(derive_key(plain_sha256)).update_into(
                source[offset : offset + length], target[position:]
            )
            append(sha256(target[position:end]).digest())
            position = end
        return hashes

    def _store(self, batch: _Batch, out: bytearray, hashes: list[bytes]) -> None:
        """Record the sections and append the new ones (in order)."""
        view = memoryview(out)
        records = batch.state.records
        pack_record = _RECORD.pack
        stored = self._packs.claim_or_reserve_many(hashes, self.reused)
        source = 0
        kept = 0
        fresh: list[tuple[bytes, int]] = []
        in_batch: set[bytes] = set()
        for (_, length, plain_sha256), sha256, is_stored in zip(
            batch.cuts, hashes, stored, strict=True
        ):
            records += pack_record(length, plain_sha256, sha256)
            if not is_stored and sha256 not in in_batch:
                if kept != source:  # close the gap a deduplicated section left
                    view[kept : kept + length] = view[source : source + length]
                in_batch.add(sha256)
                fresh.append((sha256, length))
                kept += length
            source += length
        if fresh:
            number, writer = self._current_writer()
            first = writer.append(view[:kept], fresh)
            self._packs.reserve(number, first, [sha256 for sha256, _ in fresh])
            self.new_section_bytes += kept
            self._request_sync(writer, kept)

    def _current_writer(self) -> tuple[int, PackWriter]:
        if not self.writers or self.writers[-1][1].size >= PACK_TARGET_BYTES:
            self.writers.append(self._packs.new_writer())
            self._unsynced_bytes = 0
        return self.writers[-1]


@dataclass
class _Batch:
    sequence: int
    state: _FileState
    data: bytearray
    cuts: list[tuple[int, int, bytes]]


class _BufferPool:
    """Batch buffers, reused: a fresh 1 MiB bytearray costs its page faults
    and zeroing every time (~10% of single-threaded packing measured).

    A cache, not a limit: ``take`` never blocks (any number of files may be
    open at once); at most ``keep`` idle buffers are kept.
    """

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._idle: list[bytearray] = []

    def take(self) -> bytearray:
        try:
            return self._idle.pop()  # atomic: no lock needed
        except IndexError:
            return bytearray(BATCH_BYTES)

    def give(self, buffer: bytearray) -> None:
        if len(self._idle) < self._keep:
            self._idle.append(buffer)


class FileWriter:
    """Streams one file's bytes into an update (``write`` then ``close``)."""

    def __init__(self, update: Update, state: _FileState) -> None:
        self._update = update
        self._state = state
        self._chunker = FastCDC(
            SECTION_AVERAGE_BYTES,
            min_size=SECTION_MIN_BYTES,
            max_size=SECTION_MAX_BYTES,
            normalized_chunking=NORMALIZED_CHUNKING,
        )
        self._buffers = update._buffers
        self._buffer: bytearray | None = None
        self._filled = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise ValueError(f"file {self._state.name!r} is already closed")
        self._update._check_open()
        view = memoryview(data).cast("B")
        self._state.size += len(view)
        start = 0
        while start < len(view):
            if self._buffer is None:
                self._buffer = self._buffers.take()
            # Fill the buffer up to one batch, so a batch never exceeds it.
            piece = view[start : start + BATCH_BYTES - self._filled]
            self._buffer[self._filled : self._filled + len(piece)] = piece
            self._filled += len(piece)
            start += len(piece)
            if self._filled == BATCH_BYTES:
                self._cut(final=False)

    def _cut(self, final: bool) -> None:
        """Cut the buffer; keep an unfinished last section unless ``final``.

        FastCDC's cut after a section start depends only on the bytes from
        that start, so cutting batch by batch gives the same sections as
        cutting the whole file at once.
        """
        data, filled = self._buffer, self._filled
        if data is None:
            return
        view = memoryview(data)[:filled]
        sha256 = hashlib.sha256
        cuts: list[tuple[int, int, bytes]] = []
        append = cuts.append
        tail = filled
        for chunk in self._chunker.cut_buf(view):
            if not final and chunk.offset + chunk.length == filled:
                tail = chunk.offset
                break
            append((chunk.offset, chunk.length, sha256(chunk.data).digest()))
        if not cuts:
            # Only a final cut of an empty buffer: a full batch is always
            # cut (BATCH_BYTES exceeds SECTION_MAX_BYTES).
            self._buffers.give(data)
            self._buffer, self._filled = None, 0
            return
        # The unfinished last section moves to the next batch's buffer.
        self._buffer, self._filled = None, filled - tail
        if tail < filled:
            self._buffer = self._buffers.take()
            self._buffer[: filled - tail] = view[tail:]
        self._update._worker.submit(self._state, data, cuts)

    def close(self) -> None:
        """Finish the file; it becomes part of the update."""
        if self.closed:
            return
        self._cut(final=True)
        self.closed = True
        self._update._file_closed(self)

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Update:
    """One batch of changes to the file set; ``commit`` or ``abort`` it."""

    def __init__(self, store: ContentStore) -> None:
        self._store = store
        # Enough idle buffers for a full pipeline: the queue, one batch per
        # worker and the one being filled.
        self._buffers = _BufferPool(PIPELINE_DEPTH + ENCRYPTION_THREADS + 1)
        self._worker = _EncryptionWorker(
            store._keys.content_key, store._packs, self._buffers
        )
        self._lock = threading.Lock()
        self._open_writers: set[FileWriter] = set()
        self._added: dict[str, _FileState] = {}
        self._removed: set[str] = set()
        self.finished = False

    def add_file(self, name: str, mode: int = 0o644, mtime: int = 0) -> FileWriter:
        """Start (re)writing ``name``; replaces an existing file at commit."""
        self._check_open()
        validate_name(name)
        writer = FileWriter(
            self, _FileState(name=name, mode=mode & 0o7777, mtime=mtime)
        )
        with self._lock:
            self._open_writers.add(writer)
        return writer

    def _file_closed(self, writer: FileWriter) -> None:
        with self._lock:
            self._open_writers.discard(writer)
            self._added[writer._state.name] = writer._state
            self._removed.discard(writer._state.name)

    def remove_file(self, name: str) -> None:
        """Drop ``name`` from the file set; FileNotInSet if it is not there."""
        self._check_open()
        with self._lock:
            if name in self._added:
                del self._added[name]
                if not self._store._has_committed_file(name):
                    return
            elif not self._store._has_committed_file(name) or name in self._removed:
                raise FileNotInSet(name)
            self._removed.add(name)

    def _check_open(self) -> None:
        if self.finished:
            raise ValueError("this update is already committed or aborted")

    def commit(self) -> CommitResult:
        """Make the update durable as a new revision (see the module doc)."""
        self._check_open()
        if self._open_writers:
            names = sorted(w._state.name for w in self._open_writers)
            raise ValueError(f"files still being written: {names}")
        try:
            self._worker.finish()
            return self._store._commit(self)
        except BaseException:
            self.abort()
            raise
        finally:
            self.finished = True
            self._worker.stop()

    def abort(self) -> None:
        """Drop everything this update wrote (no revision references it)."""
        if self.finished and self._store._update is not self:
            return
        self.finished = True
        try:
            self._worker.drain()
        except BaseException:
            pass  # aborting anyway
        self._worker.stop()
        for number, _ in self._worker.writers:
            self._store._packs.release(number)
        self._worker.writers.clear()
        self._store._update_ended(self)


class ContentStore:
    """The node's own content: its file set and its committed revisions."""

    def __init__(
        self, content_dir: Path, keys: NodeKeys, metadata: MetadataStore
    ) -> None:
        self._keys = keys
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
        self.metadata = metadata
        self._current: VerifiedRevision | None = None
        self._manifest: storedpb_pb2.Manifest | None = None
        self._files: dict[str, int] = {}
        self._load_current()

    @classmethod
    def open(
        cls, content_dir: Path, keys: NodeKeys, metadata: MetadataStore
    ) -> ContentStore:
        """Open (creating if needed) the content store in ``content_dir``.

        ``metadata`` is the node's Metadata (opened once by its owner): the
        store records each commit's revision there.
        """
        return cls(content_dir, keys, metadata)

    # -- revisions on disk ------------------------------------------------

    def _revision_path(self, number: int) -> Path:
        return self._revisions_dir / f"{number:020d}.rev"

    def _load_revision(
        self, number: int
    ) -> tuple[VerifiedRevision, storedpb_pb2.Manifest]:
        path = self._revision_path(number)
        try:
            verified = verify_revision(path.read_bytes(), self._keys.onion_pubkey)
        except FileNotFoundError:
            raise CorruptContent(f"revision file {path} is missing") from None
        except InvalidRevision as error:
            raise CorruptContent(f"revision file {path}: {error}") from None
        if verified.number != number:
            raise CorruptContent(
                f"revision file {path} holds revision {verified.number}"
            )
        try:
            manifest = self.open_revision(verified)
        except (SealedRecordError, InvalidRevision) as error:
            raise CorruptContent(f"revision file {path}: {error}") from None
        return verified, manifest

    def _load_current(self) -> None:
        pointer = self._dir / "current"
        if not pointer.exists():
            number = 0
        else:
            text = pointer.read_bytes()
            if not text.isdigit() or len(text) > 20:
                raise CorruptContent(f"revision pointer {pointer} is not a number")
            number = int(text)
            self._current, self._manifest = self._load_revision(number)
            self._files = {
                entry.name: i for i, entry in enumerate(self._manifest.files)
            }
        # Revisions above the pointer were written by a commit that crashed
        # before its commit point.
        for path in self._revisions_dir.glob("*.rev"):
            stem = path.stem
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

    def _record_in_metadata(self, verified: VerifiedRevision) -> None:
        revision = verified.revision

        def record(metadata: storedpb_pb2.Metadata) -> None:
            metadata.revision = revision.number
            metadata.content_id = verified.content_id
            metadata.content_length = revision.content_length
            metadata.content_sha256 = revision.content_sha256

        self.metadata.update(record)

    def open_revision(self, verified: VerifiedRevision) -> storedpb_pb2.Manifest:
        """Decrypt and check the manifest of one of our own revisions."""
        revision = verified.revision
        plain = open_sealed(
            self._keys.manifest_key,
            revision.sealed_manifest,
            manifest_associated_data(revision.owner_pubkey, revision.number),
            f"manifest of revision {revision.number}",
        )
        manifest = storedpb_pb2.Manifest.FromString(plain)
        if len(manifest.section_plaintext_sha256) != len(revision.sections):
            raise InvalidRevision("manifest and section table disagree")
        expected_first = 0
        for entry in manifest.files:
            if entry.first_section != expected_first:
                raise InvalidRevision(f"manifest entry {entry.name!r} is out of order")
            expected_first += entry.section_count
        if expected_first != len(revision.sections):
            raise InvalidRevision("manifest files do not cover the section table")
        if content_sha256((s.length, s.sha256) for s in revision.sections) != (
            revision.content_sha256
        ):
            raise InvalidRevision("content_sha256 does not match the section table")
        return manifest

    # -- reading ----------------------------------------------------------

    @property
    def current(self) -> VerifiedRevision | None:
        return self._current

    @property
    def manifest(self) -> storedpb_pb2.Manifest | None:
        return self._manifest

    @property
    def bytes_read(self) -> int:
        """Section bytes read from packs so far (for tests and benchmarks)."""
        return self._packs.bytes_read

    def list_files(self) -> list[str]:
        return sorted(self._files)

    def _has_committed_file(self, name: str) -> bool:
        return name in self._files

    def file_entry(self, name: str) -> storedpb_pb2.FileEntry:
        with self._lock:
            if self._manifest is None or name not in self._files:
                raise FileNotInSet(name)
            entry = storedpb_pb2.FileEntry()
            entry.CopyFrom(self._manifest.files[self._files[name]])
            return entry

    def read_file(self, name: str) -> Iterator[bytes]:
        """The file's plaintext, one verified section at a time."""
        with self._lock:
            if (
                self._current is None
                or self._manifest is None
                or name not in self._files
            ):
                raise FileNotInSet(name)
            revision, manifest = self._current.revision, self._manifest
            entry = manifest.files[self._files[name]]
        return self._read_sections(name, revision, manifest, entry)

    def _read_sections(
        self,
        name: str,
        revision: storedpb_pb2.ContentRevision,
        manifest: storedpb_pb2.Manifest,
        entry: storedpb_pb2.FileEntry,
    ) -> Iterator[bytes]:
        total = 0
        for index in range(
            entry.first_section, entry.first_section + entry.section_count
        ):
            ref = revision.sections[index]
            position = index - entry.first_section
            where = f"file {name!r}: section {position} of the file"
            plain_sha256 = manifest.section_plaintext_sha256[index]
            try:
                ciphertext = self._packs.read(ref.sha256)
            except (SectionCorrupt, SectionMissing, OSError) as error:
                raise CorruptContent(f"{where}: {error}") from None
            if len(ciphertext) != ref.length:
                raise CorruptContent(f"{where} has the wrong length")
            decryptor = section_cipher(
                section_key(self._keys.content_key, plain_sha256)
            )
            plain = decryptor.decryptor().update(ciphertext)
            if hashlib.sha256(plain).digest() != plain_sha256:
                raise CorruptContent(f"{where} decrypts to wrong bytes")
            total += len(plain)
            yield plain
        if total != entry.size:
            raise CorruptContent(f"file {name!r}: sections do not add up to its size")

    def read_section(self, sha256: bytes) -> bytes:
        """A stored ciphertext section, verified against its hash."""
        try:
            return self._packs.read(sha256)
        except SectionCorrupt as error:
            raise CorruptContent(str(error)) from None

    def has_section(self, sha256: bytes) -> bool:
        return self._packs.has(sha256)

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

    def _commit(self, update: Update) -> CommitResult:
        with self._lock:
            for _, writer in update._worker.writers:
                writer.finish()
            crash_point(1)
            self._packs.install_all(
                [number for number, _ in update._worker.writers], crash_point
            )
            update._worker.writers.clear()
            verified, manifest = self._build_revision(update)
            atomic_write(self._revision_path(verified.number), verified.signed)
            crash_point(4)
            atomic_write(self._dir / "current", str(verified.number).encode("ascii"))
            crash_point(5)
            self._current, self._manifest = verified, manifest
            self._files = {entry.name: i for i, entry in enumerate(manifest.files)}
            self._update = None
            self._record_in_metadata(verified)
            crash_point(6)
            self._drop_old_revisions()
            return CommitResult(
                revision=verified,
                files_written=len(update._added),
                files_removed=len(update._removed),
                bytes_written=sum(state.size for state in update._added.values()),
                new_section_bytes=update._worker.new_section_bytes,
                content_length=verified.revision.content_length,
            )

    def _build_revision(
        self, update: Update
    ) -> tuple[VerifiedRevision, storedpb_pb2.Manifest]:
        old_revision = self._current.revision if self._current else None
        old_manifest = self._manifest
        files: dict[str, _FileState | storedpb_pb2.FileEntry] = {}
        if old_manifest is not None:
            for entry in old_manifest.files:
                if entry.name not in update._removed:
                    files[entry.name] = entry
        files.update(update._added)
        number = max(
            self.metadata.get().revision, old_revision.number if old_revision else 0
        )
        revision = storedpb_pb2.ContentRevision(
            format=REVISION_FORMAT,
            owner_pubkey=self._keys.onion_pubkey,
            number=number + 1,
        )
        manifest = storedpb_pb2.Manifest()
        plain_hashes = manifest.section_plaintext_sha256
        sections = revision.sections
        content_length = 0
        for name in sorted(files):
            item = files[name]
            entry = manifest.files.add(name=name, first_section=len(sections))
            if isinstance(item, _FileState):
                entry.size, entry.mode, entry.mtime = item.size, item.mode, item.mtime
                for length, plain_sha256, sha256 in _RECORD.iter_unpack(item.records):
                    sections.add(length=length, sha256=sha256)
                    plain_hashes.append(plain_sha256)
                    content_length += length
                item.records = bytearray()  # consumed: keep the peak low
            else:
                assert old_revision is not None and old_manifest is not None
                entry.size, entry.mode, entry.mtime = item.size, item.mode, item.mtime
                first, count = item.first_section, item.section_count
                for index in range(first, first + count):
                    ref = old_revision.sections[index]
                    sections.add(length=ref.length, sha256=ref.sha256)
                    plain_hashes.append(old_manifest.section_plaintext_sha256[index])
                    content_length += ref.length
            entry.section_count = len(sections) - entry.first_section
        revision.content_length = content_length
        revision.content_sha256 = content_sha256((s.length, s.sha256) for s in sections)
        revision.sealed_manifest = seal(
            self._keys.manifest_key,
            manifest.SerializeToString(deterministic=True),
            manifest_associated_data(revision.owner_pubkey, revision.number),
        )
        return sign_revision_lean(revision, self._keys.signing_key), manifest

    def _kept_revision_numbers(self) -> list[int]:
        if self._current is None:
            return []
        number = self._current.number
        return [number, number - 1] if number > 1 else [number]

    def _drop_old_revisions(self) -> None:
        kept = set(self._kept_revision_numbers())
        for path in self._revisions_dir.glob("*.rev"):
            if path.stem.isdigit() and int(path.stem) not in kept:
                atomic_delete(path)

    # -- garbage collection -----------------------------------------------

    def gc(self, extra_keep: set[bytes] | frozenset[bytes] = frozenset()) -> int:
        """Drop sections no kept revision, open update or ``extra_keep`` needs.

        Kept revisions are the current one and the one before it. Returns
        the bytes freed on disk.
        """
        with self._lock:
            live: set[bytes] = set(extra_keep)
            for number in self._kept_revision_numbers():
                if self._current is not None and number == self._current.number:
                    revision = self._current.revision
                else:
                    path = self._revision_path(number)
                    if not path.exists():
                        continue
                    revision = self._load_revision(number)[0].revision
                live.update(ref.sha256 for ref in revision.sections)
            pins = [self._update._worker.reused] if self._update is not None else []
            return self._packs.gc(live, pins)

    def close(self) -> None:
        """Abort an open update and release file descriptors."""
        with self._lock:
            if self._update is not None:
                self._update.abort()
            self._packs.close()
