"""Two chat sessions wired to each other in memory, the send of one feeding
the other: messages, order, acks, stops, key mismatches, tampering, cuts,
offers and outbox delivery."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.chat.aead import KEY_MISMATCH_MESSAGE, ChatError, Role
from barterbackup.chat.messages import MAX_MESSAGE_BYTES, InvalidMessage
from barterbackup.chat.offers import IncomingOffers, OfferRefused, OfferTable
from barterbackup.chat.outbox import Outbox
from barterbackup.chat.peer_key import PeerKey
from barterbackup.chat.session import (
    ChatEvent,
    ChatFailed,
    ChatOpened,
    ChatSession,
    ChatStopped,
    FileOffered,
    FileOfferRefused,
    MessageDelivered,
    MessageReceived,
    Mode,
    NoChatKey,
    Undelivered,
    choose_mode,
)

ALICE = bytes(range(32))
BOB = bytes(range(100, 132))
KEY = PeerKey(bytes(range(9, 41)))
OTHER_KEY = PeerKey(bytes(range(10, 42)))
SHA = bytes(32)
messages = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40
)

# A hook on the link: given the sender's name and a frame, the frame to
# deliver, or None to drop it.
Tap = Callable[[str, Any], Any]


class Link:
    """Alice (initiator) and Bob (responder) wired to each other.

    ``queued`` holds frames until ``pump``; otherwise each send is fed to
    the other side at once, inside the sender's call.
    """

    def __init__(
        self,
        mode: Mode = Mode.ENCRYPTED,
        alice_key: PeerKey | None = KEY,
        bob_key: PeerKey | None = KEY,
        queued: bool = False,
    ) -> None:
        self.clock = Clock()
        self.rng = random.Random(7)
        self.events: dict[str, list[ChatEvent]] = {"alice": [], "bob": []}
        self.sent: dict[str, list[Any]] = {"alice": [], "bob": []}
        self.queue: list[tuple[str, Any]] = []
        self.queued = queued
        self.tap: Tap | None = None
        self.down = False
        self.incoming = {
            "alice": IncomingOffers(self.clock),
            "bob": IncomingOffers(self.clock),
        }
        self.alice = self.session("alice", mode, Role.INITIATOR, ALICE, BOB, alice_key)
        self.bob = self.session("bob", mode, Role.RESPONDER, BOB, ALICE, bob_key)

    def session(
        self,
        name: str,
        mode: Mode,
        role: Role,
        me: bytes,
        peer: bytes,
        key: PeerKey | None,
    ) -> ChatSession:
        return ChatSession(
            mode=mode,
            role=role,
            peer=peer,
            local_onion=me,
            peer_key=key,
            send=lambda frame: self.carry(name, frame),
            on_event=self.events[name].append,
            random_bytes=self.rng.randbytes,
            clock=self.clock,
            incoming_offers=self.incoming[name],
        )

    def other(self, name: str) -> ChatSession:
        return self.bob if name == "alice" else self.alice

    def carry(self, sender: str, frame: Any) -> None:
        self.sent[sender].append(frame)
        if self.down:
            return
        if self.tap is not None:
            frame = self.tap(sender, frame)
            if frame is None:
                return
        if self.queued:
            self.queue.append((sender, frame))
        else:
            self.other(sender).receive(frame)

    def pump(self) -> None:
        while self.queue:
            self.step()

    def step(self) -> None:
        """Deliver the frames queued now, not the answers they cause."""
        batch, self.queue[:] = list(self.queue), []
        for sender, frame in batch:
            self.other(sender).receive(frame)

    def start(self) -> None:
        self.alice.start()
        self.bob.start()

    def received(self, name: str) -> list[str]:
        return [e.text for e in self.events[name] if isinstance(e, MessageReceived)]

    def stopped(self, name: str) -> ChatStopped:
        stops = [e for e in self.events[name] if isinstance(e, ChatStopped)]
        assert len(stops) == 1, self.events[name]
        return stops[0]


class EncryptedSessionTests(SynchronousTestCase):
    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), messages), max_size=12))
    def test_messages_both_ways_in_order(self, script: list[tuple[bool, str]]) -> None:
        link = Link()
        link.start()
        for from_alice, text in script:
            (link.alice if from_alice else link.bob).send_message(text)
        self.assertEqual(link.received("bob"), [t for a, t in script if a])
        self.assertEqual(link.received("alice"), [t for a, t in script if not a])
        delivered = [e for e in link.events["alice"] if isinstance(e, MessageDelivered)]
        self.assertEqual(len(delivered), sum(a for a, _ in script))

    def test_states_and_events_in_order(self) -> None:
        link = Link(queued=True)
        self.assertEqual(link.alice.state, "opening")
        link.start()
        self.assertEqual((link.alice.state, link.bob.state), ("opening", "opening"))
        link.alice.send_message("early", token="t1")
        self.assertEqual(len(link.queue), 2)  # the two hellos; "early" is held
        link.step()
        self.assertEqual(
            (link.alice.state, link.bob.state), ("confirming", "confirming")
        )
        link.step()
        self.assertEqual((link.alice.state, link.bob.state), ("open", "open"))
        link.pump()
        link.bob.stop("bye now")
        link.pump()
        self.assertEqual((link.alice.state, link.bob.state), ("closed", "closed"))
        opened = ChatOpened(True, KEY.fingerprint())
        self.assertEqual(
            link.events["alice"],
            [
                opened,
                MessageDelivered("t1"),
                ChatStopped("bye now", by_peer=True, cut=False, undelivered=()),
            ],
        )
        self.assertEqual(
            link.events["bob"],
            [
                opened,
                MessageReceived("early"),
                ChatStopped("bye now", by_peer=False, cut=False, undelivered=()),
            ],
        )
        self.assertEqual(link.alice.session_id, None)

    def test_only_sealed_frames_after_the_handshake(self) -> None:
        link = Link()
        link.start()
        link.alice.send_message("secret words")
        kinds = [f.WhichOneof("frame") for f in link.sent["alice"]]
        self.assertEqual(kinds, ["hello", "key_confirmation", "sealed"])
        for frame in link.sent["alice"] + link.sent["bob"]:
            self.assertNotIn(b"secret", frame.SerializeToString())

    def assert_key_mismatch(self, link: Link) -> None:
        for name in ("alice", "bob"):
            failed, stopped = link.events[name]
            self.assertIsInstance(failed, ChatFailed)
            assert isinstance(failed, ChatFailed)
            self.assertTrue(failed.key_mismatch)
            self.assertTrue(failed.reason.startswith(KEY_MISMATCH_MESSAGE))
            self.assertIsInstance(stopped, ChatStopped)
        self.assertEqual((link.alice.state, link.bob.state), ("closed", "closed"))

    def test_mismatched_keys_fail_on_both_sides(self) -> None:
        link = Link(bob_key=OTHER_KEY)
        link.start()
        self.assert_key_mismatch(link)
        self.assertRaises(ChatError, link.alice.send_message, "after")

    def test_missing_key_fails_on_both_sides(self) -> None:
        link = Link(bob_key=None)
        link.start()
        self.assert_key_mismatch(link)

    def test_messages_held_before_a_mismatch_are_undelivered(self) -> None:
        link = Link(bob_key=OTHER_KEY)
        link.alice.send_message("held", token=3)
        link.start()
        self.assertEqual(link.stopped("alice").undelivered, (Undelivered("held", 3),))

    def test_tampered_frame_ends_the_session_on_both_sides(self) -> None:
        link = Link()
        link.start()

        def flip(sender: str, frame: Any) -> Any:
            if sender == "alice" and frame.WhichOneof("frame") == "sealed":
                sealed = bytearray(frame.sealed)
                sealed[-1] ^= 1
                return bbrpc_pb2.EncryptedChatRequest(sealed=bytes(sealed))
            return frame

        link.tap = flip
        link.alice.send_message("hello", token="x")
        failed = [e for e in link.events["bob"] if isinstance(e, ChatFailed)]
        self.assertEqual(len(failed), 1)
        self.assertIn("failed authentication", failed[0].reason)
        # Bob told Alice why, in an authenticated stop.
        alice_stop = link.stopped("alice")
        self.assertTrue(alice_stop.by_peer)
        self.assertIn("failed authentication", alice_stop.reason)
        self.assertEqual(alice_stop.undelivered, (Undelivered("hello", "x"),))
        self.assertEqual(link.received("bob"), [])

    def test_replayed_frame_is_refused(self) -> None:
        link = Link()
        link.start()
        link.alice.send_message("once")
        replay = link.sent["alice"][-1]
        link.bob.receive(replay)
        self.assertIn("replayed", link.stopped("bob").reason)
        self.assertEqual(link.received("bob"), ["once"])

    def test_dropped_frame_is_noticed_at_the_next(self) -> None:
        link = Link()
        link.start()
        link.tap = lambda sender, frame: None if sender == "alice" else frame
        link.alice.send_message("lost")
        link.tap = None
        link.alice.send_message("next")
        self.assertIn("out of order", link.stopped("bob").reason)
        self.assertEqual(link.received("bob"), [])

    def test_frame_from_the_other_direction_is_refused(self) -> None:
        link = Link()
        link.start()
        link.alice.send_message("mine")
        link.alice.receive(link.sent["alice"][-1])
        self.assertIn("other direction", link.stopped("alice").reason)

    def test_cut_stream_is_not_a_clean_close(self) -> None:
        link = Link()
        link.start()
        link.down = True
        link.alice.send_message("in flight", token=1)
        link.alice.stream_ended()
        stopped = link.stopped("alice")
        self.assertTrue(stopped.cut)
        self.assertIn("cut", stopped.reason)
        self.assertEqual(stopped.undelivered, (Undelivered("in flight", 1),))

    def test_stream_end_after_stop_is_clean(self) -> None:
        link = Link()
        link.start()
        link.alice.stop("done")
        link.bob.stream_ended()
        link.alice.stream_ended()
        self.assertFalse(link.stopped("bob").cut)
        self.assertFalse(link.stopped("alice").cut)

    def test_plain_frame_on_encrypted_stream_is_refused(self) -> None:
        link = Link()
        link.start()
        link.bob.receive(bbrpc_pb2.ChatRequest(msg="sneaky"))
        self.assertIn("plain frame", link.stopped("bob").reason)

    def test_failed_send_ends_the_session(self) -> None:
        events: list[ChatEvent] = []
        session = ChatSession(
            mode=Mode.ENCRYPTED,
            role=Role.INITIATOR,
            peer=BOB,
            local_onion=ALICE,
            peer_key=KEY,
            send=lambda frame: defer.fail(ConnectionError("link down")),
            on_event=events.append,
            random_bytes=random.Random(0).randbytes,
            clock=Clock(),
            incoming_offers=IncomingOffers(Clock()),
        )
        session.start()
        self.assertEqual(session.state, "closed")
        self.assertEqual(len(events), 1)
        assert isinstance(events[0], ChatStopped)
        self.assertTrue(events[0].cut)
        self.assertIn("link down", events[0].reason)

    def test_message_bounds(self) -> None:
        link = Link()
        link.start()
        self.assertRaises(
            InvalidMessage, link.alice.send_message, "x" * (MAX_MESSAGE_BYTES + 1)
        )
        self.assertRaises(InvalidMessage, link.alice.send_message, "bell\x07")
        self.assertRaises(InvalidMessage, link.alice.send_message, "")
        link.alice.send_message("x" * MAX_MESSAGE_BYTES)
        self.assertEqual(link.received("bob"), ["x" * MAX_MESSAGE_BYTES])


class PlainSessionTests(SynchronousTestCase):
    def test_messages_both_ways(self) -> None:
        link = Link(Mode.PLAIN, None, None)
        link.start()
        link.alice.send_message("hi bob")
        link.bob.send_message("hi alice")
        link.alice.stop("bye")
        self.assertEqual(link.events["bob"][0], ChatOpened(False, None))
        self.assertEqual(link.received("bob"), ["hi bob"])
        self.assertEqual(link.received("alice"), ["hi alice"])
        self.assertEqual(link.stopped("bob").reason, "bye")

    def test_received_controls_are_escaped_and_oversize_refused(self) -> None:
        link = Link(Mode.PLAIN, None, None)
        link.start()
        # Frames are injected as if from Alice: keep Bob's acks from her.
        link.tap = lambda sender, frame: frame if sender == "alice" else None
        session_id = link.bob.session_id
        link.bob.receive(bbrpc_pb2.ChatRequest(session_id=session_id, msg="\x1b[2Jboo"))
        self.assertEqual(link.received("bob"), ["\\x1b[2Jboo"])
        link.bob.receive(
            bbrpc_pb2.ChatRequest(
                session_id=session_id, msg="x" * (MAX_MESSAGE_BYTES + 1)
            )
        )
        self.assertIn("longer than", link.stopped("bob").reason)

    def test_forged_ack_and_foreign_session_are_refused(self) -> None:
        link = Link(Mode.PLAIN, None, None)
        link.start()
        link.bob.receive(bbrpc_pb2.ChatRequest(session_id=link.bob.session_id, ack=5))
        self.assertIn("acknowledged 5", link.stopped("bob").reason)
        link = Link(Mode.PLAIN, None, None)
        link.start()
        link.bob.receive(bbrpc_pb2.ChatRequest(session_id=bytes(16), msg="x"))
        self.assertIn("another session", link.stopped("bob").reason)

    def test_encrypted_init_on_plain_stream_is_refused(self) -> None:
        link = Link(Mode.PLAIN, None, None)
        link.bob.start()
        link.bob.receive(
            bbrpc_pb2.ChatRequest(
                session_id=bytes(16), init=bbrpc_pb2.ChatOpen(encrypted=True)
            )
        )
        self.assertEqual(link.bob.state, "closed")

    def test_offers_need_a_key(self) -> None:
        link = Link(Mode.PLAIN, None, None)
        link.start()
        offer = OfferTable(link.clock, link.rng.randbytes).offer(BOB, Path("f"), 1, SHA)
        self.assertRaises(OfferRefused, link.alice.offer_file, offer)

    def test_frames_before_start_wait_for_it(self) -> None:
        link = Link(Mode.PLAIN, None, None, queued=True)
        link.alice.start()
        _, init = link.queue.pop()
        link.bob.receive(init)
        self.assertEqual(link.bob.state, "opening")
        link.bob.start()
        self.assertEqual(link.bob.state, "open")
        self.assertRaises(ChatError, link.bob.start)


class ModeTests(SynchronousTestCase):
    def test_encrypted_whenever_a_key_is_set(self) -> None:
        self.assertEqual(choose_mode(KEY), Mode.ENCRYPTED)
        self.assertEqual(choose_mode(KEY, plain=True), Mode.PLAIN)
        self.assertEqual(choose_mode(None, plain=True), Mode.PLAIN)
        self.assertRaises(NoChatKey, choose_mode, None)


class OfferInSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.link = Link()
        self.link.start()
        self.offers = OfferTable(self.link.clock, self.link.rng.randbytes)

    def test_offer_reaches_the_peer_with_a_safe_name(self) -> None:
        offer = self.offers.offer(
            BOB, Path("/x/y"), 123, SHA, name="../../etc/cron.d/job"
        )
        self.link.alice.offer_file(offer)
        (event,) = [e for e in self.link.events["bob"] if isinstance(e, FileOffered)]
        self.assertEqual(event.offer.name, "job")
        self.assertEqual(event.offer.offer_id, offer.offer_id)
        self.assertEqual(event.offer.size, 123)
        self.assertEqual(self.link.incoming["bob"].pending(), [event.offer])

    def test_unusable_offer_is_refused_and_the_chat_goes_on(self) -> None:
        offer = self.offers.offer(BOB, Path("/x/y"), 1, SHA, name="..")
        self.link.alice.offer_file(offer)
        self.link.alice.send_message("still here")
        self.assertTrue(
            any(isinstance(e, FileOfferRefused) for e in self.link.events["bob"])
        )
        self.assertEqual(self.link.received("bob"), ["still here"])

    def test_offer_made_to_another_peer_is_not_announced(self) -> None:
        offer = self.offers.offer(bytes(32), Path("f"), 1, SHA)
        self.assertRaises(OfferRefused, self.link.alice.offer_file, offer)


class OutboxDeliveryTests(SynchronousTestCase):
    def test_queued_messages_are_delivered_and_acknowledged(self) -> None:
        clock = Clock()
        outbox = Outbox(Path(self.mktemp()), bytes(32), clock)
        outbox.queue(BOB, "while you were away")
        outbox.queue(BOB, "and this")
        link = Link(queued=True)

        def on_alice_event(event: ChatEvent) -> None:
            link.events["alice"].append(event)
            if isinstance(event, ChatOpened):
                for message in outbox.pending(BOB):
                    link.alice.send_message(message.text, token=message.message_id)
            elif isinstance(event, MessageDelivered):
                assert isinstance(event.token, int)
                outbox.acknowledge(BOB, event.token)

        link.alice._on_event = on_alice_event  # type: ignore[attr-defined]
        link.start()
        link.pump()
        self.assertEqual(link.received("bob"), ["while you were away", "and this"])
        self.assertEqual(len(outbox), 0)
        self.assertEqual(len(Outbox(outbox.path, bytes(32), clock)), 0)

    def test_cut_before_the_ack_keeps_the_message(self) -> None:
        clock = Clock()
        outbox = Outbox(Path(self.mktemp()), bytes(32), clock)
        queued = outbox.queue(BOB, "keep me")
        link = Link()
        link.start()
        link.tap = lambda sender, frame: frame if sender == "alice" else None
        link.alice.send_message(queued.text, token=queued.message_id)
        link.alice.stream_ended()
        self.assertEqual(link.received("bob"), ["keep me"])
        self.assertEqual(
            link.stopped("alice").undelivered,
            (Undelivered("keep me", queued.message_id),),
        )
        self.assertEqual(outbox.pending(BOB), [queued])
