"""Blobs fetched back from replicas, written into our own packs.

Recovery (``barterbackup.recovery``) fetches a revision's tree nodes,
sections, manifest chunks and sealed node state from untrusted replicas;
each blob is verified against its hash (and nodes against their parents,
from the signed root down) by the fetcher before it reaches ``store_blobs``
here, which checks the hash once more. Blobs go to a pack writer of the
content store that is installed every ``INSTALL_EVERY_BYTES`` and at every
``checkpoint`` (a recovery that stops, fails or is interrupted), so an
interrupted recovery resumes without fetching again what was stored. The
revision becomes current only through ``ContentStore.install_revision``,
once everything it references is durable.

Crash points 11-13 (a pack installed: finished, renamed, indexed) are the
pack store's install sequence; what they leave is an unreferenced pack,
kept for the resumed recovery (docs/recovery.md, "Resume").
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

from barterbackup.store.packs import PackStore, PackWriter

# Installing a pack costs two renames and three fsyncs: every 64 MiB, a
# SIGKILL loses at most that much fetched work.
INSTALL_EVERY_BYTES = 64 * 1024 * 1024
INSTALL_CRASH_OFFSET = 10


class BadRecoveredBlob(ValueError):
    """A blob handed to the store does not match its hash."""


class RecoveredBlobs:
    """The fetch sink of a recovery: our content store's packs.

    Safe to call from several threads (the fetches of several replicas
    flush through the node's thread pool).
    """

    def __init__(
        self,
        packs: PackStore,
        crash_point: Callable[[int], None],
        install_every_bytes: int = INSTALL_EVERY_BYTES,
    ) -> None:
        self._packs = packs
        self._crash_point = crash_point
        self._install_every = install_every_bytes
        self._lock = threading.Lock()
        self._writer: tuple[int, PackWriter] | None = None
        self.blobs_stored = 0
        self.bytes_stored = 0

    def has_blob(self, sha256: bytes) -> bool:
        """Whether the blob is in an installed pack (readable back)."""
        return self._packs.has(sha256)

    def holds_subtree(self, node_hash: bytes) -> bool:
        """Never: a node stored by an interrupted recovery may lack parts
        of its subtree; the fetcher reads such nodes back instead."""
        return False

    def read_blob(self, sha256: bytes) -> bytes:
        return self._packs.read(sha256)

    def store_blobs(self, blobs: list[tuple[bytes, bytes]]) -> None:
        """Keep verified blobs (hash, bytes); a bad hash writes nothing."""
        for sha256, data in blobs:
            if hashlib.sha256(data).digest() != sha256:
                raise BadRecoveredBlob(
                    f"blob {sha256.hex()[:16]} does not match its hash"
                )
        with self._lock:
            fresh: list[tuple[bytes, bytes]] = []
            seen: set[bytes] = set()
            for sha256, data in blobs:
                if sha256 in seen or self._packs.claim_or_reserve(sha256, set()):
                    continue
                seen.add(sha256)
                fresh.append((sha256, data))
            if not fresh:
                return
            if self._writer is None:
                self._writer = self._packs.new_writer()
            number, writer = self._writer
            first = writer.append(
                b"".join(data for _, data in fresh),
                [(sha256, len(data)) for sha256, data in fresh],
            )
            self._packs.reserve(number, first, [sha256 for sha256, _ in fresh])
            self.blobs_stored += len(fresh)
            self.bytes_stored += sum(len(data) for _, data in fresh)
            if writer.size >= self._install_every:
                self._install()

    def checkpoint(self) -> None:
        """Make everything stored so far durable and readable."""
        with self._lock:
            self._install()

    def discard(self) -> None:
        """Drop what is not installed yet (the store is closing)."""
        with self._lock:
            if self._writer is not None:
                self._packs.release(self._writer[0])
                self._writer = None

    def _install(self) -> None:
        if self._writer is None:
            return
        number, _ = self._writer
        self._writer = None
        self._crash_point(INSTALL_CRASH_OFFSET + 1)
        self._packs.install_all(
            [number],
            lambda point: self._crash_point(INSTALL_CRASH_OFFSET + point),
        )
