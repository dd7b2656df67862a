"""The sealed outbox: order, bounds, persistence, tampering; message rules."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.chat.messages import (
    MAX_MESSAGE_BYTES,
    InvalidMessage,
    escape_received,
    validate_message,
)
from barterbackup.chat.outbox import Outbox, OutboxCorrupt, OutboxFull

KEY = bytes(range(32))
BOB = bytes(range(1, 33))
CAROL = bytes(range(2, 34))


class OutboxTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.path = Path(self.mktemp())

    def outbox(self, key: bytes = KEY, **bounds: int) -> Outbox:
        return Outbox(self.path, key, self.clock, **bounds)

    def test_order_is_kept_per_peer(self) -> None:
        outbox = self.outbox()
        for text in ("one", "two", "three"):
            outbox.queue(BOB, text)
        outbox.queue(CAROL, "other")
        self.assertEqual([m.text for m in outbox.pending(BOB)], ["one", "two", "three"])
        self.assertEqual(outbox.peers(), [BOB, CAROL])

    def test_persistence_round_trip(self) -> None:
        outbox = self.outbox()
        self.clock.advance(5)
        first = outbox.queue(BOB, "héllo\nworld")
        outbox.queue(BOB, "second")
        again = self.outbox()
        self.assertEqual(again.pending(BOB), outbox.pending(BOB))
        self.assertEqual(again.pending(BOB)[0], first)
        self.assertEqual(first.queued_at, 5)
        # New ids never collide with the ones loaded.
        third = again.queue(BOB, "third")
        self.assertGreater(third.message_id, outbox.pending(BOB)[-1].message_id)

    def test_plain_allowed_survives_a_reload(self) -> None:
        outbox = self.outbox()
        outbox.queue(BOB, "sealed only")
        outbox.queue(BOB, "may go plain", encrypted=False)
        again = self.outbox()
        self.assertEqual([m.encrypted for m in again.pending(BOB)], [True, False])

    def test_acknowledged_messages_leave_for_good(self) -> None:
        outbox = self.outbox()
        first = outbox.queue(BOB, "one")
        second = outbox.queue(BOB, "two")
        outbox.acknowledge(BOB, first.message_id)
        outbox.acknowledge(CAROL, second.message_id)
        self.assertEqual(self.outbox().pending(BOB), [second])
        outbox.acknowledge(BOB, second.message_id)
        self.assertFalse(self.path.exists())
        self.assertEqual(len(self.outbox()), 0)

    def test_bounds(self) -> None:
        outbox = self.outbox(per_peer=2, total=3)
        outbox.queue(BOB, "1")
        outbox.queue(BOB, "2")
        self.assertRaises(OutboxFull, outbox.queue, BOB, "3")
        outbox.queue(CAROL, "3")
        self.assertRaises(OutboxFull, outbox.queue, CAROL, "4")
        self.assertEqual(len(self.outbox()), 3)

    def test_invalid_messages_change_nothing(self) -> None:
        outbox = self.outbox()
        outbox.queue(BOB, "kept")
        before = self.path.read_bytes()
        for bad in ("", "x" * (MAX_MESSAGE_BYTES + 1), "bell\x07", "\ud800"):
            self.assertRaises(InvalidMessage, outbox.queue, BOB, bad)
        self.assertEqual(self.path.read_bytes(), before)

    def test_text_is_never_on_disk_in_the_clear(self) -> None:
        self.outbox().queue(BOB, "the secret plan")
        self.assertNotIn(b"secret", self.path.read_bytes())
        self.assertNotIn(BOB.hex().encode(), self.path.read_bytes())

    def test_tampered_file_is_refused(self) -> None:
        self.outbox().queue(BOB, "hello")
        data = bytearray(self.path.read_bytes())
        for position in (0, 20, len(data) - 1):
            changed = bytearray(data)
            changed[position] ^= 0x40
            self.path.write_bytes(bytes(changed))
            self.assertRaises(OutboxCorrupt, self.outbox)
        self.path.write_bytes(bytes(data[:10]))
        self.assertRaises(OutboxCorrupt, self.outbox)

    def test_other_key_is_refused(self) -> None:
        self.outbox().queue(BOB, "hello")
        self.assertRaises(OutboxCorrupt, self.outbox, bytes(32))


class MessageTests(SynchronousTestCase):
    def test_allowed(self) -> None:
        for text in (
            "hi",
            "tab\there",
            "two\nlines",
            "emoji 👩‍👩‍👧",
            "x" * MAX_MESSAGE_BYTES,
        ):
            self.assertEqual(validate_message(text), text)
        self.assertEqual(validate_message("é".encode()), "é")

    def test_refused(self) -> None:
        cases = {
            "": "empty",
            "é" * (MAX_MESSAGE_BYTES // 2 + 1): "at most",
            "esc\x1b[2J": "U+001B",
            "cr\r": "U+000D",
            "c1\x85": "U+0085",
            "\ud800": "cannot be encoded",
        }
        for text, expected in cases.items():
            error = self.assertRaises(InvalidMessage, validate_message, text)
            self.assertIn(expected, str(error))
        self.assertRaises(InvalidMessage, validate_message, b"\xff")

    def test_received_controls_are_escaped(self) -> None:
        self.assertEqual(escape_received("a\x1b[2Jb\nc"), "a\\x1b[2Jb\nc")
        self.assertEqual(escape_received("plain"), "plain")
