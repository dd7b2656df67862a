"""File offers: who may download what and until when; safe offered names."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.chat.offers import (
    DEFAULT_OFFER_LIFETIME,
    MAX_NAME_BYTES,
    MAX_OFFER_LIFETIME,
    MAX_OFFER_SIZE,
    IncomingOffers,
    OfferRefused,
    OfferTable,
    UnsafeName,
    describe_file,
    escaped_for_display,
    safe_name,
)

ALICE = bytes(range(32))
BOB = bytes(range(1, 33))
CAROL = bytes(range(2, 34))
SHA = bytes(32)


def table(clock: Clock, **bounds: int) -> OfferTable:
    return OfferTable(clock, random.Random(0).randbytes, **bounds)


class OfferTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.offers = table(self.clock)

    def make(self, peer: bytes = BOB, size: int = 1000) -> bytes:
        return self.offers.offer(peer, Path("/tmp/report.pdf"), size, SHA).offer_id

    def test_the_peer_it_was_made_to_may_download(self) -> None:
        offer_id = self.make()
        offer = self.offers.authorise(BOB, offer_id, 0, 1000)
        self.assertEqual(
            (offer.name, offer.size, offer.peer), ("report.pdf", 1000, BOB)
        )
        self.assertEqual(self.offers.authorise(BOB, offer_id, 400, 600), offer)

    def test_another_peer_is_refused_like_an_unknown_offer(self) -> None:
        offer_id = self.make()
        other = self.assertRaises(
            OfferRefused, self.offers.authorise, CAROL, offer_id, 0, 1
        )
        unknown = self.assertRaises(
            OfferRefused, self.offers.authorise, BOB, bytes(16), 0, 1
        )
        self.assertEqual(str(other), str(unknown))

    def test_expired_offer_is_refused(self) -> None:
        offer_id = self.make()
        self.clock.advance(DEFAULT_OFFER_LIFETIME - 1)
        self.offers.authorise(BOB, offer_id, 0, 1)
        self.clock.advance(1)
        error = self.assertRaises(
            OfferRefused, self.offers.authorise, BOB, offer_id, 0, 1
        )
        self.assertIn("expired", str(error))
        self.assertEqual(self.offers.pending(), [])

    def test_out_of_range_is_refused(self) -> None:
        offer_id = self.make(size=1000)
        for offset, length in ((0, 1001), (1000, 1), (999, 2), (-1, 1), (0, -1)):
            self.assertRaises(
                OfferRefused, self.offers.authorise, BOB, offer_id, offset, length
            )
        self.offers.authorise(BOB, offer_id, 1000, 0)

    def test_bounds_per_peer_and_in_total(self) -> None:
        offers = table(self.clock, per_peer=2, total=3)
        for peer in (BOB, BOB, CAROL):
            offers.offer(peer, Path("f"), 1, SHA)
        self.assertRaises(OfferRefused, offers.offer, ALICE, Path("f"), 1, SHA)
        offers = table(self.clock, per_peer=2, total=3)
        offers.offer(BOB, Path("f"), 1, SHA)
        offers.offer(BOB, Path("f"), 1, SHA)
        self.assertRaises(OfferRefused, offers.offer, BOB, Path("f"), 1, SHA)
        offers.offer(CAROL, Path("f"), 1, SHA)

    def test_expired_offers_free_their_place(self) -> None:
        offers = table(self.clock, per_peer=1, total=1)
        offers.offer(BOB, Path("f"), 1, SHA, lifetime=10)
        self.assertRaises(OfferRefused, offers.offer, BOB, Path("f"), 1, SHA)
        self.clock.advance(10)
        offers.offer(BOB, Path("f"), 1, SHA)

    def test_withdrawn_offer_is_refused(self) -> None:
        offer_id = self.make()
        self.offers.withdraw(offer_id)
        self.assertRaises(OfferRefused, self.offers.authorise, BOB, offer_id, 0, 1)

    def test_arguments_are_checked(self) -> None:
        offer = self.offers.offer
        self.assertRaises(OfferRefused, offer, BOB, Path("f"), MAX_OFFER_SIZE + 1, SHA)
        self.assertRaises(OfferRefused, offer, BOB, Path("f"), 1, bytes(31))
        self.assertRaises(
            OfferRefused, offer, BOB, Path("f"), 1, SHA, lifetime=MAX_OFFER_LIFETIME + 1
        )
        self.assertRaises(OfferRefused, offer, BOB, Path("f"), 1, SHA, lifetime=0)
        self.assertRaises(ValueError, offer, b"short", Path("f"), 1, SHA)
        self.assertEqual(self.offers.pending(), [])

    def test_ids_are_random_and_distinct(self) -> None:
        ids = {self.make() for _ in range(20)}
        self.assertEqual(len(ids), 20)
        self.assertEqual({len(i) for i in ids}, {16})

    def test_proto_announces_the_remaining_lifetime(self) -> None:
        offer = self.offers.offer(BOB, Path("/x/a.txt"), 5, SHA, lifetime=100)
        self.clock.advance(40)
        proto = offer.to_proto(self.clock.seconds())
        self.assertEqual(
            (proto.name, proto.size, proto.offer_id, proto.sha256, proto.expires_in),
            ("a.txt", 5, offer.offer_id, SHA, 60),
        )

    def test_describe_file(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(b"abc")
        size, digest = describe_file(path)
        self.assertEqual(size, 3)
        self.assertEqual(
            digest.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        )


def proto_offer(name: str = "a.txt", **fields: object) -> bbrpc_pb2.ChatFileOffer:
    values: dict[str, object] = {
        "name": name,
        "size": 10,
        "offer_id": bytes(range(16)),
        "sha256": SHA,
        "expires_in": 60,
    }
    values.update(fields)
    return bbrpc_pb2.ChatFileOffer(**values)  # type: ignore[arg-type]


class IncomingOffersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.incoming = IncomingOffers(self.clock, per_peer=2, total=3)

    def test_add_and_find(self) -> None:
        received = self.incoming.add(BOB, proto_offer("../../etc/passwd"))
        self.assertEqual(received.name, "passwd")
        self.assertEqual(received.offered_name, "../../etc/passwd")
        self.assertEqual(self.incoming.find(received.id_text[:6]), received)
        self.assertEqual(self.incoming.find(received.id_text.upper()), received)
        self.assertRaises(OfferRefused, self.incoming.find, received.id_text[:3])
        self.assertRaises(OfferRefused, self.incoming.find, "zzzz")
        self.assertRaises(OfferRefused, self.incoming.find, "ffff")

    def test_another_peers_offer_id_is_not_taken_over(self) -> None:
        first = self.incoming.add(BOB, proto_offer())
        self.assertRaises(OfferRefused, self.incoming.add, CAROL, proto_offer())
        self.assertEqual(self.incoming.pending(), [first])

    def test_malformed_offers_are_refused(self) -> None:
        for bad in (
            proto_offer(offer_id=bytes(15)),
            proto_offer(sha256=bytes(31)),
            proto_offer(size=MAX_OFFER_SIZE + 1),
            proto_offer(expires_in=0),
            proto_offer(name="../.."),
        ):
            self.assertRaises(OfferRefused, self.incoming.add, BOB, bad)
        self.assertEqual(self.incoming.pending(), [])

    def test_lifetime_is_capped_and_expiry_forgets(self) -> None:
        received = self.incoming.add(BOB, proto_offer(expires_in=10**9))
        self.assertEqual(received.expires_at, MAX_OFFER_LIFETIME)
        self.clock.advance(MAX_OFFER_LIFETIME)
        self.assertEqual(self.incoming.pending(), [])
        self.assertIsNone(self.incoming.get(received.offer_id))

    def test_bounds_drop_the_oldest(self) -> None:
        ids = [bytes([i]) * 16 for i in range(4)]
        self.incoming.add(BOB, proto_offer(offer_id=ids[0]))
        self.incoming.add(BOB, proto_offer(offer_id=ids[1]))
        self.incoming.add(BOB, proto_offer(offer_id=ids[2]))
        self.assertEqual([o.offer_id for o in self.incoming.pending()], ids[1:3])
        self.incoming.add(CAROL, proto_offer(offer_id=ids[3]))
        self.incoming.add(CAROL, proto_offer(offer_id=ids[0]))
        self.assertEqual(len(self.incoming.pending()), 3)
        self.assertEqual(len(self.incoming.pending(CAROL)), 2)


class SafeNameTests(SynchronousTestCase):
    def test_hostile_names(self) -> None:
        cases = {
            "../x": "x",
            "/abs": "abs",
            "/etc/passwd": "passwd",
            "a/b": "b",
            "..\\..\\windows\\win.ini": "win.ini",
            ".bashrc": "bashrc",
            "...hidden": "hidden",
            "report.pdf": "report.pdf",
            "a\x1b[31mred": "a[31mred",
            "nul\x00byte": "nulbyte",
            "line\nbreak\r": "linebreak",
            "invoice\u202efdp.exe": "invoicefdp.exe",
            "  spaced . ": "spaced",
            "café": "café",
            "cafe\u0301": "café",
        }
        for offered, expected in cases.items():
            self.assertEqual(safe_name(offered), expected, offered)

    def test_names_with_nothing_left_are_refused(self) -> None:
        for offered in ("", ".", "..", "../..", "/", "a/..", "\x00\x01", "...", " . "):
            self.assertRaises(UnsafeName, safe_name, offered)

    def test_long_names_keep_their_extension(self) -> None:
        name = safe_name("é" * 300 + ".tar")
        self.assertLessEqual(len(name.encode()), MAX_NAME_BYTES)
        self.assertTrue(name.endswith(".tar"))
        name = safe_name("x" * 300)
        self.assertEqual(len(name), MAX_NAME_BYTES)
        name = safe_name("x." + "y" * 300)
        self.assertLessEqual(len(name.encode()), MAX_NAME_BYTES)

    def test_absurdly_long_offers_are_refused(self) -> None:
        self.assertRaises(UnsafeName, safe_name, "x" * 5000)

    @given(st.text(max_size=300))
    def test_any_name_is_safe_or_refused(self, offered: str) -> None:
        try:
            name = safe_name(offered)
        except UnsafeName:
            return
        self.assertTrue(name)
        self.assertNotIn("/", name)
        self.assertNotIn("\\", name)
        self.assertFalse(name.startswith("."))
        self.assertNotIn(name, (".", ".."))
        self.assertLessEqual(len(name.encode("utf-8")), MAX_NAME_BYTES)
        for character in name:
            self.assertNotIn(unicodedata.category(character), ("Cc", "Cf", "Zl", "Zp"))
        directory = Path("/some/dir")
        self.assertEqual((directory / name).parent, directory)

    def test_display_escapes_controls(self) -> None:
        self.assertEqual(escaped_for_display("a\x1b[2Jb"), "a\\x1b[2Jb")
        self.assertEqual(escaped_for_display("x" * 10, limit=3), "xxx…")
