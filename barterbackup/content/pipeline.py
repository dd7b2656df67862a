"""The packing pipeline: file bytes → sections → encrypted, stored, journaled.

Two threads and a helper: the caller's thread copies file bytes into 1 MiB
batches, cuts them (FastCDC) and hashes each section's plaintext
(``FileWriter``); one worker derives each section's key, encrypts, hashes
the ciphertext, makes the entry's private field, deduplicates against what
is stored or being written, appends new sections to the open pack and the
batch's tree entries to the update journal (``EncryptionWorker``); a third
thread fdatasyncs the open pack every SYNC_EVERY_BYTES so the commit's
fsync has little left. hashlib and the cipher release the GIL on large
buffers, so the caller's hashing overlaps the worker's encryption.

Memory is flat for any file size: a few reused batch buffers, and each
batch's entries go to the journal as soon as they are stored.
"""

from __future__ import annotations

import hashlib
import queue
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyfastcdc.cy import FastCDC

from barterbackup.content.journal import PendingFile, UpdateJournal
from barterbackup.content.private import PrivateFields
from barterbackup.content.sections import (
    NORMALIZED_CHUNKING,
    SECTION_AVERAGE_BYTES,
    SECTION_MAX_BYTES,
    SECTION_MIN_BYTES,
    SectionKeyDeriver,
    section_encryptor,
)
from barterbackup.store.packs import (
    PACK_MAX_ENTRIES,
    PACK_TARGET_BYTES,
    PackStore,
    PackWriter,
)

# Plaintext is cut in batches of this size: memory stays flat for any file.
BATCH_BYTES = 1024 * 1024
# Batches queued for the worker.
PIPELINE_DEPTH = 2
# Worker threads. One: with ~17 KiB sections every hashlib/cipher call
# releases and retakes the GIL, and two workers measured slower than one
# (1.2 s vs 0.9 s for 512 MiB), while splitting the work between the caller
# (cut + plaintext hash) and one worker measured best.
ENCRYPTION_THREADS = 1
# The pack's bytes are handed to the kernel's disk writes (fdatasync in a
# helper thread) every this many bytes: left to the commit, the fsync of
# 256 MiB took ~0.15 s here, as long as hashing it; overlapped, ~0.01 s.
SYNC_EVERY_BYTES = 32 * 1024 * 1024
_ENTRY = struct.Struct(">Q32s48s")


# Whole small files are gathered into one batch of at most this many: one
# hand-off to the worker per file cost ~300 us a file (a million mail
# messages: five minutes), most of it the two threads waking each other.
SMALL_BATCH_FILES = 4096


@dataclass
class Batch:
    """Up to BATCH_BYTES with its cuts (offset, length, sha256): part of one
    file, or several whole small files.

    ``files`` says whose sections the cuts are, in order: (file, count).
    """

    sequence: int
    files: list[tuple[PendingFile, int]]
    data: bytearray
    cuts: list[tuple[int, int, bytes]]


class BufferPool:
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


