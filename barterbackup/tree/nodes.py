"""The tree's format: entries, child records, nodes, and their bounds.

An **entry** is 88 bytes: ``length`` (u64 big-endian, 1..MAX_SECTION_BYTES)
‖ ``sha256`` (32, of the section ciphertext) ‖ ``private`` (48 opaque bytes,
carried and never interpreted). A **child record** is 48 bytes: the child
node's SHA-256 ‖ its subtree's entry count (u64) ‖ its subtree's byte count
(u64, the sum of the entry lengths).

A **node** is ``magic "bbtn" ‖ format (u8) ‖ level (u8) ‖ count (u16)``
followed by ``count`` entries (level 0, a leaf) or child records (level > 0),
nothing else. A node is named by the SHA-256 of its exact bytes. Because the
level is inside the hashed bytes and every reader checks it against the
level it expects (a child is one level below its parent, the root's level
is signed), a leaf can never be taken for an internal node or the reverse.

Everything read from a store or a peer goes through ``decode_node``, which
checks the size bound before hashing, then the hash, the header, the exact
length, every entry length, and that the counts add up to what the parent
(or the signed root) promised; any fault raises ``InvalidNode``.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

from barterbackup._proto import storedpb_pb2

HASH_BYTES = 32
PRIVATE_BYTES = 48
ENTRY_BYTES = 8 + HASH_BYTES + PRIVATE_BYTES
CHILD_BYTES = HASH_BYTES + 8 + 8
# A section (or manifest chunk) is at most this long. The chunker's maximum
# is 64 KiB today; the format allows more so it can change without a new
# format, and 2**22 makes the bulk length check a single mask (see
# ``check_packed_lengths``).
MAX_SECTION_BYTES = 4 * 1024 * 1024
# Readers refuse nodes with more items than this, whatever the cut rule
# that built them: the bound on what a hostile peer can make us hash and
# hold per node (a leaf of 1024 entries is 90 KB).
MAX_NODE_ITEMS = 1024
# Readers refuse deeper trees. With at least two items per node (the cut
# rule's minimum) 2**32 entries need at most 32 levels; at the default
# fanouts 16 million entries need 6.
MAX_LEVEL = 32
# Trees hold fewer entries than this, so byte totals stay below 2**63 and
# no u64 count can wrap.
MAX_ENTRIES = 2**63 // MAX_SECTION_BYTES
MAX_TOTAL_BYTES = 2**63 - 1

NODE_MAGIC = b"bbtn"
NODE_FORMAT = 1
HEADER = struct.Struct(">4sBBH")
HEADER_BYTES = HEADER.size
MAX_NODE_BYTES = HEADER_BYTES + MAX_NODE_ITEMS * ENTRY_BYTES

ZERO_PRIVATE = bytes(PRIVATE_BYTES)
_ENTRY = struct.Struct(">Q32s48s")
CHILD_RECORD = struct.Struct(">32sQQ")
_U64_WORDS_PER_ENTRY = ENTRY_BYTES // 8
# A length is valid iff length - 1 < 2**22. Taking the length fields of a
# run of entries as the base-2**64 digits of one big integer and
# subtracting 1 from every digit at once, all lengths are valid iff no
# result digit has a bit at 22..63 set (a zero length borrows from the next
# digit and sets them all): three C-level big-integer operations instead
# of a Python comparison per entry.
_CHECK_RUN = 4096
_LENGTH_ONES = int.from_bytes((1).to_bytes(8, "big") * _CHECK_RUN)
_LENGTH_MASK = int.from_bytes(
    (2**64 - MAX_SECTION_BYTES).to_bytes(8, "big") * _CHECK_RUN
)
if array("Q").itemsize != 8:  # pragma: no cover - every CPython platform
    raise ImportError("array('Q') is not 64 bits here")

_sha256 = hashlib.sha256


class TreeError(ValueError):
    """A tree, a node or a proof is not what it must be."""


class InvalidNode(TreeError):
    """A node's bytes are malformed, out of bounds, or not what was promised."""


class InvalidProof(TreeError):
    """A membership proof does not prove the entry it claims against a root."""


