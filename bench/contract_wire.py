"""Spot checks as the node makes them: through the tree, the store, the wire.

bench.contract_checks measures the check functions alone; this measures a
check the way the contract book runs one. For a content of 1 GiB and of
20 GiB (a real section tree over synthetic sections of 3-64 KiB averaging
about 12 KiB, with real audit samples in the entries; the section bytes are
a tiled random MiB), the owner builds each challenge, sends it over a real
bbrpc connection (two PeerConnections on the in-memory link), the replica
answers with ``contracts.answering`` reading through ``readers.TreeContent``
(as it reads its replica store), and the owner verifies against its own
copy read the same way. Reported per check:

* wire bytes, both ways, counted on the link (frames and envelopes as
  sent), against the goals (2 KiB digest, 512 KiB sample);
* replica reads: tree nodes and sections read from the store, and bytes;
* CPU on each side, and as a multiple of SHA-256 over 1 MiB measured in the
  same run (these machines are noisy; the ratio is the figure to compare).
  The owner keeps the tree nodes of its current revision between checks,
  as the node does (``checking.OWN_NODE_CACHE_BYTES``: all of them at
  1 GiB, the upper levels at 20 GiB); the replica reads cold every time.

Usage: python -m bench.contract_wire [--quick]   (--quick: 1 GiB only)
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from barterbackup._proto import bbrpc_pb2
from barterbackup.contracts import digestcheck, samplecheck
from barterbackup.contracts.answering import SpotCheckAnswerer
from barterbackup.contracts.checking import OWN_NODE_CACHE_BYTES
from barterbackup.contracts.readers import CachedNodes, TreeContent
from barterbackup.revisions import VerifiedRevision, new_root, sign_root
from barterbackup.store.replicas import HeldReplica
from barterbackup.testing.link import connected_pair, keys_for_test
from barterbackup.tree import PRIVATE_BYTES, Entry, TreeBuilder

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
CHECKS = 20
AUDIT_KEY = b"a" * 32
OWNER = keys_for_test(1)
REPLICA = keys_for_test(2)


class _Section:
    """One synthetic section as make_audit_samples reads it (no copy)."""

    def __init__(self, tile: bytes, start: int, length: int) -> None:
        self.tile, self.start, self.length = tile, start, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, offset: int) -> int:
        return self.tile[(self.start + offset) % MiB]


class SyntheticStore:
    """Tree nodes in memory and sections made on demand, read by hash.

    A section's hash starts with its index (then 24 bytes of a real hash,
    so the tree's cut rule sees random bytes), which is how a read finds
    its bytes; nothing here checks hashes, as the stores do: only the cost
    of walking the tree and reading positions is measured.
    """

    def __init__(self, size: int, seed: int) -> None:
        rng = random.Random(seed)
        self.tile = rng.randbytes(MiB) * 2
        self.nodes: dict[bytes, bytes] = {}
        self.starts = array("Q")
        self.lengths = array("Q")
        builder = TreeBuilder(self)
        total = 0
        index = 0
        pad = bytes(PRIVATE_BYTES - samplecheck.AUDIT_SAMPLES_BYTES)
        while total < size:
            length = min(3 * KiB + int(rng.expovariate(1 / (9 * KiB))), 64 * KiB)
            length = min(length, size - total)
            sha256 = (
                index.to_bytes(8, "big") + hashlib.sha256(b"%d" % index).digest()[:24]
            )
            samples = samplecheck.make_audit_samples(
                AUDIT_KEY,
                sha256,
                _Section(self.tile, total, length),  # type: ignore[arg-type]
            )
            builder.add(Entry(length, sha256, pad + samples))
            self.starts.append(total)
            self.lengths.append(length)
            total += length
            index += 1
        sections = builder.finish()
        manifest = TreeBuilder(self)
        manifest.add(Entry(100, hashlib.sha256(b"manifest").digest()))
        self.revision: VerifiedRevision = sign_root(
            new_root(OWNER.onion_pubkey, 1, sections, manifest.finish()),
            OWNER.signing_key,
        )
        self.node_reads = 0
        self.section_reads = 0

    def put(self, node_hash: bytes, node_bytes: bytes) -> None:
        self.nodes[node_hash] = node_bytes

    def read_blob(self, sha256: bytes) -> bytes:
        node = self.nodes.get(sha256)
        if node is not None:
            self.node_reads += 1
            return node
        self.section_reads += 1
        index = int.from_bytes(sha256[:8], "big")
        start = self.starts[index] % MiB
        return self.tile[start : start + self.lengths[index]]


class _Replicas:
    """The part of the replica store the answerer reads."""

    def __init__(self, store: SyntheticStore) -> None:
        self._store = store

    def held(self, owner: bytes) -> HeldReplica:
        return HeldReplica(
            self._store.revision, None, self._store.revision.content_length
        )

    def read_blob(self, owner: bytes, sha256: bytes) -> bytes:
        return self._store.read_blob(sha256)


class _Timed:
    """A ``blocking`` runner that adds up the CPU of the work it runs."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        began = time.process_time()
        try:
            result = work()
        finally:
            self.seconds += time.process_time() - began
        d: Deferred[Any] = Deferred()
        d.callback(result)
        return d


