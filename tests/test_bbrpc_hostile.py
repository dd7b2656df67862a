"""A peer that follows the wire protocol but attacks: what it can make us
hold is bounded (docs/wire-protocol.md, "Limits")."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.channel import PeerLimits
from barterbackup.bbrpc.connection import PeerConnection
from barterbackup.bbrpc.framing import encode_frame
from barterbackup.bbrpc.handshake import Role
from barterbackup.bbrpc.outbox import OutboxLedger
from barterbackup.testing.link import Direction, PeerLink, connected_pair, keys_for_test

ALICE = keys_for_test(1)
BOB = keys_for_test(2)
KIB = 1024
MIB = 1024 * KIB


class BigAnswers:
    """Answers every PeerExchange with ~100 KiB (what a greedy asker wants)."""

    def __init__(self) -> None:
        self.asked = 0

    def peer_exchange(self, conn: Any, request: Any) -> bbrpc_pb2.PeerExchangeResponse:
        self.asked += 1
        return bbrpc_pb2.PeerExchangeResponse(onion_addresses=["x" * 1000] * 100)


class AmplificationTests(SynchronousTestCase):
    def test_a_peer_that_does_not_read_cannot_queue_answers_without_end(self) -> None:
        handler = BigAnswers()
        _client, server, link = connected_pair(
            Clock(), ALICE, BOB, object(), handler, auto=False
        )
        # The attacker writes 400 requests (~40 MB of answers) and never
        # reads what comes back.
        for number in range(400):
            request = bbrpc_pb2.Envelope(
                call_id=2 * number + 1,  # odd: calls the client opened
                peer_exchange_request=bbrpc_pb2.PeerExchangeRequest(),
            )
            link.client_transport.write(encode_frame(request))
            link._move(
                Direction.to_server,
                link.client_transport,
                link.server_transport,
                server,
            )
        limits = PeerLimits()
        # It was answered until our queue passed its mark, then not read.
        self.assertTrue(link.server_transport.reading_paused)
        self.assertLess(handler.asked, 40)
        queued = len(link.server_transport.value()) + server._outbox_bytes
        self.assertLess(queued, limits.outbox_pause_bytes + 2 * 65536 + 200 * KIB)

    def test_a_large_ping_is_refused_not_echoed(self) -> None:
        client, server, link = connected_pair(Clock(), ALICE, BOB, object(), object())
        closed = server.when_closed()
        client.send_envelope(
            bbrpc_pb2.Envelope(
                call_id=1, end=True, ping=bbrpc_pb2.Ping(payload=b"p" * 65)
            )
        )
        self.successResultOf(closed)
        self.assertTrue(link.closed)
        self.assertLess(link.bytes[Direction.to_client], 1024)

    def test_a_peer_that_never_reads_is_dropped_at_the_outbox_cap(self) -> None:
        handler = BigAnswers()
        limits = PeerLimits(outbox_pause_bytes=10**9, max_outbox_bytes=MIB)
        _, server, link = connected_pair(
            Clock(), ALICE, BOB, object(), handler, limits=limits, auto=False
        )
        closed = server.when_closed()
        sent = 0
        while sent < 30 and not link.server_transport.disconnecting:
            server.send_parts((b"\0" * 4, b"x" * (100 * KIB)))  # never read
            sent += 1
        # The transport's buffer took 100 KiB before pushing back; past that
        # the outbox grew to its cap and the peer was dropped.
        self.assertEqual(sent, 12)
        link.pump()
        self.successResultOf(closed)


class GlobalOutboxTests(SynchronousTestCase):
    """Many non-readers, each under its own cap, cannot add up without end:
    past the process's limit the largest holder is dropped."""

    def test_the_largest_non_reader_is_dropped_at_the_global_limit(self) -> None:
        ledger = OutboxLedger(limit=2 * MIB)
        limits = PeerLimits(outbox_pause_bytes=10**9, max_outbox_bytes=10**9)
        pairs = [
            connected_pair(
                Clock(),
                ALICE,
                BOB,
                object(),
                object(),
                limits=limits,
                auto=False,
                server_ledger=ledger,
            )
            for _ in range(4)
        ]
        honest_client, _, honest_link = connected_pair(
            Clock(), ALICE, BOB, object(), object(), server_ledger=ledger
        )
        piece = (b"\0" * 4, b"x" * (100 * KIB))
        # Three non-readers queue ~300 KiB each, a fourth keeps going.
        for _, server, _ in pairs[:3]:
            for _ in range(4):
                server.send_parts(piece)
        greedy = pairs[3][1]
        closed = greedy.when_closed()
        for _ in range(30):
            if pairs[3][2].server_transport.disconnecting:
                break
            greedy.send_parts(piece)
        self.assertTrue(pairs[3][2].server_transport.disconnecting)
        for _, _, link in pairs[:3]:
            self.assertFalse(link.server_transport.disconnecting)
        self.assertLessEqual(ledger.total, ledger.limit)
        pairs[3][2].pump()
        self.successResultOf(closed)
        self.assertEqual(ledger.held_by(greedy), 0)
        # An honest peer that reads keeps being answered meanwhile.
        self.successResultOf(honest_client.ping())
        self.assertFalse(honest_link.closed)

    def test_a_closed_connection_holds_nothing(self) -> None:
        ledger = OutboxLedger(limit=10 * MIB)
        limits = PeerLimits(outbox_pause_bytes=10**9, max_outbox_bytes=10**9)
        _, server, link = connected_pair(
            Clock(),
            ALICE,
            BOB,
            object(),
            object(),
            limits=limits,
            auto=False,
            server_ledger=ledger,
        )
        for _ in range(5):
            server.send_parts((b"\0" * 4, b"x" * (100 * KIB)))
        self.assertGreater(ledger.total, 0)
        link.disconnect()
        link.pump()
        self.assertEqual(ledger.total, 0)


