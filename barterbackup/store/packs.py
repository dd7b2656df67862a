"""Pack files: where encrypted sections live on disk, found by hash.

One file per section would cost ~70 µs of file creation per 16 KiB section
here (240 MB/s), far below the packing goal, so sections are appended to pack
files instead. Each pack ``<id>.pack`` (concatenated ciphertext sections) has
an index ``<id>.idx`` of fixed 48-byte entries: ciphertext SHA-256 (32) ‖
offset (u64 big-endian) ‖ length (u64 big-endian), in pack order.

A pack is visible only once its index exists: pack and index are written
under temp names, the pack is fsynced and renamed, then the index is fsynced
and renamed; a pack without an index is a crash leftover and is deleted at
open. Everything read back is checked against its hash before it is returned.

Memory: the in-memory index of stored blobs takes 6 bytes each
(``_StoredIndex``: 24 bits of the hash and an ordinal, in 256 sorted
shards mapped apart from the heap; a dict of full hashes costs ~160, the
sorted arrays this replaced 16 and a transient list of ~50 on every
install). A lookup bisects one
shard and confirms the full hash from the index file, so correctness never
rests on the partial hash. Only the open pack's new blobs sit in the
reservation table until the pack is installed, and packs roll over at
PACK_MAX_ENTRIES entries as well as at PACK_TARGET_BYTES, so that table
stays small.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import os
import secrets
import struct
import threading
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path

from barterbackup.store.atomic import (
    TEMP_SUFFIX,
    atomic_delete,
    atomic_write,
    fsync_directory,
)

INDEX_ENTRY = struct.Struct(">32sQQ")
PACK_SUFFIX = ".pack"
INDEX_SUFFIX = ".idx"
# Packs roll over at this size so garbage collection rewrites bounded files.
PACK_TARGET_BYTES = 256 * 1024 * 1024
# ...or at this many entries, which bounds the reservation table of the
# pack being written (a million 100-byte files would fill one 256 MiB pack
# with 32 MB of reservations).
PACK_MAX_ENTRIES = 65536
# Descriptors of at most this many packs are kept open (least recently used
# closed first): a 1 TiB store has 4,000 packs.
MAX_OPEN_PACKS = 64
# A pack is rewritten by gc once this fraction of it is garbage; below that
# its dead sections are only dropped from its index (no longer served).
REPACK_DEAD_FRACTION = 0.25
_ENTRY_BITS = 32
_ENTRY_MASK = (1 << _ENTRY_BITS) - 1


class SectionCorrupt(Exception):
    """A stored section does not match its hash (or cannot be read).

    ``sha256`` is the blob's hash when one blob is at fault (empty for a
    damaged pack index): what a repair fetches back.
    """

    def __init__(self, message: str, sha256: bytes = b"") -> None:
        super().__init__(message)
        self.sha256 = sha256


class SectionMissing(LookupError):
    """No stored section has this hash (``sha256``, when known)."""

    def __init__(self, message: str, sha256: bytes = b"") -> None:
        super().__init__(message)
        self.sha256 = sha256


class PackStoreClosed(SectionMissing):
    """The store was closed (its owner's replica deleted, the node
    stopping): it reads nothing any more.

    A reader that took the store just before it closed gets this, never a
    descriptor reopened behind ``close`` (which nothing would close again)
    nor the FileNotFoundError of packs deleted meanwhile.
    """


_SHARD_BITS = 8
_SHARDS = 1 << _SHARD_BITS
_ORDINAL_LIMIT = 2**32 - 1
_EMPTY_FRAGMENTS = memoryview(b"").cast("H")
_EMPTY_ORDINALS = memoryview(b"").cast("I")


class _Shard:
    """One shard of the stored index: sorted 16-bit hash fragments and, at
    the same positions, 32-bit ordinals, in one anonymous mmap.

    Immutable: adding entries builds a new shard and unmaps the old one, so
    the memory goes back to the system at once. Shards that grew in place
    with realloc left the heap ~60 % larger than their contents.
    """

    __slots__ = ("_map", "fragments", "ordinals")

    def __init__(self, count: int) -> None:
        if count == 0:
            self._map: mmap.mmap | None = None
            self.fragments = _EMPTY_FRAGMENTS
            self.ordinals = _EMPTY_ORDINALS
            return
        fragment_bytes = -(-2 * count // 4) * 4  # ordinals stay 4-aligned
        self._map = mmap.mmap(-1, fragment_bytes + 4 * count)
        whole = memoryview(self._map)
        self.fragments = whole[: 2 * count].cast("H")
        self.ordinals = whole[fragment_bytes:].cast("I")
        whole.release()

    def __len__(self) -> int:
        return len(self.fragments)

    def close(self) -> None:
        if self._map is not None:
            self.fragments.release()
            self.ordinals.release()
            self._map.close()
            self._map = None


class _StoredIndex:
    """Hash → (pack, entry) of every installed blob, in ~6 bytes each.

    Every registered entry gets an *ordinal* (a pack's entries are
    consecutive from the pack's base). The top 8 bits of a hash pick one
    of 256 shards (``_Shard``), sorted by the next 16 bits of the hash; a
    lookup bisects one shard in C and confirms each candidate's full hash
    from the pack index, so a candidate that only shares the 24 bits costs
    one read (8 % of lookups at 1.4 million blobs). Adding a pack merges
    its entries into the shards they fall in (bisect and slice copies, no
    Python object per old entry). Ordinals run out after 2**32
    registrations (a pack re-registered by gc takes new ones); the owner
    then rebuilds the index from the pack indexes.
    """

    def __init__(self) -> None:
        self._shards = [_Shard(0) for _ in range(_SHARDS)]
        # Sorted bases and, at the same position, (pack number, count).
        self._bases: list[int] = []
        self._packs: list[tuple[int, int]] = []
        self._next_ordinal = 0

    @staticmethod
    def _split(sha256: bytes | memoryview) -> tuple[int, int]:
        return sha256[0], sha256[1] << 8 | sha256[2]

    def has_room(self, count: int) -> bool:
        return self._next_ordinal + count <= _ORDINAL_LIMIT

    def add_pack(self, number: int, hashes: Iterable[bytes | memoryview]) -> None:
        base = self._next_ordinal
        ordinal = base
        # Per shard, fragment << 32 | ordinal packed in an array: 8 bytes a
        # new entry while merging (tuples took ~70: 5 MB for a full pack).
        new: dict[int, array[int]] = {}
        split = self._split
        for sha256 in hashes:
            shard, fragment = split(sha256)
            values = new.get(shard)
            if values is None:
                values = new[shard] = array("Q")
            values.append(fragment << 32 | ordinal)
            ordinal += 1
        for shard, values in new.items():
            self._merge(shard, sorted(values))
        self._next_ordinal = ordinal
        self._bases.append(base)
        self._packs.append((number, ordinal - base))

    def _merge(self, number: int, entries: list[int]) -> None:
        """Merge sorted (fragment << 32 | ordinal) values into a shard."""
        old = self._shards[number]
        merged = _Shard(len(old) + len(entries))
        old_fragments, old_ordinals = old.fragments, old.ordinals
        fragments, ordinals = merged.fragments, merged.ordinals
        taken = out = 0
        for value in entries:
            fragment, ordinal = value >> 32, value & 0xFFFFFFFF
            # Old entries with this fragment stay first: theirs are older.
            until = bisect.bisect_right(old_fragments, fragment, taken)
            if until > taken:
                run = until - taken
                fragments[out : out + run] = old_fragments[taken:until]
                ordinals[out : out + run] = old_ordinals[taken:until]
                out += run
                taken = until
            fragments[out] = fragment
            ordinals[out] = ordinal
            out += 1
        if taken < len(old):
            run = len(old) - taken
            fragments[out : out + run] = old_fragments[taken:]
            ordinals[out : out + run] = old_ordinals[taken:]
        self._shards[number] = merged
        old.close()

    def candidates(self, sha256: bytes) -> list[int]:
        """Locations (pack << 32 | entry) whose partial hash matches."""
        shard_number, fragment = self._split(sha256)
        shard = self._shards[shard_number]
        fragments = shard.fragments
        position = bisect.bisect_left(fragments, fragment)
        found = []
        while position < len(fragments) and fragments[position] == fragment:
            ordinal = shard.ordinals[position]
            at = bisect.bisect_right(self._bases, ordinal) - 1
            if at >= 0:
                number, count = self._packs[at]
                entry = ordinal - self._bases[at]
                if entry < count:
                    found.append(number << _ENTRY_BITS | entry)
            position += 1
        return found

    def new_marks(self) -> PackMarks:
        packs = {
            number: (base, count)
            for base, (number, count) in zip(self._bases, self._packs, strict=True)
        }
        return PackMarks(packs, self._next_ordinal)

    def mark_candidates(
        self, marks: PackMarks, hashes: Iterable[bytes | memoryview]
    ) -> None:
        """Mark every entry sharing the partial hash of each of ``hashes``
        (ordinals past the marks are packs installed since: kept anyway)."""
        split, shards, bits = self._split, self._shards, marks.bits
        limit, bisect_left = marks.ordinals, bisect.bisect_left
        for sha256 in hashes:
            shard_number, fragment = split(sha256)
            shard = shards[shard_number]
            fragments = shard.fragments
            position = bisect_left(fragments, fragment)
            size = len(fragments)
            while position < size and fragments[position] == fragment:
                ordinal = shard.ordinals[position]
                if ordinal < limit:
                    bits[ordinal >> 3] |= 1 << (ordinal & 7)
                position += 1

    def drop_packs(self, numbers: set[int]) -> None:
        """Forget every entry of the packs ``numbers``."""
        if not numbers:
            return
        dropped = [
            (base, base + count)
            for base, (number, count) in zip(self._bases, self._packs, strict=True)
            if number in numbers
        ]
        kept = [
            (base, pack)
            for base, pack in zip(self._bases, self._packs, strict=True)
            if pack[0] not in numbers
        ]
        self._bases = [base for base, _ in kept]
        self._packs = [pack for _, pack in kept]
        starts = [start for start, _ in dropped]
        for number, old in enumerate(self._shards):
            if not len(old):
                continue
            live = [
                position
                for position, ordinal in enumerate(old.ordinals)
                if (at := bisect.bisect_right(starts, ordinal) - 1) < 0
                or ordinal >= dropped[at][1]
            ]
            if len(live) == len(old):
                continue
            shard = _Shard(len(live))
            for out, position in enumerate(live):
                shard.fragments[out] = old.fragments[position]
                shard.ordinals[out] = old.ordinals[position]
            self._shards[number] = shard
            old.close()

    def close(self) -> None:
        for shard in self._shards:
            shard.close()


def _no_crash_point(number: int) -> None:
    """No crash points outside a commit."""


def _prefix(sha256: bytes) -> int:
    return int.from_bytes(sha256[:8], "big")


class PackWriter:
    """Appends ciphertext sections and their index entries under temp names."""

    def __init__(self, directory: Path) -> None:
        self.pack_id = secrets.token_hex(8)
        self.directory = directory
        self.final_path = directory / f"{self.pack_id}{PACK_SUFFIX}"
        self.temp_path = directory / f".{self.pack_id}{PACK_SUFFIX}{TEMP_SUFFIX}"
        self.final_index_path = directory / f"{self.pack_id}{INDEX_SUFFIX}"
        self.temp_index_path = directory / f".{self.pack_id}{INDEX_SUFFIX}{TEMP_SUFFIX}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        self._fd = os.open(self.temp_path, flags, 0o600)
        self.index_fd = os.open(self.temp_index_path, flags, 0o600)
        self.size = 0
        self.count = 0

    def append(
        self, data: memoryview | bytes, hashes: Iterable[tuple[bytes, int]]
    ) -> int:
        """Write consecutive sections given as (sha256, length); return the
        entry number of the first."""
        first = self.count
        entries = bytearray()
        offset = self.size
        for sha256, length in hashes:
            entries += INDEX_ENTRY.pack(sha256, offset, length)
            offset += length
        _write_all(self._fd, data)
        _write_all(self.index_fd, entries)
        self.size = offset
        self.count += len(entries) // INDEX_ENTRY.size
        return first

    def entry(self, number: int) -> tuple[bytes, int, int]:
        sha256, offset, length = INDEX_ENTRY.unpack(
            os.pread(self.index_fd, INDEX_ENTRY.size, number * INDEX_ENTRY.size)
        )
        return sha256, offset, length

    def entries(self) -> Iterable[tuple[bytes, int, int]]:
        return INDEX_ENTRY.iter_unpack(
            os.pread(self.index_fd, self.count * INDEX_ENTRY.size, 0)
        )

    def sync_data(self) -> None:
        """Start the bytes appended so far on their way to disk (fdatasync).

        Called from a helper thread while packing goes on, so that
        ``finish`` has little left to wait for; the caller must not call
        it concurrently with ``finish`` or ``discard``.
        """
        if self._fd >= 0:
            os.fdatasync(self._fd)

    def finish(self) -> None:
        """Make the pack's bytes and index durable (still under temp names)."""
        if self._fd >= 0:
            os.fsync(self._fd)
            os.fsync(self.index_fd)
            os.close(self._fd)
            self._fd = -1

    def close_index(self) -> None:
        if self.index_fd >= 0:
            os.close(self.index_fd)
            self.index_fd = -1

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.close_index()
        self.temp_path.unlink(missing_ok=True)
        self.temp_index_path.unlink(missing_ok=True)


def _check_extent(
    pack_fd: int, offset: int, length: int, sha256: bytes, pack_path: Path
) -> None:
    """SectionCorrupt unless [offset, offset + length) lies inside the pack.

    A damaged index entry may claim a length of 2**40: checked first, so
    reading it allocates nothing (pread would try to, or fail untyped).
    """
    if offset + length > os.fstat(pack_fd).st_size:
        raise SectionCorrupt(
            f"section {sha256.hex()}: its index entry points past the end "
            f"of {pack_path}"
        )


def _read_index(index_path: Path, pack_path: Path) -> bytes:
    """An index file's bytes, sized before they are read.

    Every entry but one (the empty blob, stored once) names at least one
    byte of its pack, so an index longer than one entry per pack byte (and
    one more) is damaged: refused before it is read, so an index grown to
    2**40 bytes allocates nothing (read whole, it was a MemoryError).
    """
    with index_path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        most = INDEX_ENTRY.size * (pack_path.stat().st_size + 1)
        if size > most:
            raise SectionCorrupt(
                f"pack index {index_path} is longer than its pack can need"
            )
        return handle.read()


def _write_all(fd: int, data: memoryview | bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _ReservationTable:
    """Hash prefix → reserved location: open addressing in two flat arrays.

    An update reserves every new section until it commits: ~250k for 4 GiB.
    As a dict of Python ints that took ~110 bytes a section (27 MiB), and
    the freed ints stayed scattered over the heap after the commit; here a
    slot is 16 bytes (at most half the slots used) in two arrays that go
    back to the system whole. Reserved locations are negative, so 0 marks
    an empty slot and 1 a deleted one.
    """

    _EMPTY, _DELETED = 0, 1
    _MIN_SLOTS = 1024

    def __init__(self) -> None:
        self._allocate(self._MIN_SLOTS)

    def _allocate(self, slots: int) -> None:
        self._prefixes = array("Q", bytes(8 * slots))
        self._locations = array("q", bytes(8 * slots))
        self._mask = slots - 1
        self._used = 0  # live and deleted slots
        self.count = 0  # live slots

    def get(self, prefix: int) -> int | None:
        prefixes, locations, mask = self._prefixes, self._locations, self._mask
        slot = prefix & mask  # prefixes are hash bits: uniform already
        while True:
            location = locations[slot]
            if location == self._EMPTY:
                return None
            if location != self._DELETED and prefixes[slot] == prefix:
                return location
            slot = (slot + 1) & mask

    def add(self, prefix: int, location: int) -> bool:
        """Store a new prefix; False (nothing stored) if it is already in."""
        if location >= 0:
            raise ValueError("only reservations (negative locations) go here")
        if 2 * (self._used + 1) > len(self._locations):
            self._resize()
        prefixes, locations, mask = self._prefixes, self._locations, self._mask
        slot = prefix & mask
        while True:
            found = locations[slot]
            if found == self._EMPTY:
                prefixes[slot], locations[slot] = prefix, location
                self._used += 1
                self.count += 1
                return True
            if found != self._DELETED and prefixes[slot] == prefix:
                return False
            slot = (slot + 1) & mask

    def remove(self, prefix: int, location: int) -> bool:
        """Delete the entry if it maps prefix to location; True if it did."""
        prefixes, locations, mask = self._prefixes, self._locations, self._mask
        slot = prefix & mask
        while True:
            found = locations[slot]
            if found == self._EMPTY:
                return False
            if found == location and prefixes[slot] == prefix:
                locations[slot] = self._DELETED
                self.count -= 1
                return True
            slot = (slot + 1) & mask

    def _resize(self) -> None:
        slots = self._MIN_SLOTS
        while slots < 4 * (self.count + 1):
            slots *= 2
        old = zip(self._prefixes, self._locations, strict=True)
        self._allocate(slots)
        for prefix, location in old:
            if location not in (self._EMPTY, self._DELETED):
                self.add(prefix, location)


class PackStore:
    """All packs of one directory, with a compact hash → location index.

    A location is ``pack number << 32 | entry number``; a negative location
    ``~(writer number << 32 | entry number)`` is a section an open update is
    writing (reserved: deduplicated within the update, not yet readable).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._pack_ids: dict[int, str] = {}
        self._next_pack_number = 0
        self._index = _StoredIndex()
        # Reservations of the open update: prefix → location, and full hash
        # → location for the rare prefix collision among them.
        self._pending = _ReservationTable()
        self._pending_overflow: dict[bytes, int] = {}
        self._fds: dict[int, tuple[int, int]] = {}
        self._writers: dict[int, PackWriter] = {}
        self._next_writer_number = 0
        # Set by ``close``, under the lock: no descriptor is opened after.
        self._closed = False
        self.bytes_read = 0
        for pack_path in directory.glob(f"*{PACK_SUFFIX}"):
            if not (directory / f"{pack_path.stem}{INDEX_SUFFIX}").exists():
                # Renamed but its index never was: a crash leftover that no
                # revision can reference.
                atomic_delete(pack_path)
        for index_path in sorted(directory.glob(f"*{INDEX_SUFFIX}")):
            pack_id = index_path.name[: -len(INDEX_SUFFIX)]
            pack_path = directory / f"{pack_id}{PACK_SUFFIX}"
            if not pack_path.exists():
                raise SectionCorrupt(f"pack index {index_path} has no pack file")
            self._register_pack(pack_id, _read_index(index_path, pack_path))

    # -- the index --------------------------------------------------------

    def _register_pack(self, pack_id: str, raw: bytes | bytearray) -> list[int]:
        """Number a pack and index its entries (the list is always empty:
        callers hand it to ``_rebuild``, which only drops)."""
        if len(raw) % INDEX_ENTRY.size:
            raise SectionCorrupt(f"pack index {pack_id}{INDEX_SUFFIX} is truncated")
        count = len(raw) // INDEX_ENTRY.size
        if not self._index.has_room(count):
            self._reindex()
        number = self._next_pack_number
        self._next_pack_number += 1
        self._pack_ids[number] = pack_id
        view = memoryview(raw)
        self._index.add_pack(
            number,
            (
                view[start : start + 32]
                for start in range(0, len(raw), INDEX_ENTRY.size)
            ),
        )
        return []

    def _reindex(self) -> None:
        """Index every pack again from its index file (ordinals ran out)."""
        self._index.close()
        self._index = _StoredIndex()
        for number, pack_id in sorted(self._pack_ids.items()):
            raw = (self.directory / f"{pack_id}{INDEX_SUFFIX}").read_bytes()
            view = memoryview(raw)
            self._index.add_pack(
                number,
                (
                    view[start : start + 32]
                    for start in range(0, len(raw), INDEX_ENTRY.size)
                ),
            )

    def _rebuild(self, dropped_packs: set[int], added: list[int]) -> None:
        """Drop ``dropped_packs`` from the index (``added`` are indexed
        already, by ``_register_pack``)."""
        self._index.drop_packs(dropped_packs)

    def _entry_at(self, location: int) -> tuple[bytes, int, int]:
        """The (sha256, offset, length) entry a location points at."""
        if location < 0:
            writer_location = ~location
            writer = self._writers[writer_location >> _ENTRY_BITS]
            return writer.entry(writer_location & _ENTRY_MASK)
        number = location >> _ENTRY_BITS
        _, index_fd = self._pack_fds(number)
        raw = os.pread(
            index_fd, INDEX_ENTRY.size, (location & _ENTRY_MASK) * INDEX_ENTRY.size
        )
        if len(raw) != INDEX_ENTRY.size:
            raise SectionCorrupt(
                f"pack index of {self._pack_path(number)} is truncated"
            )
        sha256, offset, length = INDEX_ENTRY.unpack(raw)
        return sha256, offset, length

    def _locate(self, sha256: bytes) -> int | None:
        """The location of ``sha256`` (stored or reserved), or None. Locked."""
        for location in self._index.candidates(sha256):
            if self._entry_at(location)[0] == sha256:
                return location
        prefix = _prefix(sha256)
        reserved = self._pending_overflow.get(sha256)
        if reserved is None:
            reserved = self._pending.get(prefix)
            if reserved is not None and self._entry_at(reserved)[0] != sha256:
                reserved = None
        return reserved

    def _pack_path(self, number: int) -> Path:
        return self.directory / f"{self._pack_ids[number]}{PACK_SUFFIX}"

    def _pack_fds(self, number: int) -> tuple[int, int]:
        if self._closed:
            raise PackStoreClosed(f"the packs in {self.directory} are closed")
        fds = self._fds.pop(number, None)
        if fds is None:
            pack_path = self._pack_path(number)
            pack_fd = os.open(pack_path, os.O_RDONLY)
            try:
                index_fd = os.open(pack_path.with_suffix(INDEX_SUFFIX), os.O_RDONLY)
            except BaseException:
                os.close(pack_fd)
                raise
            fds = (pack_fd, index_fd)
            while len(self._fds) >= MAX_OPEN_PACKS:
                oldest = next(iter(self._fds))
                for fd in self._fds.pop(oldest):
                    os.close(fd)
        self._fds[number] = fds  # most recently used last
        return fds

    # -- public API -------------------------------------------------------

    def pack_of(self, sha256: bytes) -> str | None:
        """The id of the installed pack holding ``sha256``, or None."""
        with self._lock:
            location = self._locate(sha256)
            if location is None or location < 0:
                return None
            return self._pack_ids[location >> _ENTRY_BITS]

    def extent(self, sha256: bytes) -> tuple[str, int, int] | None:
        """Where an installed blob lies, from the index alone (nothing of
        the pack is read): (pack id, offset, length), or None if it is not
        stored. A check compares these with the tree and the pack's size."""
        with self._lock:
            for location in self._index.candidates(sha256):
                found, offset, length = self._entry_at(location)
                if found == sha256:
                    return self._pack_ids[location >> _ENTRY_BITS], offset, length
            return None

    def pack_size(self, pack_id: str) -> int:
        """The size of an installed pack file; OSError if it is gone."""
        return (self.directory / f"{pack_id}{PACK_SUFFIX}").stat().st_size

    def replace_blobs(self, blobs: Iterable[tuple[bytes, bytes]]) -> int:
        """Install good copies of damaged or missing blobs, and drop every
        other copy of them from the indexes; returns how many were stored.

        Each blob must hash to its name (checked again here: ValueError,
        nothing written). The copies go to a new pack, installed like a
        commit's; only then are the old entries dropped, from each pack's
        index (rewritten; a pack left with no entry is deleted). Reads find
        the oldest entry of a hash first, so the bad copy has to go for the
        good one to be read; its bytes stay in the pack as garbage until gc
        repacks it. A crash in between leaves both entries: the next check
        finds the bad one again and the next repair drops it.
        """
        wanted = dict(blobs)
        for sha256, data in wanted.items():
            if hashlib.sha256(data).digest() != sha256:
                raise ValueError(f"blob {sha256.hex()} does not match its hash")
        if not wanted:
            return 0
        number, writer = self.new_writer()
        try:
            writer.append(
                b"".join(wanted.values()),
                [(sha256, len(data)) for sha256, data in wanted.items()],
            )
            self.install_all([number], _no_crash_point)
        except BaseException:
            self.release(number)
            raise
        with self._lock:
            dead: dict[int, set[int]] = {}
            for sha256 in wanted:
                for location in self._index.candidates(sha256):
                    pack = location >> _ENTRY_BITS
                    if self._pack_ids[pack] == writer.pack_id:
                        continue
                    if self._entry_at(location)[0] == sha256:
                        dead.setdefault(pack, set()).add(location & _ENTRY_MASK)
            for pack, entries in dead.items():
                self._drop_entries(pack, entries)
        return len(wanted)

    def _drop_entries(self, number: int, dead: set[int]) -> None:
        """Rewrite a pack's index without the entries ``dead`` (a pack with
        nothing left is deleted, index first). Locked."""
        pack_id = self._pack_ids[number]
        index_path = self.directory / f"{pack_id}{INDEX_SUFFIX}"
        entries = list(INDEX_ENTRY.iter_unpack(index_path.read_bytes()))
        kept = [entry for at, entry in enumerate(entries) if at not in dead]
        self._forget(number)
        try:
            if kept:
                raw = b"".join(INDEX_ENTRY.pack(*entry) for entry in kept)
                atomic_write(index_path, raw)
                self._register_pack(pack_id, raw)
            else:
                atomic_delete(index_path)
                atomic_delete(self.directory / f"{pack_id}{PACK_SUFFIX}")
        finally:
            self._rebuild({number}, [])

    def pack_ids(self) -> list[str]:
        """Every installed pack's id."""
        with self._lock:
            return sorted(self._pack_ids.values())

    def disk_bytes(self) -> int:
        """Bytes the installed packs and their indexes take on disk."""
        with self._lock:
            total = 0
            for pack_id in self._pack_ids.values():
                for suffix in (PACK_SUFFIX, INDEX_SUFFIX):
                    total += (self.directory / f"{pack_id}{suffix}").stat().st_size
            return total

    def has(self, sha256: bytes) -> bool:
        with self._lock:
            location = self._locate(sha256)
            return location is not None and location >= 0

    def new_writer(self) -> tuple[int, PackWriter]:
        """A new pack writer, registered so its reservations can be read."""
        with self._lock:
            number = self._next_writer_number
            self._next_writer_number += 1
            writer = PackWriter(self.directory)
            self._writers[number] = writer
            return number, writer

    def claim_or_reserve(self, sha256: bytes, pins: set[bytes]) -> bool:
        """True if the section is stored or being written; else False.

        A stored section is added to ``pins`` (which gc keeps) under the lock
        gc holds, so it cannot be collected before the update that reuses it
        commits. On False the caller must ``append`` it and ``reserve`` it.
        """
        return self.claim_or_reserve_many([sha256], pins)[0]

    def claim_or_reserve_many(
        self, hashes: Iterable[bytes], pins: set[bytes]
    ) -> list[bool]:
        """``claim_or_reserve`` for each hash, under one lock acquisition."""
        found = []
        with self._lock:
            for sha256 in hashes:
                location = self._locate(sha256)
                if location is not None and location >= 0:
                    pins.add(sha256)
                found.append(location is not None)
        return found

    def reserve(
        self, writer_number: int, first_entry: int, hashes: list[bytes]
    ) -> None:
        """Mark sections just appended by a writer as being written."""
        with self._lock:
            for offset, sha256 in enumerate(hashes):
                location = ~(writer_number << _ENTRY_BITS | first_entry + offset)
                prefix = _prefix(sha256)
                if not self._pending.add(prefix, location):
                    self._pending_overflow[sha256] = location

    def _drop_reservations(self, writer_number: int, writer: PackWriter) -> None:
        for entry_number, (sha256, _, _) in enumerate(writer.entries()):
            location = ~(writer_number << _ENTRY_BITS | entry_number)
            prefix = _prefix(sha256)
            if not self._pending.remove(prefix, location):
                if self._pending_overflow.get(sha256) == location:
                    del self._pending_overflow[sha256]
        if not self._pending.count:
            self._pending = _ReservationTable()  # free the big arrays

    def release(self, writer_number: int) -> None:
        """Drop a discarded writer and its reservations."""
        with self._lock:
            writer = self._writers.get(writer_number)
            if writer is None:
                return
            if writer.index_fd >= 0:
                self._drop_reservations(writer_number, writer)
            del self._writers[writer_number]
            writer.discard()

    def install(self, writer_number: int, crash_point: Callable[[int], None]) -> None:
        """Rename a finished pack into place, then publish its index."""
        self.install_all([writer_number], crash_point)

    def install_all(
        self, writer_numbers: list[int], crash_point: Callable[[int], None]
    ) -> None:
        """``install`` for several packs: every pack renamed (and the
        directory fsynced) before any of their indexes.

        The in-memory index is rebuilt once at the end: rebuilt per pack it
        cost a pass over every stored section each time (4 packs of a 1 GiB
        commit: 0.11 s), quadratic in the size of an update.
        """
        if not writer_numbers:
            return
        writers = [self._writers[number] for number in writer_numbers]
        for writer in writers:
            writer.finish()
        for writer in writers:
            os.replace(writer.temp_path, writer.final_path)
        fsync_directory(self.directory)
        crash_point(2)
        for writer in writers:
            os.replace(writer.temp_index_path, writer.final_index_path)
        fsync_directory(self.directory)
        crash_point(3)
        with self._lock:
            added: list[int] = []
            # With no other writer left every reservation goes: no need to
            # look each one up (the usual case, a commit installs them all).
            drop_all = self._writers.keys() == set(writer_numbers)
            if drop_all:
                self._pending, self._pending_overflow = _ReservationTable(), {}
            for number, writer in zip(writer_numbers, writers, strict=True):
                if not drop_all:
                    self._drop_reservations(number, writer)
                raw = os.pread(writer.index_fd, writer.count * INDEX_ENTRY.size, 0)
                writer.close_index()
                del self._writers[number]
                added += self._register_pack(writer.pack_id, raw)
            self._rebuild(set(), added)

    def read(self, sha256: bytes) -> bytes:
        """The section's ciphertext, checked against ``sha256``."""
        with self._lock:
            location = self._locate(sha256)
            if location is None or location < 0:
                raise SectionMissing(f"section {sha256.hex()} is not stored", sha256)
            number = location >> _ENTRY_BITS
            _, offset, length = self._entry_at(location)
            pack_fd, _ = self._pack_fds(number)
            pack_path = self._pack_path(number)
            # Read under the lock: the descriptor may be closed (least
            # recently used, or by gc) as soon as the lock is released.
            _check_extent(pack_fd, offset, length, sha256, pack_path)
            data = os.pread(pack_fd, length, offset)
        self.bytes_read += len(data)
        if len(data) != length or hashlib.sha256(data).digest() != sha256:
            raise SectionCorrupt(
                f"section {sha256.hex()} in {pack_path} does not match its hash",
                sha256,
            )
        return data

    def _collect(
        self, is_live: Callable[[int, bytes, int], bool], skip: Iterable[int] = ()
    ) -> int:
        """Drop every stored entry ``is_live(pack, sha256, entry)`` refuses.

        For each pack with garbage: all dead → index, then pack deleted; at
        least REPACK_DEAD_FRACTION dead → live entries copied to a new pack;
        less → the index rewritten without the dead entries. Packs in
        ``skip`` are known to be all live. Locked.
        """
        skipped = set(skip)
        freed = 0
        dropped: set[int] = set()
        added: list[int] = []
        try:
            for number, pack_id in list(self._pack_ids.items()):
                if number in skipped:
                    continue
                pack_path = self.directory / f"{pack_id}{PACK_SUFFIX}"
                index_path = self.directory / f"{pack_id}{INDEX_SUFFIX}"
                entries = list(INDEX_ENTRY.iter_unpack(index_path.read_bytes()))
                kept = [
                    entry
                    for entry_number, entry in enumerate(entries)
                    if is_live(number, entry[0], entry_number)
                ]
                if len(kept) == len(entries):
                    continue
                pack_size = pack_path.stat().st_size
                dead_bytes = pack_size - sum(length for _, _, length in kept)
                self._forget(number)
                dropped.add(number)
                if kept and dead_bytes < REPACK_DEAD_FRACTION * pack_size:
                    raw = b"".join(INDEX_ENTRY.pack(*entry) for entry in kept)
                    atomic_write(index_path, raw)
                    added += self._register_pack(pack_id, raw)
                    continue
                if kept:
                    added += self._repack(pack_path, kept)
                # Index first: a pack without an index is an ignored leftover.
                atomic_delete(index_path)
                atomic_delete(pack_path)
                freed += dead_bytes if kept else pack_size
        finally:
            self._rebuild(dropped, added)
        return freed

    def _forget(self, number: int) -> None:
        fds = self._fds.pop(number, None)
        if fds is not None:
            os.close(fds[0])
            os.close(fds[1])
        del self._pack_ids[number]

    def _repack(self, pack_path: Path, kept: list[tuple[bytes, int, int]]) -> list[int]:
        """Copy the live sections of a pack into a new pack; its sort keys."""
        writer = PackWriter(self.directory)
        try:
            fd = os.open(pack_path, os.O_RDONLY)
            try:
                for sha256, offset, length in kept:
                    _check_extent(fd, offset, length, sha256, pack_path)
                    data = os.pread(fd, length, offset)
                    if hashlib.sha256(data).digest() != sha256:
                        raise SectionCorrupt(
                            f"section {sha256.hex()} in {pack_path} is bad"
                        )
                    writer.append(data, [(sha256, length)])
            finally:
                os.close(fd)
            writer.finish()
        except BaseException:
            writer.discard()
            raise
        os.replace(writer.temp_path, writer.final_path)
        fsync_directory(self.directory)
        os.replace(writer.temp_index_path, writer.final_index_path)
        fsync_directory(self.directory)
        raw = os.pread(writer.index_fd, writer.count * INDEX_ENTRY.size, 0)
        writer.close_index()
        return self._register_pack(writer.pack_id, raw)

    def close(self) -> None:
        """Close every descriptor, for good: later reads raise
        PackStoreClosed (a replica's store is closed before its files are
        deleted, while a Download may still be reading it)."""
        with self._lock:
            self._closed = True
            for pack_fd, index_fd in self._fds.values():
                os.close(pack_fd)
                os.close(index_fd)
            self._fds.clear()

    def discard_packs(self, pack_ids: Iterable[str]) -> None:
        """Delete installed packs no revision references (an aborted
        update's), index first."""
        with self._lock:
            numbers = {
                n for n, pack_id in self._pack_ids.items() if pack_id in pack_ids
            }
            try:
                for number in numbers:
                    pack_id = self._pack_ids[number]
                    self._forget(number)
                    atomic_delete(self.directory / f"{pack_id}{INDEX_SUFFIX}")
                    atomic_delete(self.directory / f"{pack_id}{PACK_SUFFIX}")
            finally:
                self._rebuild(numbers, [])

    # -- marking (garbage collection without a set of live hashes) -------

    def new_marks(self) -> PackMarks:
        """Empty marks over every installed pack (one bit per entry).

        Mark what is live with ``mark``, then ``sweep``; nothing may be
        installed or collected in between (the caller's lock ensures it).
        """
        with self._lock:
            return self._index.new_marks()

    def mark(self, marks: PackMarks, sha256: bytes) -> bool | None:
        """Mark a stored blob live: True if newly marked, False if it was
        already, None if it is not stored (being written counts as not)."""
        with self._lock:
            location = self._locate(sha256)
            if location is None or location < 0:
                return None
            return marks.set(location >> _ENTRY_BITS, location & _ENTRY_MASK)

    def mark_many(self, marks: PackMarks, hashes: Iterable[bytes]) -> None:
        """Mark blobs live by their index candidates, without reading the
        pack indexes to confirm them: a blob that only shares 24 bits of a
        live hash is kept too (safe, and rare). For leaves and journals,
        never for tree nodes (whose "already marked" must be exact)."""
        with self._lock:
            self._index.mark_candidates(marks, hashes)

    def marked_bytes(self, marks: PackMarks) -> int:
        """The bytes of every marked blob (what ``verify_marked`` reads at
        least), from the indexes."""
        with self._lock:
            pack_ids = {
                n: self._pack_ids[n] for n in marks.packs() if n in self._pack_ids
            }
        total = 0
        for number, pack_id in pack_ids.items():
            try:
                raw = (self.directory / f"{pack_id}{INDEX_SUFFIX}").read_bytes()
            except FileNotFoundError:
                continue
            for entry_number, (sha256, _, length) in enumerate(
                INDEX_ENTRY.iter_unpack(raw)
            ):
                if marks.is_marked(number, sha256, entry_number):
                    total += length
        return total

    def verify_marked(
        self,
        marks: PackMarks,
        on_bytes: Callable[[int], None] = lambda count: None,
    ) -> dict[bytes, str]:
        """Read every marked blob and check its SHA-256; the bad ones, with
        what is wrong (``check --read-data``).

        Packs are read in order in large runs of consecutive entries (not a
        lookup and a read per blob), without the store's lock: a pack that
        garbage collection removed meanwhile is skipped (its blobs moved,
        or are no longer needed). ``on_bytes`` is told of the bytes read.
        """
        with self._lock:
            packs = [
                (number, self._pack_ids[number])
                for number in sorted(marks.packs())
                if number in self._pack_ids
            ]
        bad: dict[bytes, str] = {}
        for number, pack_id in packs:
            pack_path = self.directory / f"{pack_id}{PACK_SUFFIX}"
            try:
                raw = (self.directory / f"{pack_id}{INDEX_SUFFIX}").read_bytes()
                fd = os.open(pack_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                for run in _marked_runs(raw, marks, number):
                    self._verify_run(fd, pack_path, run, bad, on_bytes)
            finally:
                os.close(fd)
        return bad

    @staticmethod
    def _verify_run(
        fd: int,
        pack_path: Path,
        run: list[tuple[bytes, int, int]],
        bad: dict[bytes, str],
        on_bytes: Callable[[int], None],
    ) -> None:
        start = run[0][1]
        # A damaged index entry may claim 2**40 bytes: never read past the
        # pack (the entry is then reported as lying past its end).
        end = min(run[-1][1] + run[-1][2], os.fstat(fd).st_size)
        data = os.pread(fd, max(0, end - start), start)
        view = memoryview(data)
        for sha256, offset, length in run:
            blob = view[offset - start : offset - start + length]
            if len(blob) != length:
                bad[sha256] = f"lies past the end of {pack_path.name}"
            elif hashlib.sha256(blob).digest() != sha256:
                bad[sha256] = "does not match its hash"
        on_bytes(len(data))

    def sweep(self, marks: PackMarks) -> int:
        """Drop every stored blob not marked; return the bytes freed.

        A pack the marks do not know (installed after ``new_marks``) is kept
        whole; a pack whose every entry is marked is not even read.
        """
        with self._lock:
            return self._collect(marks.is_marked, marks.fully_marked())


# ``verify_marked`` reads at most about this much at once.
VERIFY_READ_BYTES = 8 * 1024 * 1024


def _marked_runs(
    raw: bytes, marks: PackMarks, number: int
) -> Iterable[list[tuple[bytes, int, int]]]:
    """The marked entries of a pack index, in runs of entries that lie close
    together in the pack (one read each, at most about VERIFY_READ_BYTES)."""
    run: list[tuple[bytes, int, int]] = []
    for entry_number, (sha256, offset, length) in enumerate(
        INDEX_ENTRY.iter_unpack(raw)
    ):
        if not marks.is_marked(number, sha256, entry_number):
            continue
        if run:
            run_start = run[0][1]
            run_end = run[-1][1] + run[-1][2]
            if (
                offset < run_end
                or offset - run_end > 64 * 1024
                or offset + length - run_start > VERIFY_READ_BYTES
            ):
                yield run
                run = []
        run.append((sha256, offset, length))
    if run:
        yield run


class PackMarks:
    """Live marks for garbage collection: a bit per indexed entry.

    Bits are indexed by the stored index's ordinals (each pack's entries
    are consecutive from its base), so a blob found in the index is marked
    without mapping it to its pack. 2.2 million blobs (20 GiB of sections
    and their trees) take ~270 KB, where a set of their hashes took ~250 MB.
    """

    def __init__(self, packs: dict[int, tuple[int, int]], ordinals: int) -> None:
        # Pack number → (base ordinal, entry count), for the packs marked.
        self._packs = dict(packs)
        self.ordinals = ordinals
        self.bits = bytearray(-(-ordinals // 8))

    def set(self, pack: int, entry: int) -> bool:
        """Mark one entry; False if it already was."""
        known = self._packs.get(pack)
        if known is None:
            return False  # installed after the marks were made: kept anyway
        ordinal = known[0] + entry
        byte, bit = ordinal >> 3, 1 << (ordinal & 7)
        if self.bits[byte] & bit:
            return False
        self.bits[byte] |= bit
        return True

    def packs(self) -> list[int]:
        """The packs these marks cover."""
        return list(self._packs)

    def _range(self, base: int, count: int) -> int:
        value = int.from_bytes(self.bits[base >> 3 : (base + count + 7) >> 3], "little")
        return (value >> (base & 7)) & ((1 << count) - 1)

    def fully_marked(self) -> list[int]:
        """The packs every entry of which is marked (popcount, in C)."""
        return [
            number
            for number, (base, count) in self._packs.items()
            if self._range(base, count).bit_count() == count
        ]

    def is_marked(self, pack: int, sha256: bytes, entry: int) -> bool:
        known = self._packs.get(pack)
        if known is None:
            return True
        ordinal = known[0] + entry
        return bool(self.bits[ordinal >> 3] & (1 << (ordinal & 7)))