class EncryptionWorker:
    """Stage 2: keys, encryption, ciphertext hashes, private fields, storing.

    Threads take whole batches in turn; storing (dedupe, pack append,
    journal append) happens strictly in submission order, so sections land
    in the order they were written whatever the thread count. Claiming a
    stored section and journaling the entry that references it happen under
    ``claim_lock``, which garbage collection also takes: a section the
    update reuses is always in the journal it marks.
    """

    def __init__(
        self,
        content_key: bytes,
        private_fields: PrivateFields,
        packs: PackStore,
        buffers: BufferPool,
        journal: UpdateJournal,
        claim_lock: threading.Lock,
    ) -> None:
        self._section_keys = SectionKeyDeriver(content_key)
        self._private = private_fields
        self._packs = packs
        self._buffers = buffers
        self._journal = journal
        self._claim_lock = claim_lock
        self._sync_requests: queue.Queue[PackWriter | None] = queue.Queue(maxsize=1)
        self._unsynced_bytes = 0
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=PIPELINE_DEPTH)
        self._submit_lock = threading.Lock()
        self._submitted = 0
        self._turn = threading.Condition()
        self._next_to_store = 0
        self.error: BaseException | None = None
        self.writers: list[tuple[int, PackWriter]] = []
        # Packs this update filled and installed already (ids): they hold
        # only blobs no revision references yet (an abort deletes them).
        self.installed: list[str] = []
        # Held while a pack is synced: a full pack is not installed (and its
        # descriptor closed) under a running fdatasync.
        self._sync_lock = threading.Lock()
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
        self,
        files: list[tuple[PendingFile, int]],
        data: bytearray,
        cuts: list[tuple[int, int, bytes]],
    ) -> None:
        with self._submit_lock:
            self._queue.put(Batch(self._submitted, files, data, cuts))
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
                    with self._sync_lock:
                        writer.sync_data()
            except BaseException as error:
                # Linux may clear a write error once reported: a later fsync
                # could succeed, so this one must fail the update.
                self.error = error

    def request_sync(self, writer: PackWriter, appended: int) -> None:
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
            entries = b""
            try:
                if self.error is None:
                    hashes, entries = self._encrypt(batch, out)
            except BaseException as error:  # handed to the committing thread
                self.error = error
            with self._turn:
                while self._next_to_store != batch.sequence:
                    self._turn.wait()
                try:
                    if self.error is None:
                        self._store(batch, out, hashes, entries)
                except BaseException as error:
                    self.error = error
                finally:
                    self._next_to_store += 1
                    self._turn.notify_all()
            self._buffers.give(batch.data)
            self._queue.task_done()

    def _encrypt(self, batch: Batch, out: bytearray) -> tuple[list[bytes], bytes]:
        """Encrypt the batch's sections into ``out``; their ciphertext
        hashes and packed tree entries.

        The hot loop of packing (one pass per section): names are bound to
        locals and nothing is allocated that can be avoided.
        """
        source = memoryview(batch.data)
        target = memoryview(out)
        derive_key = self._section_keys.key
        make_private = self._private.make
        pack_entry = _ENTRY.pack
        encryptor = section_encryptor
        sha256 = hashlib.sha256
        position = 0
        hashes: list[bytes] = []
        entries: list[bytes] = []
        for offset, length, plain_sha256 in batch.cuts:
            end = position + length
            encryptor(derive_key(plain_sha256)).update_into(
                source[offset : offset + length], target[position:]
            )
            ciphertext = target[position:end]
            digest = sha256(ciphertext).digest()
            hashes.append(digest)
            entries.append(
                pack_entry(
                    length, digest, make_private(plain_sha256, digest, ciphertext)
                )
            )
            position = end
        return hashes, b"".join(entries)

    def _store(
        self, batch: Batch, out: bytearray, hashes: list[bytes], entries: bytes
    ) -> None:
        """Journal the sections' entries and append the new ones (in order)."""
        view = memoryview(out)
        with self._claim_lock:
            stored = self._packs.claim_or_reserve_many(hashes, set())
            first = self._journal.append_entries(entries)
        for pending, count in batch.files:
            pending.add_extent(first, count)
            first += count
        source = 0
        kept = 0
        fresh: list[tuple[bytes, int]] = []
        in_batch: set[bytes] = set()
        for (_, length, _), sha256, is_stored in zip(
            batch.cuts, hashes, stored, strict=True
        ):
            if not is_stored and sha256 not in in_batch:
                if kept != source:  # close the gap a deduplicated section left
                    view[kept : kept + length] = view[source : source + length]
                in_batch.add(sha256)
                fresh.append((sha256, length))
                kept += length
            source += length
        if fresh:
            number, writer = self.current_writer()
            first_entry = writer.append(view[:kept], fresh)
            self._packs.reserve(number, first_entry, [sha256 for sha256, _ in fresh])
            self.new_section_bytes += kept
            self.request_sync(writer, kept)

    def current_writer(self) -> tuple[int, PackWriter]:
        """The open pack; a full one is installed and a new one started.

        Installing a full pack at once (not at commit) moves its entries
        from the reservation table (~32 bytes each) to the stored index
        (~8): an update of any size reserves at most one pack's entries. A
        crash leaves the installed packs unreferenced, for gc to drop.
        """
        if self.writers:
            number, writer = self.writers[-1]
            if writer.size >= PACK_TARGET_BYTES or writer.count >= PACK_MAX_ENTRIES:
                with self._sync_lock:
                    self._packs.install(number, _no_crash_point)
                self.writers.pop()
                self.installed.append(writer.pack_id)
        if not self.writers:
            self.writers.append(self._packs.new_writer())
            self._unsynced_bytes = 0
        return self.writers[-1]


