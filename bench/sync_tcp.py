"""Full sync throughput over loopback TCP against hashlib SHA-256.

Packs ``size`` MiB of random data (3 files) into the owner's real
ContentStore, then times a full sync to an empty replica over real bbrpc on
127.0.0.1 (bench.sync_rig: the replica fetches the signed root, the tree
nodes, the manifest chunks and every section, verifies each against its
hash and writes it into its packs, durable at the end). The baseline is
hashlib SHA-256 over the same bytes, in the same run: the issue 8 goal is
a sync at 0.2 times that rate or more.

Usage: python -m bench.sync_tcp [SIZE_MIB]   (default 1024)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread

from barterbackup.content.engine import ContentStore
from bench.sync_rig import SyncRig, run_on_reactor

MIB = 1024 * 1024
FILES = 3
CHUNK = 8 * MIB


def _data(size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    per_file = size // FILES
    return [rng.randbytes(per_file) for _ in range(FILES)]


def _pack(content: ContentStore, files: list[bytes]) -> Any:
    update = content.begin_update()
    for number, data in enumerate(files):
        with update.add_file(f"file-{number}.bin") as writer:
            view = memoryview(data)
            for start in range(0, len(data), CHUNK):
                writer.write(view[start : start + CHUNK])
    return update.commit()


def _sha256_rate(files: list[bytes]) -> float:
    best = 0.0
    for _ in range(3):
        began = time.perf_counter()
        for data in files:
            hashlib.sha256(data).digest()
        elapsed = time.perf_counter() - began
        best = max(best, sum(map(len, files)) / elapsed)
    return best


async def measure(reactor: Any, workdir: Path, size: int) -> dict[str, Any]:
    files = _data(size, 20261201)
    rig = SyncRig(reactor, workdir, budget=2 * size + 64 * MIB)
    await rig.connect()
    try:
        commit = await deferToThread(_pack, rig.content, files)
        cpu_before = os.times()
        sync = await rig.push(commit.revision)
        cpu_after = os.times()
    finally:
        await rig.close()
    sha_rate = _sha256_rate(files)
    sync_rate = size / sync.seconds
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return {
        "content_bytes": size,
        "sync_seconds": round(sync.seconds, 2),
        "sync_cpu_seconds_both_sides": round(cpu, 2),
        "wire_bytes": sync.wire_bytes,
        "sync_mb_per_s": round(sync_rate / 1e6, 1),
        "sha256_mb_per_s": round(sha_rate / 1e6, 1),
        "ratio": round(sync_rate / sha_rate, 3),
    }


def main(argv: list[str]) -> None:
    size = (int(argv[1]) if len(argv) > 1 else 1024) * MIB
    with tempfile.TemporaryDirectory(prefix="bb-sync-tcp-") as temp:
        figures = run_on_reactor(measure, Path(temp), size)
    print(json.dumps(figures, indent=2))
    print(
        f"full sync over TCP ÷ hashlib SHA-256: {figures['ratio']} (goal ≥ 0.2); "
        f"{figures['sync_mb_per_s']} MB/s vs {figures['sha256_mb_per_s']} MB/s"
    )


if __name__ == "__main__":
    main(sys.argv)
