"""Delta sync benchmark: bytes on the wire per changed byte, against rsync.

Builds a content of ``size_bytes`` spread over 3 files with the real
ContentStore, syncs it to a replica over the real bbrpc protocol on
127.0.0.1 TCP (bench.sync_rig), then overwrites 160 scattered 64 KiB ranges
across the 3 files and adds a 1 MiB file, commits, and syncs again. The
figure is the bytes both directions of the connection carried during the
second sync (frames, the signed root, tree nodes, manifest chunks,
sections), divided by the bytes changed (issue 8 goal: ≤ 1.3).

Then one byte in the middle of the first file is changed and synced: the
bytes on the wire for that (issue 8 goal: ≤ 256 KiB for one byte in 20
GiB; the tree path grows with the logarithm of the size, so this run's
figure at a smaller size is a lower bound, and ``bench.tree_ops`` gives
the tree's share at 20 GiB).

rsync's figure for the same edit comes from ``rsync -a --no-W --stats``
between two local directories (``--no-W`` forces the delta algorithm that
local copies otherwise skip): "Total bytes sent" + "Total bytes received",
i.e. both directions of rsync's pipe, the same thing we count for bbrpc.
rsync must be installed (``make bench`` installs it): a missing baseline
fails the benchmark.

Usage: python -m bench.delta [SIZE_MIB [WORKDIR]]   (default 1024 MiB, a temp dir)
This is a bench entry point, so it runs the global reactor.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread

from barterbackup.content.engine import ContentStore
from bench.sync_rig import SyncRig, run_on_reactor

MIB = 1024 * 1024
EDIT_COUNT = 160
EDIT_BYTES = 64 * 1024
NEW_FILE_BYTES = 1 * MIB
FILE_NAMES = ("a.bin", "b.bin", "c.bin")
READ_CHUNK = 8 * MIB


def _write_random_files(src: Path, size_bytes: int, rng: random.Random) -> None:
    per_file = size_bytes // len(FILE_NAMES)
    for name in FILE_NAMES:
        with open(src / name, "wb") as handle:
            left = per_file
            while left:
                chunk = min(left, READ_CHUNK)
                handle.write(rng.randbytes(chunk))
                left -= chunk


def _edit(src: Path, rng: random.Random) -> int:
    """Overwrite 160 scattered 64 KiB ranges and add a file; bytes changed."""
    sizes = {name: (src / name).stat().st_size for name in FILE_NAMES}
    slots_per_file = {name: sizes[name] // EDIT_BYTES for name in FILE_NAMES}
    chosen: dict[str, list[int]] = {name: [] for name in FILE_NAMES}
    for i in range(EDIT_COUNT):
        name = FILE_NAMES[i % len(FILE_NAMES)]
        while True:
            slot = rng.randrange(slots_per_file[name])
            # Non-adjacent ranges, so each edit is its own change.
            if all(abs(slot - other) > 1 for other in chosen[name]):
                chosen[name].append(slot)
                break
    later = time.time() + 10  # rsync's quick check must see the change
    for name, slots in chosen.items():
        with open(src / name, "r+b") as handle:
            for slot in slots:
                handle.seek(slot * EDIT_BYTES + rng.randrange(EDIT_BYTES // 2))
                handle.write(rng.randbytes(EDIT_BYTES))
        os.utime(src / name, (later, later))
    (src / "new.bin").write_bytes(rng.randbytes(NEW_FILE_BYTES))
    return EDIT_COUNT * EDIT_BYTES + NEW_FILE_BYTES


def _flip_one_byte(path: Path) -> None:
    middle = path.stat().st_size // 2
    with open(path, "r+b") as handle:
        handle.seek(middle)
        byte = handle.read(1)
        handle.seek(middle)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _commit_files(store: ContentStore, src: Path, names: list[str]) -> Any:
    update = store.begin_update()
    for name in names:
        with update.add_file(name) as writer, open(src / name, "rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                writer.write(chunk)
    return update.commit()


def _rsync_figures(before: Path, after: Path) -> dict[str, Any]:
    if shutil.which("rsync") is None:
        raise SystemExit("rsync is not installed: the baseline cannot be measured")
    output = subprocess.run(
        ["rsync", "-a", "--no-W", "--stats", f"{after}/", f"{before}/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    def number(label: str) -> int:
        match = re.search(rf"{label}: ([\d,]+)", output)
        return int(match.group(1).replace(",", "")) if match else -1

    return {
        "rsync_bytes_sent": number("Total bytes sent"),
        "rsync_bytes_received": number("Total bytes received"),
        "rsync_literal_data": number("Literal data"),
    }


async def measure(reactor: Any, workdir: Path, size_bytes: int) -> dict[str, Any]:
    """Run the benchmark in ``workdir`` with ``reactor``; return the figures."""
    rng = random.Random(20261126)
    src, mirror = workdir / "src", workdir / "rsync-mirror"
    src.mkdir(parents=True)
    _write_random_files(src, size_bytes, rng)
    subprocess.run(["cp", "-a", f"{src}/.", str(mirror)], check=True)
    rig = SyncRig(reactor, workdir, budget=4 * size_bytes + 64 * MIB)
    await rig.connect()
    figures: dict[str, Any] = {"content_bytes": size_bytes}
    try:
        started = time.monotonic()
        first = await deferToThread(_commit_files, rig.content, src, list(FILE_NAMES))
        figures["pack_seconds"] = round(time.monotonic() - started, 2)
        full = await rig.push(first.revision)
        figures["full_sync_seconds"] = round(full.seconds, 2)
        figures["full_sync_wire_bytes"] = full.wire_bytes

        changed = _edit(src, rng)
        second = await deferToThread(
            _commit_files, rig.content, src, [*FILE_NAMES, "new.bin"]
        )
        delta = await rig.push(second.revision)
        figures.update(
            changed_bytes=changed,
            new_section_bytes=second.new_section_bytes,
            delta_sync_seconds=round(delta.seconds, 2),
            delta_wire_bytes=delta.wire_bytes,
            delta_fetched_bytes=delta.fetched_bytes,
            signed_root_bytes=len(second.revision.signed),
            wire_per_changed_byte=round(delta.wire_bytes / changed, 3),
        )
        _flip_one_byte(src / FILE_NAMES[0])
        third = await deferToThread(
            _commit_files, rig.content, src, [*FILE_NAMES, "new.bin"]
        )
        one_byte = await rig.push(third.revision)
        figures.update(
            one_byte_new_section_bytes=third.new_section_bytes,
            one_byte_wire_bytes=one_byte.wire_bytes,
            one_byte_wire_kib=round(one_byte.wire_bytes / 1024, 1),
        )
    finally:
        await rig.close()
    figures.update(_rsync_figures(mirror, src))
    rsync_wire = figures["rsync_bytes_sent"] + figures["rsync_bytes_received"]
    figures["rsync_wire_per_changed_byte"] = round(rsync_wire / changed, 3)
    figures["ratio_to_rsync"] = round(
        figures["wire_per_changed_byte"] / figures["rsync_wire_per_changed_byte"], 3
    )
    return figures


def main(argv: list[str]) -> None:
    size_bytes = (int(argv[1]) if len(argv) > 1 else 1024) * MIB
    if len(argv) > 2:
        workdir = Path(argv[2])
        workdir.mkdir(parents=True, exist_ok=False)
        print(json.dumps(run_on_reactor(measure, workdir, size_bytes), indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="bb-delta-") as temp:
        figures = run_on_reactor(measure, Path(temp) / "run", size_bytes)
    print(json.dumps(figures, indent=2))
    print(
        f"delta on the wire ÷ changed bytes: {figures['wire_per_changed_byte']} "
        f"(goal ≤ 1.3); rsync, same edit: {figures['rsync_wire_per_changed_byte']}"
    )
    print(
        f"one byte changed in {size_bytes // MIB} MiB: "
        f"{figures['one_byte_wire_kib']} KiB on the wire (goal ≤ 256 KiB at 20 GiB)"
    )


if __name__ == "__main__":
    main(sys.argv)
