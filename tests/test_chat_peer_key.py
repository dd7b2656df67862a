"""Chat keys as people handle them: encoding, typos, fingerprints, secrecy."""

from __future__ import annotations

import base64
import pickle
import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.chat import peer_key
from barterbackup.chat.aead import KeyConfirmation, Role, derive_session_keys
from barterbackup.chat.peer_key import PeerKey, PeerKeyError

KEY = bytes(range(32))
keys = st.binary(min_size=32, max_size=32)
ALPHABET = sorted(peer_key.BASE32_ALPHABET)


def compact(text: str) -> str:
    return text.replace("-", "")


class EncodingTests(SynchronousTestCase):
    @given(keys)
    def test_round_trip(self, key: bytes) -> None:
        self.assertEqual(peer_key.decode(peer_key.encode(key)), key)

    def test_stable(self) -> None:
        self.assertEqual(
            peer_key.encode(KEY),
            "AAAQ-EAYE-AUDA-OCAJ-BIFQ-YDIO-B4IB-CEQT-CQKR-MFYY-DENB-WHA5-DYP6-7JEN",
        )

    def test_shape(self) -> None:
        text = peer_key.encode(KEY)
        groups = text.split("-")
        self.assertEqual(len(groups), 14)
        self.assertEqual({len(g) for g in groups}, {4})

    def test_case_spaces_and_line_breaks_do_not_matter(self) -> None:
        text = peer_key.encode(KEY)
        typed = " ".join(text.lower().split("-")[:7]) + "\n" + compact(text)[28:]
        self.assertEqual(peer_key.decode(typed), KEY)

    def test_every_single_character_typo_is_caught(self) -> None:
        text = compact(peer_key.encode(KEY))
        for position, original in enumerate(text):
            for replacement in ALPHABET:
                if replacement == original:
                    continue
                typo = text[:position] + replacement + text[position + 1 :]
                self.assertRaises(PeerKeyError, peer_key.decode, typo)

    def test_every_swap_of_neighbours_is_caught(self) -> None:
        text = compact(peer_key.encode(KEY))
        for position in range(len(text) - 1):
            if text[position] == text[position + 1]:
                continue
            swapped = (
                text[:position]
                + text[position + 1]
                + text[position]
                + text[position + 2 :]
            )
            self.assertRaises(PeerKeyError, peer_key.decode, swapped)

    def test_errors_are_clear_and_never_show_the_key(self) -> None:
        text = compact(peer_key.encode(KEY))
        cases = {
            text[:-1]: "has 55",
            text + "A": "has 57",
            text[:10] + "1" + text[11:]: "character 11",
            text[:-1] + ("A" if text[-1] != "A" else "B"): "typo",
        }
        for typed, expected in cases.items():
            error = self.assertRaises(PeerKeyError, peer_key.decode, typed)
            self.assertIn(expected, str(error))
            self.assertNotIn(text[:8], str(error))
            self.assertNotIn(text[-8:], str(error))

    def test_encode_refuses_other_lengths(self) -> None:
        self.assertRaises(PeerKeyError, peer_key.encode, bytes(31))

    def test_generate_uses_the_random_source(self) -> None:
        first = peer_key.generate(random.Random(1).randbytes)
        self.assertEqual(first, peer_key.generate(random.Random(1).randbytes))
        self.assertEqual(len(first), 32)
        self.assertNotEqual(first, peer_key.generate(random.Random(2).randbytes))
        self.assertRaises(PeerKeyError, peer_key.generate, lambda n: bytes(n - 1))


class FingerprintTests(SynchronousTestCase):
    def test_stable(self) -> None:
        # A fixed vector: changing the fingerprint breaks every comparison
        # people make, so it must never change by accident.
        self.assertEqual(peer_key.fingerprint(KEY), "fe73 6526 397c ae89")

    def test_shape_and_independence_from_the_encoding(self) -> None:
        fingerprint = peer_key.fingerprint(KEY)
        self.assertRegex(fingerprint, r"^[0-9a-f]{4}( [0-9a-f]{4}){3}$")
        self.assertNotEqual(peer_key.fingerprint(bytes(32)), fingerprint)


class SecrecyTests(SynchronousTestCase):
    def forms_of_the_key(self) -> list[str]:
        encoded = peer_key.encode(KEY)
        return [
            KEY.hex(),
            repr(KEY),
            encoded,
            compact(encoded)[:12],
            base64.b64encode(KEY).decode(),
        ]

    def assert_no_key(self, text: str) -> None:
        for form in self.forms_of_the_key():
            self.assertNotIn(form, text)

    def test_peer_key_never_shows_itself(self) -> None:
        key = PeerKey(KEY)
        self.assert_no_key(repr(key))
        self.assert_no_key(str(key))
        self.assert_no_key(f"{key}")
        self.assertIn(peer_key.fingerprint(KEY), repr(key))
        self.assertRaises(TypeError, pickle.dumps, key)

    def test_objects_holding_keys_never_show_them(self) -> None:
        key = PeerKey(KEY)
        handshake = KeyConfirmation(
            peer_key=key,
            role=Role.INITIATOR,
            local_onion=bytes(32),
            remote_onion=bytes(range(32, 64)),
            random_bytes=random.Random(0).randbytes,
            max_plaintext=100,
        )
        handshake.receive_hello(bytes(range(1, 33)))
        self.assert_no_key(repr(handshake))
        keys_repr = repr(
            derive_session_keys(key, handshake._transcript)  # type: ignore[arg-type]
        )
        self.assertEqual(keys_repr, "SessionKeys(<secret>)")

    def test_equality_is_by_value(self) -> None:
        self.assertEqual(PeerKey(KEY), PeerKey(bytes(KEY)))
        self.assertNotEqual(PeerKey(KEY), PeerKey(bytes(32)))
        self.assertRaises(PeerKeyError, PeerKey, b"short")
