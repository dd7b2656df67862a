"""What the node API returns: plain domain records.

The servicer (rpc/) is the only place that turns these into clirpc
messages; tests and the no-network swarm read them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from barterbackup import __version__

# What a chat attachment is told, and what `chat --list` shows: the chat
# service's records are the node API's records.
from barterbackup.chat.updates import (  # noqa: F401 (re-exported)
    ChatEnded,
    ChatOverview,
    ChatUpdate,
    FileInfo,
    MessageIn,
    MessageStatus,
    Notice,
    OfferIn,
    OfferOut,
    QueuedInfo,
    SessionClosed,
    SessionOpened,
    TransferProgress,
)
from barterbackup.transport.onion import OnionDefences


@dataclass(frozen=True)
class NodeConfig:
    """How the daemon was started (twistd options)."""

    node_dir: Path
    transport: str = "tor"
    tcp_listen_port: int = 0
    tcp_interface: str = "127.0.0.1"
    tcp_trusted_lan: bool = False
    tor_control: str | None = None
    tor_binary: str = "tor"
    extra_torrc: tuple[tuple[str, str], ...] = ()
    onion_defences: OnionDefences = field(default_factory=OnionDefences)


@dataclass(frozen=True)
class UnlockResult:
    onion_address: str
    created: bool
    # generated_passphrase is set only when the node generated the password.
    generated_passphrase: str = ""

    def __repr__(self) -> str:
        # The generated passphrase is a secret: never in a repr or a log.
        return (
            f"UnlockResult(onion_address={self.onion_address!r}, "
            f"created={self.created!r})"
        )


@dataclass(frozen=True)
class NodeStatus:
    unlocked: bool
    onion_address: str = ""
    revision: int = 0
    file_count: int = 0
    content_length: int = 0
    version: str = __version__
    transport: str = ""
    peer_endpoint: str = ""
    peer_network: str = ""


@dataclass(frozen=True)
class PeerInfo:
    """One known peer, as the user sees it."""

    onion_address: str
    connected: bool
    first_seen: int
    last_seen: int
    rtt_ms: int
    held_revision: int
    stored_bytes: int
    shared_in_exchange: bool
    endpoint: str
    # chat_key_fingerprint is the fingerprint of the peer's chat key, or
    # empty when none is set.
    chat_key_fingerprint: str = ""


@dataclass(frozen=True, repr=False)
class ChatKeyResult:
    """The chat key of a peer after SetAeadKeyForPeer."""

    onion_address: str
    # fingerprint is empty once the key was cleared.
    fingerprint: str
    # key_text is the key as a person passes it on, only when the node
    # generated it (it is shown once and never stored in this form).
    key_text: str = ""

    def __repr__(self) -> str:
        # The key is a secret: never in a repr or a log line.
        return (
            f"ChatKeyResult(onion_address={self.onion_address!r}, "
            f"fingerprint={self.fingerprint!r})"
        )


@dataclass(frozen=True)
class Obligation:
    """What this node stores for one peer."""

    onion_address: str
    revision: int
    stored_bytes: int
    granted_bytes: int


@dataclass(frozen=True)
class StorageReport:
    """The storage budget given to peers, its use and the obligations."""

    total_bytes: int
    per_peer_bytes: int
    min_replicas: int
    used_bytes: int
    free_bytes: int
    obligations: list[Obligation] = field(default_factory=list)