def _no_crash_point(point: int) -> None:
    """Installs during an update are not the commit's numbered points."""


class SmallFileBatcher:
    """Gathers whole files smaller than a batch into shared batches.

    A file that ends before its first batch is full is copied here with its
    cuts; the batch goes to the worker when full (BATCH_BYTES or
    SMALL_BATCH_FILES files) or on ``flush`` (before a commit, and before
    the journal writes a run, which needs every buffered file's sections).
    """

    def __init__(self, worker: EncryptionWorker, buffers: BufferPool) -> None:
        self._worker = worker
        self._buffers = buffers
        self._lock = threading.Lock()
        self._data: bytearray | None = None
        self._filled = 0
        self._files: list[tuple[PendingFile, int]] = []
        self._cuts: list[tuple[int, int, bytes]] = []

    def add(
        self,
        pending: PendingFile,
        data: memoryview,
        cuts: list[tuple[int, int, bytes]],
    ) -> None:
        with self._lock:
            if self._data is not None and (
                self._filled + len(data) > BATCH_BYTES
                or len(self._files) >= SMALL_BATCH_FILES
            ):
                self._submit()
            if self._data is None:
                self._data = self._buffers.take()
            start = self._filled
            self._data[start : start + len(data)] = data
            self._filled += len(data)
            self._cuts.extend(
                (start + offset, length, sha) for offset, length, sha in cuts
            )
            self._files.append((pending, len(cuts)))

    def _submit(self) -> None:
        if self._data is not None:
            data, files, cuts = self._data, self._files, self._cuts
            self._data, self._filled, self._files, self._cuts = None, 0, [], []
            self._worker.submit(files, data, cuts)

    def flush(self) -> None:
        """Hand the gathered files to the worker now."""
        with self._lock:
            self._submit()

    def discard(self) -> None:
        with self._lock:
            if self._data is not None:
                self._buffers.give(self._data)
            self._data, self._filled, self._files, self._cuts = None, 0, [], []


class FileWriter:
    """Streams one file's bytes into an update (``write`` then ``close``)."""

    def __init__(
        self,
        pending: PendingFile,
        worker: EncryptionWorker,
        buffers: BufferPool,
        small_files: SmallFileBatcher,
        check_open: Callable[[], None],
        closed: Callable[[FileWriter], None],
    ) -> None:
        self.pending = pending
        self._worker = worker
        self._buffers = buffers
        self._small_files = small_files
        self._submitted = False
        self._check_open = check_open
        self._on_closed = closed
        self._chunker = FastCDC(
            SECTION_AVERAGE_BYTES,
            min_size=SECTION_MIN_BYTES,
            max_size=SECTION_MAX_BYTES,
            normalized_chunking=NORMALIZED_CHUNKING,
        )
        self._buffer: bytearray | None = None
        self._filled = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise ValueError(f"file {self.pending.name!r} is already closed")
        self._check_open()
        view = memoryview(data).cast("B")
        self.pending.size += len(view)
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
        if final and filled <= SECTION_MIN_BYTES:
            # A file under the minimum is one section, as FastCDC would cut
            # it. Not calling the chunker matters for small files: it drops
            # the GIL, and taking it back from a busy worker can take a
            # whole switch interval (5 ms) per file.
            if filled:
                append((0, filled, sha256(view).digest()))
            chunks: Iterable[Any] = ()
        else:
            chunks = self._chunker.cut_buf(view)
        for chunk in chunks:
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
        if final and not self._submitted:
            # The whole file is in this buffer: it joins a shared batch.
            self._small_files.add(self.pending, view, cuts)
            self._buffers.give(data)
            self._buffer, self._filled = None, 0
            return
        # The unfinished last section moves to the next batch's buffer.
        self._buffer, self._filled = None, filled - tail
        if tail < filled:
            self._buffer = self._buffers.take()
            self._buffer[: filled - tail] = view[tail:]
        self._submitted = True
        self._worker.submit([(self.pending, len(cuts))], data, cuts)

    def close(self) -> None:
        """Finish the file; it becomes part of the update."""
        if self.closed:
            return
        self._check_open()
        self._cut(final=True)
        self.closed = True
        self._on_closed(self)

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
