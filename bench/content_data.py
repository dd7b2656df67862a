"""Deterministic file sets for content benchmarks (reusable elsewhere).

A file set of a given total size: a few large pseudo-random files (most of
the bytes), some text files, and 1000 small files. Every byte comes from an
AES-CTR keystream keyed by the file's name and a seed, so any range of any
file can be produced directly (random access) and the same call always gives
the same bytes: the benchmark can stream into a ContentStore, write the set
to disk for restic, or send it through the daemon's SetFile, and all see the
same data.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK_BYTES = 1024 * 1024
SMALL_FILE_COUNT = 1000
LARGE_FILE_COUNT = 3
# Maps keystream bytes to letters, spaces and newlines with English-like
# frequencies: text that compresses like text and chunks like text.
_TEXT_ALPHABET = b"etaoinshrdlucmfwypvbgkjqxz" * 6 + b" " * 80 + b"\n" * 20 + b".,;:"
_TEXT_TABLE = bytes(_TEXT_ALPHABET[i] for i in range(256))


@dataclass(frozen=True)
class FileSpec:
    """One generated file: its name, size and kind ("random" or "text")."""

    name: str
    size: int
    kind: str
    seed: int = 0

    def key(self) -> bytes:
        return hashlib.sha256(f"{self.seed}:{self.name}".encode()).digest()


def file_set(total_bytes: int, seed: int = 0) -> list[FileSpec]:
    """The specs of a mixed file set of (about) ``total_bytes``."""
    rng = random.Random(seed)
    small = [
        FileSpec(
            f"small/{i // 100:02d}/file{i:04d}.{'txt' if i % 2 else 'bin'}",
            rng.randint(100, 16 * 1024),
            "text" if i % 2 else "random",
            seed,
        )
        for i in range(SMALL_FILE_COUNT)
    ]
    small_total = sum(spec.size for spec in small)
    text_total = total_bytes // 20
    text = [
        FileSpec(f"text/doc{i}.txt", text_total // 4, "text", seed) for i in range(4)
    ]
    remaining = max(0, total_bytes - small_total - sum(s.size for s in text))
    shares = [0.5, 0.3, 0.2][:LARGE_FILE_COUNT]
    large = [
        FileSpec(f"large/blob{i}.bin", int(remaining * share), "random", seed)
        for i, share in enumerate(shares)
    ]
    return large + text + small


def read_range(spec: FileSpec, offset: int, length: int) -> bytes:
    """Bytes ``offset .. offset+length`` of the file (random access)."""
    length = max(0, min(length, spec.size - offset))
    block, skip = divmod(offset, 16)
    encryptor = Cipher(
        algorithms.AES(spec.key()), modes.CTR(block.to_bytes(16, "big"))
    ).encryptor()
    data = encryptor.update(bytes(skip + length))[skip:]
    return data.translate(_TEXT_TABLE) if spec.kind == "text" else data


def file_chunks(
    spec: FileSpec, edits: dict[int, bytes] | None = None
) -> Iterator[bytes]:
    """The file in blocks of BLOCK_BYTES, with ``edits`` (offset → bytes) applied."""
    for offset in range(0, spec.size, BLOCK_BYTES):
        block = read_range(spec, offset, BLOCK_BYTES)
        if edits:
            block = apply_edits(block, offset, edits)
        yield block


def apply_edits(block: bytes, offset: int, edits: dict[int, bytes]) -> bytes:
    end = offset + len(block)
    touched = [(o, d) for o, d in edits.items() if o < end and o + len(d) > offset]
    if not touched:
        return block
    edited = bytearray(block)
    for edit_offset, data in touched:
        start = max(edit_offset, offset)
        stop = min(edit_offset + len(data), end)
        edited[start - offset : stop - offset] = data[
            start - edit_offset : stop - edit_offset
        ]
    return bytes(edited)


def scattered_edits(
    specs: list[FileSpec], count: int = 160, length: int = 64 * 1024, seed: int = 1
) -> dict[str, dict[int, bytes]]:
    """``count`` non-overlapping ``length``-byte edits over the large files."""
    rng = random.Random(seed)
    large = [spec for spec in specs if spec.name.startswith("large/")]
    edits: dict[str, dict[int, bytes]] = {spec.name: {} for spec in large}
    placed = 0
    while placed < count:
        spec = rng.choice(large)
        if spec.size < length:
            continue
        offset = rng.randrange(0, spec.size - length)
        if any(abs(offset - o) < length for o in edits[spec.name]):
            continue
        edits[spec.name][offset] = rng.randbytes(length)
        placed += 1
    return edits


def write_file_set(directory: Path, specs: list[FileSpec]) -> None:
    """Write the files under ``directory`` (for tools that read a tree)."""
    for spec in specs:
        path = directory / spec.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            for block in file_chunks(spec):
                handle.write(block)
