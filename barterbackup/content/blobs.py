"""Tree nodes and manifest chunks as blobs of the content store's packs.

Sections, tree nodes and sealed manifest chunks are all blobs named by the
SHA-256 of their bytes, stored in the same packs: a commit's nodes and
chunks are appended to the pack writers its sections went to, so they
become durable at the same commit point, and replicas fetch all three the
same way.
"""

from __future__ import annotations

from barterbackup.content.pipeline import EncryptionWorker
from barterbackup.store.packs import PackStore

# A commit's small blobs (nodes average ~0.7 KB, chunks ~5 KB) are written
# to the pack in runs of about this size, not one write each.
FLUSH_BYTES = 1024 * 1024


class PackSource:
    """``NodeSource`` over the store's installed packs.

    Every read is checked against its hash by the pack store (SectionCorrupt)
    and again by the tree's decoder; a blob that is not stored raises
    SectionMissing.
    """

    def __init__(self, packs: PackStore) -> None:
        self._packs = packs

    def get(self, node_hash: bytes) -> bytes:
        return self._packs.read(node_hash)


class CommitSink:
    """``NodeSink`` for a commit: new blobs go to the update's pack writers.

    A blob already stored, or already written by this update, is not
    written again (re-cut tree nodes are mostly identical to old ones).
    """

    def __init__(self, packs: PackStore, worker: EncryptionWorker) -> None:
        self._packs = packs
        self._worker = worker
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_hashes: set[bytes] = set()
        self._pending_bytes = 0
        self.blobs_written = 0
        self.bytes_written = 0

    def put(self, node_hash: bytes, node_bytes: bytes) -> None:
        if node_hash in self._pending_hashes:
            return
        if self._packs.claim_or_reserve_many([node_hash], set())[0]:
            return
        self._pending.append((node_hash, node_bytes))
        self._pending_hashes.add(node_hash)
        self._pending_bytes += len(node_bytes)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Append the buffered blobs to the open pack and reserve them."""
        if not self._pending:
            return
        number, writer = self._worker.current_writer()
        data = b"".join(blob for _, blob in self._pending)
        first = writer.append(
            data, [(digest, len(blob)) for digest, blob in self._pending]
        )
        self._packs.reserve(number, first, [digest for digest, _ in self._pending])
        self.blobs_written += len(self._pending)
        self.bytes_written += len(data)
        self._pending = []
        self._pending_hashes = set()
        self._pending_bytes = 0