def _check_length(length: int, what: str) -> None:
    if not 1 <= length <= MAX_SECTION_BYTES:
        raise TreeError(f"{what} length {length} is not in 1..{MAX_SECTION_BYTES}")


@dataclass(frozen=True, slots=True)
class Entry:
    """One section of the table: its length, ciphertext hash, private data."""

    length: int
    sha256: bytes
    private: bytes = ZERO_PRIVATE

    def __post_init__(self) -> None:
        if not isinstance(self.length, int):
            raise TreeError("entry length must be an int")
        _check_length(self.length, "entry")
        if not isinstance(self.sha256, bytes) or len(self.sha256) != HASH_BYTES:
            raise TreeError("entry sha256 must be 32 bytes")
        if not isinstance(self.private, bytes) or len(self.private) != PRIVATE_BYTES:
            raise TreeError(f"entry private data must be {PRIVATE_BYTES} bytes")

    def pack(self) -> bytes:
        """The entry's 88 bytes as stored in a leaf."""
        return _ENTRY.pack(self.length, self.sha256, self.private)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> Entry:
        """An entry from its 88 bytes; TreeError if they are not valid."""
        if len(data) != ENTRY_BYTES:
            raise TreeError(f"an entry is {ENTRY_BYTES} bytes, not {len(data)}")
        return cls(*_ENTRY.unpack(data))


def unpack_entries(packed: bytes | bytearray | memoryview) -> list[Entry]:
    """Entry objects from packed entries (one Python object each: slow path)."""
    return [Entry(*fields) for fields in _ENTRY.iter_unpack(packed)]


@dataclass(frozen=True, slots=True)
class TreeRoot:
    """What identifies a tree: root node hash, its level, and its totals.

    The signed revision root carries these four values; every reader checks
    the root node against all of them.
    """

    hash: bytes
    level: int
    entry_count: int
    byte_count: int

    def __post_init__(self) -> None:
        if not isinstance(self.hash, bytes) or len(self.hash) != HASH_BYTES:
            raise TreeError("tree root hash must be 32 bytes")
        if not 0 <= self.level <= MAX_LEVEL:
            raise TreeError(f"tree root level {self.level} is not in 0..{MAX_LEVEL}")
        _check_totals(self.entry_count, self.byte_count, "tree root")
        if self.entry_count == 0 and self.level != 0:
            raise TreeError("an empty tree's root is a leaf")

    def ref(self) -> NodeRef:
        """The root node as the first node a reader expects."""
        return NodeRef(self.hash, self.level, self.entry_count, self.byte_count, 0, 0)


