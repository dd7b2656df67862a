"""Chat between two real nodes over 127.0.0.1 TCP, on the real reactor.

A 100 MiB offer fetched with EncryptedDownload, cut halfway, resumed and
verified; and the clirpc Chat stream (the servicer's two threads and its
bounded event queue) carrying messages both ways over the real sockets.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path
from typing import Any

import grpc
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from barterbackup._proto import clirpc_pb2 as pb
from barterbackup._proto import clirpc_pb2_grpc
from barterbackup.chat.updates import (
    DONE,
    FAILED,
    FETCHING,
    ChatUpdate,
    MessageIn,
    OfferIn,
    OfferOut,
    TransferProgress,
)
from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from barterbackup.paths import default_socket_path
from barterbackup.rpc.client import GRPC_OPTIONS
from barterbackup.rpc.queues import OVERFLOWED, ChatEventQueue
from barterbackup.rpc.server import CliRpcServer
from tests.util import PASSWORDS, Waiter, short_tempdir, start_node

MIB = 1024 * 1024
WAIT_SECONDS = 60.0


async def two_nodes(case: TestCase) -> tuple[Node, Node, Path]:
    tmp = short_tempdir(case)
    nodes = []
    for index in range(2):
        config = NodeConfig(node_dir=tmp / f"n{index}", transport="tcp")
        node = start_node(reactor, config)
        case.addCleanup(node.stopService)
        await node.unlock(PASSWORDS[index], create_if_missing=True)
        await node.session.network.ready()
        nodes.append(node)
    a, b = nodes
    await a.connect_peer(address(b), endpoint=b.status().peer_endpoint)
    made = await a.set_chat_key(address(b), generate=True)
    await b.set_chat_key(address(a), key_text=made.key_text)
    return a, b, tmp


def address(node: Node) -> str:
    return node.session.keys.onion_address


class OfferOverTcpTests(TestCase):
    timeout = 120

    async def test_100_mib_cut_halfway_resumed_verified(self) -> None:
        a, b, tmp = await two_nodes(self)
        alice, bob = Waiter(), Waiter()
        alice_chat = await a.open_chat(address(b), alice)
        bob_chat = await b.open_chat(address(a), bob)
        source = tmp / "big.bin"
        digest = hashlib.sha256()
        with open(source, "wb") as handle:
            for index in range(100):
                chunk = hashlib.sha256(index.to_bytes(4, "big")).digest() * (MIB // 32)
                digest.update(chunk)
                handle.write(chunk)
        alice_chat.offer_file(str(source), 1)
        await alice.next(lambda u: isinstance(u, OfferOut))
        offered = await bob.next(lambda u: isinstance(u, OfferIn))
        inbox = tmp / "inbox"
        inbox.mkdir()

        # Cut the connection once half the file is held.
        def cut_at_half(update: ChatUpdate) -> bool:
            if (
                isinstance(update, TransferProgress)
                and update.phase == FETCHING
                and update.bytes_done >= 50 * MIB
            ):
                conn = b.session.pool.connection(a.session.keys.onion_pubkey)
                if conn is not None:
                    conn.transport.abortConnection()
                return True
            return False

        cut = bob.next(cut_at_half)
        bob_chat.accept_file(offered.offer.offer_id, str(inbox), 2)
        await cut
        failed = await bob.next(
            lambda u: isinstance(u, TransferProgress) and u.phase == FAILED
        )
        self.assertIn("cut", failed.message)
        part = inbox / "big.bin.part"
        held = part.stat().st_size
        self.assertGreaterEqual(held, 50 * MIB)
        self.assertLess(held, 100 * MIB)
        self.assertFalse((inbox / "big.bin").exists())

        # Back online: the fetch asks from the offset it holds.
        await b.connect_peer(address(a), endpoint=a.status().peer_endpoint)
        bob.updates.clear()
        bob_chat.accept_file(offered.offer.offer_id, str(inbox), 3)
        done = await bob.next(
            lambda u: isinstance(u, TransferProgress) and u.phase in (DONE, FAILED)
        )
        self.assertEqual(done.phase, DONE, done.message)
        [first] = [
            u
            for u in bob.updates
            if isinstance(u, TransferProgress) and u.action_id == 3
        ][:1]
        self.assertEqual(first.bytes_done, held)
        final = Path(done.path)
        self.assertEqual(final, inbox / "big.bin")
        self.assertFalse(part.exists())
        check = hashlib.sha256()
        with open(final, "rb") as handle:
            while chunk := handle.read(MIB):
                check.update(chunk)
        self.assertEqual(check.hexdigest(), digest.hexdigest())
        alice_chat.stop()
        bob_chat.stop()


class RpcChat:
    """One client of the clirpc Chat stream, driven from a test thread."""

    def __init__(self, stub: clirpc_pb2_grpc.CliRpcStub, peer: str) -> None:
        self.actions: queue.Queue[pb.ChatAction | None] = queue.Queue()
        self.actions.put(pb.ChatAction(peer=peer, init=pb.ChatInit()))
        self.events: list[pb.ChatEvent] = []
        self.error: grpc.RpcError | None = None
        self.done = False
        self._changed = threading.Condition()
        self._stream = stub.Chat(self._requests())
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self) -> Any:
        while (action := self.actions.get()) is not None:
            yield action

    def _read(self) -> None:
        try:
            for event in self._stream:
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        except grpc.RpcError as error:
            self.error = error
        finally:
            with self._changed:
                self.done = True
                self._changed.notify_all()
            self.actions.put(None)

    def wait_for(self, predicate: Any) -> pb.ChatEvent:
        """Blocks (run it in a thread) until an event matches."""
        with self._changed:
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                if self.done:
                    raise AssertionError(f"the stream ended ({self.error})")
                if not self._changed.wait(WAIT_SECONDS):
                    raise AssertionError("no such chat event in time")


class ChatRpcTests(TestCase):
    timeout = 60

    async def test_messages_both_ways_through_the_servicer(self) -> None:
        a, b, _ = await two_nodes(self)
        stubs = []
        for node in (a, b):
            server = CliRpcServer(reactor, node, default_socket_path(node.node_dir))
            server.startService()
            self.addCleanup(server.stopService)
            channel = grpc.insecure_channel(
                f"unix:{server.socket_path}", options=GRPC_OPTIONS
            )
            self.addCleanup(channel.close)
            stubs.append(clirpc_pb2_grpc.CliRpcStub(channel))
        alice = RpcChat(stubs[0], address(b))
        opened = await deferToThread(alice.wait_for, lambda e: e.HasField("opened"))
        self.assertTrue(opened.opened.encrypted)
        bob = RpcChat(stubs[1], address(a))
        await deferToThread(bob.wait_for, lambda e: e.HasField("opened"))
        alice.actions.put(pb.ChatAction(message="hello bob", action_id=1))
        got = await deferToThread(
            bob.wait_for,
            lambda e: e.HasField("message") and e.message.text == "hello bob",
        )
        self.assertEqual(got.peer, address(a))
        await deferToThread(
            alice.wait_for,
            lambda e: e.action_id == 1 and e.delivery.state == "delivered",
        )
        bob.actions.put(pb.ChatAction(message="hello alice", action_id=5))
        await deferToThread(
            alice.wait_for,
            lambda e: e.HasField("message") and e.message.text == "hello alice",
        )
        # A refused action is an event; the chat goes on.
        bob.actions.put(pb.ChatAction(offer_file="relative.txt", action_id=6))
        refused = await deferToThread(
            bob.wait_for, lambda e: e.action_id == 6 and e.HasField("notice")
        )
        self.assertTrue(refused.notice.error)
        listed = await deferToThread(stubs[0].ListChats, pb.ListChatsRequest())
        [summary] = listed.chats
        self.assertEqual((summary.peer, summary.attached), (address(b), 1))
        alice.actions.put(pb.ChatAction(stop=pb.ChatStop(reason="bye")))
        ended = await deferToThread(alice.wait_for, lambda e: e.HasField("ended"))
        self.assertEqual(ended.ended.reason, "bye")
        closed = await deferToThread(bob.wait_for, lambda e: e.HasField("closed"))
        self.assertEqual((closed.closed.reason, closed.closed.by_peer), ("bye", True))
        bob.actions.put(pb.ChatAction(stop=pb.ChatStop()))
        await deferToThread(bob.wait_for, lambda e: e.HasField("ended"))
        # A client that closes its side without stop leaves the same way
        # (the fuzz found such a stream running until its deadline).
        again = RpcChat(stubs[0], address(b))
        await deferToThread(again.wait_for, lambda e: e.HasField("opened"))
        again.actions.put(None)
        ended = await deferToThread(again.wait_for, lambda e: e.HasField("ended"))
        self.assertEqual(ended.ended.reason, "left the chat")


class ChatEventQueueTests(SynchronousTestCase):
    def test_progress_is_coalesced(self) -> None:
        events = ChatEventQueue(10)
        for done in range(0, 100 * MIB, MIB):
            events.put(TransferProgress("p", 1, "ab12", "f", FETCHING, done, 100 * MIB))
        events.put(MessageIn("p", "hi", 0.0, True))
        self.assertEqual(len(events), 2)
        progress = events.get(0)
        assert isinstance(progress, TransferProgress)
        self.assertEqual(progress.bytes_done, 99 * MIB)
        self.assertIsInstance(events.get(0), MessageIn)
        self.assertIsNone(events.get(0))

    def test_a_client_that_stops_reading_is_cut_off_keeping_its_messages(self) -> None:
        events = ChatEventQueue(3)
        given_back: list[list[MessageIn]] = []
        events.on_overflow = given_back.append
        for text in ("one", "two", "three", "four"):
            events.put(MessageIn("p", text, 0.0, True))
        self.assertEqual(
            [[m.text for m in batch] for batch in given_back],
            [["one", "two", "three", "four"]],
        )
        self.assertEqual(events.get(0), OVERFLOWED)
        events.put(MessageIn("p", "five", 0.0, True))
        self.assertEqual(len(events), 0)
