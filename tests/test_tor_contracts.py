"""Contracts over real onion services on the private Tor network.

Three in-process nodes (each with its own tor on the shared test network)
connect by onion address only, form contracts, pass a spot check over the
onions; then one node stops and the contracts of the others with it react
(suspect: unreachable, not broken). The nodes run the content engine when
it imports and the fake content engine otherwise (``tests.contract_swarm``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from barterbackup.contracts.settings import BookSettings
from barterbackup.contracts.terms import CheckPolicy
from barterbackup.logs import get_logger
from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from barterbackup.progress import Progress
from tests.contract_swarm import SWARM_CONTENT
from tests.test_transport_tor_network import SHARED
from tests.util import PASSWORDS, short_tempdir, start_node, write_files

log = get_logger("tests.tor_contracts")
MIB = 1024 * 1024
# Checks every minute (the shortest the terms allow), a lost connection
# probed after 5 s.
SETTINGS = BookSettings(
    check_policy=CheckPolicy(interval_seconds=60, answer_deadline_seconds=45),
    probe_delay_seconds=5.0,
    replan_delay_seconds=2.0,
)


class ContractsOverTorTests(TestCase):
    # Network start (~15 s, shared), three tors (~10 s), then contracts,
    # a check, and the wait for a dial to a stopped onion to fail.
    timeout = 400

    async def test_contracts_by_address_checks_and_an_outage(self) -> None:
        network = await SHARED.get()
        tmp = short_tempdir(self)
        options = tuple((k, v) for k, v in network.client_torrc_options())
        nodes = []
        for i, password in enumerate(PASSWORDS):
            config = NodeConfig(
                node_dir=tmp / f"c{i}",
                transport="tor",
                extra_torrc=options,
                contract_settings=SETTINGS,
            )
            node = start_node(reactor, config, content=SWARM_CONTENT)
            self.addCleanup(node.stopService)
            await node.unlock(password, create_if_missing=True)
            await node.set_storage_config(min_replicas=0)
            nodes.append(node)
        for node in nodes:
            await node.session.network.ready()
        a, b, c = nodes
        # By address only: Tor's SOCKS port, no endpoint hint; each user
        # connects the others (the default acceptance policy).
        for one in nodes:
            for other in nodes:
                if one is not other:
                    await one.connect_peer(address(other))

        await write_files(a, {"photo.bin": os.urandom(MIB), "notes.txt": b"n" * 5000})
        await write_files(b, {"b.bin": os.urandom(200_000)})
        events: list[Progress] = []
        for peer in (b, c):
            info = await a.propose_contract(
                address(peer), 64 * MIB, 64 * MIB, events.append
            )
            self.assertEqual(info.state, "active", info)
            self.assertEqual(info.peer_revision, 1)
        self.assertEqual(
            {e.peer for e in events if e.phase == "active"}, {address(b), address(c)}
        )
        [mirror] = b.contracts()
        self.assertEqual(mirror.state, "active")

        began = time.monotonic()
        report = await a.check_contract(b"", address(b), "", 0, list().append)
        self.assertTrue(report.passed, report.verdict)
        self.assertEqual(report.positions, 460)
        self.assertIn("≥ 99 % confidence", report.verdict)
        self.log_time("digest check over onions", began)
        report = await a.check_contract(b"", address(c), "sample", 0, list().append)
        self.assertTrue(report.passed, report.verdict)

        # c stops: a sees its contract with it go suspect
        # (unreachable), and nothing breaks.
        c_address = address(c)
        await c.stopService()
        began = time.monotonic()
        waited = await self.until(lambda: state(a, c_address) == "suspect", 240)
        self.assertTrue(waited, f"a's contract with c is {state(a, c_address)}")
        self.log_time("contract suspect after the peer stopped", began)
        detail = [x.detail for x in a.contracts() if x.peer == c_address][-1]
        self.assertIn("unreachable", detail)
        # b's contract stays in force; it may be syncing the state-only
        # revision the new contracts called for (5 s after they formed).
        self.assertIn(state(a, address(b)), ("active", "syncing"))
        active = await self.until(lambda: state(a, address(b)) == "active", 120)
        self.assertTrue(active, f"a's contract with b is {state(a, address(b))}")

        for node in (a, b):
            await node.stopService()
        exits = [str(f.value) for f in self.flushLoggedErrors(RuntimeError)]
        self.assertEqual(exits, ["Tor exited with error-code 0"] * len(exits))

    async def until(self, condition: Any, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return True
            await deferLater(reactor, 0.5, lambda: None)
        return bool(condition())

    def log_time(self, what: str, began: float) -> None:
        # Timings go to the trial log (_trial_temp/test.log).
        log.info("{what}: {seconds:.2f} s", what=what, seconds=time.monotonic() - began)


def address(node: Node) -> str:
    return node.session.keys.onion_address


def state(node: Node, peer: str) -> str:
    found = [c.state for c in node.contracts() if c.peer == peer]
    return found[-1] if found else "none"
