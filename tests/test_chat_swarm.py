"""Chat between full nodes on the no-network swarm, through the Node API.

Keys set with SetAeadKeyForPeer's facade method, messages both ways and in
order, what arrives while nobody is attached, the sealed outbox delivered
after a reconnect, bounds, plain chats, key mismatches, and file offers
fetched with EncryptedDownload (tampered pieces, hostile names, other
peers and expired offers refused).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from barterbackup import errors
from barterbackup._proto import bbrpc_pb2
from barterbackup.chat.aead import KEY_MISMATCH_MESSAGE, ChatError
from barterbackup.chat.downloads import FetchFailed, SequentialReader, fetch_offer
from barterbackup.chat.messages import MAX_MESSAGE_BYTES, InvalidMessage
from barterbackup.chat.offers import DEFAULT_OFFER_LIFETIME, ReceivedOffer
from barterbackup.chat.outbox import MAX_QUEUED_PER_PEER
from barterbackup.chat.pieces import PIECE_BYTES
from barterbackup.chat.service import MAX_UNREAD_PER_PEER, ChatAttachment
from barterbackup.chat.updates import (
    DELIVERED,
    DONE,
    FAILED,
    NOT_SENT,
    QUEUED,
    ChatEnded,
    ChatUpdate,
    MessageIn,
    MessageStatus,
    Notice,
    OfferIn,
    OfferOut,
    SessionClosed,
    SessionOpened,
    TransferProgress,
)
from barterbackup.peers.pool import RECONNECT_FIRST_DELAY
from barterbackup.testing.link import Direction
from barterbackup.testing.swarm import Swarm, SwarmNode

MIB = 1024 * 1024


class Person:
    """One attachment and everything it was told."""

    def __init__(
        self, swarm: Swarm, node: SwarmNode, peer: SwarmNode, plain: bool = False
    ):
        self.updates: list[ChatUpdate] = []
        self.chat: ChatAttachment = swarm.wait(
            node.node.open_chat(peer.address, self.updates.append, plain=plain)
        )
        self._next_action = 1

    def say(self, text: str) -> int:
        action = self._next_action
        self._next_action += 1
        self.chat.send_message(text, action)
        return action

    def of(self, kind: type) -> list[Any]:
        return [u for u in self.updates if isinstance(u, kind)]

    def received(self) -> list[str]:
        return [u.text for u in self.of(MessageIn)]

    def states(self, action: int) -> list[str]:
        return [u.state for u in self.of(MessageStatus) if u.action_id == action]


class ChatSwarmTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.swarm = Swarm(Path(self.mktemp()), 3)
        self.addCleanup(self.swarm.stop)
        self.a, self.b, self.c = self.swarm.nodes
        self.swarm.connect(self.a, self.b)

    def share_key(self, x: SwarmNode, y: SwarmNode) -> str:
        made = self.swarm.wait(x.node.set_chat_key(y.address, generate=True))
        self.assertEqual(len(made.key_text.replace("-", "")), 56)
        got = self.swarm.wait(y.node.set_chat_key(x.address, key_text=made.key_text))
        self.assertEqual(got.fingerprint, made.fingerprint)
        self.assertNotIn(made.key_text, repr(made))
        return str(made.fingerprint)

    def take_offline(self, node: SwarmNode) -> Any:
        """``node`` stops answering: its listener goes, its links are cut."""
        listener = self.swarm.network.listeners.pop(node.address)
        self.swarm.network.cut(node.address)
        return listener

    def bring_back(self, node: SwarmNode, listener: Any) -> None:
        self.swarm.network.listeners[node.address] = listener
        # The pool's backoff doubles after each failed try: a few minutes
        # of swarm time cover it.
        self.swarm.advance(400, step=RECONNECT_FIRST_DELAY)

    # -- keys ----------------------------------------------------------------

    def test_keys_are_set_stored_sealed_and_shown_as_fingerprints(self) -> None:
        fingerprint = self.share_key(self.a, self.b)
        [info] = [p for p in self.a.node.peers() if p.onion_address == self.b.address]
        self.assertEqual(info.chat_key_fingerprint, fingerprint)
        # A key for a peer never seen creates its record.
        made = self.swarm.wait(self.a.node.set_chat_key(self.c.address, generate=True))
        self.assertIn(self.c.address, [p.onion_address for p in self.a.node.peers()])
        secret = self.a.session.records.aead_key(self.c.pubkey)
        self.assertNotIn(
            secret, (self.a.node.node_dir / "metadata.sealed").read_bytes()
        )
        cleared = self.swarm.wait(self.a.node.set_chat_key(self.c.address, clear=True))
        self.assertEqual(cleared.fingerprint, "")
        self.assertIsNone(self.a.session.records.aead_key(self.c.pubkey))
        self.assertTrue(made.fingerprint)

    def test_bad_keys_are_refused_without_showing_them(self) -> None:
        typed = "ABCD-EFGH-IJKL-MNOP"
        with self.assertRaises(errors.InvalidArgument) as caught:
            self.swarm.wait(self.a.node.set_chat_key(self.b.address, key_text=typed))
        self.assertNotIn("ABCD", str(caught.exception))
        with self.assertRaises(errors.InvalidArgument):
            self.swarm.wait(self.a.node.set_chat_key(self.b.address, key=b"short"))
        with self.assertRaises(errors.InvalidArgument):
            self.swarm.wait(
                self.a.node.set_chat_key(self.b.address, generate=True, clear=True)
            )
        with self.assertRaises(errors.InvalidArgument):
            self.swarm.wait(self.a.node.set_chat_key(self.a.address, generate=True))
        with self.assertRaises(errors.InvalidArgument):
            self.swarm.wait(self.a.node.set_chat_key("nonsense.onion", generate=True))

    # -- messages ----------------------------------------------------------------

    def test_messages_both_ways_in_order_on_one_encrypted_session(self) -> None:
        fingerprint = self.share_key(self.a, self.b)
        alice = Person(self.swarm, self.a, self.b)
        bob = Person(self.swarm, self.b, self.a)
        [opened] = alice.of(SessionOpened)
        self.assertTrue(opened.encrypted and opened.initiated)
        self.assertEqual(opened.fingerprint, fingerprint)
        # Bob joined the session Alice opened instead of opening another.
        [joined] = bob.of(SessionOpened)
        self.assertEqual((joined.initiated, joined.fingerprint), (False, fingerprint))
        [overview] = self.a.node.chat_overview()
        self.assertEqual(overview.sessions, ["encrypted, opened by us, open"])
        sent = [alice.say(f"to bob {i}") for i in range(20)]
        replies = [bob.say(f"to alice {i}") for i in range(20)]
        self.assertEqual(bob.received(), [f"to bob {i}" for i in range(20)])
        self.assertEqual(alice.received(), [f"to alice {i}" for i in range(20)])
        for action in sent:
            self.assertEqual(alice.states(action)[-1], DELIVERED)
        for action in replies:
            self.assertEqual(bob.states(action)[-1], DELIVERED)
        self.assertTrue(all(m.encrypted for m in bob.of(MessageIn)))
        # Alice leaves: Bob is told, and nothing lingers.
        alice.chat.stop("bye")
        self.assertIsInstance(alice.updates[-1], ChatEnded)
        [closed] = bob.of(SessionClosed)
        self.assertEqual(
            (closed.reason, closed.by_peer, closed.cut), ("bye", True, False)
        )

    def test_messages_for_nobody_wait_in_memory_bounded(self) -> None:
        self.share_key(self.a, self.b)
        alice = Person(self.swarm, self.a, self.b)
        count = MAX_UNREAD_PER_PEER + 10
        for i in range(count):
            alice.say(f"m{i}")
        # Delivered to Bob's node (acknowledged) although nobody is there.
        self.assertEqual(alice.states(count)[-1], DELIVERED)
        [overview] = self.b.node.chat_overview()
        self.assertEqual(overview.unread, MAX_UNREAD_PER_PEER)
        bob = Person(self.swarm, self.b, self.a)
        [notice] = bob.of(Notice)
        self.assertIn("10 older messages were dropped", notice.text)
        replayed = bob.of(MessageIn)
        self.assertEqual(
            [m.text for m in replayed], [f"m{i}" for i in range(10, count)]
        )
        self.assertTrue(all(m.replayed for m in replayed))
        # Nothing of it was written to disk.
        for path in self.b.node.node_dir.rglob("*"):
            if path.is_file():
                self.assertNotIn(b"m100", path.read_bytes(), path)

    def test_outbox_is_delivered_after_a_reconnect(self) -> None:
        self.share_key(self.a, self.b)
        alice = Person(self.swarm, self.a, self.b)
        listener = self.take_offline(self.b)
        [closed] = alice.of(SessionClosed)
        self.assertTrue(closed.cut)
        actions = [alice.say(f"while away {i}") for i in range(3)]
        for action in actions:
            [status] = [u for u in alice.of(MessageStatus) if u.action_id == action]
            self.assertEqual(
                (status.state, status.detail), (QUEUED, "queued, peer offline")
            )
        [overview] = self.a.node.chat_overview()
        self.assertEqual(
            [q.text for q in overview.queued], [f"while away {i}" for i in range(3)]
        )
        # The outbox is sealed on disk.
        outbox = self.a.node.node_dir / "chat-outbox.sealed"
        self.assertNotIn(b"while away", outbox.read_bytes())
        self.bring_back(self.b, listener)
        bob = Person(self.swarm, self.b, self.a)
        self.assertEqual(bob.received(), [f"while away {i}" for i in range(3)])
        delivered = [u for u in alice.of(MessageStatus) if u.state == DELIVERED]
        self.assertEqual(len(delivered), 3)
        self.assertFalse(outbox.exists())
        [overview] = self.a.node.chat_overview()
        self.assertEqual(overview.queued, [])

    def test_outbox_survives_a_restart_and_delivers_with_nobody_attached(self) -> None:
        self.share_key(self.a, self.b)
        listener = self.take_offline(self.b)
        alice = Person(self.swarm, self.a, self.b)
        alice.say("first")
        alice.say("second")
        alice.chat.stop()
        # Alice's node restarts: the sealed outbox is read back.
        self.swarm.wait(self.a.node.stopService())
        self.a = self.swarm.add_node(self.a.node.node_dir, 0)
        self.swarm.network.listeners[self.b.address] = listener
        # After a restart every peer of the table is dialled again.
        self.swarm.advance(5)
        [overview] = [
            o for o in self.b.node.chat_overview() if o.peer == self.a.address
        ]
        self.assertEqual(overview.unread, 2)
        # The session opened only to deliver stopped once it had.
        self.assertEqual(overview.sessions, [])
        self.assertEqual(self.a.node.chat_overview(), [])
        bob = Person(self.swarm, self.b, self.a)
        self.assertEqual(bob.received(), ["first", "second"])

    def test_bounds_on_messages_and_the_outbox(self) -> None:
        self.share_key(self.a, self.b)
        alice = Person(self.swarm, self.a, self.b)
        with self.assertRaises(InvalidMessage):
            alice.chat.send_message("x" * (MAX_MESSAGE_BYTES + 1))
        with self.assertRaises(InvalidMessage):
            alice.chat.send_message("bell \x07")
        alice.say("x" * MAX_MESSAGE_BYTES)
        self.assertEqual(alice.states(1)[-1], DELIVERED)
        self.take_offline(self.b)
        for i in range(MAX_QUEUED_PER_PEER):
            alice.say(f"q{i}")
        last = alice.say("one too many")
        [status] = [u for u in alice.of(MessageStatus) if u.action_id == last]
        self.assertEqual(status.state, NOT_SENT)
        self.assertIn(f"{MAX_QUEUED_PER_PEER} messages wait", status.detail)

    def test_plain_only_when_asked_for(self) -> None:
        with self.assertRaises(errors.FailedPrecondition) as caught:
            self.swarm.wait(self.a.node.open_chat(self.b.address, lambda u: None))
        self.assertIn("no chat key is set", str(caught.exception))
        alice = Person(self.swarm, self.a, self.b, plain=True)
        bob = Person(self.swarm, self.b, self.a, plain=True)
        [opened] = alice.of(SessionOpened)
        self.assertFalse(opened.encrypted)
        alice.say("in the clear")
        [message] = bob.of(MessageIn)
        self.assertEqual((message.text, message.encrypted), ("in the clear", False))

    def test_a_key_mismatch_is_one_clear_error_on_both_sides(self) -> None:
        self.swarm.wait(self.a.node.set_chat_key(self.b.address, generate=True))
        self.swarm.wait(self.b.node.set_chat_key(self.a.address, generate=True))
        bob_updates: list[ChatUpdate] = []
        bob = self.swarm.wait(self.b.node.open_chat(self.a.address, bob_updates.append))
        alice = Person(self.swarm, self.a, self.b)
        for closed in (
            *alice.of(SessionClosed),
            *[u for u in bob_updates if isinstance(u, SessionClosed)],
        ):
            self.assertTrue(closed.key_mismatch)
            self.assertIn(KEY_MISMATCH_MESSAGE, closed.reason)
        self.assertTrue(alice.of(SessionClosed))
        # A message sent while it cannot go encrypted is queued, not leaked.
        action = alice.say("secret")
        self.assertIn(alice.states(action)[-1], (QUEUED, NOT_SENT))
        self.assertNotIn(
            "secret", [u.text for u in bob_updates if isinstance(u, MessageIn)]
        )
        bob.stop()


class OfferSwarmTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.swarm = Swarm(Path(self.mktemp()), 3)
        self.addCleanup(self.swarm.stop)
        self.a, self.b, self.c = self.swarm.nodes
        self.swarm.connect(self.a, self.b)
        self.swarm.connect(self.c, self.a)
        for x, y in ((self.a, self.b), (self.a, self.c)):
            made = self.swarm.wait(x.node.set_chat_key(y.address, generate=True))
            self.swarm.wait(y.node.set_chat_key(x.address, key_text=made.key_text))
        self.alice = Person(self.swarm, self.a, self.b)
        self.bob = Person(self.swarm, self.b, self.a)
        self.shared = Path(self.mktemp()).resolve()
        self.shared.mkdir()
        self.inbox = Path(self.mktemp()).resolve()
        self.inbox.mkdir()

    def offer(self, data: bytes, name: str = "report.pdf") -> OfferIn:
        path = (self.shared / name).resolve()
        path.write_bytes(data)
        self.alice.chat.offer_file(str(path), 7)
        [made] = self.alice.of(OfferOut)
        self.assertEqual((made.action_id, made.offer.size), (7, len(data)))
        [offered] = self.bob.of(OfferIn)
        self.assertEqual(offered.offer.offer_id, made.offer.offer_id)
        self.assertEqual(offered.offer.sha256, hashlib.sha256(data).hexdigest())
        return offered

    def link_between(self, x: SwarmNode, y: SwarmNode) -> Any:
        [link] = [
            link
            for client, server, link in self.swarm.network.links
            if not link.closed and {client, server} == {x.address, y.address}
        ]
        return link

    def progress(self) -> list[TransferProgress]:
        return self.bob.of(TransferProgress)

    def test_an_offer_is_fetched_verified_and_renamed(self) -> None:
        data = os.urandom(3 * PIECE_BYTES + 1234)
        offered = self.offer(data)
        [listed] = [o for o in self.b.node.chat_overview() if o.peer == self.a.address]
        self.assertEqual([o.name for o in listed.offers_received], ["report.pdf"])
        self.bob.chat.accept_file(offered.offer.offer_id[:6], str(self.inbox), 9)
        final = self.progress()[-1]
        self.assertEqual((final.phase, final.action_id), (DONE, 9))
        self.assertEqual(final.path, str(self.inbox / "report.pdf"))
        self.assertEqual((self.inbox / "report.pdf").read_bytes(), data)
        self.assertEqual(final.bytes_done, len(data))
        # Fetched offers leave the list; a second file of that name would
        # not overwrite this one (receiving.py numbers it).
        [listed] = [o for o in self.b.node.chat_overview() if o.peer == self.a.address]
        self.assertEqual(listed.offers_received, [])
        self.assertIn(
            f"the peer fetched report.pdf ({len(data)} bytes)",
            [n.text for n in self.alice.of(Notice)],
        )

    def test_a_tampered_piece_is_refused_and_the_rest_resumes(self) -> None:
        data = os.urandom(3 * PIECE_BYTES)
        offered = self.offer(data)
        link = self.link_between(self.a, self.b)
        pieces = [0]

        def flip_second_piece(envelope: bbrpc_pb2.Envelope) -> bbrpc_pb2.Envelope:
            if envelope.WhichOneof("body") == "encrypted_download_response":
                pieces[0] += 1
                if pieces[0] == 2:
                    sealed = bytearray(envelope.encrypted_download_response.sealed)
                    sealed[100] ^= 1
                    envelope.encrypted_download_response.sealed = bytes(sealed)
            return envelope

        # Alice dialled Bob: her pieces travel to the server side.
        link.tamper(Direction.to_server, flip_second_piece)
        self.bob.chat.accept_file(offered.offer.offer_id, str(self.inbox))
        failed = self.progress()[-1]
        self.assertEqual(failed.phase, FAILED)
        self.assertIn("failed authentication", failed.message)
        self.assertFalse((self.inbox / "report.pdf").exists())
        # Only the verified first piece was kept; fetching again resumes.
        part = self.inbox / "report.pdf.part"
        self.assertEqual(part.stat().st_size, PIECE_BYTES)
        link.tamper(Direction.to_server, None)
        self.bob.chat.accept_file(offered.offer.offer_id, str(self.inbox))
        self.assertEqual(self.progress()[-1].phase, DONE)
        self.assertEqual((self.inbox / "report.pdf").read_bytes(), data)

    def test_hostile_names_are_made_safe(self) -> None:
        data = b"not what it says"
        path = self.shared / "innocent.txt"
        path.write_bytes(data)
        # Alice's node plays the hostile peer: any name can be sent.
        service = self.a.session.chat
        for hostile in ("../../x.sh", "/etc/passwd", "evil\x1b[31m\u202egpj.exe"):
            offer = service.offers.offer(
                self.b.pubkey,
                path,
                len(data),
                hashlib.sha256(data).digest(),
                name=hostile,
            )
            live = service._conversations[self.b.pubkey].sending_session(
                self.alice.chat.mode
            )
            live.session.offer_file(offer)
        names = [o.offer.name for o in self.bob.of(OfferIn)]
        self.assertEqual(names, ["x.sh", "passwd", "evil[31mgpj.exe"])
        shown = [o.offer.offered_name for o in self.bob.of(OfferIn)]
        self.assertTrue(
            all("\x1b" not in name and "\u202e" not in name for name in shown)
        )
        for offered in self.bob.of(OfferIn):
            self.bob.chat.accept_file(offered.offer.offer_id, str(self.inbox))
        self.assertEqual(
            sorted(p.name for p in self.inbox.iterdir()),
            ["evil[31mgpj.exe", "passwd", "x.sh"],
        )

    def test_another_peer_cannot_use_an_offer(self) -> None:
        offered = self.offer(b"for bob only")
        received = self.b.session.chat.incoming.find(offered.offer.offer_id)
        # Carol (who holds a key with Alice) names Bob's offer id.
        stolen = ReceivedOffer(
            received.offer_id,
            self.a.pubkey,
            received.name,
            received.offered_name,
            received.size,
            received.sha256,
            received.expires_at,
        )
        conn = self.c.session.pool.connection(self.a.pubkey)
        fetching = fetch_offer(
            conn,
            stolen,
            self.inbox,
            peer_key=self.c.session.chat.peer_key(self.a.pubkey),
            local_onion=self.c.pubkey,
            random_bytes=os.urandom,
        )
        with self.assertRaises(FetchFailed) as caught:
            self.swarm.wait(_deferred(fetching))
        self.assertIn("no such offer for this peer", str(caught.exception))

    def test_an_expired_offer_is_refused(self) -> None:
        offered = self.offer(b"short-lived")
        received = self.b.session.chat.incoming.find(offered.offer.offer_id)
        self.swarm.clock.advance(DEFAULT_OFFER_LIFETIME + 1)
        with self.assertRaises(ChatError):
            self.bob.chat.accept_file(offered.offer.offer_id, str(self.inbox))
        # Asked anyway, the offering node refuses it.
        fetching = fetch_offer(
            self.b.session.pool.connection(self.a.pubkey),
            received,
            self.inbox,
            peer_key=self.b.session.chat.peer_key(self.a.pubkey),
            local_onion=self.b.pubkey,
            random_bytes=os.urandom,
        )
        with self.assertRaises(FetchFailed) as caught:
            self.swarm.wait(_deferred(fetching))
        self.assertIn("expired", str(caught.exception))

    def test_a_file_of_the_file_set_is_offered_and_resumed(self) -> None:
        data = os.urandom(3 * PIECE_BYTES + 99)
        self.a.write_files({"docs/plan.bin": data})
        self.alice.chat.offer_stored_file("docs/plan.bin", 4)
        [made] = self.alice.of(OfferOut)
        self.assertEqual((made.offer.name, made.offer.size), ("plan.bin", len(data)))
        [offered] = self.bob.of(OfferIn)
        self.assertEqual(offered.offer.sha256, hashlib.sha256(data).hexdigest())
        # Cut after two pieces, then resume: the stored file is read from
        # the offset asked.
        link = self.link_between(self.a, self.b)
        link.cut_after_frames(Direction.to_server, 2)
        self.bob.chat.accept_file(offered.offer.offer_id, str(self.inbox))
        self.assertEqual(self.progress()[-1].phase, FAILED)
        self.assertEqual((self.inbox / "plan.bin.part").stat().st_size, 2 * PIECE_BYTES)
        self.swarm.connect(self.a, self.b)
        self.bob.chat.accept_file(offered.offer.offer_id, str(self.inbox))
        self.assertEqual(self.progress()[-1].phase, DONE)
        self.assertEqual((self.inbox / "plan.bin").read_bytes(), data)

    def test_a_name_not_in_the_file_set_is_refused(self) -> None:
        self.alice.chat.offer_stored_file("nope.txt", 8)
        [notice] = [n for n in self.alice.of(Notice) if n.error]
        self.assertIn("'nope.txt' is not in the file set", notice.text)
        self.assertEqual(self.bob.of(OfferIn), [])

    def test_relative_paths_and_unknown_offers_are_refused(self) -> None:
        with self.assertRaises(ChatError):
            self.alice.chat.offer_file("relative/file.txt")
        with self.assertRaises(ChatError):
            self.bob.chat.accept_file("abcd", "relative")
        with self.assertRaises(ChatError):
            self.bob.chat.accept_file("abcd", str(self.inbox))
        self.alice.chat.offer_file(str(self.shared / "missing.bin"), 3)
        [notice] = [n for n in self.alice.of(Notice) if n.error]
        self.assertIn("cannot read", notice.text)
        self.assertEqual(notice.action_id, 3)


def _deferred(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


class SequentialReaderTests(SynchronousTestCase):
    def test_pieces_in_order_from_any_offset(self) -> None:
        data = os.urandom(10_000)
        opened: list[int] = []

        def open_file() -> Any:
            opened.append(1)
            return iter([data[i : i + 777] for i in range(0, len(data), 777)])

        read = SequentialReader(open_file)
        path = Path("stored")
        self.assertEqual(read(path, 0, 1000), data[:1000])
        self.assertEqual(read(path, 1000, 4000), data[1000:5000])
        # A resumed download starts further on: skipped once, read on.
        self.assertEqual(read(path, 6000, 3000), data[6000:9000])
        self.assertEqual(read(path, 9000, 5000), data[9000:])
        self.assertEqual(read(path, 10_000, 10), b"")
        self.assertEqual(len(opened), 1)
        # Going back opens the file again.
        self.assertEqual(read(path, 10, 10), data[10:20])
        self.assertEqual(len(opened), 2)