class _ReplicaHandler:
    def __init__(self, answerer: SpotCheckAnswerer) -> None:
        self._answerer = answerer

    def spot_check(self, conn: Any, request: bbrpc_pb2.SpotCheckRequest) -> Any:
        return Deferred.fromCoroutine(
            self._answerer.answer(OWNER.onion_pubkey, request)
        )


def sha256_mib_seconds() -> float:
    data = random.Random(1).randbytes(MiB)
    began = time.process_time()
    for _ in range(50):
        hashlib.sha256(data).digest()
    return (time.process_time() - began) / 50


def measure(name: str, size: int, baseline: float) -> list[str]:
    began = time.monotonic()
    store = SyntheticStore(size, seed=3)
    built = time.monotonic() - began
    revision = store.revision
    timed = _Timed()
    answerer = SpotCheckAnswerer(_Replicas(store), lambda peer, cid: True, timed)  # type: ignore[arg-type]
    clock = task.Clock()
    to_replica, _, link = connected_pair(
        clock,
        OWNER,
        REPLICA,
        object(),
        _ReplicaHandler(answerer),
    )
    rng = random.Random(4)
    own_nodes = CachedNodes(store.read_blob, OWN_NODE_CACHE_BYTES)
    # Warm up as a node that has checked its contracts before.
    for _ in range(CHECKS):
        warm = digestcheck.new_digest_challenge(revision.content_id, rng.randbytes)
        digestcheck.digest_answer(
            warm,
            revision.content_length,
            TreeContent(revision, store.read_blob, nodes=own_nodes),
        )
    rows = [f"{name}: {revision.section_count:,} sections, tree built in {built:.1f} s"]
    for kind in ("digest", "sample"):
        owner_cpu = 0.0
        timed.seconds = 0.0
        wire = node_reads = section_reads = read_bytes = positions = 0
        for number in range(CHECKS):
            began = time.process_time()
            own = TreeContent(revision, store.read_blob, nodes=own_nodes)
            if kind == "digest":
                challenge = digestcheck.new_digest_challenge(
                    revision.content_id, rng.randbytes
                )
                request = bbrpc_pb2.SpotCheckRequest(
                    contract_id=bytes(32), digest=challenge.to_proto()
                )
            else:
                sample, expectation = samplecheck.new_sample_challenge(
                    content_id=revision.content_id,
                    index=own,
                    audit_key=AUDIT_KEY,
                    check_number=number,
                    random_bytes=rng.randbytes,
                )
                request = bbrpc_pb2.SpotCheckRequest(
                    contract_id=bytes(32), sample=sample.to_proto()
                )
            owner_cpu += time.process_time() - began
            before = link.wire_bytes
            store.node_reads = store.section_reads = 0
            answers: list[Any] = []
            to_replica.call("spot_check_request", request).addBoth(answers.append)
            response = answers[0]
            if not isinstance(response, bbrpc_pb2.SpotCheckResponse):
                raise SystemExit(f"the check failed: {response}")
            wire = link.wire_bytes - before
            node_reads, section_reads, read_bytes = answerer.last_reads
            began = time.process_time()
            if kind == "digest":
                result = digestcheck.verify_digest_answer(
                    challenge,
                    revision.content_length,
                    TreeContent(revision, store.read_blob, nodes=own_nodes),
                    bytes(response.digest),
                )
            else:
                result = samplecheck.verify_sample_answer(
                    expectation, bytes(response.samples)
                )
            owner_cpu += time.process_time() - began
            if not result.passed:
                raise SystemExit(f"an honest {kind} check failed: {result.summary()}")
            positions = result.positions
        owner = owner_cpu / CHECKS
        replica = timed.seconds / CHECKS
        goal = 2 * KiB if kind == "digest" else 512 * KiB
        rows.append(
            f"  {kind:<6} {positions:>4} positions  wire {wire:>5} B "
            f"({wire / goal:5.1%} of goal)  replica reads {node_reads:>4} nodes + "
            f"{section_reads:>3} sections ({read_bytes / KiB:7.1f} KiB)  "
            f"CPU owner {owner * 1e3:6.2f} ms ({owner / baseline:5.2f}x)  "
            f"replica {replica * 1e3:6.2f} ms ({replica / baseline:5.2f}x)"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 GiB only")
    args = parser.parse_args()
    baseline = sha256_mib_seconds()
    print(f"baseline: SHA-256 of 1 MiB = {baseline * 1e3:.2f} ms CPU")
    sizes = [("1 GiB", GiB)] if args.quick else [("1 GiB", GiB), ("20 GiB", 20 * GiB)]
    for name, size in sizes:
        for row in measure(name, size, baseline):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
