"""What the contract tests share: a swarm with short contract timings.

The swarm runs the content engine when it imports and the fake content
engine (``testing.fakeengine``: real revisions, trees and audit samples)
otherwise, so the contract tests run while the engine is being rewritten.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.contracts.collaborators import ContractTimings
from barterbackup.contracts.settings import BookSettings
from barterbackup.contracts.terms import CheckPolicy
from barterbackup.node.results import ContractInfo
from barterbackup.progress import Progress
from barterbackup.testing.link import Direction, PeerLink
from barterbackup.testing.swarm import Swarm, SwarmNode, engine_available

MIB = 1024 * 1024
HOUR = 3600.0
SWARM_CONTENT = "real" if engine_available() else "fake"

# Checks every 10 minutes, a day's patience shrunk to hours.
SETTINGS = BookSettings(
    timings=ContractTimings(
        outage_limit_seconds=6 * HOUR,
        grace_after_failed_checks_seconds=1 * HOUR,
        grace_after_outage_seconds=2 * HOUR,
        ending_keep_seconds=1 * HOUR,
    ),
    check_policy=CheckPolicy(
        interval_seconds=600, samples=460, answer_deadline_seconds=30
    ),
    probe_delay_seconds=30.0,
    maintain_every_seconds=300.0,
    replan_delay_seconds=5.0,
    retry_peer_after_seconds=600.0,
)


class ContractSwarmCase(SynchronousTestCase):
    """A swarm of ``nodes`` nodes forming no contract by themselves."""

    nodes = 2
    min_replicas = 0

    def setUp(self) -> None:
        self.swarm = Swarm(
            Path(self.mktemp()), self.nodes, content=SWARM_CONTENT, settings=SETTINGS
        )
        self.addCleanup(self.swarm.stop)
        for member in self.swarm.nodes:
            self.swarm.wait(
                member.node.set_storage_config(min_replicas=self.min_replicas)
            )

    def friends(self, *members: SwarmNode) -> None:
        """Each connects to each (the users exchanged addresses)."""
        for a in members:
            for b in members:
                if a is not b:
                    self.swarm.connect(a, b)

    def write(self, member: SwarmNode, size: int = 200_000, name: str = "f.bin") -> Any:
        return member.write_files({name: os.urandom(size)})

    def propose(
        self,
        a: SwarmNode,
        b: SwarmNode,
        ours: int = 64 * MIB,
        theirs: int = 64 * MIB,
        events: list[Progress] | None = None,
    ) -> ContractInfo:
        sink = events if events is not None else []
        info: ContractInfo = self.swarm.wait(
            a.node.propose_contract(b.address, ours, theirs, sink.append), 60
        )
        return info

    def contract(self, member: SwarmNode, peer: SwarmNode) -> ContractInfo:
        """``member``'s newest contract with ``peer``."""
        found = [c for c in member.node.contracts() if c.peer == peer.address]
        if not found:
            raise AssertionError(f"node {member.index} has no contract with the peer")
        return found[-1]

    def state(self, member: SwarmNode, peer: SwarmNode) -> str:
        return self.contract(member, peer).state

    def check(
        self,
        a: SwarmNode,
        b: SwarmNode,
        kind: str = "",
        events: list[Progress] | None = None,
    ) -> Any:
        sink = events if events is not None else []
        return self.swarm.wait(
            a.node.check_contract(b"", b.address, kind, 0, sink.append), 120
        )

    def tamper(
        self,
        sender: SwarmNode,
        receiver: SwarmNode,
        hook: Callable[[bbrpc_pb2.Envelope], bbrpc_pb2.Envelope | None] | None,
    ) -> None:
        """Pass the frames ``sender`` sends ``receiver`` through ``hook``,
        on their link now and on links made later (a replica dials the
        owner whose data it holds when their connection is replaced)."""

        def on_link(client: str, server: str, link: PeerLink) -> None:
            if (client, server) == (sender.address, receiver.address):
                link.tamper(Direction.to_server, hook)
            elif (client, server) == (receiver.address, sender.address):
                link.tamper(Direction.to_client, hook)

        self.swarm.network.link_hooks.append(on_link)
        for client, server, link in self.swarm.network.links:
            if link.closed:
                continue
            if (client, server) == (sender.address, receiver.address):
                link.tamper(Direction.to_server, hook)
                return
            if (client, server) == (receiver.address, sender.address):
                link.tamper(Direction.to_client, hook)
                return
        raise AssertionError("the two nodes are not connected")
