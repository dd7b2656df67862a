"""Recovery after a total loss over real onion services on the private Tor
network (127.0.0.1), with no address typed (docs/recovery.md).

Alice backs up to bob and carol under contracts; her node directory is
deleted and her node started again with the same password: bob and carol
dial her onion (the replicas keep contacting their owners), she learns her
peer table and contracts back from the first, fetches her newest revision
from both over their own circuits and reads her files back.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from barterbackup.progress import Progress
from tests.contract_swarm import SWARM_CONTENT
from tests.test_transport_tor_network import SHARED
from tests.util import PASSWORDS, replicate, short_tempdir, start_node, write_files


class RecoveryOverTorTests(TestCase):
    # Network start (~15 s, shared), three tors (~10 s), alice's tor again,
    # the replicas' first dial of her new onion (30 s steps), the transfer.
    timeout = 420

    async def test_total_loss_recovered_over_onions(self) -> None:
        network = await SHARED.get()
        tmp = short_tempdir(self)
        options = tuple((k, v) for k, v in network.client_torrc_options())

        def config(name: str) -> NodeConfig:
            return NodeConfig(node_dir=tmp / name, transport="tor", extra_torrc=options)

        async def started(name: str, password: str) -> Node:
            node = start_node(reactor, config(name), content=SWARM_CONTENT)
            self.addCleanup(stop, node)
            await node.unlock(password, create_if_missing=True)
            await node.session.network.ready()
            return node

        alice, bob, carol = [
            await started(name, password)
            for name, password in zip(("alice", "bob", "carol"), PASSWORDS, strict=True)
        ]
        for node in (alice, bob, carol):
            await node.set_storage_config(min_replicas=0)
        for replica in (bob, carol):
            await alice.connect_peer(address(replica))
            await replica.connect_peer(address(alice))
        files = {
            "big.bin": os.urandom(3 * 1024 * 1024),
            "docs/small.txt": b"tor\n" * 100,
        }
        await write_files(alice, files)
        for replica in (bob, carol):
            info = await alice.propose_contract(
                address(replica), 2**26, 2**26, lambda progress: None
            )
            self.assertEqual(info.state, "active")
        # The node state naming both contracts is in a revision both hold.
        await alice.session.state_keeper.check()
        await replicate_all(alice)
        revision = alice.status().revision
        onion = address(alice)

        # Alice's machine is lost.
        await alice.stopService()
        shutil.rmtree(tmp / "alice")
        alice = await started("alice", PASSWORDS[0])
        self.assertEqual(address(alice), onion)
        self.assertEqual(alice.status().revision, 0)
        self.assertIsNotNone(alice.status().recovery)
        events: list[Progress] = []
        result = await alice.recover([], 0, events.append)

        self.assertEqual(result.revision.number, revision)
        self.assertEqual(sorted(result.sources), sorted([address(bob), address(carol)]))
        for name, data in files.items():
            self.assertEqual(b"".join(alice.open_file(name)), data)
        self.assertEqual(
            {c.peer: c.state for c in alice.contracts()},
            {address(bob): "active", address(carol): "active"},
        )
        per_replica = {e.peer for e in events if e.peer and e.phase == "fetching"}
        self.assertEqual(per_replica, {address(bob), address(carol)})

        for node in (alice, bob, carol):
            await node.stopService()
        exits = [str(f.value) for f in self.flushLoggedErrors(RuntimeError)]
        self.assertEqual(exits, ["Tor exited with error-code 0"] * len(exits))


async def replicate_all(node: Node) -> None:
    """Wait until every contract's peer holds the current revision."""
    await replicate(node, [c.peer for c in node.contracts()])


async def stop(node: Node) -> Any:
    if node.running:
        await node.stopService()


def address(node: Node) -> str:
    return node.session.keys.onion_address