class EndlessStreams:
    """Serves every Download with 600 KiB items until the stream fails."""

    def __init__(self) -> None:
        self.items = 0

    def download(self, conn: Any, request: Any, send: Any) -> Deferred[None]:
        async def stream() -> None:
            while True:
                await send(bbrpc_pb2.DownloadResponse(data=b"d" * (600 * KIB)))
                self.items += 1

        return Deferred.fromCoroutine(stream())


class WaitingStreamItemsTests(SynchronousTestCase):
    """Stream items waiting for a peer that does not read count in the
    process's ledger: many streams of a non-reader cannot add up past it."""

    def test_a_non_reader_with_many_streams_is_dropped_at_the_global_limit(
        self,
    ) -> None:
        ledger = OutboxLedger(limit=2 * MIB)
        handler = EndlessStreams()
        _, server, link = connected_pair(
            Clock(), ALICE, BOB, object(), handler, auto=False, server_ledger=ledger
        )
        closed = server.when_closed()
        for number in range(8):
            request = bbrpc_pb2.Envelope(
                call_id=2 * number + 1,
                download_request=bbrpc_pb2.DownloadRequest(content_id=b"c"),
            )
            link.client_transport.write(encode_frame(request))
            link._move(
                Direction.to_server,
                link.client_transport,
                link.server_transport,
                server,
            )
            if link.server_transport.disconnecting:
                break
        # One item went into the transport's buffer; the next ones wait,
        # each counted, until the ledger's limit drops the connection.
        self.assertTrue(link.server_transport.disconnecting)
        self.assertLessEqual(number, 5)
        link.disconnect()  # the abort: nothing more is delivered
        self.successResultOf(closed)
        self.assertEqual(ledger.total, 0)


class AuthThenFrameTests(SynchronousTestCase):
    def test_a_large_frame_right_behind_auth_in_one_read_is_accepted(self) -> None:
        clock = Clock()
        client = PeerConnection(
            clock, ALICE, object(), Role.CLIENT, dialed_address=BOB.onion_address
        )
        answered: list[Any] = []

        class Store:
            def get_content_revision(self, conn: Any, request: Any) -> Any:
                answered.append(request)
                return bbrpc_pb2.GetContentRevisionResponse()

        server = PeerConnection(clock, BOB, Store(), Role.SERVER)
        link = PeerLink(client, server, auto=False)
        # The client's Hello to the server, which answers with its Hello and
        # Auth: the client is then authenticated and may call at once, while
        # its own Auth has not reached the server yet.
        link._move(
            Direction.to_server, link.client_transport, link.server_transport, server
        )
        link._move(
            Direction.to_client, link.server_transport, link.client_transport, client
        )
        self.assertTrue(client.authenticated)
        # A request far over the pre-handshake limit (the unknown field is
        # padding a real client could send), written right behind its Auth.
        request = bbrpc_pb2.GetContentRevisionRequest()
        request.ParseFromString(b"\x7a" + b"\x80\x80\x08" + b"z" * (128 * KIB))
        d = client.call("get_content_revision_request", request)
        self.assertFalse(server.authenticated)
        link.pump()  # the client's Auth and the request in one read
        self.assertTrue(server.authenticated)
        self.successResultOf(d)
        self.assertEqual(len(answered), 1)


