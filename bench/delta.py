"""Delta sync benchmark: bytes on the wire per changed byte, against rsync.

Builds a content of ``size_bytes`` spread over 3 files with the real
ContentStore, syncs it to a replica over the real bbrpc protocol on
127.0.0.1 TCP, then overwrites 160 scattered 64 KiB ranges across the 3
files and adds a 1 MiB file, commits, and syncs again. The figure is the
frame bytes both directions of the connection carried during the second
sync, divided by the bytes changed (DESIGN.md target: ≤ 2, goal ≤ 1.5).

rsync's figure for the same edit comes from ``rsync -a --no-W --stats``
between two local directories (``--no-W`` forces the delta algorithm that
local copies otherwise skip): "Total bytes sent" + "Total bytes received",
i.e. both directions of rsync's pipe, the same thing we count for bbrpc.

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

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from barterbackup._proto import storedpb_pb2
from barterbackup.bbrpc.connection import PeerLimits
from barterbackup.bbrpc.factory import PeerServerFactory, connect_peer
from barterbackup.content.engine import ContentStore
from barterbackup.node.handler import NodePeerHandler
from barterbackup.store.replicas import ReplicaStore
from barterbackup.sync.offers import OfferedContent
from barterbackup.sync.push import push_revision
from barterbackup.sync.replica import ReplicaService
from barterbackup.sync.serve import ContentServer
from barterbackup.testing.link import keys_for_test
from barterbackup.testing.stores import open_content_store

MIB = 1024 * 1024
EDIT_COUNT = 160
EDIT_BYTES = 64 * 1024
NEW_FILE_BYTES = 1 * MIB
FILE_NAMES = ("a.bin", "b.bin", "c.bin")
READ_CHUNK = 8 * MIB
BENCH_MAX_FRAME = 64 * MIB


class _CountingProtocol(ProtocolWrapper):
    def write(self, data: bytes) -> None:
        self.factory.bytes += len(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def dataReceived(self, data: bytes) -> None:
        self.factory.bytes += len(data)
        super().dataReceived(data)


class _CountingFactory(WrappingFactory):
    """Counts every byte the wrapped server protocols send and receive."""

    protocol = _CountingProtocol

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.bytes = 0


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


def _commit_files(store: ContentStore, src: Path, names: list[str]) -> Any:
    update = store.begin_update()
    for name in names:
        with update.add_file(name) as writer, open(src / name, "rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                writer.write(chunk)
    return update.commit()


def _rsync_figures(before: Path, after: Path) -> dict[str, Any]:
    if shutil.which("rsync") is None:
        return {"rsync": "not installed"}
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

    owner_keys, replica_keys = keys_for_test(1), keys_for_test(2)
    content = open_content_store(workdir / "owner", owner_keys)
    budget = storedpb_pb2.StorageConfig(total_bytes=4 * size_bytes + 64 * MIB)
    replicas = ReplicaStore.open(workdir / "replica" / "replicas", lambda: budget)
    offers = OfferedContent()
    owner = NodePeerHandler(
        shareable_peers=list,
        replica=ReplicaService(replicas, reactor),
        server=ContentServer(content, replicas, offers),
    )
    replica_service = NodePeerHandler(
        shareable_peers=list,
        replica=ReplicaService(replicas, reactor),
        server=ContentServer(None, replicas, OfferedContent()),
    )
    # The signed revision travels in one frame and, at ~12 KiB sections, is
    # ~4.5 MB per GiB of content: over the default 4 MiB + 64 KiB frame cap.
    # Both ends raise the cap here so the delta itself can be measured (see
    # docs/replication.md, "Known limit").
    limits = PeerLimits(max_frame_length=BENCH_MAX_FRAME)
    server = PeerServerFactory(reactor, replica_keys, replica_service, limits=limits)
    counting = _CountingFactory(server)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(counting)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    conn = await connect_peer(
        reactor, endpoint, owner_keys, replica_keys.onion_address, owner, limits
    )
    figures: dict[str, Any] = {"content_bytes": size_bytes}
    try:
        started = time.monotonic()
        first = _commit_files(content, src, list(FILE_NAMES))
        figures["pack_seconds"] = round(time.monotonic() - started, 2)
        started, wire_before = time.monotonic(), counting.bytes
        await push_revision(conn, first.revision, lambda _: None, offers)
        figures["full_sync_seconds"] = round(time.monotonic() - started, 2)
        figures["full_sync_wire_bytes"] = counting.bytes - wire_before

        changed = _edit(src, rng)
        second = _commit_files(content, src, [*FILE_NAMES, "new.bin"])
        started, wire_before = time.monotonic(), counting.bytes
        final = await push_revision(conn, second.revision, lambda _: None, offers)
        wire = counting.bytes - wire_before
        figures.update(
            changed_bytes=changed,
            new_section_bytes=second.new_section_bytes,
            delta_sync_seconds=round(time.monotonic() - started, 2),
            delta_wire_bytes=wire,
            delta_fetched_bytes=final.bytes_fetched,
            # Sent whole with every SetContentRevision: section table plus
            # sealed manifest, ~2 hashes per ~20 KiB section.
            signed_revision_bytes=len(second.revision.signed),
            section_count=len(second.revision.revision.sections),
            wire_per_changed_byte=round(wire / changed, 3),
        )
    finally:
        closed = conn.when_closed()
        conn.close()
        await closed
        await port.stopListening()
        content.close()
    figures.update(_rsync_figures(mirror, src))
    if "rsync_bytes_sent" in figures:
        rsync_wire = figures["rsync_bytes_sent"] + figures["rsync_bytes_received"]
        figures["rsync_wire_per_changed_byte"] = round(rsync_wire / changed, 3)
    return figures


def run(workdir: Path, size_bytes: int) -> dict[str, Any]:
    """Run the benchmark on the global reactor (bench entry point only)."""
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    result: dict[str, Any] = {}
    failure: list[Any] = []

    def go() -> None:
        d = defer.Deferred.fromCoroutine(measure(reactor, Path(workdir), size_bytes))
        d.addCallbacks(result.update, failure.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if failure:
        failure[0].raiseException()
    return result


def main(argv: list[str]) -> None:
    size_bytes = (int(argv[1]) if len(argv) > 1 else 1024) * MIB
    if len(argv) > 2:
        workdir = Path(argv[2])
        workdir.mkdir(parents=True, exist_ok=False)
        print(json.dumps(run(workdir, size_bytes), indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="bb-delta-") as temp:
        print(json.dumps(run(Path(temp) / "run", size_bytes), indent=2))


if __name__ == "__main__":
    main(sys.argv)
