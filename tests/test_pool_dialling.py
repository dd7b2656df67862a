"""Callers dialling a peer already being dialled all get its outcome."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout

from barterbackup.peers.pool import CONNECT_TIMEOUT
from tests.contract_swarm import ContractSwarmCase


class _Hanging:
    """An endpoint whose connection attempt never ends."""

    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred()


class ConcurrentDialTests(ContractSwarmCase):
    nodes = 2

    def test_every_caller_of_a_failed_dial_gets_the_failure(self) -> None:
        """A spot check dialling while the reconnect loop dials the same
        peer got None instead of the failure, and crashed on it."""
        alice, bob = self.swarm.nodes[:2]
        self.patch(
            alice.session.transport,
            "client_endpoint",
            lambda *args, **kw: _Hanging(),
        )
        pool = alice.session.pool
        first, second, third = (pool.dial(bob.pubkey) for _ in range(3))
        self.swarm.advance(CONNECT_TIMEOUT + 1)
        for dial in (first, second, third):
            self.failureResultOf(dial, DeferredTimeout)

    def test_every_caller_of_a_dial_gets_the_connection(self) -> None:
        alice, bob = self.swarm.nodes[:2]
        self.friends(alice, bob)
        self.swarm.network.cut(bob.address)
        self.assertFalse(alice.session.pool.is_connected(bob.pubkey))
        pool = alice.session.pool
        dials = [pool.dial(bob.pubkey) for _ in range(2)]
        conns = [self.swarm.wait(dial, 5) for dial in dials]
        self.assertIs(conns[0], conns[1])
        self.assertIsNotNone(conns[0])
