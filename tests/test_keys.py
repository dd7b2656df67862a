"""The key hierarchy: derivation, onion addresses, password strength."""

from __future__ import annotations

import base64
import hashlib

import nacl.signing
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.keys import derive, onion, strength
from tests.passwords import OTHER_STRONG, STRONG, WEAK

# Computed by tor 0.4.9 itself: a HiddenServiceDir holding the expanded key of
# this seed made tor write this hostname file.
TOR_SEED = bytes(range(32))
TOR_ADDRESS = "aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4bqead.onion"

_cache: dict[str, derive.NodeKeys] = {}


def keys_for(password: str) -> derive.NodeKeys:
    # Argon2id costs ~0.15 s: derive each test password once per run.
    if password not in _cache:
        _cache[password] = derive.derive_node_keys(password)
    return _cache[password]


class OnionAddressTests(SynchronousTestCase):
    def test_vector_from_tor(self) -> None:
        pubkey = onion.public_key_from_seed(TOR_SEED)
        self.assertEqual(onion.onion_address_from_pubkey(pubkey), TOR_ADDRESS)

    def test_expanded_key_matches_nacl_public_key(self) -> None:
        expanded = onion.expanded_secret_key(TOR_SEED)
        self.assertEqual(len(expanded), 64)
        self.assertEqual(expanded[0] & 7, 0)
        self.assertEqual(expanded[31] & 0xC0, 0x40)
        blob = onion.tor_private_key_blob(TOR_SEED)
        self.assertTrue(blob.startswith("ED25519-V3:"))
        self.assertEqual(base64.b64decode(blob[len("ED25519-V3:") :]), expanded)

    def test_round_trip(self) -> None:
        pubkey = onion.pubkey_from_onion_address(TOR_ADDRESS)
        self.assertEqual(pubkey, onion.public_key_from_seed(TOR_SEED))
        # Without the suffix and in upper case it is the same address.
        self.assertEqual(
            onion.pubkey_from_onion_address(TOR_ADDRESS[:-6].upper()), pubkey
        )

    def test_bad_checksum(self) -> None:
        typo = ("b" if TOR_ADDRESS[0] != "b" else "c") + TOR_ADDRESS[1:]
        with self.assertRaises(onion.InvalidOnionAddress) as caught:
            onion.pubkey_from_onion_address(typo)
        self.assertIn("checksum", str(caught.exception))

    def test_wrong_length_and_alphabet(self) -> None:
        for bad in ("", "abc.onion", TOR_ADDRESS[:-7] + ".onion", "1" * 56 + ".onion"):
            with self.assertRaises(onion.InvalidOnionAddress):
                onion.pubkey_from_onion_address(bad)

    def test_wrong_version(self) -> None:
        pubkey = onion.public_key_from_seed(TOR_SEED)
        checksum = hashlib.sha3_256(b".onion checksum" + pubkey + b"\x02").digest()[:2]
        raw = pubkey + checksum + b"\x02"
        address = base64.b32encode(raw).decode().lower() + ".onion"
        with self.assertRaises(onion.InvalidOnionAddress):
            onion.pubkey_from_onion_address(address)

    @settings(max_examples=50, deadline=None)
    @given(st.binary(min_size=32, max_size=32))
    def test_any_seed_round_trips(self, seed: bytes) -> None:
        pubkey = onion.public_key_from_seed(seed)
        address = onion.onion_address_from_pubkey(pubkey)
        self.assertEqual(len(address), 62)
        self.assertEqual(onion.pubkey_from_onion_address(address), pubkey)


