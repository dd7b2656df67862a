"""Child process for tests/test_content_crash.py (not a test module itself).

Usage: python tests/content_crash_child.py NODE_DIR (1|2)

Commits revision 1 or revision 2 of a fixed file set with a fixed key. The
parent sets BARTERBACKUP_CRASH_AT to kill this process at a numbered durable
write step of the revision 2 commit.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from barterbackup.keys.derive import node_keys_from_master
from barterbackup.testing.stores import open_content_store

MASTER = bytes(range(32))


def file_set(revision: int) -> dict[str, bytes]:
    """The exact files of revision 1 and revision 2."""
    rng = random.Random(1234)
    big = bytearray(rng.randbytes(600 * 1024))
    files = {"big.bin": bytes(big), "small.txt": b"hello\n" * 100, "keep/me": b"kept"}
    if revision == 2:
        big[300_000:310_000] = rng.randbytes(10_000)
        files["big.bin"] = bytes(big)
        del files["small.txt"]
        files["added.bin"] = rng.randbytes(150 * 1024)
    return files


def commit(node_dir: Path, revision: int) -> None:
    store = open_content_store(node_dir, node_keys_from_master(MASTER))
    previous = set(store.list_files())
    wanted = file_set(revision)
    update = store.begin_update()
    for name in sorted(previous - set(wanted)):
        update.remove_file(name)
    for name, data in sorted(wanted.items()):
        if revision == 2 and name == "keep/me":
            continue  # unchanged files are not re-added
        writer = update.add_file(
            name, mode=0o600, mtime_ns=1_700_000_000_000_000_000 + revision
        )
        for start in range(0, len(data), 70_000):
            writer.write(data[start : start + 70_000])
        writer.close()
    update.commit()


if __name__ == "__main__":
    commit(Path(sys.argv[1]), int(sys.argv[2]))
