"""Replica sync over onion services ÷ raw bytes over an onion, same run.

On a private Tor network on 127.0.0.1: node A (a real Node with the Tor
transport) pushes a content of SIZE bytes to node B, which pulls it with
bbrpc Download over the onion. The baseline is the same number of raw bytes
(no protocol at all) fetched through B's own tor (the same SOCKS port) from
a plain byte source published as another onion. Runs alternate, best of
each is kept. Goal: sync ÷ raw ≥ 0.9.

    .venv/bin/python -m bench.onion_sync [SIZE_MIB]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

from barterbackup.keys.derive import node_keys_from_master
from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from barterbackup.node.session import production_environment
from barterbackup.progress import Progress
from barterbackup.testing.tornet import TorNetwork
from barterbackup.transport.tor import TorTransport
from bench.onion_baseline import SourceFactory, fetch

PASSWORDS = (
    "quartz-lantern-ember-violet-harbor-cobalt-meadow",
    "saffron-glacier-tundra-orchid-beacon-falcon-pebble",
)
ROUNDS = 2
MIB = 1024 * 1024


async def _commit(node: Node, name: str, data: bytes) -> None:
    update = await node.begin_update()

    def work() -> None:
        try:
            update.add_file(name)
            update.write(data)
            update.commit()
        finally:
            update.abort()

    try:
        await deferToThread(work)
    finally:
        update.finish()


async def measure(reactor: Any, workdir: Path, size: int) -> dict[str, Any]:
    network = TorNetwork(reactor, workdir / "tornet")
    await network.start()
    options = tuple((k, v) for k, v in network.client_torrc_options())
    nodes: list[Node] = []
    source = TorTransport(
        reactor,
        node_keys_from_master(bytes(range(96, 128))),
        workdir / "source-tor",
        extra_torrc=options,
    )
    try:
        for i, password in enumerate(PASSWORDS):
            config = NodeConfig(
                node_dir=workdir / f"n{i}", transport="tor", extra_torrc=options
            )
            node = Node(production_environment(reactor, config), config)
            node.startService()
            await node.unlock(password, create_if_missing=True)
            nodes.append(node)
        await source.start()
        await source.listen(SourceFactory(size))
        for node in nodes:
            await node.session.network.ready()
        a, b = nodes
        b_address = b.session.keys.onion_address
        await a.connect_peer(b_address)
        b_transport = b.session.transport
        raw: list[float] = []
        sync: list[float] = []
        for round_number in range(ROUNDS):
            result = await fetch(
                reactor, b_transport.client_endpoint(source.advertised), 600
            )
            # First byte to last: the raw figure leaves out its own circuit
            # set-up, while the sync figure includes its request round trips.
            raw.append(result["mb_per_s"])
            # A fresh random content each round: every byte must travel.
            await _commit(a, f"round{round_number}.bin", os.urandom(size))
            seen: list[Progress] = []
            began = time.monotonic()
            await a.replicate([b_address], seen.append)
            elapsed = time.monotonic() - began
            [done] = [e for e in seen if e.phase == "done"]
            fetched = int(done.message.split()[0])
            sync.append(fetched / elapsed / 1e6)
        return {
            "size_bytes": size,
            "raw_onion_mb_s": max(raw),
            "sync_onion_mb_s": max(sync),
            "ratio": max(sync) / max(raw),
            "raw_runs": raw,
            "sync_runs": sync,
        }
    finally:
        for node in nodes:
            await node.stopService()
        await defer.ensureDeferred(source.stop())
        await network.stop()


def run(size: int = 32 * MIB) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bb-bench-onion-"))
    box: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        box.update(await measure(reactor, workdir, size))

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return box


def print_table(figures: dict[str, Any]) -> None:
    size = figures["size_bytes"] / MIB
    print(f"onion transfer of {size:.0f} MiB (best of {ROUNDS})")
    rows = [
        ("raw bytes over an onion, same Tor client", figures["raw_onion_mb_s"]),
        ("replica sync over onions (bbrpc Download)", figures["sync_onion_mb_s"]),
    ]
    for label, value in rows:
        print(f"  {label:<44} {value:7.2f} MB/s")
    print(f"  {'ratio (goal >= 0.9)':<44} {figures['ratio']:7.2f}")


if __name__ == "__main__":
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    print_table(run(mib * MIB))