class DerivationTests(SynchronousTestCase):
    def test_same_password_same_keys(self) -> None:
        a = keys_for(STRONG)
        b = derive.derive_node_keys(STRONG)
        self.assertEqual(a.onion_address, b.onion_address)
        for name in ("onion_seed", "metadata_key", "manifest_key", "content_key"):
            self.assertEqual(getattr(a, name), getattr(b, name))

    def test_known_vector(self) -> None:
        # Pinned so that a change of parameters or labels (which would make
        # every existing backup unrecoverable) cannot pass unnoticed.
        master = derive.derive_master_secret(STRONG)
        self.assertEqual(
            hashlib.sha256(master).hexdigest()[:16],
            KNOWN_MASTER_HASH_PREFIX,
        )
        self.assertEqual(keys_for(STRONG).onion_address, KNOWN_ADDRESS)

    def test_different_password_different_keys(self) -> None:
        a, b = keys_for(STRONG), keys_for(OTHER_STRONG)
        self.assertNotEqual(a.onion_address, b.onion_address)
        self.assertNotEqual(a.content_key, b.content_key)

    def test_subkeys_are_distinct(self) -> None:
        keys = keys_for(STRONG)
        values = [
            keys.onion_seed,
            keys.metadata_key,
            keys.manifest_key,
            keys.content_key,
            keys.store_key,
            keys.subkey("another purpose"),
        ]
        self.assertEqual(len(set(values)), len(values))
        self.assertTrue(all(len(v) == 32 for v in values))

    def test_unicode_normalization(self) -> None:
        composed = "café-" + STRONG
        decomposed = "cafe\u0301-" + STRONG
        self.assertEqual(
            derive.derive_master_secret(composed),
            derive.derive_master_secret(decomposed),
        )

    def test_signing_key_is_the_onion_key(self) -> None:
        keys = keys_for(STRONG)
        signature = keys.signing_key.sign(b"hello").signature
        nacl.signing.VerifyKey(keys.onion_pubkey).verify(b"hello", signature)
        self.assertEqual(
            keys.onion_address, onion.onion_address_from_pubkey(keys.onion_pubkey)
        )

    def test_repr_shows_no_secret(self) -> None:
        keys = keys_for(STRONG)
        text = repr(keys) + str(keys)
        self.assertIn(keys.onion_address, text)
        for secret in (keys.onion_seed, keys.content_key, keys.metadata_key):
            self.assertNotIn(secret.hex(), text)
            self.assertNotIn(repr(secret), text)


class StrengthTests(SynchronousTestCase):
    def test_weak_password_refused(self) -> None:
        for weak in (WEAK, "", "correct horse battery staple", "a" * 100):
            with self.assertRaises(strength.WeakPassword) as caught:
                strength.check_password_strength(weak)
            self.assertIn("too weak", str(caught.exception))
            if weak:
                self.assertNotIn(weak, str(caught.exception))

    def test_strong_password_accepted(self) -> None:
        self.assertGreaterEqual(strength.check_password_strength(STRONG), 80)

    def test_floor_judges_what_keys_derive_from(self) -> None:
        # Superscripts score high as typed but normalize (NFKC) to a weak
        # password, which is what the keys come from and an attacker tries.
        lookalike = "ᵐʸˢᵉᶜʳᵉᵗᵖᵃˢˢʷᵒʳᵈ¹²³⁴⁵⁶ᵃᵇᶜ"
        self.assertGreaterEqual(strength.estimated_bits(lookalike), 80)
        self.assertEqual(
            derive.normalize_password(lookalike), "mysecretpassword123456abc"
        )
        with self.assertRaises(strength.WeakPassword):
            strength.check_password_strength(lookalike)

    def test_generated_passphrases_clear_the_floor(self) -> None:
        phrases = {strength.generate_passphrase() for _ in range(40)}
        self.assertEqual(len(phrases), 40)
        for phrase in phrases:
            self.assertEqual(len(phrase.split("-")), strength.PASSPHRASE_WORDS)
            self.assertGreaterEqual(strength.estimated_bits(phrase), 80)


KNOWN_MASTER_HASH_PREFIX = "e12f37b81f13af39"
KNOWN_ADDRESS = "hxpyrc2zduqf5mkgt6lpxoq3oq7v25yzkziarrdah65oxiraiggxdmid.onion"
