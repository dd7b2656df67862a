"""bbrpc connections after the handshake: dispatch, errors, limits, flow."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.connection import PeerConnection, PeerLimits
from barterbackup.bbrpc.errors import CallCancelled, PeerCallError, PeerConnectionLost
from barterbackup.bbrpc.factory import PeerServerFactory, connect_peer
from barterbackup.bbrpc.framing import (
    DownloadPiece,
    accepts_download_pieces,
    encode_frame,
)
from barterbackup.bbrpc.handshake import HandshakeFailed
from barterbackup.testing.link import Direction, connected_pair, keys_for_test

ALICE = keys_for_test(1)
BOB = keys_for_test(2)
MALLORY = keys_for_test(3)
MIB = 1024 * 1024


class FakeHandler:
    """Serves PeerExchange and Download from test-controlled data."""

    def __init__(
        self, items: int = 3, item_size: int = 10, as_pieces: bool = False
    ) -> None:
        self.items = items
        self.item_size = item_size
        self.as_pieces = as_pieces
        self.exchange_result: Any = bbrpc_pb2.PeerExchangeResponse(
            onion_addresses=[MALLORY.onion_address]
        )
        self.sent = 0
        self.stream_outcome: Failure | None = None
        self.pending: list[Deferred[Any]] = []
        self.calls: list[str] = []

    def peer_exchange(self, conn: Any, request: Any) -> Any:
        self.calls.append("peer_exchange")
        if isinstance(self.exchange_result, Exception):
            raise self.exchange_result
        if self.exchange_result == "hang":
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        return self.exchange_result

    async def download(self, conn: Any, request: Any, send: Any) -> Any:
        self.calls.append("download")
        try:
            for index in range(self.items):
                self.sent += 1
                data = bytes([index % 256]) * self.item_size
                if self.as_pieces:
                    assert accepts_download_pieces(send)
                    await send(
                        DownloadPiece(
                            bytes([index]) * 32, 0, data, b"h" * 32, len(data)
                        )
                    )
                else:
                    await send(
                        bbrpc_pb2.DownloadResponse(blob=bytes([index]) * 32, data=data)
                    )
        except Exception:
            self.stream_outcome = Failure()
            raise


def setup(
    test: SynchronousTestCase, **kw: Any
) -> tuple[PeerConnection, PeerConnection, Any, Any]:
    clock = Clock()
    server_handler = kw.pop("server_handler", FakeHandler())
    # Delivery by hand: these tests look at the frames between pumps.
    kw.setdefault("auto", False)
    client, server, pipe = connected_pair(
        clock, ALICE, BOB, kw.pop("client_handler", FakeHandler()), server_handler, **kw
    )
    test.assertTrue(client.authenticated and server.authenticated)
    return client, server, pipe, clock


class DispatchTests(SynchronousTestCase):
    def test_unary_call(self) -> None:
        client, _server, pipe, _ = setup(self)
        d = client.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
        pipe.pump()
        response = self.successResultOf(d)
        self.assertEqual(list(response.onion_addresses), [MALLORY.onion_address])

    def test_server_may_call_client(self) -> None:
        client, server, pipe, _ = setup(self)
        d = server.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
        pipe.pump()
        self.assertEqual(len(self.successResultOf(d).onion_addresses), 1)
        self.assertEqual(client.handler.calls, ["peer_exchange"])  # type: ignore[attr-defined]

    def test_stream(self) -> None:
        client, server, pipe, _ = setup(self, server_handler=FakeHandler(items=5))
        got: list[int] = []
        d = client.call_stream(
            "download_request",
            bbrpc_pb2.DownloadRequest(),
            lambda m: got.append(m.blob[0]),
        )
        pipe.pump()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(got, [0, 1, 2, 3, 4])
        self.assertEqual(len(server.inbound), 0)

    def test_stream_of_download_pieces(self) -> None:
        handler = FakeHandler(items=3, item_size=1000, as_pieces=True)
        client, server, pipe, _ = setup(self, server_handler=handler)
        got: list[bbrpc_pb2.DownloadResponse] = []
        d = client.call_stream(
            "download_request", bbrpc_pb2.DownloadRequest(), got.append
        )
        pipe.pump()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            got,
            [
                bbrpc_pb2.DownloadResponse(
                    blob=bytes([i]) * 32,
                    data=bytes([i]) * 1000,
                    sha256=b"h" * 32,
                    blob_length=1000,
                )
                for i in range(3)
            ],
        )
        self.assertEqual(len(server.inbound), 0)

    def test_download_piece_only_on_download_streams(self) -> None:
        class PieceOnWrongStream(FakeHandler):
            def set_content_revision(self, conn: Any, request: Any, send: Any) -> Any:
                return send(DownloadPiece(b"", 0, b"x", b"", 1))

        client, _server, pipe, _ = setup(self, server_handler=PieceOnWrongStream())
        d = client.call_stream(
            "set_content_revision_request",
            bbrpc_pb2.SetContentRevisionRequest(),
            lambda m: None,
        )
        pipe.pump()
        failure = self.failureResultOf(d, PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_INTERNAL)
        self.flushLoggedErrors(TypeError)

    def test_peer_call_error(self) -> None:
        handler = FakeHandler()
        handler.exchange_result = PeerCallError(
            bbrpc_pb2.ERROR_CODE_NOT_FOUND, "none here"
        )
        client, _server, pipe, _ = setup(self, server_handler=handler)
        d = client.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
        pipe.pump()
        error = self.failureResultOf(d, PeerCallError).value
        self.assertEqual(
            (error.code, error.message), (bbrpc_pb2.ERROR_CODE_NOT_FOUND, "none here")
        )

    def test_handler_exception_is_internal_and_hides_details(self) -> None:
        handler = FakeHandler()
        handler.exchange_result = RuntimeError("/secret/path exploded")
        client, _server, pipe, _ = setup(self, server_handler=handler)
        d = client.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
        pipe.pump()
        error = self.failureResultOf(d, PeerCallError).value
        self.assertEqual(error.code, bbrpc_pb2.ERROR_CODE_INTERNAL)
        self.assertNotIn("secret", error.message)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # The connection survives for other calls.
        handler.exchange_result = bbrpc_pb2.PeerExchangeResponse()
        d = client.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
        pipe.pump()
        self.successResultOf(d)

    def test_unimplemented(self) -> None:
        client, _server, pipe, _ = setup(self)
        d = client.call(
            "get_content_revision_request", bbrpc_pb2.GetContentRevisionRequest()
        )
        e = client.call_stream(
            "encrypted_download_request",
            bbrpc_pb2.EncryptedDownloadRequest(),
            lambda m: None,
        )
        pipe.pump()
        for result in (d, e):
            code = self.failureResultOf(result, PeerCallError).value.code
            self.assertEqual(code, bbrpc_pb2.ERROR_CODE_UNIMPLEMENTED)

    def test_empty_body_is_bad_request(self) -> None:
        client, server, pipe, _ = setup(self)
        replies: list[Any] = []
        client.outbound._open[1] = _fake_outbound(1, replies)
        client.transport.write(encode_frame(bbrpc_pb2.Envelope(call_id=1, end=True)))  # type: ignore[union-attr]
        pipe.pump()
        self.assertEqual(replies[0].value.code, bbrpc_pb2.ERROR_CODE_BAD_REQUEST)
        self.assertTrue(server.authenticated)

    def test_response_body_for_peer_call_drops(self) -> None:
        client, server, pipe, _ = setup(self)
        client.transport.write(  # type: ignore[union-attr]
            encode_frame(
                bbrpc_pb2.Envelope(
                    call_id=1, peer_exchange_response=bbrpc_pb2.PeerExchangeResponse()
                )
            )
        )
        pipe.pump()
        self.assertTrue(pipe.closed)
        self.assertEqual(server.handler.calls, [])  # type: ignore[attr-defined]

    def test_wrong_message_type_rejected_locally(self) -> None:
        client, _, _, _ = setup(self)
        with self.assertRaises(TypeError):
            client.call("peer_exchange_request", bbrpc_pb2.DownloadRequest())
        with self.assertRaises(ValueError):
            client.call("download_request", bbrpc_pb2.DownloadRequest())
        with self.assertRaises(ValueError):
            client.call_stream("chat_request", bbrpc_pb2.ChatRequest(), lambda m: None)

    def test_ping(self) -> None:
        client, _server, pipe, clock = setup(self)
        d = client.ping()
        clock.advance(0.25)
        pipe.pump()
        self.assertEqual(self.successResultOf(d), 0.25)
        self.assertEqual(client.rtt, 0.25)

    def test_connection_loss_fails_calls_and_cancels_handlers(self) -> None:
        handler = FakeHandler()
        handler.exchange_result = "hang"
        client, server, pipe, _ = setup(self, server_handler=handler)
        d = client.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
        pipe.pump()
        closed = server.when_closed()
        client.close()
        pipe.pump()
        self.failureResultOf(d, PeerConnectionLost)
        self.assertIs(self.successResultOf(closed), server)
        self.assertTrue(handler.pending[0].called)  # cancelled


def _fake_outbound(call_id: int, replies: list[Any]) -> Any:
    from barterbackup.bbrpc.calls import CALLS
    from barterbackup.bbrpc.outbound import OutboundCall

    d: Deferred[Any] = Deferred()
    d.addBoth(replies.append)
    return OutboundCall(call_id, d, CALLS["peer_exchange_request"])


class LimitTests(SynchronousTestCase):
    def test_too_many_concurrent_calls_is_busy(self) -> None:
        handler = FakeHandler()
        handler.exchange_result = "hang"
        client, _server, pipe, _ = setup(
            self, server_handler=handler, limits=PeerLimits(max_concurrent_calls=2)
        )
        calls = [
            client.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
            for _ in range(3)
        ]
        pipe.pump()
        self.assertNoResult(calls[0])
        self.assertNoResult(calls[1])
        busy = self.failureResultOf(calls[2], PeerCallError).value
        self.assertEqual(busy.code, bbrpc_pb2.ERROR_CODE_BUSY)
        handler.pending[0].callback(bbrpc_pb2.PeerExchangeResponse())
        pipe.pump()
        self.successResultOf(calls[0])
        # A slot is free again.
        handler.exchange_result = bbrpc_pb2.PeerExchangeResponse()
        again = client.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
        pipe.pump()
        self.successResultOf(again)

    def test_oversized_frame_drops(self) -> None:
        client, server, pipe, _ = setup(self, limits=PeerLimits(max_frame_length=1000))
        d = server.when_closed()
        client.transport.write((10_000).to_bytes(4, "big"))  # type: ignore[union-attr]
        pipe.pump()
        self.successResultOf(d)
        self.assertEqual(server._decoder.buffered, 0)

    def test_sending_oversized_frame_refused_locally(self) -> None:
        client, _, _pipe, _ = setup(self, limits=PeerLimits(max_frame_length=1000))
        from barterbackup.bbrpc.framing import FrameTooLarge

        with self.assertRaises(FrameTooLarge):
            client.call_stream(
                "download_request",
                bbrpc_pb2.DownloadRequest(blobs=[b"x" * 2000]),
                lambda m: None,
            )
        self.assertEqual(len(client.outbound), 0)

    def test_idle_timeout_reset_by_frames(self) -> None:
        client, _server, pipe, clock = setup(self, limits=PeerLimits(idle_timeout=600))
        closed = client.when_closed()
        clock.advance(500)
        client.ping()
        pipe.pump()
        clock.advance(500)
        pipe.pump()
        self.assertNoResult(closed)
        clock.advance(100)
        pipe.pump()
        self.successResultOf(closed)


class FlowControlTests(SynchronousTestCase):
    def check_stream_waits_for_transport(self, as_pieces: bool) -> None:
        # 64 items of 1 MiB through a transport that takes 64 KiB before
        # pushing back: at most about one item may be buffered at a time.
        handler = FakeHandler(items=64, item_size=MIB, as_pieces=as_pieces)
        client, server, pipe, _ = setup(self, server_handler=handler)
        received = 0

        def on_item(message: bbrpc_pb2.DownloadResponse) -> None:
            nonlocal received
            received += len(message.data)

        d = client.call_stream("download_request", bbrpc_pb2.DownloadRequest(), on_item)
        # Move only the request: the first item is written, the handler's
        # second send waits for the transport, nothing more is written.
        pipe._move(
            Direction.to_server, pipe.client_transport, pipe.server_transport, server
        )
        self.assertEqual(handler.sent, 2)
        self.assertLess(len(pipe.server_transport.value()), MIB + 1024)
        pipe.pump()
        self.successResultOf(d)
        self.assertEqual(received, 64 * MIB)
        self.assertLess(pipe.server_transport.most_buffered, 2 * MIB)

    def test_stream_waits_for_transport(self) -> None:
        self.check_stream_waits_for_transport(as_pieces=False)

    def test_piece_stream_waits_for_transport(self) -> None:
        self.check_stream_waits_for_transport(as_pieces=True)

    def test_slow_consumer_pauses_reading(self) -> None:
        handler = FakeHandler(items=10, item_size=MIB)
        client, _server, pipe, _ = setup(self, server_handler=handler)
        waiting: list[Deferred[None]] = []

        def on_item(message: bbrpc_pb2.DownloadResponse) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            waiting.append(d)
            return d

        done = client.call_stream(
            "download_request", bbrpc_pb2.DownloadRequest(), on_item
        )
        pipe.pump()
        # The consumer holds item 0; the client stopped reading, so the
        # server is stuck after at most a couple of items.
        self.assertEqual(len(waiting), 1)
        self.assertLessEqual(handler.sent, 3)
        for _ in range(10):
            waiting[-1].callback(None)
            pipe.pump()
        self.successResultOf(done)
        self.assertEqual(len(waiting), 10)

    def test_cancel_stops_the_handler(self) -> None:
        handler = FakeHandler(items=1000, item_size=MIB)
        client, server, pipe, _ = setup(self, server_handler=handler)
        d = client.call_stream(
            "download_request", bbrpc_pb2.DownloadRequest(), lambda m: None
        )
        pipe._move(
            Direction.to_server, pipe.client_transport, pipe.server_transport, server
        )
        d.cancel()
        pipe.pump()
        self.failureResultOf(d)
        self.assertIsNotNone(handler.stream_outcome)
        self.assertTrue(handler.stream_outcome.check(CallCancelled))  # type: ignore[union-attr]
        self.assertLess(handler.sent, 5)
        self.assertEqual(len(server.inbound), 0)
        self.assertTrue(server.authenticated)

    def test_on_item_failure_cancels(self) -> None:
        handler = FakeHandler(items=1000, item_size=1000)
        client, server, pipe, _ = setup(self, server_handler=handler)

        def on_item(message: Any) -> None:
            raise ValueError("bad section")

        d = client.call_stream("download_request", bbrpc_pb2.DownloadRequest(), on_item)
        pipe.pump()
        self.failureResultOf(d, ValueError)
        self.assertEqual(len(server.inbound), 0)
        self.assertLess(handler.sent, 1000)


class TCPLoopbackTests(TestCase):
    async def test_connect_serve_and_reject_over_tcp(self) -> Any:
        handler = FakeHandler(items=4, item_size=100_000)
        seen: list[PeerConnection] = []
        lost: list[PeerConnection] = []
        factory = PeerServerFactory(
            global_reactor,
            BOB,
            handler,
            on_authenticated=seen.append,
            on_connection_lost=lost.append,
        )
        port = await TCP4ServerEndpoint(
            global_reactor, 0, interface="127.0.0.1"
        ).listen(factory)
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(global_reactor, "127.0.0.1", port.getHost().port)

        conn = await connect_peer(
            global_reactor, endpoint, ALICE, BOB.onion_address, FakeHandler()
        )
        self.assertEqual(conn.peer_onion_address, BOB.onion_address)
        got: list[int] = []
        await conn.call_stream(
            "download_request",
            bbrpc_pb2.DownloadRequest(),
            lambda m: got.append(len(m.data)),
        )
        self.assertEqual(got, [100_000] * 4)
        rtt = await conn.ping()
        self.assertGreaterEqual(rtt, 0)
        self.assertEqual([c.peer_onion_address for c in seen], [ALICE.onion_address])
        closed = seen[0].when_closed()
        conn.close()
        await closed
        self.assertEqual(lost, seen)

        # Dialing the right port but expecting another node fails cleanly.
        with self.assertRaises(HandshakeFailed):
            await connect_peer(
                global_reactor, endpoint, ALICE, MALLORY.onion_address, FakeHandler()
            )
        self.assertEqual(len(seen), 1)


class Echo:
    """Serves Chat by echoing each item of the caller's stream back."""

    def __init__(self, late: bool = False) -> None:
        self.late = late
        self.streams: list[Any] = []
        self.outcomes: list[Any] = []

    def chat(self, conn: Any, request: Any, stream: Any) -> Any:
        self.streams.append(stream)
        echoed = stream.send(bbrpc_pb2.ChatRequest(msg=f"hello {request.msg}"))

        def start(_: object) -> Any:
            ended = stream.receive(
                lambda item: stream.send(bbrpc_pb2.ChatRequest(msg=item.msg.upper()))
            )
            return ended.addBoth(self.outcomes.append)

        if self.late:
            # Receive later: items that arrive meanwhile wait.
            self.start = lambda: start(None)
            return Deferred()
        return echoed.addCallback(start)


