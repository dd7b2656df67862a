"""The key hierarchy: main password → master secret → every subkey.

Nothing else in barterbackup derives keys. See docs/keys.md.
"""

from barterbackup.keys.derive import NodeKeys, WrongPassword, derive_node_keys
from barterbackup.keys.onion import (
    InvalidOnionAddress,
    onion_address_from_pubkey,
    pubkey_from_onion_address,
)
from barterbackup.keys.strength import (
    WeakPassword,
    check_password_strength,
    generate_passphrase,
)

__all__ = [
    "InvalidOnionAddress",
    "NodeKeys",
    "WeakPassword",
    "WrongPassword",
    "check_password_strength",
    "derive_node_keys",
    "generate_passphrase",
    "onion_address_from_pubkey",
    "pubkey_from_onion_address",
]
