"""Blobs reassembled from ``Download`` pieces, each checked, whatever sends
them: an owner during a sync, the replicas during a recovery or a repair.

Pieces must come in order within a blob. A blob with any bad piece is
refused for the rest of the call, with why (for the report naming the
source); its buffer never grows past the length it must have (a section's)
or may have (a tree node's, a blob of unknown kind), so a hostile sender
cannot make us hoard memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from barterbackup._proto import bbrpc_pb2


class BlobAssembler:
    """Pieces → verified blobs, for one Download call.

    ``limits`` maps each blob asked for to (length, exact): the length it
    must have when ``exact``, else the most it may have.
    """

    def __init__(self, limits: Mapping[bytes, tuple[int, bool]]) -> None:
        self._limits = limits
        self._buffers: dict[bytes, bytearray] = {}
        # Why each refused blob was refused (one entry per blob asked for).
        self.rejected: dict[bytes, str] = {}
        self.stored: set[bytes] = set()

    def add(self, piece: bbrpc_pb2.DownloadResponse, data: bytes) -> bytes | None:
        """Take ``piece`` (whose ``data`` the caller read already: every
        read is a copy); the blob's bytes when this piece completed a blob
        that passed its hash check, else None."""
        blob = bytes(piece.blob)
        limit = self._limits.get(blob)
        if limit is None or blob in self.rejected or blob in self.stored:
            return None
        wanted_length, exact = limit
        length = piece.blob_length
        if (exact and length != wanted_length) or length > wanted_length or not length:
            bound = "" if exact else "at most "
            self._reject(blob, f"has length {length}, not {bound}{wanted_length}")
            return None
        buffer = self._buffers.get(blob)
        filled = len(buffer) if buffer is not None else 0
        if piece.offset != filled or filled + len(data) > length:
            self._reject(blob, "came in pieces out of order or too long")
            return None
        if not filled and len(data) == length:
            # The piece is the whole blob: its hash is the blob's, so one
            # hashing pass checks both, with no buffer copy.
            if piece.sha256 != blob or hashlib.sha256(data).digest() != blob:
                self._reject(blob, "failed its hash check")
                return None
            self.stored.add(blob)
            return data
        if hashlib.sha256(data).digest() != piece.sha256:
            self._reject(blob, "has a piece failing its hash check")
            return None
        if buffer is None:
            buffer = self._buffers[blob] = bytearray()
        buffer += data
        if len(buffer) < length:
            return None
        whole = bytes(self._buffers.pop(blob))
        if hashlib.sha256(whole).digest() != blob:
            self._reject(blob, "failed its hash check")
            return None
        self.stored.add(blob)
        return whole

    def _reject(self, blob: bytes, why: str) -> None:
        """Refuse this blob for the rest of the call (it may be asked again)."""
        self.rejected[blob] = why
        self._buffers.pop(blob, None)
