"""A stand-in for the content engine, with the engine's API, for the swarm.

``FakeContentEngine`` keeps a file set in memory and commits it as real
revisions: each file is cut into sections of at most ``SECTION_BYTES``,
encrypted with AES-256-CTR under a key and nonce derived from the content
key and the section's plaintext hash (so unchanged sections keep their
ciphertext, as the engine's do), listed in a real section tree whose
entries carry real audit samples (``private[32:48]``), with a one-chunk
manifest tree, under a real signed root. Replicas, spot checks and the
contract book see exactly what they see from the engine; only packing,
crash safety and the sealed manifest are left out.

State lives in a registry keyed by the content directory, so a swarm node
that is stopped and started again in the same process finds its content,
as a real node finds its packs. ``forget_blob`` lets a test lose data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from barterbackup.contracts.samplecheck import audit_key_of, make_audit_samples
from barterbackup.keys import NodeKeys
from barterbackup.revisions import VerifiedRevision, new_root, sign_root
from barterbackup.testing.fakes import BlobDict
from barterbackup.tree import PRIVATE_BYTES, Entry, TreeBuilder, iter_nodes
from barterbackup.tree.nodes import Leaf, entry_hashes

SECTION_BYTES = 16 * 1024


@dataclass(frozen=True)
class FakeCommitResult:
    """The fields of the engine's CommitResult the node and tests read."""

    revision: VerifiedRevision
    files_written: int
    files_removed: int
    bytes_written: int
    new_section_bytes: int
    content_length: int


@dataclass
class _FileEntry:
    size: int


@dataclass
class _Manifest:
    files: list[str]


@dataclass
class _State:
    files: dict[str, bytes] = field(default_factory=dict)
    blobs: BlobDict = field(default_factory=BlobDict)
    current: VerifiedRevision | None = None
    previous: VerifiedRevision | None = None


class _Writer:
    def __init__(self, update: _FakeUpdate, name: str) -> None:
        self._update = update
        self._name = name
        self._parts: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._parts.append(bytes(data))

    def close(self) -> None:
        self._update._added[self._name] = b"".join(self._parts)


class _FakeUpdate:
    def __init__(self, engine: FakeContentEngine) -> None:
        self._engine = engine
        self._added: dict[str, bytes] = {}
        self._removed: set[str] = set()
        self.finished = False

    def add_file(self, name: str, mode: int = 0o644, mtime: int = 0) -> _Writer:
        return _Writer(self, name)

    def remove_file(self, name: str) -> None:
        if name not in self._engine._state.files and name not in self._added:
            raise KeyError(name)
        self._added.pop(name, None)
        self._removed.add(name)

    def commit(self) -> FakeCommitResult:
        if self.finished:
            raise ValueError("this update is already committed or aborted")
        self.finished = True
        return self._engine._commit(self._added, self._removed)

    def abort(self) -> None:
        self.finished = True


class FakeContentEngine:
    """The engine's API over an in-memory file set (see the module doc)."""

    _registry: ClassVar[dict[Path, _State]] = {}

    def __init__(self, keys: NodeKeys, state: _State) -> None:
        self._keys = keys
        self._state = state
        self._audit_key = audit_key_of(keys)

    @classmethod
    def open(
        cls, content_dir: Path, keys: NodeKeys, metadata: Any
    ) -> FakeContentEngine:
        state = cls._registry.setdefault(Path(content_dir).resolve(), _State())
        return cls(keys, state)

    # -- what the node reads -------------------------------------------------

    @property
    def current(self) -> VerifiedRevision | None:
        return self._state.current

    @property
    def manifest(self) -> _Manifest | None:
        if self._state.current is None:
            return None
        return _Manifest(sorted(self._state.files))

    @property
    def file_count(self) -> int:
        return len(self._state.files) if self._state.current else 0

    def list_files(self) -> list[str]:
        return sorted(self._state.files)

    def revision_time(self) -> float:
        """The engine's commit time; the fake keeps none (status shows no age)."""
        return 0.0

    def file_entry(self, name: str) -> _FileEntry:
        return _FileEntry(len(self._state.files[name]))

    def read_file(self, name: str) -> Iterator[bytes]:
        yield self._state.files[name]

    def read_blob(self, sha256: bytes) -> bytes:
        return self._state.blobs.get(sha256)

    def has_blob(self, sha256: bytes) -> bool:
        return sha256 in self._state.blobs

    def forget_blob(self, sha256: bytes) -> None:
        """Lose one blob (a test's damaged disk)."""
        del self._state.blobs[sha256]

    def begin_update(self) -> _FakeUpdate:
        return _FakeUpdate(self)

    def gc(self, keep: Iterable[VerifiedRevision] = ()) -> int:
        """Drop blobs no kept revision (current, previous, ``keep``) needs."""
        revisions = [r for r in (self._state.current, self._state.previous) if r]
        revisions.extend(keep)
        live: set[bytes] = set()
        for revision in revisions:
            for tree in (revision.sections, revision.manifest):
                for node in iter_nodes(tree, self._state.blobs):
                    live.add(node.ref.hash)
                    if isinstance(node, Leaf):
                        live.update(entry_hashes(node.packed()))
        freed = 0
        for sha256 in [h for h in self._state.blobs if h not in live]:
            freed += len(self._state.blobs.pop(sha256))
        return freed

    def close(self) -> None:
        """Nothing to close: the state stays in the registry."""

    # -- committing ----------------------------------------------------------------

    def _commit(self, added: dict[str, bytes], removed: set[str]) -> FakeCommitResult:
        state = self._state
        files = {n: d for n, d in state.files.items() if n not in removed}
        files.update(added)
        blobs = state.blobs
        before = set(blobs)
        sections = TreeBuilder(blobs)
        table: dict[str, list[int]] = {}
        index = 0
        for name in sorted(files):
            data = files[name]
            first = index
            for start in range(0, max(len(data), 1), SECTION_BYTES):
                piece = data[start : start + SECTION_BYTES]
                if not piece:
                    break
                ciphertext = self._encrypt(piece)
                sha256 = hashlib.sha256(ciphertext).digest()
                blobs.put(sha256, ciphertext)
                private = bytes(PRIVATE_BYTES - 16) + make_audit_samples(
                    self._audit_key, sha256, ciphertext
                )
                sections.add(Entry(len(ciphertext), sha256, private))
                index += 1
            table[name] = [first, index]
        manifest_chunk = json.dumps(table, sort_keys=True).encode()
        chunk_sha = hashlib.sha256(manifest_chunk).digest()
        blobs.put(chunk_sha, manifest_chunk)
        manifest = TreeBuilder(blobs)
        manifest.add(Entry(len(manifest_chunk), chunk_sha))
        number = state.current.number + 1 if state.current else 1
        root = new_root(
            self._keys.onion_pubkey, number, sections.finish(), manifest.finish()
        )
        revision = sign_root(root, self._keys.signing_key)
        new_bytes = sum(len(blobs[h]) for h in set(blobs) - before)
        state.files = files
        state.previous, state.current = state.current, revision
        return FakeCommitResult(
            revision=revision,
            files_written=len(added),
            files_removed=len(removed),
            bytes_written=sum(len(d) for d in added.values()),
            new_section_bytes=new_bytes,
            content_length=revision.content_length,
        )

    def _encrypt(self, piece: bytes) -> bytes:
        plain_sha = hashlib.sha256(piece).digest()
        key = hashlib.sha256(self._keys.content_key + plain_sha).digest()
        encryptor = Cipher(algorithms.AES(key), modes.CTR(plain_sha[:16])).encryptor()
        return encryptor.update(piece) + encryptor.finalize()