def _check_totals(entry_count: int, byte_count: int, what: str) -> None:
    if not 0 <= entry_count <= byte_count <= MAX_TOTAL_BYTES:
        raise TreeError(
            f"{what} counts {entry_count} entries / {byte_count} bytes are impossible"
        )
    if byte_count > entry_count * MAX_SECTION_BYTES:
        raise TreeError(
            f"{what} has {byte_count} bytes in {entry_count} entries of at most "
            f"{MAX_SECTION_BYTES} bytes"
        )


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node as its parent describes it, with its position in the tree.

    ``first_index`` / ``first_offset`` are the index of its first entry and
    the content byte offset where that entry starts.
    """

    hash: bytes
    level: int
    entry_count: int
    byte_count: int
    first_index: int
    first_offset: int

    @property
    def stop_index(self) -> int:
        return self.first_index + self.entry_count

    @property
    def stop_offset(self) -> int:
        return self.first_offset + self.byte_count

    def record(self) -> bytes:
        """The 48-byte child record that points at this node."""
        return CHILD_RECORD.pack(self.hash, self.entry_count, self.byte_count)


def node_header(level: int, count: int) -> bytes:
    return HEADER.pack(NODE_MAGIC, NODE_FORMAT, level, count)


def _length_digits(packed: bytes | bytearray | memoryview) -> bytes:
    """The u64 length fields of packed entries, back to back (one C pass)."""
    view = memoryview(packed).cast("B").cast("Q")
    return view[::_U64_WORDS_PER_ENTRY].tobytes()


def check_packed_lengths(packed: bytes | bytearray | memoryview, what: str) -> bytes:
    """Check every entry length of packed entries, in a few C operations.

    Returns the entries' length fields back to back (8 bytes each, for
    per-node sums); raises TreeError naming the first bad entry.
    """
    if len(packed) % ENTRY_BYTES:
        raise TreeError(
            f"{what}: {len(packed)} bytes is not a whole number of "
            f"{ENTRY_BYTES}-byte entries"
        )
    if not packed:
        return b""
    digits = _length_digits(packed)
    for start in range(0, len(digits), 8 * _CHECK_RUN):
        run = digits[start : start + 8 * _CHECK_RUN]
        shift = 64 * (_CHECK_RUN - len(run) // 8)
        if (int.from_bytes(run) - (_LENGTH_ONES >> shift)) & (_LENGTH_MASK >> shift):
            _raise_bad_length(digits, what)
    return digits


def _raise_bad_length(digits: bytes, what: str) -> None:
    for index in range(len(digits) // 8):
        length = int.from_bytes(digits[8 * index : 8 * index + 8])
        _check_length(length, f"{what}: entry {index}")
    raise AssertionError("a bad length was detected but not found")


def digit_sums(digits: bytes, bounds: list[int]) -> list[int]:
    """Sums of runs of big-endian u64 digits: run i is digits[bounds[i]:bounds[i+1]].

    Byte-swapped once into a native array, each run is summed by ``sum`` over
    a memoryview slice: C loops, no Python code per digit.
    """
    words = array("Q", digits)
    if sys.byteorder == "little":
        words.byteswap()
    view = memoryview(words)
    return list(map(sum, map(view.__getitem__, map(slice, bounds, bounds[1:]))))


class Leaf:
    """A verified leaf: ``count`` packed entries."""

    __slots__ = ("count", "data", "ref")
    level = 0

    def __init__(self, ref: NodeRef, data: bytes, count: int) -> None:
        self.ref = ref
        self.data = data
        self.count = count

    def packed(self, start: int = 0, stop: int | None = None) -> bytes:
        """Entries [start, stop) of this leaf (leaf positions), packed."""
        stop = self.count if stop is None else stop
        return self.data[
            HEADER_BYTES + start * ENTRY_BYTES : HEADER_BYTES + stop * ENTRY_BYTES
        ]

    def entry(self, position: int) -> Entry:
        """The entry at ``position`` within this leaf."""
        if not 0 <= position < self.count:
            raise IndexError(f"leaf position {position} out of range")
        return Entry.unpack(self.packed(position, position + 1))

    def lengths(self) -> list[int]:
        return [
            fields[0]
            for fields in _ENTRY.iter_unpack(memoryview(self.data)[HEADER_BYTES:])
        ]

    def locate_offset(self, offset: int) -> tuple[int, int]:
        """(leaf position, entry start offset) of the entry holding ``offset``."""
        starts = list(accumulate(self.lengths(), initial=self.ref.first_offset))
        del starts[-1]
        position = bisect_right(starts, offset) - 1
        return position, starts[position]


class Internal:
    """A verified internal node: its children, with absolute positions."""

    __slots__ = ("_first_indexes", "_first_offsets", "children", "count", "data", "ref")

    def __init__(self, ref: NodeRef, data: bytes, children: list[NodeRef]) -> None:
        self.ref = ref
        self.data = data
        self.children = children
        self.count = len(children)
        self._first_indexes = [child.first_index for child in children]
        self._first_offsets = [child.first_offset for child in children]

    @property
    def level(self) -> int:
        return self.ref.level

    def child_for_index(self, index: int) -> int:
        """Position of the child whose subtree holds entry ``index``."""
        return bisect_right(self._first_indexes, index) - 1

    def child_for_offset(self, offset: int) -> int:
        """Position of the child whose subtree holds content byte ``offset``."""
        return bisect_right(self._first_offsets, offset) - 1


def decode_node(data: bytes, expected: NodeRef) -> Leaf | Internal:
    """Verify ``data`` is exactly the node ``expected`` describes; decode it."""
    if not isinstance(data, bytes):
        raise InvalidNode(f"node {expected.hash.hex()[:16]}: not bytes")
    size = len(data)
    name = f"node {expected.hash.hex()[:16]} (level {expected.level})"
    if size < HEADER_BYTES or size > MAX_NODE_BYTES:
        raise InvalidNode(f"{name}: {size} bytes is out of bounds")
    if _sha256(data).digest() != expected.hash:
        raise InvalidNode(f"{name}: bytes do not match the node hash")
    magic, node_format, level, count = HEADER.unpack_from(data)
    if magic != NODE_MAGIC:
        raise InvalidNode(f"{name}: not a tree node")
    if node_format != NODE_FORMAT:
        raise InvalidNode(f"{name}: unknown node format {node_format}")
    if level != expected.level:
        raise InvalidNode(f"{name}: is a level {level} node")
    if count > MAX_NODE_ITEMS:
        raise InvalidNode(f"{name}: {count} items is over {MAX_NODE_ITEMS}")
    item = ENTRY_BYTES if level == 0 else CHILD_BYTES
    if size != HEADER_BYTES + count * item:
        raise InvalidNode(f"{name}: {size} bytes do not hold {count} items")
    if count == 0 and expected.entry_count != 0:
        raise InvalidNode(f"{name}: is empty")
    if level == 0:
        if count != expected.entry_count:
            raise InvalidNode(
                f"{name}: holds {count} entries, not {expected.entry_count}"
            )
        try:
            digits = check_packed_lengths(memoryview(data)[HEADER_BYTES:], name)
        except TreeError as error:
            raise InvalidNode(str(error)) from None
        total = digit_sums(digits, [0, count])[0]
        if total != expected.byte_count:
            raise InvalidNode(
                f"{name}: entries hold {total} bytes, not {expected.byte_count}"
            )
        return Leaf(expected, data, count)
    children: list[NodeRef] = []
    first_index, first_offset = expected.first_index, expected.first_offset
    for child_hash, entry_count, byte_count in CHILD_RECORD.iter_unpack(
        memoryview(data)[HEADER_BYTES:]
    ):
        if entry_count == 0:
            raise InvalidNode(f"{name}: child {len(children)} is empty")
        try:
            _check_totals(entry_count, byte_count, f"child {len(children)}")
        except TreeError as error:
            raise InvalidNode(f"{name}: {error}") from None
        children.append(
            NodeRef(
                child_hash,
                level - 1,
                entry_count,
                byte_count,
                first_index,
                first_offset,
            )
        )
        first_index += entry_count
        first_offset += byte_count
    if first_index - expected.first_index != expected.entry_count:
        raise InvalidNode(
            f"{name}: children hold {first_index - expected.first_index} entries, "
            f"not {expected.entry_count}"
        )
    if first_offset - expected.first_offset != expected.byte_count:
        raise InvalidNode(
            f"{name}: children hold {first_offset - expected.first_offset} bytes, "
            f"not {expected.byte_count}"
        )
    return Internal(expected, data, children)


def tree_root_of(ref: storedpb_pb2.TreeRef) -> TreeRoot:
    """The TreeRoot a signed revision's TreeRef names (TreeError if invalid)."""
    return TreeRoot(
        bytes(ref.root_hash), int(ref.level), int(ref.entry_count), int(ref.byte_count)
    )


def tree_ref_of(root: TreeRoot) -> storedpb_pb2.TreeRef:
    """The TreeRef naming ``root`` in a signed revision."""
    return storedpb_pb2.TreeRef(
        root_hash=root.hash,
        level=root.level,
        entry_count=root.entry_count,
        byte_count=root.byte_count,
    )


def max_node_bytes(ref: NodeRef) -> int:
    """The most bytes the node ``ref`` names can have (exact for a leaf).

    A fetcher bounds what it buffers for a node by this before the node
    has arrived.
    """
    if ref.level == 0:
        return HEADER_BYTES + ref.entry_count * ENTRY_BYTES
    return HEADER_BYTES + min(ref.entry_count, MAX_NODE_ITEMS) * CHILD_BYTES


def entry_hashes(packed: bytes | memoryview) -> list[bytes]:
    """The section hashes of packed entries, in order."""
    view = memoryview(packed)
    return [
        bytes(view[start : start + HASH_BYTES])
        for start in range(8, len(view), ENTRY_BYTES)
    ]
