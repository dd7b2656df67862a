"""The node's Metadata record, AEAD-sealed on disk.

One file holds one sealed ``storedpb.Metadata``. Every change goes through
``MetadataStore.update``, which applies a function to a copy under a lock,
seals the result and replaces the file atomically, so concurrent callers
(gRPC worker threads) never lose each other's changes and a crash leaves the
old or the new record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import DecodeError

from barterbackup._proto import storedpb_pb2
from barterbackup.store.atomic import atomic_write
from barterbackup.store.sealed import SealedRecordError, open_sealed, seal

# Associated data: a sealed Metadata cannot be passed off as another record.
METADATA_AD = b"barterbackup v1 metadata\x00"
# Peers, sources and settings take kilobytes; a file far past this is
# damaged, and is refused without being read into memory.
MAX_METADATA_BYTES = 16 * 1024 * 1024


class MetadataError(SealedRecordError):
    """The metadata file is tampered, truncated, foreign or not a record."""


class MetadataStore:
    """Sealed Metadata at ``path`` under the 32-byte ``key``."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = Path(path)
        self._key = key
        self._lock = threading.Lock()
        self._cached: storedpb_pb2.Metadata | None = None

    def _load(self) -> storedpb_pb2.Metadata:
        if self._cached is None:
            try:
                with self.path.open("rb") as handle:
                    # Read at most one byte past the bound: a file grown to
                    # 2**40 bytes must not be read whole to learn it is bad.
                    sealed = handle.read(MAX_METADATA_BYTES + 1)
            except FileNotFoundError:
                self._cached = storedpb_pb2.Metadata()
                return self._cached
            if len(sealed) > MAX_METADATA_BYTES:
                raise MetadataError(f"metadata file {self.path} is too large")
            try:
                plain = open_sealed(
                    self._key, sealed, METADATA_AD, f"metadata file {self.path}"
                )
            except SealedRecordError as error:
                raise MetadataError(str(error)) from None
            try:
                self._cached = storedpb_pb2.Metadata.FromString(plain)
            except DecodeError:
                raise MetadataError(
                    f"metadata file {self.path} is not a valid record"
                ) from None
        return self._cached

    def get(self) -> storedpb_pb2.Metadata:
        """A copy of the current Metadata (empty if none was written yet)."""
        with self._lock:
            copy = storedpb_pb2.Metadata()
            copy.CopyFrom(self._load())
            return copy

    def update(
        self, change: Callable[[storedpb_pb2.Metadata], None]
    ) -> storedpb_pb2.Metadata:
        """Apply ``change`` to a copy, persist it, and return a copy of it.

        If ``change`` raises, nothing is written and the record is unchanged.
        """
        with self._lock:
            updated = storedpb_pb2.Metadata()
            updated.CopyFrom(self._load())
            change(updated)
            plain = updated.SerializeToString(deterministic=True)
            sealed = seal(self._key, plain, METADATA_AD)
            if len(sealed) > MAX_METADATA_BYTES:
                # Written, it would lock the node out at its next unlock.
                raise MetadataError(
                    f"metadata would take {len(sealed)} bytes, more than "
                    f"{MAX_METADATA_BYTES}: not written"
                )
            atomic_write(self.path, sealed)
            self._cached = updated
            result = storedpb_pb2.Metadata()
            result.CopyFrom(updated)
            return result
