"""What the chat service tells the people using it: plain records.

A ``ChatService`` attachment (one ``barterbackup chat ONION`` session, say)
receives these through its listener. The node's API re-exports them
(``node/results.py``) and the servicer alone turns them into clirpc
messages. Peers are named by onion address; every text a peer chose has
been escaped for display already.

``action_id`` ties an update to the user action it answers (chosen by the
client, 0 for none): the delivery of a message, the progress of a fetch,
an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from barterbackup.chat.offers import (
    Offer,
    ReceivedOffer,
    escaped_for_display,
    offer_id_text,
)

# Delivery states of a message the user sent.
SENDING = "sending"  # handed to a session that is still opening
SENT = "sent"  # on its way in an open session
DELIVERED = "delivered"  # the peer's node acknowledged it
QUEUED = "queued"  # waiting in the sealed outbox for the peer
NOT_SENT = "not sent"  # refused; ``detail`` says why

# Phases of a fetch (EncryptedDownload of an offer).
FETCHING = "fetching"
DONE = "done"
FAILED = "failed"


@dataclass(frozen=True)
class FileInfo:
    """An offer as people see it (ours or the peer's)."""

    offer_id: str
    name: str
    # offered_name is the name as the peer sent it, escaped; for our own
    # offers it equals name.
    offered_name: str
    size: int
    sha256: str
    expires_at: float

    @classmethod
    def of_received(cls, offer: ReceivedOffer) -> FileInfo:
        return cls(
            offer_id=offer.id_text,
            name=offer.name,
            offered_name=escaped_for_display(offer.offered_name),
            size=offer.size,
            sha256=offer.sha256.hex(),
            expires_at=offer.expires_at,
        )

    @classmethod
    def of_offer(cls, offer: Offer) -> FileInfo:
        return cls(
            offer_id=offer_id_text(offer.offer_id),
            name=offer.name,
            offered_name=offer.name,
            size=offer.size,
            sha256=offer.sha256.hex(),
            expires_at=offer.expires_at,
        )


@dataclass(frozen=True)
class SessionOpened:
    """A session with the peer is open (either side may have opened it)."""

    peer: str
    encrypted: bool
    # fingerprint is the chat key's, to compare by voice; empty when plain.
    fingerprint: str
    # initiated is True when this node opened the session.
    initiated: bool


@dataclass(frozen=True)
class SessionClosed:
    """A session with the peer ended."""

    peer: str
    reason: str
    by_peer: bool
    cut: bool
    # key_mismatch is True when the two sides hold different chat keys.
    key_mismatch: bool = False


@dataclass(frozen=True)
class MessageIn:
    """A message from the peer (control characters escaped)."""

    peer: str
    text: str
    received_at: float
    encrypted: bool
    # replayed is True for a message that arrived while nobody was
    # attached and is shown now.
    replayed: bool = False


@dataclass(frozen=True)
class MessageStatus:
    """What became of a message the user sent (or of a queued one)."""

    peer: str
    action_id: int
    state: str
    detail: str = ""
    # queued_id is the message's id in the outbox, when it is or was there.
    queued_id: int = 0


@dataclass(frozen=True)
class OfferIn:
    """The peer offers a file; fetch it with its id."""

    peer: str
    offer: FileInfo


@dataclass(frozen=True)
class OfferOut:
    """This node offered a file to the peer."""

    peer: str
    action_id: int
    offer: FileInfo


@dataclass(frozen=True)
class TransferProgress:
    """How far fetching an offered file has come."""

    peer: str
    action_id: int
    offer_id: str
    name: str
    phase: str
    bytes_done: int
    bytes_total: int
    # path is where the file was stored, once done.
    path: str = ""
    message: str = ""


@dataclass(frozen=True)
class Notice:
    """Something worth a line: the peer is offline, an action failed, …"""

    peer: str
    text: str
    action_id: int = 0
    # error is True when an action of the user failed (the chat goes on).
    error: bool = False


@dataclass(frozen=True)
class ChatEnded:
    """The attachment is over: the user stopped, or the node is stopping."""

    peer: str
    reason: str


ChatUpdate = (
    SessionOpened
    | SessionClosed
    | MessageIn
    | MessageStatus
    | OfferIn
    | OfferOut
    | TransferProgress
    | Notice
    | ChatEnded
)


@dataclass(frozen=True)
class QueuedInfo:
    """A message waiting in the outbox."""

    queued_id: int
    text: str
    queued_at: float
    encrypted: bool


@dataclass(frozen=True)
class ChatOverview:
    """Chat with one peer as ``barterbackup chat --list`` shows it."""

    peer: str
    connected: bool
    # key_fingerprint is empty when no chat key is set for the peer.
    key_fingerprint: str
    # sessions names each open session: "encrypted, opened by us", ….
    sessions: list[str] = field(default_factory=list)
    attached: int = 0
    unread: int = 0
    queued: list[QueuedInfo] = field(default_factory=list)
    offers_received: list[FileInfo] = field(default_factory=list)
    offers_made: list[FileInfo] = field(default_factory=list)
