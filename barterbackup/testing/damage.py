"""Damaging a content store on purpose (tests of check, repair, restore).

Each helper does to the files on disk what a failing disk or a stray
command would: flip a bit of a blob in its pack, drop a blob's entry from
its pack index, cut a pack short. A store that is open keeps its index in
memory: after ``remove_from_index`` reopen it (restart the node).
"""

from __future__ import annotations

from pathlib import Path

from barterbackup.content.engine import ContentStore
from barterbackup.revisions import VerifiedRevision
from barterbackup.store.packs import INDEX_ENTRY, INDEX_SUFFIX, PACK_SUFFIX
from barterbackup.tree import NodeRef, iter_entries, iter_nodes


def section_hashes(store: ContentStore, name: str, revision: int = 0) -> list[bytes]:
    """The hashes of the sections of file ``name``, in order."""
    verified = store.revision(revision)
    for chunk in store.manifest_chunks(verified):
        for placed in chunk.records:
            if placed.record.name == name:
                return [
                    entry.sha256
                    for entry in iter_entries(
                        verified.sections,
                        _Source(store),
                        placed.first_section,
                        placed.stop_section,
                    )
                ]
    raise KeyError(name)


def tree_nodes(revision: VerifiedRevision, store: ContentStore) -> list[NodeRef]:
    """Every node of the revision's section tree, root first."""
    return [node.ref for node in iter_nodes(revision.sections, _Source(store))]


def chunk_hashes(revision: VerifiedRevision, store: ContentStore) -> list[bytes]:
    """The manifest chunks of the revision, in order."""
    return [e.sha256 for e in iter_entries(revision.manifest, _Source(store))]


def flip_bit(store: ContentStore, sha256: bytes, offset: int = 0) -> Path:
    """Flip one bit of the stored blob ``sha256`` in its pack; the pack."""
    extent = store.packs.extent(sha256)
    if extent is None:
        raise KeyError(sha256.hex())
    pack_id, start, length = extent
    path = store.packs.directory / f"{pack_id}{PACK_SUFFIX}"
    with open(path, "r+b") as pack:
        pack.seek(start + offset % length)
        byte = pack.read(1)[0]
        pack.seek(start + offset % length)
        pack.write(bytes([byte ^ 0x10]))
    return path


def truncate_pack_of(store: ContentStore, sha256: bytes) -> Path:
    """Cut the pack holding ``sha256`` just before that blob ends."""
    extent = store.packs.extent(sha256)
    if extent is None:
        raise KeyError(sha256.hex())
    pack_id, start, length = extent
    path = store.packs.directory / f"{pack_id}{PACK_SUFFIX}"
    with open(path, "r+b") as pack:
        pack.truncate(start + length - 1)
    return path


def remove_from_index(packs_dir: Path, sha256: bytes) -> int:
    """Drop every index entry of ``sha256`` under ``packs_dir`` (the blob is
    then missing once the store is reopened); how many were dropped."""
    dropped = 0
    for index_path in packs_dir.glob(f"*{INDEX_SUFFIX}"):
        raw = index_path.read_bytes()
        kept = [entry for entry in INDEX_ENTRY.iter_unpack(raw) if entry[0] != sha256]
        if len(kept) * INDEX_ENTRY.size != len(raw):
            dropped += len(raw) // INDEX_ENTRY.size - len(kept)
            index_path.write_bytes(b"".join(INDEX_ENTRY.pack(*e) for e in kept))
    return dropped


class _Source:
    """The store's blobs as a tree NodeSource."""

    def __init__(self, store: ContentStore) -> None:
        self._store = store

    def get(self, node_hash: bytes) -> bytes:
        return self._store.read_blob(node_hash)
