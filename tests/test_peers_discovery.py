"""``peers discover``: known peers asked for the peers they share, on the
no-network swarm, and the command's output."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from barterbackup import errors
from barterbackup._proto import bbrpc_pb2, clirpc_pb2
from barterbackup.cli import peers as peers_cli
from barterbackup.cli.common import CliError
from barterbackup.cli.main import build_parser
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.peers.discovery import ASK_SECONDS
from barterbackup.peers.exchange import MAX_EXCHANGED_PEERS
from tests.contract_swarm import ContractSwarmCase


class DiscoveryTests(ContractSwarmCase):
    nodes = 4

    def setUp(self) -> None:
        super().setUp()
        self.a, self.b, self.c, self.d = self.swarm.nodes
        # B's user lets B tell C to others, not D.
        self.swarm.connect(self.b, self.c, share=True)
        self.swarm.connect(self.b, self.d)
        self.swarm.connect(self.a, self.b)

    def discover(self, *names: str) -> Any:
        return self.swarm.wait(self.a.node.discover_peers(list(names)), 5)

    def test_a_shared_peer_is_found_and_not_recorded(self) -> None:
        found = self.discover()
        self.assertEqual(
            [(p.onion_address, p.shared_by, p.known) for p in found.peers],
            [(self.c.address, (self.b.address,), False)],
        )
        self.assertEqual((found.errors, found.dropped), ((), 0))
        recorded = {p.onion_address for p in self.a.node.peers()}
        self.assertEqual(recorded, {self.b.address})
        # Connecting it makes it known; the next discovery says so.
        self.swarm.connect(self.a, self.c)
        [again] = self.discover(self.b.address).peers
        self.assertTrue(again.known)

    def test_only_known_peers_are_asked(self) -> None:
        with self.assertRaises(errors.NotFound):
            self.a.node.discover_peers([self.d.address])
        with self.assertRaises(errors.InvalidArgument):
            self.a.node.discover_peers(["not-an-onion"])
        with self.assertRaises(errors.InvalidArgument):
            self.a.node.discover_peers([self.a.address])
        # D connected to A (A did not): D is no known peer of A, not asked.
        self.swarm.connect(self.d, self.a)
        self.assertEqual(self.discover().errors, ())

    def test_a_lying_or_silent_peer_is_reported_not_taken(self) -> None:
        self.swarm.connect(self.a, self.c)
        too_many = [self.d.address] * (MAX_EXCHANGED_PEERS + 1)

        def flood(envelope: bbrpc_pb2.Envelope) -> bbrpc_pb2.Envelope:
            if envelope.HasField("peer_exchange_response"):
                envelope.peer_exchange_response.onion_addresses[:] = too_many
            return envelope

        def silence(envelope: bbrpc_pb2.Envelope) -> bbrpc_pb2.Envelope | None:
            return None if envelope.HasField("peer_exchange_response") else envelope

        self.tamper(self.b, self.a, flood)
        self.tamper(self.c, self.a, silence)
        asking = self.a.node.discover_peers([])
        found = self.swarm.wait(asking, ASK_SECONDS + 2)
        self.assertEqual(found.peers, ())
        self.assertEqual(
            sorted(found.errors),
            sorted(
                [
                    f"{self.b.address}: a peer exchange lists at most "
                    f"{MAX_EXCHANGED_PEERS} addresses, not {MAX_EXCHANGED_PEERS + 1}",
                    f"{self.c.address}: no answer within {ASK_SECONDS:.0f} s",
                ]
            ),
        )


ONION = onion_address_from_pubkey(bytes(32))


class Stub:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[Any] = []

    def DiscoverPeers(self, request: Any) -> Any:
        self.requests.append(request)
        return self.answer


class DiscoverCommandTests(SynchronousTestCase):
    def run_cli(self, stub: Stub, *argv: str) -> tuple[int, str, str]:
        self.patch(peers_cli, "stub", lambda args: stub)
        args = build_parser().parse_args(["peers", "discover", *argv])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = int(args.run(args))
        return code, out.getvalue(), err.getvalue()

    def test_lists_candidates_and_says_how_to_add_one(self) -> None:
        answer = clirpc_pb2.DiscoverPeersResponse(
            peers=[
                clirpc_pb2.DiscoveredPeer(onion_address=ONION, shared_by=["b.onion"])
            ],
            errors=["c.onion: no answer within 60 s"],
        )
        stub = Stub(answer)
        code, out, err = self.run_cli(stub, "b.onion", "c.onion")
        self.assertEqual(code, 0)
        self.assertEqual(list(stub.requests[0].onion_addresses), ["b.onion", "c.onion"])
        self.assertIn(f"{ONION}: shared by b.onion", out)
        self.assertIn("barterbackup peers connect ONION", out)
        self.assertIn("could not ask c.onion: no answer within 60 s", err)
        code, out, _ = self.run_cli(stub, "--json")
        self.assertEqual(json.loads(out)["peers"][0]["onion_address"], ONION)

    def test_fails_when_no_peer_could_be_asked(self) -> None:
        answer = clirpc_pb2.DiscoverPeersResponse(errors=["b.onion: refused"])
        with self.assertRaises(CliError):
            self.run_cli(Stub(answer))
        code, out, _ = self.run_cli(Stub(clirpc_pb2.DiscoverPeersResponse()))
        self.assertEqual(code, 0)
        self.assertIn("no peer shared any", out)
