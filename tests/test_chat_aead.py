"""The chat AEAD layer: key confirmation, and frames refused unless exact."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.chat.aead import (
    FRAME_OVERHEAD,
    KEY_MISMATCH_MESSAGE,
    NONCE_LENGTH,
    ChatError,
    ChatKeyMismatch,
    FrameRefused,
    KeyConfirmation,
    Role,
    SecureChannel,
    StreamCut,
    sealed_length,
)
from barterbackup.chat.peer_key import PeerKey

INITIATOR_ONION = bytes(range(32))
RESPONDER_ONION = bytes(range(100, 132))
KEY = PeerKey(bytes(range(7, 39)))
OTHER_KEY = PeerKey(bytes(range(8, 40)))
MAX_PLAINTEXT = 4096


def handshakes(
    initiator_key: PeerKey | None, responder_key: PeerKey | None, seed: int = 0
) -> tuple[KeyConfirmation, KeyConfirmation]:
    rng = random.Random(seed)
    initiator = KeyConfirmation(
        peer_key=initiator_key,
        role=Role.INITIATOR,
        local_onion=INITIATOR_ONION,
        remote_onion=RESPONDER_ONION,
        random_bytes=rng.randbytes,
        max_plaintext=MAX_PLAINTEXT,
    )
    responder = KeyConfirmation(
        peer_key=responder_key,
        role=Role.RESPONDER,
        local_onion=RESPONDER_ONION,
        remote_onion=INITIATOR_ONION,
        random_bytes=rng.randbytes,
        max_plaintext=MAX_PLAINTEXT,
    )
    return initiator, responder


def channels(seed: int = 0) -> tuple[SecureChannel, SecureChannel]:
    initiator, responder = handshakes(KEY, KEY, seed)
    from_initiator = initiator.receive_hello(responder.local_nonce)
    from_responder = responder.receive_hello(initiator.local_nonce)
    return (
        initiator.receive_confirmation(from_responder),
        responder.receive_confirmation(from_initiator),
    )


class KeyConfirmationTests(SynchronousTestCase):
    def test_same_key_gives_one_session_both_sides(self) -> None:
        initiator, responder = channels()
        self.assertEqual(initiator.session_id, responder.session_id)
        sealed = initiator.outgoing.seal(b"hello")
        self.assertEqual(responder.incoming.open(sealed).plaintext, b"hello")
        sealed = responder.outgoing.seal(b"back", final=True)
        frame = initiator.incoming.open(sealed)
        self.assertEqual((frame.plaintext, frame.final), (b"back", True))

    def assert_mismatch_both_sides(
        self, initiator_key: PeerKey | None, responder_key: PeerKey | None
    ) -> None:
        initiator, responder = handshakes(initiator_key, responder_key)
        from_initiator = initiator.receive_hello(responder.local_nonce)
        from_responder = responder.receive_hello(initiator.local_nonce)
        for side, theirs in ((initiator, from_responder), (responder, from_initiator)):
            error = self.assertRaises(
                ChatKeyMismatch, side.receive_confirmation, theirs
            )
            self.assertTrue(str(error).startswith(KEY_MISMATCH_MESSAGE))

    def test_wrong_key_fails_on_both_sides(self) -> None:
        self.assert_mismatch_both_sides(KEY, OTHER_KEY)

    def test_missing_key_fails_on_both_sides(self) -> None:
        self.assert_mismatch_both_sides(KEY, None)
        self.assert_mismatch_both_sides(None, KEY)

    def test_reflected_confirmation_is_refused(self) -> None:
        # Sending a side its own confirmation back must not open a session.
        initiator, responder = handshakes(KEY, KEY)
        own = initiator.receive_hello(responder.local_nonce)
        self.assertRaises(ChatKeyMismatch, initiator.receive_confirmation, own)

    def test_echoed_hello_is_refused(self) -> None:
        initiator, _ = handshakes(KEY, KEY)
        self.assertRaises(FrameRefused, initiator.receive_hello, initiator.local_nonce)

    def test_confirmation_before_hello_is_refused(self) -> None:
        initiator, _ = handshakes(KEY, KEY)
        self.assertRaises(FrameRefused, initiator.receive_confirmation, bytes(32))

    def test_malformed_hello_is_refused(self) -> None:
        initiator, _ = handshakes(KEY, KEY)
        self.assertRaises(FrameRefused, initiator.receive_hello, bytes(31))

    def test_each_session_has_fresh_keys(self) -> None:
        first, _ = channels(seed=1)
        second, _ = channels(seed=2)
        self.assertNotEqual(first.session_id, second.session_id)
        self.assertNotEqual(first.outgoing.seal(b"same"), second.outgoing.seal(b"same"))


class FrameTests(SynchronousTestCase):
    def test_round_trip_many_frames(self) -> None:
        initiator, responder = channels()
        messages = [bytes([i]) * i for i in range(50)]
        for message in messages:
            self.assertEqual(
                responder.incoming.open(initiator.outgoing.seal(message)).plaintext,
                message,
            )

    def test_nonces_never_repeat_and_name_the_direction(self) -> None:
        initiator, responder = channels()
        nonces = [initiator.outgoing.seal(b"x")[:NONCE_LENGTH] for _ in range(200)]
        nonces += [responder.outgoing.seal(b"x")[:NONCE_LENGTH] for _ in range(200)]
        self.assertEqual(len(set(nonces)), 400)
        self.assertEqual({n[0] for n in nonces[:200]}, {1})
        self.assertEqual({n[0] for n in nonces[200:]}, {2})

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=64), st.data())
    def test_every_flipped_bit_is_refused(
        self, message: bytes, data: st.DataObject
    ) -> None:
        initiator, responder = channels()
        sealed = bytearray(initiator.outgoing.seal(message))
        bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
        sealed[bit // 8] ^= 1 << (bit % 8)
        self.assertRaises(FrameRefused, responder.incoming.open, bytes(sealed))
        # The session cannot go on after a refusal, not even with good frames.
        self.assertRaises(
            FrameRefused, responder.incoming.open, initiator.outgoing.seal(b"next")
        )

    @settings(max_examples=50, deadline=None)
    @given(st.binary(min_size=1, max_size=16), st.data())
    def test_every_flipped_context_bit_is_refused(
        self, context: bytes, data: st.DataObject
    ) -> None:
        initiator, responder = channels()
        sealed = initiator.outgoing.seal(b"piece", context=context)
        changed = bytearray(context)
        bit = data.draw(st.integers(0, len(context) * 8 - 1))
        changed[bit // 8] ^= 1 << (bit % 8)
        self.assertRaises(
            FrameRefused, responder.incoming.open, sealed, context=bytes(changed)
        )

    def test_replayed_frame_is_refused(self) -> None:
        initiator, responder = channels()
        first = initiator.outgoing.seal(b"one")
        responder.incoming.open(first)
        error = self.assertRaises(FrameRefused, responder.incoming.open, first)
        self.assertIn("replayed", str(error))

    def test_reordered_frame_is_refused(self) -> None:
        initiator, responder = channels()
        initiator.outgoing.seal(b"one")
        second = initiator.outgoing.seal(b"two")
        error = self.assertRaises(FrameRefused, responder.incoming.open, second)
        self.assertIn("out of order", str(error))

    def test_frame_from_the_other_direction_is_refused(self) -> None:
        initiator, _ = channels()
        own = initiator.outgoing.seal(b"mine")
        error = self.assertRaises(FrameRefused, initiator.incoming.open, own)
        self.assertIn("other direction", str(error))

    def test_frame_from_another_session_is_refused(self) -> None:
        first, _ = channels(seed=1)
        _, second = channels(seed=2)
        self.assertRaises(FrameRefused, second.incoming.open, first.outgoing.seal(b"x"))

    def test_truncated_stream_is_reported_as_cut(self) -> None:
        initiator, responder = channels()
        responder.incoming.open(initiator.outgoing.seal(b"one"))
        self.assertRaises(StreamCut, responder.incoming.finish)

    def test_final_frame_ends_the_stream(self) -> None:
        initiator, responder = channels()
        self.assertTrue(
            responder.incoming.open(initiator.outgoing.seal(b"", final=True)).final
        )
        responder.incoming.finish()
        self.assertRaises(ChatError, initiator.outgoing.seal, b"more")

    def test_frame_after_final_is_refused(self) -> None:
        initiator, responder = channels()
        responder.incoming.open(initiator.outgoing.seal(b"end", final=True))
        # The real sealer cannot seal after its final frame; anything that
        # still arrives is refused before it is even looked at.
        error = self.assertRaises(FrameRefused, responder.incoming.open, bytes(40))
        self.assertIn("after the stream's final frame", str(error))

    def test_final_flag_cannot_be_removed(self) -> None:
        initiator, responder = channels()
        sealed = bytearray(initiator.outgoing.seal(b"stop", final=True))
        sealed[1] = 0
        self.assertRaises(FrameRefused, responder.incoming.open, bytes(sealed))

    def test_truncated_frame_is_refused(self) -> None:
        initiator, _ = channels()
        sealed = initiator.outgoing.seal(b"hello")
        for length in (0, NONCE_LENGTH, FRAME_OVERHEAD - 1, len(sealed) - 1):
            _, responder = channels()
            self.assertRaises(FrameRefused, responder.incoming.open, sealed[:length])

    def test_seal_into_writes_what_seal_returns(self) -> None:
        by_seal, _ = channels(seed=3)
        by_seal_into, responder = channels(seed=3)
        expected = by_seal.outgoing.seal(b"piece data", context=b"ctx")
        frame = bytearray(4 + sealed_length(10))
        by_seal_into.outgoing.seal_into(
            memoryview(frame)[4:], b"piece data", context=b"ctx"
        )
        self.assertEqual(bytes(frame[4:]), expected)
        opened = responder.incoming.open(memoryview(frame)[4:], context=b"ctx")
        self.assertEqual(opened.plaintext, b"piece data")
        self.assertRaises(
            ValueError, by_seal_into.outgoing.seal_into, bytearray(10), b"piece data"
        )

    def test_sizes_are_bounded(self) -> None:
        initiator, responder = channels()
        self.assertRaises(ChatError, initiator.outgoing.seal, bytes(MAX_PLAINTEXT + 1))
        initiator.outgoing.seal(bytes(MAX_PLAINTEXT))
        huge = bytes(MAX_PLAINTEXT + FRAME_OVERHEAD + 1)
        error = self.assertRaises(FrameRefused, responder.incoming.open, huge)
        self.assertIn("larger", str(error))
