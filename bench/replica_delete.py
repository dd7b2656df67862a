"""How long a replica delete holds up the other replicas' queries.

A replica of SIZE_MIB (default 1024) in 4 MiB sections and a small one of
another owner; one thread deletes the large one while another asks
``held()`` of the small one in a loop (what the reactor asks while serving
a Download or a GetContentRevision). Printed: the delete's time and the
worst and median wait of a query meanwhile, and their ratio (the
baseline: the delete itself). Before the store removed files outside its
lock, the worst wait was the whole delete (1 GiB: ~1.2 s).

    .venv/bin/python -m bench.replica_delete [SIZE_MIB]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from barterbackup.keys.derive import NodeKeys
from barterbackup.store.replicas import ReplicaStore
from barterbackup.testing.fakes import BlobDict, make_revision
from barterbackup.testing.link import keys_for_test
from barterbackup.tree.nodes import entry_hashes
from barterbackup.tree.read import iter_nodes

MIB = 1024 * 1024
SECTION_BYTES = 4 * MIB


def store_revision(store: ReplicaStore, keys: NodeKeys, sections: list[bytes]) -> None:
    """What a complete sync leaves: every blob of the revision, held."""
    blobs = BlobDict()
    revision = make_revision(keys.signing_key, sections, 1, blobs)
    live = []
    for tree in (revision.sections, revision.manifest):
        for node in iter_nodes(tree, blobs):
            live.append(node.ref.hash)
            if node.ref.level == 0:
                live += entry_hashes(node.packed())
    owner = keys.onion_pubkey
    store.begin(owner, revision.signed)
    for start in range(0, len(live), 16):
        batch = [(h, blobs[h]) for h in live[start : start + 16]]
        store.store_blobs(owner, revision.content_id, batch)
    store.finish(owner, revision.content_id, lambda: live)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size_mib", nargs="?", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        store = ReplicaStore.open(
            Path(tmp) / "replicas", lambda owner: 2**40, bytes(32), bytes(range(32))
        )
        large, small = keys_for_test(1), keys_for_test(2)
        count = max(1, args.size_mib * MIB // SECTION_BYTES)
        store_revision(store, large, [os.urandom(SECTION_BYTES) for _ in range(count)])
        store_revision(store, small, [b"small"])
        waits: list[float] = []
        done = threading.Event()

        def ask() -> None:
            while not done.is_set():
                began = time.perf_counter()
                store.held(small.onion_pubkey)
                waits.append(time.perf_counter() - began)

        asking = threading.Thread(target=ask)
        asking.start()
        began = time.perf_counter()
        store.delete(large.onion_pubkey)
        deleted = time.perf_counter() - began
        done.set()
        asking.join()
        store.close()
    worst = max(waits)
    print(f"replica delete, {args.size_mib} MiB")
    print(f"  delete                 {deleted * 1000:8.1f} ms")
    share = worst / deleted
    print(f"  query wait, worst      {worst * 1000:8.1f} ms  ({share:.3f} of it)")
    print(f"  query wait, median     {statistics.median(waits) * 1000:8.3f} ms")
    print(f"  queries meanwhile      {len(waits):8d}")


if __name__ == "__main__":
    main()
