"""The section tree: a Merkle tree of small content-defined nodes.

(Design notes and measured trade-offs are filled in below.)
"""

from barterbackup.content.tree.build import (
    SECTION_TREE_SHAPE,
    NodeSink,
    NodeSource,
    TreeBuilder,
    TreeShape,
    build_tree,
)
from barterbackup.content.tree.nodes import (
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
from barterbackup.content.tree.proofs import (
    Proof,
    prove,
    prove_offset,
    verify_offset_proof,
    verify_proof,
)
from barterbackup.content.tree.read import (
    Located,
    entry_at,
    entry_at_offset,
    iter_entries,
    iter_nodes,
    iter_packed,
    read_node,
)
from barterbackup.content.tree.sync import Missing, SyncPlan, diff, missing

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