class ErrorTextTests(SynchronousTestCase):
    def test_a_peers_error_text_is_bounded_and_escaped(self) -> None:
        from barterbackup.bbrpc.errors import PeerCallError

        hostile = "\x1b[2J\x1b]0;pwned\x07" + "\u202eevil" + "x" * 2000 + "\n"
        error = PeerCallError.from_error(
            bbrpc_pb2.Error(code=bbrpc_pb2.ERROR_CODE_NOT_FOUND, message=hostile)
        )
        self.assertTrue(
            error.message.startswith("\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil")
        )
        self.assertLessEqual(len(error.message), 600)
        self.assertFalse(any(ord(c) < 32 or c == "\u202e" for c in error.message))
        # The line and paragraph separators break a log line too.
        split = PeerCallError.from_error(
            bbrpc_pb2.Error(
                code=bbrpc_pb2.ERROR_CODE_NOT_FOUND, message="a\u2028b\u2029c"
            )
        )
        self.assertEqual(split.message, "a\\u2028b\\u2029c")


class AdmissionTests(SynchronousTestCase):
    """Half-open connections cannot take every descriptor (finding 10)."""

    def factory(self, clock: Clock) -> Any:
        from barterbackup.bbrpc.factory import AdmissionLimits, PeerServerFactory

        return PeerServerFactory(
            clock,
            BOB,
            object(),
            admission=AdmissionLimits(
                max_handshaking=4, max_handshaking_per_source=3, max_connections=6
            ),
        )

    def connect(self, factory: Any, host: str) -> Any:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        conn = factory.buildProtocol(IPv4Address("TCP", host, 1234))
        if conn is not None:
            conn.makeConnection(StringTransport())
        return conn

    def test_handshakes_are_bounded_in_total_and_per_source(self) -> None:
        clock = Clock()
        factory = self.factory(clock)
        first = [self.connect(factory, "10.0.0.1") for _ in range(4)]
        self.assertEqual(sum(c is not None for c in first), 3)  # per source
        other = [self.connect(factory, "10.0.0.2") for _ in range(3)]
        self.assertEqual(sum(c is not None for c in other), 1)  # in total
        self.assertEqual(factory.handshaking, 4)
        self.assertEqual(factory.refused, 3)
        # Strangers that never finish are dropped at the handshake deadline,
        # and their places are free again.
        clock.advance(31)
        for conn in first + other:
            if conn is not None:
                conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((factory.handshaking, factory.connections), (0, 0))
        self.assertIsNotNone(self.connect(factory, "10.0.0.2"))

    def test_connections_are_bounded_in_all(self) -> None:
        clock = Clock()
        factory = self.factory(clock)
        conns = []
        for index in range(8):
            conn = self.connect(factory, f"10.0.1.{index}")
            if conn is not None:
                # As if the handshake finished: no longer handshaking.
                conn._end_handshake(conn)
                conns.append(conn)
        self.assertEqual(len(conns), 6)
        self.assertEqual(factory.connections, 6)
        self.assertIsNone(self.connect(factory, "10.0.2.1"))

    def test_the_soft_descriptor_limit_is_raised_and_respected(self) -> None:
        import resource

        from barterbackup.bbrpc.factory import RESERVED_DESCRIPTORS, AdmissionLimits

        limits = AdmissionLimits.for_this_process()
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertLessEqual(limits.max_connections, soft - RESERVED_DESCRIPTORS)
        self.assertGreater(limits.max_handshaking, 0)
