"""Child process for tests/test_recovery_crash.py (not a test module itself).

Usage: python tests/recovery_crash_child.py SOURCE_DIR TARGET_DIR

SOURCE_DIR holds revision 1 of ``content_crash_child.file_set`` (the
replicas' copy); the child stores every blob of it that TARGET_DIR does not
have yet into TARGET_DIR's packs, as a recovery's fetch does, then installs
the revision there. It prints ``stored N`` (blobs written by this run). The
parent sets BARTERBACKUP_CRASH_AT to kill it at a numbered durable write of
the pack install (11-13) or of ``install_revision`` (14-17).
"""

from __future__ import annotations

import sys
from pathlib import Path

from barterbackup.keys.derive import node_keys_from_master
from barterbackup.sync.fetch import live_blobs
from barterbackup.testing.stores import open_content_store
from tests.content_crash_child import MASTER


class _Source:
    def __init__(self, store: object) -> None:
        self._store = store

    def get(self, node_hash: bytes) -> bytes:
        data: bytes = self._store.read_blob(node_hash)  # type: ignore[attr-defined]
        return data


def recover(source_dir: Path, target_dir: Path) -> int:
    keys = node_keys_from_master(MASTER)
    source = open_content_store(source_dir, keys)
    revision = source.current
    assert revision is not None
    target = open_content_store(target_dir, keys)
    if target.current is not None and target.current.number >= revision.number:
        return 0  # Installed by the run that crashed after its commit point.
    sink = target.recovered_blobs()
    stored = 0
    for sha256 in dict.fromkeys(live_blobs(revision, _Source(source))):
        if not sink.has_blob(sha256):
            sink.store_blobs([(sha256, source.read_blob(sha256))])
            stored += 1
    sink.checkpoint()
    target.install_revision(revision)
    return stored


if __name__ == "__main__":
    count = recover(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"stored {count}")
