"""Main password → master secret (Argon2id) → subkeys (HKDF-SHA-256).

Everything here is deterministic: after a total loss, the same main password
must give the same onion address and the same keys, or the node could not
find or read its own backups. The master secret stays in memory only.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field

import nacl.signing
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from barterbackup.keys import onion

# RFC 9106 §4, second recommended option: t=3, p=4, m=64 MiB (0.12-0.17 s
# here). Fixed forever: changing any of these changes every derived key.
ARGON2_ITERATIONS = 3
ARGON2_LANES = 4
ARGON2_MEMORY_KIB = 64 * 1024
# The salt is fixed (a recovering user has nothing but the password) and
# domain-separated, so our hashes are useless against other systems.
ARGON2_SALT = hashlib.sha256(b"barterbackup v1 main password salt").digest()[:16]
MASTER_LENGTH = 32

# One HKDF info label per purpose; never reuse one for two purposes.
LABEL_PREFIX = b"barterbackup v1 key: "
LABEL_ONION_SEED = "onion ed25519 seed"
LABEL_METADATA = "metadata aead"
LABEL_MANIFEST = "revision manifest aead"
LABEL_CONTENT = "content sections aes-ctr"
LABEL_STORE = "node store aead"
# Seals the chat outbox (messages waiting for a peer that is offline).
LABEL_CHAT_OUTBOX = "chat outbox aead"


class WrongPassword(Exception):
    """The password does not open this node directory."""

    def __init__(self) -> None:
        super().__init__("wrong password")


def normalize_password(password: str) -> str:
    """The form of the password that keys are derived from (NFKC).

    Normalizing means the same passphrase typed on another system (other
    keyboard, other Unicode composition) still gives the same keys. The
    strength floor judges this form too: it is what an attacker guesses.
    """
    return unicodedata.normalize("NFKC", password)


def derive_master_secret(password: str) -> bytes:
    """Argon2id of the normalized password (``normalize_password``)."""
    data = normalize_password(password).encode("utf-8")
    kdf = Argon2id(
        salt=ARGON2_SALT,
        length=MASTER_LENGTH,
        iterations=ARGON2_ITERATIONS,
        lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY_KIB,
    )
    return kdf.derive(data)


def hkdf_subkey(master: bytes, label: str, length: int = 32) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=length,
        salt=None,
        info=LABEL_PREFIX + label.encode("ascii"),
    ).derive(master)


@dataclass(frozen=True, repr=False)
class NodeKeys:
    """Every key of one node, derived from its master secret.

    repr() shows only the public address, so a stray log line cannot leak a
    secret.
    """

    _master: bytes = field()
    onion_seed: bytes
    metadata_key: bytes
    manifest_key: bytes
    content_key: bytes
    store_key: bytes

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        """The Ed25519 onion identity key (signs revisions and handshakes)."""
        return nacl.signing.SigningKey(self.onion_seed)

    @property
    def onion_pubkey(self) -> bytes:
        return onion.public_key_from_seed(self.onion_seed)

    @property
    def onion_address(self) -> str:
        return onion.onion_address_from_pubkey(self.onion_pubkey)

    @property
    def tor_private_key(self) -> str:
        """The ``ED25519-V3:...`` blob for Tor's ADD_ONION."""
        return onion.tor_private_key_blob(self.onion_seed)

    def subkey(self, label: str, length: int = 32) -> bytes:
        """A further subkey for a purpose named by ``label``."""
        return hkdf_subkey(self._master, label, length)

    def __repr__(self) -> str:
        return f"<NodeKeys {self.onion_address}>"


def derive_node_keys(password: str) -> NodeKeys:
    """All keys of the node the password belongs to (slow: Argon2id)."""
    return node_keys_from_master(derive_master_secret(password))


def node_keys_from_master(master: bytes) -> NodeKeys:
    return NodeKeys(
        _master=master,
        onion_seed=hkdf_subkey(master, LABEL_ONION_SEED),
        metadata_key=hkdf_subkey(master, LABEL_METADATA),
        manifest_key=hkdf_subkey(master, LABEL_MANIFEST),
        content_key=hkdf_subkey(master, LABEL_CONTENT),
        store_key=hkdf_subkey(master, LABEL_STORE),
    )
