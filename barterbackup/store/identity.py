"""The node directory's identity file: which onion address lives here.

It holds only public facts (format line and onion address). Unlock compares
the address derived from the password with it, so a mistyped password is
reported as "wrong password" before anything is written or opened.
"""

from __future__ import annotations

from pathlib import Path

from barterbackup.keys.onion import InvalidOnionAddress, normalize_onion_address
from barterbackup.store.atomic import atomic_write

IDENTITY_FILENAME = "identity"
FORMAT_LINE = "barterbackup-node 1"
# The file is the format line and an address (~83 bytes): anything much
# longer is not ours, and is refused without reading it whole.
MAX_IDENTITY_BYTES = 1024


class CorruptIdentity(ValueError):
    """The identity file exists but is not one we wrote."""


def identity_path(node_dir: Path) -> Path:
    return Path(node_dir) / IDENTITY_FILENAME


def read_identity(node_dir: Path) -> str | None:
    """The onion address this node directory belongs to, or None if new."""
    path = identity_path(node_dir)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_IDENTITY_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_IDENTITY_BYTES:
        raise CorruptIdentity(f"{path} is not a barterbackup identity file")
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise CorruptIdentity(f"{path} is not a barterbackup identity file") from None
    if len(lines) != 2 or lines[0] != FORMAT_LINE:
        raise CorruptIdentity(f"{path} is not a barterbackup identity file")
    try:
        return normalize_onion_address(lines[1])
    except InvalidOnionAddress:
        raise CorruptIdentity(f"{path} holds an invalid onion address") from None


def write_identity(node_dir: Path, onion_address: str) -> None:
    text = f"{FORMAT_LINE}\n{onion_address}\n"
    atomic_write(identity_path(node_dir), text.encode("ascii"), mode=0o644)