class BidirectionalStreamTests(SynchronousTestCase):
    def test_items_both_ways_then_both_halves_end(self) -> None:
        client, server, pipe, _ = setup(self, server_handler=Echo())
        got: list[str] = []
        stream = client.open_stream(
            "chat_request",
            bbrpc_pb2.ChatRequest(msg="you"),
            lambda m: got.append(m.msg),
        )
        for text in ("a", "b", "c"):
            stream.send(bbrpc_pb2.ChatRequest(msg=text))
        pipe.pump()
        self.assertEqual(got, ["hello you", "A", "B", "C"])
        self.assertNoResult(stream.result)
        stream.end()
        pipe.pump()
        self.successResultOf(stream.result)
        self.assertEqual(len(server.inbound), 0)

    def test_items_before_receive_wait_and_stop_reading(self) -> None:
        handler = Echo(late=True)
        client, _server, pipe, _ = setup(self, server_handler=handler)
        got: list[str] = []
        stream = client.open_stream(
            "chat_request", bbrpc_pb2.ChatRequest(msg="x"), lambda m: got.append(m.msg)
        )
        stream.send(bbrpc_pb2.ChatRequest(msg="early"))
        stream.send(bbrpc_pb2.ChatRequest(msg="later"))
        pipe.pump()
        # The first early item is held; reading stopped behind it.
        self.assertTrue(pipe.server_transport.reading_paused)
        handler.start()
        pipe.pump()
        self.assertEqual(got, ["hello x", "EARLY", "LATER"])

    def test_cancel_fails_the_handlers_receive(self) -> None:
        handler = Echo()
        client, _server, pipe, _ = setup(self, server_handler=handler)
        stream = client.open_stream(
            "chat_request", bbrpc_pb2.ChatRequest(msg="x"), lambda m: None
        )
        pipe.pump()
        stream.result.cancel()
        pipe.pump()
        self.failureResultOf(stream.result)
        [outcome] = handler.outcomes
        self.assertTrue(outcome.check(CallCancelled))

    def test_chat_needs_open_stream(self) -> None:
        client, _, _, _ = setup(self)
        with self.assertRaises(ValueError):
            client.call_stream("chat_request", bbrpc_pb2.ChatRequest(), lambda m: None)
