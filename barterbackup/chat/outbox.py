"""Messages waiting for a peer that is offline, sealed on disk.

The outbox is one file, AES-256-GCM sealed (``store/sealed.py``) under a key
the caller passes, rewritten atomically (``store/atomic.py``) on every
change, so a crash leaves the previous or the new outbox, never a mix, and
the disk never holds message text in the clear. It is the only chat text on
disk: a message leaves it once the peer acknowledged it.

Delivery (the caller drives it): when a session with the peer opens, send
``pending(peer)`` in order, each with its ``message_id`` as the session's
delivery token; on the session's MessageDelivered event call
``acknowledge``. A message whose acknowledgement was lost is sent again next
time (at least once, never silently dropped).

Each message remembers whether it must travel encrypted (queued from an
encrypted chat: it is never delivered in the clear, even if the key is
cleared meanwhile) or may go in the clear (queued from a chat the user
asked to be plain).

Bounds: ``MAX_QUEUED_PER_PEER`` (100) messages per peer and
``MAX_QUEUED_TOTAL`` (1000) in all, each at most MAX_MESSAGE_BYTES (16 KiB),
so the file stays under about 16 MiB; a full outbox refuses new messages
(``OutboxFull``) instead of dropping old ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barterbackup.chat.aead import ChatError
from barterbackup.chat.messages import InvalidMessage, validate_message
from barterbackup.chat.offers import Clock
from barterbackup.store.atomic import atomic_delete, atomic_write
from barterbackup.store.sealed import SealedRecordError, open_sealed, seal

MAX_QUEUED_PER_PEER = 100
MAX_QUEUED_TOTAL = 1000
FORMAT_VERSION = 1
ASSOCIATED_DATA = b"barterbackup v1 chat outbox"


class OutboxFull(ChatError):
    """The outbox holds as many messages as it may; nothing was queued."""


class OutboxCorrupt(ChatError):
    """The outbox file does not open: tampered, truncated or another key."""


@dataclass(frozen=True)
class QueuedMessage:
    """One message waiting for its peer."""

    message_id: int
    peer: bytes
    text: str
    queued_at: float
    # encrypted is True when the message may only travel by EncryptedChat.
    encrypted: bool = True


class Outbox:
    """The sealed outbox file at ``path``; loads it if it exists."""

    def __init__(
        self,
        path: Path,
        key: bytes,
        clock: Clock,
        *,
        per_peer: int = MAX_QUEUED_PER_PEER,
        total: int = MAX_QUEUED_TOTAL,
    ) -> None:
        if len(key) != 32:
            raise ValueError("the outbox key is 32 bytes")
        self.path = Path(path)
        self._key = key
        self._clock = clock
        self.per_peer = per_peer
        self.total = total
        self._messages: list[QueuedMessage] = []
        self._next_id = 1
        if self.path.exists():
            self._load()

    def queue(self, peer: bytes, text: str, *, encrypted: bool = True) -> QueuedMessage:
        """Queue ``text`` for ``peer``; durable when this returns.

        ``encrypted`` False lets it travel by a plain Chat. Raises
        InvalidMessage or OutboxFull; nothing changes then.
        """
        if len(peer) != 32:
            raise ValueError("a peer is named by its 32-byte onion key")
        text = validate_message(text)
        if len(self._messages) >= self.total:
            raise OutboxFull(
                f"the outbox holds {self.total} messages already; "
                "wait until peers come online"
            )
        if sum(m.peer == peer for m in self._messages) >= self.per_peer:
            raise OutboxFull(
                f"{self.per_peer} messages wait for this peer already; "
                "wait until it comes online"
            )
        message = QueuedMessage(
            self._next_id, peer, text, self._clock.seconds(), encrypted
        )
        self._save([*self._messages, message], self._next_id + 1)
        return message

    def pending(self, peer: bytes) -> list[QueuedMessage]:
        """Messages waiting for ``peer``, in the order they were queued."""
        return [m for m in self._messages if m.peer == peer]

    def peers(self) -> list[bytes]:
        """Peers with waiting messages, each once, oldest message first."""
        return list(dict.fromkeys(m.peer for m in self._messages))

    def __len__(self) -> int:
        return len(self._messages)

    def acknowledge(self, peer: bytes, message_id: int) -> None:
        """``peer`` received message ``message_id``: forget it (durably)."""
        kept = [
            m
            for m in self._messages
            if not (m.peer == peer and m.message_id == message_id)
        ]
        if len(kept) != len(self._messages):
            self._save(kept, self._next_id)

    def _save(self, messages: list[QueuedMessage], next_id: int) -> None:
        if not messages:
            atomic_delete(self.path)
        else:
            document = {
                "version": FORMAT_VERSION,
                "next_id": next_id,
                "messages": [
                    {
                        "id": m.message_id,
                        "peer": m.peer.hex(),
                        "text": m.text,
                        "queued_at": m.queued_at,
                        "encrypted": m.encrypted,
                    }
                    for m in messages
                ],
            }
            plaintext = json.dumps(document, ensure_ascii=False).encode("utf-8")
            atomic_write(self.path, seal(self._key, plaintext, ASSOCIATED_DATA))
        # Memory follows the disk only once the write succeeded.
        self._messages = messages
        self._next_id = next_id

    def _load(self) -> None:
        try:
            plaintext = open_sealed(
                self._key, self.path.read_bytes(), ASSOCIATED_DATA, "the chat outbox"
            )
        except SealedRecordError as error:
            raise OutboxCorrupt(f"{self.path}: {error}") from None
        try:
            document = json.loads(plaintext.decode("utf-8"))
            messages, next_id = _parse(document)
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            InvalidMessage,
        ) as error:
            raise OutboxCorrupt(f"{self.path} is malformed: {error}") from None
        self._messages = messages
        self._next_id = next_id


def _parse(document: Any) -> tuple[list[QueuedMessage], int]:
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"unknown outbox version {document.get('version')!r}")
    next_id = document["next_id"]
    if not isinstance(next_id, int):
        raise TypeError("next_id is not an integer")
    messages = []
    for entry in document["messages"]:
        message_id, queued_at = entry["id"], entry["queued_at"]
        if not isinstance(message_id, int) or not 0 < message_id < next_id:
            raise ValueError("a message id is out of range")
        if not isinstance(queued_at, int | float):
            raise TypeError("queued_at is not a number")
        encrypted = entry.get("encrypted", True)
        if not isinstance(encrypted, bool):
            raise TypeError("encrypted is not a boolean")
        peer = bytes.fromhex(entry["peer"])
        if len(peer) != 32:
            raise ValueError("a peer key is not 32 bytes")
        messages.append(
            QueuedMessage(
                message_id,
                peer,
                validate_message(entry["text"]),
                queued_at,
                encrypted,
            )
        )
    return messages, next_id
