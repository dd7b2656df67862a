"""Recovery after a total loss over onions: 3 replicas ÷ 1, ÷ raw onion bytes.

On a private Tor network on 127.0.0.1: alice (a real Node with the Tor
transport) commits SIZE random bytes and forms contracts with bob, carol
and dave, which sync it. Then, twice, alice's node is stopped, its
directory deleted and a new node unlocked with the same password (default
settings: no address typed, the replicas dial her): first with all three
replicas up, then with carol and dave stopped. Figures, same run:

* wall time of the fetch (first fetch request → installed) from 3 replicas
  ÷ from 1 (goal ≤ 0.4);
* recovery throughput from 1 replica ÷ raw bytes fetched over an onion
  through alice's own tor from a plain byte source (the ceiling of one
  circuit; goal ≥ 0.85);
* unlock on an empty directory → the first byte fetched (goal ≤ 3 min;
  it includes alice's tor starting and publishing, and the replicas'
  next dial on their contact schedule).

    .venv/bin/python -m bench.recovery [SIZE_MIB]
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

from barterbackup.keys.derive import node_keys_from_master
from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from barterbackup.node.session import production_environment
from barterbackup.progress import Progress
from barterbackup.testing.tornet import TorNetwork
from barterbackup.transport.tor import TorTransport
from bench.onion_baseline import SourceFactory, fetch
from bench.onion_sync import _commit

PASSWORDS = {
    "alice": "quartz-lantern-ember-violet-harbor-cobalt-meadow",
    "bob": "saffron-glacier-tundra-orchid-beacon-falcon-pebble",
    "carol": "walnut-prism-meteor-canyon-thimble-juniper-sonnet",
    "dave": "harbor-nebula-quilt-sparrow-granite-lilac-orbit",
}
MIB = 1024 * 1024
RAW_ROUNDS = 2


class Bench:
    def __init__(self, reactor: Any, workdir: Path, options: tuple[Any, ...]) -> None:
        self.reactor = reactor
        self.workdir = workdir
        self.options = options
        self.nodes: dict[str, Node] = {}

    async def start(self, name: str) -> Node:
        config = NodeConfig(
            node_dir=self.workdir / name, transport="tor", extra_torrc=self.options
        )
        node = Node(production_environment(self.reactor, config), config)
        node.startService()
        self.nodes[name] = node
        await node.unlock(PASSWORDS[name], create_if_missing=True)
        return node

    async def lose_and_recover(self) -> dict[str, Any]:
        """Alice's directory deleted, her node unlocked again: timings."""
        await self.nodes["alice"].stopService()
        shutil.rmtree(self.workdir / "alice")
        stamped: list[tuple[float, Progress]] = []
        began = time.monotonic()
        alice = await self.start("alice")
        result = await alice.recover(
            [], 0, lambda p: stamped.append((time.monotonic(), p))
        )
        overall = [(t, p) for t, p in stamped if not p.peer]
        fetch_began = next(t for t, p in overall if p.phase == "fetching node state")
        first_byte = next(
            t
            for t, p in stamped
            if p.phase == "fetching" and (p.bytes_done > 0 or p.peer)
        )
        done = next(t for t, p in overall if p.phase == "done")
        return {
            "sources": len(result.sources),
            "bytes_fetched": result.bytes_fetched,
            "unlock_to_first_request_s": fetch_began - began,
            "unlock_to_first_byte_s": first_byte - began,
            "fetch_s": done - fetch_began,
            "total_s": done - began,
        }


async def measure(reactor: Any, workdir: Path, size: int) -> dict[str, Any]:
    network = TorNetwork(reactor, workdir / "tornet")
    await network.start()
    options = tuple((k, v) for k, v in network.client_torrc_options())
    bench = Bench(reactor, workdir, options)
    source = TorTransport(
        reactor,
        node_keys_from_master(bytes(range(96, 128))),
        workdir / "source-tor",
        extra_torrc=options,
    )
    try:
        for name in PASSWORDS:
            await bench.start(name)
        await source.start()
        await source.listen(SourceFactory(size))
        for node in bench.nodes.values():
            await node.session.network.ready()
            await node.set_storage_config(min_replicas=0)
        alice = bench.nodes["alice"]
        replicas = [bench.nodes[name] for name in ("bob", "carol", "dave")]
        for replica in replicas:
            await alice.connect_peer(replica.session.keys.onion_address)
            await replica.connect_peer(alice.session.keys.onion_address)
        await _commit(alice, "content.bin", os.urandom(size))
        quota = max(2 * size, 64 * MIB)
        for replica in replicas:
            await alice.propose_contract(
                replica.session.keys.onion_address, quota, quota, lambda p: None
            )
        await alice.session.state_keeper.check()
        await alice.replicate(
            [r.session.keys.onion_address for r in replicas], lambda p: None
        )
        raw = []
        for _ in range(RAW_ROUNDS):
            result = await fetch(
                reactor, alice.session.transport.client_endpoint(source.advertised), 600
            )
            raw.append(result["mb_per_s"])
        three = await bench.lose_and_recover()
        for name in ("carol", "dave"):
            await bench.nodes[name].stopService()
        one = await bench.lose_and_recover()
        one_mb_s = one["bytes_fetched"] / one["fetch_s"] / 1e6
        return {
            "size_bytes": size,
            "three": three,
            "one": one,
            "raw_onion_mb_s": max(raw),
            "one_replica_mb_s": one_mb_s,
            "three_replicas_mb_s": three["bytes_fetched"] / three["fetch_s"] / 1e6,
            "wall_ratio": three["fetch_s"] / one["fetch_s"],
            "raw_ratio": one_mb_s / max(raw),
        }
    finally:
        for node in bench.nodes.values():
            if node.running:
                await node.stopService()
        await defer.ensureDeferred(source.stop())
        await network.stop()


def run(size: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bb-bench-recovery-"))
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
    three, one = figures["three"], figures["one"]
    print(f"recovery of {size:.0f} MiB over onions, private Tor network")
    rows = [
        ("fetch from 3 replicas (s)", three["fetch_s"]),
        ("fetch from 1 replica (s)", one["fetch_s"]),
        ("wall ratio 3 / 1 (goal <= 0.4)", figures["wall_ratio"]),
        ("raw bytes over one onion (MB/s)", figures["raw_onion_mb_s"]),
        ("recovery from 1 replica (MB/s)", figures["one_replica_mb_s"]),
        ("recovery from 3 replicas (MB/s)", figures["three_replicas_mb_s"]),
        ("ratio 1 replica / raw (goal >= 0.85)", figures["raw_ratio"]),
        ("unlock -> first request, 3 up (s)", three["unlock_to_first_request_s"]),
        ("unlock -> first byte, 3 up (goal <= 180 s)", three["unlock_to_first_byte_s"]),
        ("unlock -> first byte, 1 up (s)", one["unlock_to_first_byte_s"]),
        ("unlock -> installed, 3 up (s)", three["total_s"]),
    ]
    for label, value in rows:
        print(f"  {label:<46} {value:8.2f}")
    print(f"  sources used: {three['sources']} then {one['sources']}")


if __name__ == "__main__":
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    print_table(run(mib * MIB))
