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
from barterbackup.contracts.settings import BookSettings
from barterbackup.progress import Progress

# What restore and check return: the recovery package's records are the
# node API's records.
from barterbackup.recovery.check import (  # noqa: F401 (re-exported)
    CheckOutcome,
    DamagedBlob,
    DamagedFile,
)
from barterbackup.recovery.repair import ContentCheckReport  # noqa: F401
from barterbackup.recovery.restore import (  # noqa: F401 (re-exported)
    FileFailure,
    RestoreOutcome,
)

# A backup run's outcome, the schedule's state and a source folder: the
# sources package's records are the node API's records.
from barterbackup.sources.config import Source  # noqa: F401 (re-exported)
from barterbackup.sources.schedule import (  # noqa: F401 (re-exported)
    RunOutcome,
    RunResult,
    ScheduleState,
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
    # contract_settings shorten the contract timings (--contract-timings).
    contract_settings: BookSettings | None = None
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
    # How many contracts should keep our content, and how many do.
    min_replicas: int = 0
    replicas_current: int = 0
    replicas_older: int = 0
    # Contracts whose most recent spot check passed / failed, and when the
    # most recent one ended (Unix seconds, 0: none).
    checks_passed: int = 0
    checks_failed: int = 0
    last_check: float = 0.0
    # Problems that need the user's attention, one sentence each.
    errors: tuple[str, ...] = ()
    # The recovery in progress (its last overall progress), if one runs.
    recovery: Progress | None = None
    # When the current revision was committed (Unix seconds, 0: none).
    revision_time: float = 0.0
    # The backups: how many source folders, the schedule (None while
    # locked) and the most recent run's outcome.
    source_count: int = 0
    schedule: ScheduleState | None = None
    last_backup: RunOutcome | None = None


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
    audit_score: float = 1.0
    uptime_score: float = 1.0
    checks_passed: int = 0
    checks_failed: int = 0
    last_check: float = 0.0
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
    """What this node keeps for one peer under one contract."""

    onion_address: str
    revision: int
    stored_bytes: int
    granted_bytes: int
    contract_id: bytes = b""
    state: str = ""


@dataclass(frozen=True)
class StorageReport:
    """The storage budget lent to peers, its use and the obligations."""

    total_bytes: int
    min_replicas: int
    used_bytes: int
    free_bytes: int
    obligations: list[Obligation] = field(default_factory=list)
    obligated_bytes: int = 0
    acceptance_policy: str = "known"


@dataclass(frozen=True)
class ContractInfo:
    """One storage contract, as the user sees it."""

    contract_id: bytes
    peer: str
    state: str
    # What the peer keeps of ours at most, and we of theirs.
    our_bytes: int
    their_bytes: int
    # What we store of the peer's content now.
    stored_bytes: int
    # The revision of our content the peer holds (0: none yet).
    peer_revision: int
    audit_score: float
    uptime_score: float
    last_check: float
    last_check_passed: bool
    last_verdict: str
    # When the next scheduled check is due (0: none scheduled).
    next_check: float
    detail: str
    we_proposed: bool
    since: float
    created_at: int


@dataclass(frozen=True)
class CheckReport:
    """The outcome of one spot check asked by the user."""

    contract: ContractInfo
    kind: str
    # None when nothing was judged (unreachable, unanswered).
    passed: bool | None
    verdict: str
    positions: int
    confidence: float
