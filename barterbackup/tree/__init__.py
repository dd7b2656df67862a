"""The section tree: a Merkle tree of small, content-defined nodes.

A revision's public section table (and, in the same format, its table of
sealed manifest chunks) is a sequence of 88-byte entries: length ‖
SHA-256 of the ciphertext ‖ 48 private bytes the tree carries without
reading. The table is cut into leaves and the leaves into a tree of small
nodes, each named by the SHA-256 of its exact bytes and stored and sent
like a section (``nodes`` has the byte format). The signed revision root
needs only the ``TreeRoot``: root hash, level, entry count, byte count.

Modules: ``nodes`` (format, bounds, the one decoder everything read goes
through), ``build`` (the streaming builder and its cut rule), ``read``
(iteration, lookup by index and by byte offset), ``proofs`` (membership
proofs), ``sync`` (what a replica must fetch; ``diff``). Nothing here does
I/O: callers pass a ``NodeSink`` (``put``) and a ``NodeSource`` (``get``),
and every node read from a source is verified, so a source may be a peer.

Node boundaries (see ``build``): a node closes after an item whose hash's
last byte is under the level's threshold, once it holds two items, or at
the level's maximum. An edit therefore changes the nodes on its path (and
rarely a neighbour), and identical subtrees keep identical hashes: a
replica fetches only the changed paths, and ``TreeBuilder.copy_range``
builds a new revision's tree from the old one reading only the nodes near
the edits.

Shape (``SECTION_TREE_SHAPE``: leaves average 8 entries, at most 64;
internal nodes average 8 children, at most 64), chosen with
``python -m bench.tree_ops 500000 --no-wire --shapes`` (synthetic tables of
~17 KiB sections; "1 GiB edit" is the tree bytes a replica holding the old
tree fetches after 160 scattered 64 KiB edits and a new 1 MiB file, as a
share of the 11 MiB changed; "20 GiB" after one changed section; build CPU
is the fastest of three builds of 500 k entries into a null sink, on a
shared 2-core machine)::

    leaf avg/max  internal    1 GiB edit   20 GiB     proof KiB    build
                  avg/max     tree bytes   tree KiB   1 / 20 GiB   ns/entry
    4/32          8/64        3.05 %       4.7        3.1 / 4.4    712
    6/48          8/64        3.19 %       4.0        3.3 / 4.0    451
    8/64          4/32        3.39 %       4.7        2.6 / 3.2    450
    8/64          8/64        3.54 %       4.7        3.2 / 4.1    446  chosen
    8/64          16/128      3.94 %       6.2        4.4 / 6.3    374
    12/96         12/96       4.38 %       10.2       4.7 / 6.8    305
    16/128        16/128      5.14 %       8.0        5.3 / 6.0    256
    16/128        32/256      5.39 %       13.5       7.1 / 10.4   273
    32/256        32/256      8.47 %       16.4       10.1 / 11.8  182
    64/512        64/512      13.50 %      23.2       14.8 / 17.8  161

The wire share falls with smaller nodes, but not below ~3 %: each edit
also changes one internal node (~8 records of 48 bytes) per level above
it, and its own new entries are 88 bytes each. Below 8 entries a leaf,
halving the leaf again saves 0.5 % of the changed bytes and doubles the
node count (build CPU, replica index entries, requests). The goal of
≤ 256 KiB for one changed byte in 20 GiB is met by every shape: ~5 KiB of
nodes + the section (≤ 64 KiB) + one manifest chunk and its path (~15 KiB
with 20,000 files) + the signed root.

Measured at 16 M entries (``python -m bench.tree_ops``, the default;
2.3 M nodes, 1.47 GB, 8 levels): building from scratch costs 6.2 s CPU
(10.2 s in a busier run), against 1.0 s for SHA-256 of the node bytes
alone: ~2-3 µs of Python-level work per node remain, mostly hashing
small buffers, joining node bytes and summing lengths. The tree after a
one-entry change, built with ``copy_range`` from the old one, costs 5 ms
(25 nodes read, 131 subtrees reused); ``diff`` against it 1 ms; ``prove``
and ``verify_proof`` well under a millisecond; peak RSS 94 MiB, most of
it the benchmark's node index. A revision therefore never rebuilds the
whole tree: only the first backup does.
"""

from barterbackup.tree.build import (
    SECTION_TREE_SHAPE,
    NodeSink,
    NodeSource,
    TreeBuilder,
    TreeShape,
    build_tree,
)
from barterbackup.tree.nodes import (
    ENTRY_BYTES,
    MAX_SECTION_BYTES,
    PRIVATE_BYTES,
    ZERO_PRIVATE,
    Entry,
    InvalidNode,
    InvalidProof,
    NodeRef,
    TreeError,
    TreeRoot,
    unpack_entries,
)
from barterbackup.tree.proofs import (
    Proof,
    prove,
    prove_offset,
    verify_offset_proof,
    verify_proof,
)
from barterbackup.tree.read import (
    Located,
    NodeCache,
    entry_at,
    entry_at_offset,
    iter_entries,
    iter_nodes,
    iter_packed,
    read_node,
)
from barterbackup.tree.sync import Missing, SyncPlan, diff, missing

__all__ = [
    "ENTRY_BYTES",
    "MAX_SECTION_BYTES",
    "PRIVATE_BYTES",
    "SECTION_TREE_SHAPE",
    "ZERO_PRIVATE",
    "Entry",
    "InvalidNode",
    "InvalidProof",
    "Located",
    "Missing",
    "NodeCache",
    "NodeRef",
    "NodeSink",
    "NodeSource",
    "Proof",
    "SyncPlan",
    "TreeBuilder",
    "TreeError",
    "TreeRoot",
    "TreeShape",
    "build_tree",
    "diff",
    "entry_at",
    "entry_at_offset",
    "iter_entries",
    "iter_nodes",
    "iter_packed",
    "missing",
    "prove",
    "prove_offset",
    "read_node",
    "unpack_entries",
    "verify_offset_proof",
    "verify_proof",
]
