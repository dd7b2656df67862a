"""Membership proofs: the nodes on the path from the root to one entry.

A proof is what a replica holding the tree can show to anyone holding only
the signed root: the exact bytes of the depth + 1 nodes from the root down
to the leaf holding the entry. The verifier descends by the index (or
content offset) it chose itself, so the proof cannot substitute another
entry; every node must hash to what its parent names, sit at the level
below it, and hold the counts its parent promised.
"""

from __future__ import annotations

from dataclasses import dataclass

from barterbackup.tree.build import NodeSource
from barterbackup.tree.nodes import (
    MAX_LEVEL,
    MAX_NODE_BYTES,
    Internal,
    InvalidNode,
    InvalidProof,
    Leaf,
    NodeRef,
    TreeRoot,
    decode_node,
)
from barterbackup.tree.read import (
    Located,
    _descend_to_index,
    _descend_to_offset,
)


@dataclass(frozen=True)
class Proof:
    """The node bytes from root to leaf for the entry at ``index``."""

    index: int
    nodes: tuple[bytes, ...]

    @property
    def size(self) -> int:
        """Bytes a proof costs on the wire (its nodes)."""
        return sum(len(node) for node in self.nodes)


def prove(root: TreeRoot, index: int, source: NodeSource) -> Proof:
    """The proof that entry ``index`` is in the tree (from a trusted source)."""
    path = list(_descend_to_index(root, source, index))
    return Proof(index, tuple(node.data for node in path))


def prove_offset(root: TreeRoot, offset: int, source: NodeSource) -> Proof:
    """The proof of the entry holding content byte ``offset``."""
    path = list(_descend_to_offset(root, source, offset))
    leaf = path[-1]
    assert isinstance(leaf, Leaf)
    position, _ = leaf.locate_offset(offset)
    index = leaf.ref.first_index + position
    return Proof(index, tuple(node.data for node in path))


def _check_shape(root: TreeRoot, proof: Proof) -> None:
    if not isinstance(proof.nodes, tuple) or not all(
        isinstance(node, bytes) for node in proof.nodes
    ):
        raise InvalidProof("a proof is a tuple of node bytes")
    if len(proof.nodes) != root.level + 1 or len(proof.nodes) > MAX_LEVEL + 1:
        raise InvalidProof(
            f"proof has {len(proof.nodes)} nodes; a tree of level {root.level} "
            f"needs {root.level + 1}"
        )
    if any(len(node) > MAX_NODE_BYTES for node in proof.nodes):
        raise InvalidProof("proof node is over the node size bound")


def _walk(root: TreeRoot, proof: Proof, by_offset: bool, target: int) -> Leaf:
    ref: NodeRef = root.ref()
    for depth, data in enumerate(proof.nodes):
        try:
            node = decode_node(data, ref)
        except InvalidNode as error:
            raise InvalidProof(f"proof node {depth}: {error}") from None
        if isinstance(node, Leaf):
            return node
        assert isinstance(node, Internal)
        if by_offset:
            ref = node.children[node.child_for_offset(target)]
        else:
            ref = node.children[node.child_for_index(target)]
    raise InvalidProof("proof ends before a leaf")  # unreachable: levels checked


def verify_proof(root: TreeRoot, index: int, proof: Proof) -> Located:
    """The entry at ``index`` if ``proof`` proves it against ``root``.

    ``root`` comes from a verified signed root; raises InvalidProof on any
    fault (a flipped bit anywhere, a wrong index, another tree's nodes).
    """
    if not 0 <= index < root.entry_count:
        raise InvalidProof(f"entry {index} is outside a tree of {root.entry_count}")
    if proof.index != index:
        raise InvalidProof(f"proof is for entry {proof.index}, not {index}")
    _check_shape(root, proof)
    leaf = _walk(root, proof, False, index)
    position = index - leaf.ref.first_index
    offset = leaf.ref.first_offset + sum(leaf.lengths()[:position])
    return Located(index, offset, leaf.entry(position))


def verify_offset_proof(root: TreeRoot, offset: int, proof: Proof) -> Located:
    """The entry holding content byte ``offset`` if ``proof`` proves it."""
    if not 0 <= offset < root.byte_count:
        raise InvalidProof(f"offset {offset} is outside {root.byte_count} bytes")
    _check_shape(root, proof)
    leaf = _walk(root, proof, True, offset)
    position, start = leaf.locate_offset(offset)
    index = leaf.ref.first_index + position
    if proof.index != index:
        raise InvalidProof(f"proof is for entry {proof.index}, not {index}")
    return Located(index, start, leaf.entry(position))
