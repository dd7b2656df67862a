"""Hostile peers against a real daemon (issue 13's hostile-peer suite, on
real sockets): half-open connections, many fresh identities that ask and
never read, floods of calls, oversized frames and pings — all at once.

Throughout, the daemon answers the CLI's ``status`` within a second, an
honest peer that reads what it asks is answered, the daemon's resident
memory grows by less than the documented bounds allow, and nothing of the
attackers is kept on disk (no contract, no storage; no peer record).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from barterbackup._proto import bbrpc_pb2, clirpc_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.bbrpc.factory import connect_peer
from barterbackup.bbrpc.framing import encode_frame
from barterbackup.contracts import terms
from barterbackup.keys.onion import pubkey_from_onion_address
from barterbackup.testing.fakes import BlobDict, make_revision
from barterbackup.testing.link import keys_for_test
from tests.util import PASSWORDS, short_tempdir, tcp_daemon

HALF_OPEN = 200
IDENTITIES = 24
# Of which these first push a revision and propose a contract.
STORING_IDENTITIES = 6
REQUESTS_EACH = 300
# What the attack may add to the daemon's resident memory: the global
# outbox (64 MiB, docs/wire-protocol.md §4) plus per-connection buffers
# (a 1 MiB read each for the authenticated ones), with room for the
# allocator's slack. Without the bounds, the same attack queued hundreds of
# MiB (issue 13, finding 1).
RSS_GROWTH_BOUND_MIB = 150
STATUS_WITHIN_SECONDS = 1.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


class HostileDaemonTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.tmp = short_tempdir(self)
        self.daemon = tcp_daemon(self, self.tmp / "node")
        password = self.tmp / "password"
        password.write_text(PASSWORDS[0] + "\n")
        self.daemon.cli(
            "unlock", "--create", "--password-file", str(password), check=True
        )
        status = self.daemon.stub().GetStatus(clirpc_pb2.GetStatusRequest())
        self.address = status.onion_address
        host, port = status.peer_endpoint.rsplit(":", 1)
        self.host, self.port = host.split("tcp:")[-1], int(port)
        self.sockets: list[socket.socket] = []
        self.addCleanup(self._close_sockets)

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    def status_times(self, stop: threading.Event, times: list[float]) -> None:
        """Ask the daemon's status until ``stop``; how long each took."""
        stub = self.daemon.stub()
        while not stop.is_set():
            began = time.monotonic()
            stub.GetStatus(clirpc_pb2.GetStatusRequest(), timeout=10)
            times.append(time.monotonic() - began)
            stop.wait(0.1)

    def half_open(self) -> None:
        for _ in range(HALF_OPEN):
            sock = socket.create_connection((self.host, self.port), timeout=5)
            self.sockets.append(sock)

    def oversized(self) -> None:
        """Frames over the handshake limit, and garbage: each dropped."""
        for payload in (b"\xff" * 16, struct.pack(">I", 2**31) + b"x"):
            sock = socket.create_connection((self.host, self.port), timeout=5)
            sock.sendall(payload)
            self.sockets.append(sock)

    async def non_reader(self, index: int) -> Any:
        """A fresh identity: authenticates, then asks and never reads."""
        keys = keys_for_test(100 + index)
        endpoint = TCP4ClientEndpoint(reactor, self.host, self.port)
        conn = await connect_peer(reactor, endpoint, keys, self.address, object())
        if index < STORING_IDENTITIES:
            await self.try_to_store(conn, keys)
        assert conn.transport is not None
        conn.transport.pauseProducing()  # type: ignore[attr-defined]
        for number in range(REQUESTS_EACH):
            request = bbrpc_pb2.Envelope(
                call_id=2 * number + 1001,
                get_content_revision_request=bbrpc_pb2.GetContentRevisionRequest(),
            )
            conn.transport.write(encode_frame(request))
        big_ping = bbrpc_pb2.Envelope(
            call_id=1, end=True, ping=bbrpc_pb2.Ping(payload=b"p" * 60_000)
        )
        conn.transport.write(encode_frame(big_ping))
        return conn

    async def try_to_store(self, conn: Any, keys: Any) -> None:
        """Push a validly signed revision and propose a contract: a stranger
        gets neither storage nor a contract (the default policy 'known')."""
        revision = make_revision(keys.signing_key, [os.urandom(2000)], 1, BlobDict())
        items: list[Any] = []
        push = conn.call_stream(
            "set_content_revision_request",
            bbrpc_pb2.SetContentRevisionRequest(signed_root=revision.signed),
            items.append,
        )
        try:
            await push
        except PeerCallError as error:
            self.assertEqual(error.code, bbrpc_pb2.ERROR_CODE_PERMISSION_DENIED)
        else:
            self.fail("a stranger's revision was taken")
        proposal = terms.propose(
            terms.new_terms(
                proposer_pubkey=keys.onion_pubkey,
                acceptor_pubkey=pubkey_from_onion_address(self.address),
                acceptor_keeps_bytes=2**20,
                proposer_keeps_bytes=2**20,
                now=time.time(),
                random_bytes=os.urandom,
            ),
            keys.signing_key,
        )
        answer = await conn.call(
            "propose_contract_request",
            bbrpc_pb2.ProposeContractRequest(signed_terms=proposal.encode()),
        )
        self.assertEqual(answer.refused.code, bbrpc_pb2.CONTRACT_REFUSAL_CODE_NOT_KNOWN)

    async def honest_connection(self) -> Any:
        keys = keys_for_test(99)
        endpoint = TCP4ClientEndpoint(reactor, self.host, self.port)
        return await connect_peer(reactor, endpoint, keys, self.address, object())

    async def honest(self, conn: Any) -> float:
        """An honest peer, connected before the attack: pings and asks,
        and reads the answers."""
        began = time.monotonic()
        await conn.ping()
        answer = await conn.call(
            "get_content_revision_request", bbrpc_pb2.GetContentRevisionRequest()
        )
        assert answer is not None
        return time.monotonic() - began

    async def test_attacks_at_once_leave_the_daemon_responsive_and_bounded(
        self,
    ) -> None:
        pid = self.daemon.pid
        before = rss_mib(pid)
        stop, times = threading.Event(), []
        watching = deferToThread(self.status_times, stop, times)
        honest = await defer.Deferred.fromCoroutine(self.honest_connection())
        attackers: list[Any] = []
        try:
            # Fresh identities, 8 handshakes at a time (the daemon admits
            # 16 at once from one address, docs/wire-protocol.md §4).
            for first in range(0, IDENTITIES, 8):
                attackers += await defer.gatherResults(
                    [
                        defer.Deferred.fromCoroutine(self.non_reader(i))
                        for i in range(first, min(first + 8, IDENTITIES))
                    ]
                )
            await deferToThread(self.half_open)
            await deferToThread(self.oversized)
            # Let the daemon answer into the attackers' closed windows.
            await deferToThread(time.sleep, 3)
            rtt = await defer.Deferred.fromCoroutine(self.honest(honest))
            during = rss_mib(pid)
        finally:
            stop.set()
            await watching
            for conn in attackers:
                conn.transport.abortConnection()
            closed = honest.when_closed()
            honest.close()
            await closed
        self.assertLess(rtt, STATUS_WITHIN_SECONDS)
        self.assertTrue(times)
        self.assertLess(max(times), STATUS_WITHIN_SECONDS, times)
        self.assertLess(during - before, RSS_GROWTH_BOUND_MIB, (before, during))
        # Nothing of the attackers is kept: no replica, no peer record.
        for kept in ("replicas", "contracts"):
            directory = self.daemon.node_dir / kept
            self.assertEqual(disk_bytes(directory) if directory.exists() else 0, 0)
        peers = self.daemon.stub().ConnectedPeers(clirpc_pb2.ConnectedPeersRequest())
        # Known peers only: none of the 25 identities that connected.
        self.assertEqual(list(peers.peers), [])
        print(
            f"\nhostile daemon: RSS {before:.0f} -> {during:.0f} MiB, "
            f"status worst {max(times) * 1000:.0f} ms over {len(times)} calls, "
            f"honest ping {rtt * 1000:.0f} ms"
        )
