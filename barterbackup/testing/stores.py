"""Opening a node directory's stores the way the session does (tests,
benchmarks, crash children)."""

from __future__ import annotations

from pathlib import Path

from barterbackup import paths
from barterbackup.content.engine import ContentStore
from barterbackup.keys.derive import NodeKeys
from barterbackup.store.metadata import MetadataStore


def open_content_store(node_dir: Path, keys: NodeKeys) -> ContentStore:
    """The content store of ``node_dir``, with the node's Metadata."""
    metadata = MetadataStore(paths.metadata_path(node_dir), keys.metadata_key)
    return ContentStore.open(paths.content_dir(node_dir), keys, metadata)
