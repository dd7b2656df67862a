"""One node with 50 contracts, checked every minute, on the no-network swarm.

A hub node and 50 peers (full nodes on one ``task.Clock``, the content
engine's stand-in from ``testing.fakeengine``: real revisions, trees and
audit samples) connect both ways; the hub proposes a contract to each, with
the shortest check interval the terms allow (60 s). Then simulated time
runs for ``--minutes`` (default 30) at full speed, and the run reports:

* CPU of the whole process (all 51 nodes: the hub's checks of its peers,
  its answers to their checks of it, and everything the 50 peers do) per
  simulated second, as a share of one core: an upper bound of the hub's;
* the checks made both ways and the CPU per check (total CPU / checks);
* the resident memory at every tenth of the run, to show it stays flat.

Usage: python -m bench.contract_load [--peers N] [--minutes M] [--hub-mib S]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from barterbackup.contracts.settings import BookSettings
from barterbackup.contracts.terms import CheckPolicy
from barterbackup.testing.swarm import Swarm

MIB = 1024 * 1024
GOAL = 0.05


def rss_mib() -> float:
    """The process's resident memory now, in MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--hub-mib", type=float, default=8.0)
    parser.add_argument("--peer-kib", type=int, default=256)
    args = parser.parse_args()
    settings = BookSettings(
        check_policy=CheckPolicy(interval_seconds=60, answer_deadline_seconds=30),
        # The hub forms its contracts by hand here; nothing else to plan.
        maintain_every_seconds=600.0,
    )
    began = time.monotonic()
    swarm = Swarm(
        Path(tempfile.mkdtemp(prefix="bb-load-")),
        args.peers + 1,
        content="fake",
        settings=settings,
    )
    hub, *peers = swarm.nodes
    for member in swarm.nodes:
        swarm.wait(
            member.node.set_storage_config(total_bytes=64 * 1024 * MIB, min_replicas=0)
        )
    hub.write_files({"hub.bin": os.urandom(int(args.hub_mib * MIB))})
    for peer in peers:
        swarm.connect(hub, peer)
        swarm.connect(peer, hub)
        peer.write_files({"peer.bin": os.urandom(args.peer_kib * 1024)})
        swarm.wait(
            hub.node.propose_contract(peer.address, 64 * MIB, 64 * MIB, list().append),
            30,
        )
    active = sum(c.state == "active" for c in hub.node.contracts())
    print(
        f"{args.peers} contracts ({active} active), hub content "
        f"{args.hub_mib:g} MiB, peers {args.peer_kib} KiB each; set up in "
        f"{time.monotonic() - began:.1f} s"
    )

    def checks_made() -> int:
        by_hub = sum(p.checks_passed + p.checks_failed for p in hub.node.peers())
        of_hub = 0
        for peer in peers:
            of_hub += sum(p.checks_passed + p.checks_failed for p in peer.node.peers())
        return by_hub + of_hub

    swarm.advance(60)  # Settle: the first checks of every contract.
    checks_before = checks_made()
    cpu_before = time.process_time()
    wall_before = time.monotonic()
    seconds = args.minutes * 60
    memory = []
    for _ in range(10):
        swarm.advance(seconds / 10, step=1.0)
        memory.append(rss_mib())
    cpu = time.process_time() - cpu_before
    wall = time.monotonic() - wall_before
    checks = checks_made() - checks_before
    failed = sum(p.checks_failed for p in hub.node.peers())
    share = cpu / seconds
    print(
        f"simulated {args.minutes} min in {wall:.1f} s; {checks} checks "
        f"({checks / args.minutes:.0f} a minute, both ways; {failed} failed)"
    )
    print(
        f"CPU {cpu:.2f} s for {seconds} s: {share:.2%} of one core for all "
        f"{args.peers + 1} nodes (goal for the hub: < {GOAL:.0%}); "
        f"{cpu / max(checks, 1) * 1e3:.2f} ms per check, both sides and the wire"
    )
    print(
        "RSS per tenth of the run (MiB): "
        + " ".join(f"{m:.0f}" for m in memory)
        + f"; peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
    )
    swarm.stop()
    if share >= GOAL or failed:
        print("FAILED: over the goal" if share >= GOAL else "FAILED: a check failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
