"""Five nodes keep each other's content by themselves (no-network swarm).

With ``min_replicas = 2`` and nothing but the users' connections, the nodes
form contracts on their own; when one replica loses a node's data, the
checks catch it, the contract breaks, a replacement is formed and synced
before the broken one is released, the content is again at 2 replicas, and
the faulty peer's own data is dropped once the grace period is over.
"""

from __future__ import annotations

from barterbackup.testing.swarm import SwarmNode
from tests.contract_swarm import HOUR, ContractSwarmCase


class SelfKeepingSwarmTests(ContractSwarmCase):
    nodes = 5
    min_replicas = 2

    def healthy(self, member: SwarmNode) -> list[str]:
        return [c.peer for c in member.node.contracts() if c.state == "active"]

    def test_contracts_form_break_and_are_replaced(self) -> None:
        swarm = self.swarm
        nodes = swarm.nodes
        self.friends(*nodes)
        for member in nodes:
            self.write(member, 150_000, name=f"files-of-{member.index}.bin")
        swarm.advance(30 * 60, step=5)
        for member in nodes:
            status = member.node.status()
            self.assertGreaterEqual(
                status.replicas_current, 2, [c.state for c in member.node.contracts()]
            )
            self.assertEqual(status.errors, ())

        # One replica of A's content loses it. (It wants more replicas than
        # it has, so it never tells A it may drop its own copy there: A
        # drops that only when the grace period is over.)
        a = nodes[0]
        faulty_address = self.healthy(a)[0]
        [faulty] = [m for m in nodes if m.address == faulty_address]
        swarm.wait(faulty.node.set_storage_config(min_replicas=5))
        faulty.lose_replica_of(a)

        # Checks every ten minutes; three failures break a new peer's
        # contract; the replacement is proposed and synced at once.
        for _ in range(24):
            swarm.advance(10 * 60, step=5)
            if self.state(a, faulty) != "active" and self.state(a, faulty) != "suspect":
                break
        broken = self.contract(a, faulty)
        self.assertEqual(broken.state, "broken", broken)
        self.assertIn("failed checks", broken.detail)
        swarm.advance(60, step=5)
        healthy = self.healthy(a)
        self.assertEqual(len(healthy), 2, healthy)
        self.assertNotIn(faulty.address, healthy)
        self.assertEqual(a.node.status().replicas_current, 2)
        # Make before break: once the replacement holds A's content, the
        # faulty peer is released from keeping it, and its side is over.
        self.assertEqual(self.state(faulty, a), "ended")
        # A keeps the faulty peer's own data for the grace period (1 hour
        # after failed checks), then drops it.
        self.assertIsNotNone(a.session.replicas.held(faulty.pubkey))
        swarm.advance(1 * HOUR, step=10)
        self.assertEqual(self.state(a, faulty), "ended")
        self.assertIsNone(a.session.replicas.held(faulty.pubkey))
        # A peer that failed A's checks gets no new contract from A.
        with self.assertRaises(Exception) as refused:
            self.propose(faulty, a)
        self.assertIn("failed this node's spot checks", str(refused.exception))
