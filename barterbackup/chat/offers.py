"""File offers: the ones we make (``OfferTable``) and the ones we receive.

An offer is a random, unguessable 16-byte id for one file, made to one peer
for a limited time. ``OfferTable.authorise`` is the gate of EncryptedDownload
on the serving side: only the peer the offer was made to, only before it
expires, only bytes within the offered size. The receiving side keeps what
it was offered in ``IncomingOffers`` and names files with ``safe_name``,
because an offered name is whatever the peer chose to send.

Bounds (each per table):

- an offer lives ``DEFAULT_OFFER_LIFETIME`` (1 hour) unless asked for
  otherwise, at most ``MAX_OFFER_LIFETIME`` (24 hours), long enough to
  resume a cut transfer, short enough that a forgotten offer closes itself;
- at most ``MAX_OFFERS_PER_PEER`` (32) live offers per peer and
  ``MAX_OFFERS_TOTAL`` (256) in all, in each direction;
- an offered file is at most ``MAX_OFFER_SIZE`` (64 GiB): a resumed receive
  re-hashes what it holds, which stays under a minute at that size;
- a name is at most ``MAX_OFFERED_NAME_BYTES`` (1024) as sent and
  ``MAX_NAME_BYTES`` (200) once made safe, leaving room for ``" (999)"``
  and ``".part"`` under the usual 255-byte file name limit.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from barterbackup._proto import bbrpc_pb2
from barterbackup.chat.aead import ChatError

OFFER_ID_LENGTH = 16
SHA256_LENGTH = 32
DEFAULT_OFFER_LIFETIME = 3600.0
MAX_OFFER_LIFETIME = 24 * 3600.0
MAX_OFFERS_PER_PEER = 32
MAX_OFFERS_TOTAL = 256
MAX_OFFER_SIZE = 64 * 1024**3
MAX_OFFERED_NAME_BYTES = 1024
MAX_NAME_BYTES = 200
# A long extension is kept whole when a name is shortened, a longer one is
# treated as part of the name.
MAX_KEPT_EXTENSION_BYTES = 16
# Shortest offer-id prefix /get accepts (hex digits).
MIN_OFFER_ID_PREFIX = 4
HASH_CHUNK_BYTES = 1024 * 1024

RandomBytes = Callable[[int], bytes]
# Characters removed from offered names: controls (C0, C1, DEL), format
# characters (bidirectional overrides can disguise ".exe" as ".txt"),
# surrogates, private-use, unassigned, and line/paragraph separators.
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_PATH_SEPARATORS = re.compile(r"[/\\]")


class Clock(Protocol):
    """What offers need of a reactor: ``seconds()`` (task.Clock in tests)."""

    def seconds(self) -> float: ...


class OfferRefused(ChatError):
    """A download or an offer is not allowed; the message says why."""


class UnsafeName(OfferRefused):
    """An offered name has nothing usable left once made safe."""


def safe_name(offered: str) -> str:
    """A file name safe to create in the receiver's chosen directory.

    Keeps only the last path component (``../x``, ``/abs``, ``a/b`` and
    ``a\\b`` all lose their directories), removes control, format and
    separator characters, removes leading dots and spaces (no hidden files,
    no ``..``) and trailing ones, and shortens the name to
    ``MAX_NAME_BYTES`` keeping its extension. Raises UnsafeName when nothing
    is left.
    """
    if len(offered.encode("utf-8", "surrogatepass")) > MAX_OFFERED_NAME_BYTES:
        raise UnsafeName(
            f"an offered name is at most {MAX_OFFERED_NAME_BYTES} bytes long"
        )
    name = unicodedata.normalize("NFC", offered)
    name = _PATH_SEPARATORS.split(name)[-1]
    name = "".join(
        character
        for character in name
        if unicodedata.category(character) not in _REMOVED_CATEGORIES
    )
    name = name.lstrip(". \t").rstrip(". \t")
    name = _shorten(name)
    if not name:
        raise UnsafeName(
            f"the offered name {offered[:60]!r} has nothing usable left once "
            "path parts, control characters and leading dots are removed"
        )
    return name


def _utf8_prefix(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 fits in ``limit`` bytes."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _shorten(name: str) -> str:
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    kept = dot + extension
    if not stem or len(kept.encode("utf-8")) > MAX_KEPT_EXTENSION_BYTES:
        stem, kept = name, ""
    room = MAX_NAME_BYTES - len(kept.encode("utf-8"))
    return (_utf8_prefix(stem, room).rstrip(". \t") + kept).lstrip(". \t")


def escaped_for_display(text: str, limit: int = 200) -> str:
    """``text`` with control and format characters shown as escapes.

    For names and reasons a peer chose, before they reach a terminal.
    """
    shown = []
    for character in text[:limit]:
        if unicodedata.category(character) in _REMOVED_CATEGORIES:
            shown.append(character.encode("unicode_escape").decode("ascii"))
        else:
            shown.append(character)
    return "".join(shown) + ("…" if len(text) > limit else "")


def offer_id_text(offer_id: bytes) -> str:
    """How an offer id is shown to people and typed back (hex)."""
    return offer_id.hex()


def describe_file(path: Path) -> tuple[int, bytes]:
    """Size and SHA-256 of a local file, read in 1 MiB chunks.

    Blocking: large files take size / ~1.5 GB/s; run it off the reactor.
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.digest()


@dataclass(frozen=True)
class Offer:
    """A file we offered to one peer.

    ``path`` is a local file, or with ``stored`` the name of a file of the
    node's own file set (its backed-up files), read back from the content.
    """

    offer_id: bytes
    peer: bytes
    name: str
    size: int
    sha256: bytes
    path: Path
    expires_at: float
    stored: bool = False

    @property
    def id_text(self) -> str:
        return offer_id_text(self.offer_id)

    def to_proto(self, now: float) -> bbrpc_pb2.ChatFileOffer:
        """The ChatFileOffer announcing this offer in a chat session."""
        return bbrpc_pb2.ChatFileOffer(
            name=self.name,
            size=self.size,
            offer_id=self.offer_id,
            sha256=self.sha256,
            expires_in=max(0, int(self.expires_at - now)),
        )


def _check_peer(peer: bytes) -> None:
    if len(peer) != 32:
        raise ValueError(f"a peer is named by its 32-byte onion key, not {len(peer)}")


class OfferTable:
    """The offers this node made, bounded per peer and in total."""

    def __init__(
        self,
        clock: Clock,
        random_bytes: RandomBytes,
        *,
        per_peer: int = MAX_OFFERS_PER_PEER,
        total: int = MAX_OFFERS_TOTAL,
    ) -> None:
        self._clock = clock
        self._random_bytes = random_bytes
        self.per_peer = per_peer
        self.total = total
        self._offers: dict[bytes, Offer] = {}

    def offer(
        self,
        peer: bytes,
        path: Path,
        size: int,
        sha256: bytes,
        *,
        name: str | None = None,
        lifetime: float = DEFAULT_OFFER_LIFETIME,
        stored: bool = False,
    ) -> Offer:
        """Offer the file at ``path`` (``size``, ``sha256`` from describe_file).

        ``name`` defaults to the file's own name; ``stored`` says ``path``
        names a file of the file set. Raises OfferRefused when a bound is
        reached or an argument is out of range; nothing changes then.
        """
        _check_peer(peer)
        shown = Path(path).name if name is None else name
        if not shown or len(shown.encode("utf-8")) > MAX_OFFERED_NAME_BYTES:
            raise OfferRefused(
                f"an offered name has 1 to {MAX_OFFERED_NAME_BYTES} bytes"
            )
        if not 0 <= size <= MAX_OFFER_SIZE:
            raise OfferRefused(f"a file offered is at most {MAX_OFFER_SIZE} bytes")
        if len(sha256) != SHA256_LENGTH:
            raise OfferRefused("an offer's SHA-256 is 32 bytes")
        if not 0 < lifetime <= MAX_OFFER_LIFETIME:
            raise OfferRefused(
                f"an offer lives between 0 and {MAX_OFFER_LIFETIME:.0f} seconds"
            )
        self._prune()
        if len(self._offers) >= self.total:
            raise OfferRefused(
                f"{self.total} offers are open already; withdraw one or wait "
                "for one to expire"
            )
        if sum(o.peer == peer for o in self._offers.values()) >= self.per_peer:
            raise OfferRefused(
                f"{self.per_peer} offers to this peer are open already; "
                "withdraw one or wait for one to expire"
            )
        offer_id = bytes(self._random_bytes(OFFER_ID_LENGTH))
        if len(offer_id) != OFFER_ID_LENGTH or offer_id in self._offers:
            raise OfferRefused("the random source gave an unusable offer id")
        offer = Offer(
            offer_id,
            peer,
            shown,
            size,
            bytes(sha256),
            Path(path),
            self._clock.seconds() + lifetime,
            stored,
        )
        self._offers[offer_id] = offer
        return offer

    def authorise(
        self, peer: bytes, offer_id: bytes, offset: int, length: int
    ) -> Offer:
        """The offer if ``peer`` may download ``offset .. offset + length``.

        Raises OfferRefused otherwise. An offer made to another peer gets
        the same answer as no offer, so ids reveal nothing to others.
        """
        offer = self._offers.get(bytes(offer_id))
        if offer is None or offer.peer != peer:
            raise OfferRefused("there is no such offer for this peer")
        if self._clock.seconds() >= offer.expires_at:
            del self._offers[offer.offer_id]
            raise OfferRefused("the offer has expired; ask for a new one")
        if offset < 0 or length < 0 or offset + length > offer.size:
            raise OfferRefused(
                f"bytes {offset}..{offset + length} are outside the offered "
                f"{offer.size} bytes"
            )
        return offer

    def withdraw(self, offer_id: bytes) -> None:
        self._offers.pop(bytes(offer_id), None)

    def pending(self, peer: bytes | None = None) -> list[Offer]:
        """Live offers (to ``peer``, or to anyone), oldest expiry first."""
        self._prune()
        offers = [o for o in self._offers.values() if peer is None or o.peer == peer]
        return sorted(offers, key=lambda o: o.expires_at)

    def _prune(self) -> None:
        now = self._clock.seconds()
        for offer_id in [i for i, o in self._offers.items() if now >= o.expires_at]:
            del self._offers[offer_id]


@dataclass(frozen=True)
class ReceivedOffer:
    """A file a peer offered us.

    ``name`` is made safe (``safe_name``) and is what the file is stored
    as; ``offered_name`` is exactly what the peer sent: pass it through
    ``escaped_for_display`` before showing it.
    """

    offer_id: bytes
    peer: bytes
    name: str
    offered_name: str
    size: int
    sha256: bytes
    expires_at: float

    @property
    def id_text(self) -> str:
        return offer_id_text(self.offer_id)


class IncomingOffers:
    """Offers peers made to us, bounded per peer and in total.

    When a table is full the oldest offer of that peer (or overall) is
    dropped: a peer cannot lock us out of new offers by flooding.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        per_peer: int = MAX_OFFERS_PER_PEER,
        total: int = MAX_OFFERS_TOTAL,
    ) -> None:
        self._clock = clock
        self.per_peer = per_peer
        self.total = total
        # Insertion order is arrival order: the first entry is the oldest.
        self._offers: dict[bytes, ReceivedOffer] = {}

    def add(self, peer: bytes, offered: bbrpc_pb2.ChatFileOffer) -> ReceivedOffer:
        """Validate and remember an offer; raises OfferRefused if malformed."""
        _check_peer(peer)
        if len(offered.offer_id) != OFFER_ID_LENGTH:
            raise OfferRefused("an offer id is 16 bytes")
        if len(offered.sha256) != SHA256_LENGTH:
            raise OfferRefused("an offer's SHA-256 is 32 bytes")
        if offered.size > MAX_OFFER_SIZE:
            raise OfferRefused(
                f"the offered file is larger than the {MAX_OFFER_SIZE} bytes accepted"
            )
        if offered.expires_in <= 0:
            raise OfferRefused("the offer has already expired")
        name = safe_name(offered.name)
        lifetime = min(float(offered.expires_in), MAX_OFFER_LIFETIME)
        received = ReceivedOffer(
            bytes(offered.offer_id),
            peer,
            name,
            offered.name,
            offered.size,
            bytes(offered.sha256),
            self._clock.seconds() + lifetime,
        )
        self._prune()
        known = self._offers.get(received.offer_id)
        if known is not None and known.peer != peer:
            raise OfferRefused("another peer's offer already has that id")
        self._offers.pop(received.offer_id, None)
        from_peer = [i for i, o in self._offers.items() if o.peer == peer]
        if len(from_peer) >= self.per_peer:
            del self._offers[from_peer[0]]
        if len(self._offers) >= self.total:
            del self._offers[next(iter(self._offers))]
        self._offers[received.offer_id] = received
        return received

    def find(self, text: str, peer: bytes | None = None) -> ReceivedOffer:
        """The live offer whose hex id starts with ``text`` (≥ 4 digits)."""
        prefix = text.strip().lower()
        if len(prefix) < MIN_OFFER_ID_PREFIX or not all(
            c in "0123456789abcdef" for c in prefix
        ):
            raise OfferRefused(
                f"name an offer by at least {MIN_OFFER_ID_PREFIX} hex digits of its id"
            )
        matches = [o for o in self.pending(peer) if o.id_text.startswith(prefix)]
        if not matches:
            raise OfferRefused("no live offer has that id")
        if len(matches) > 1:
            raise OfferRefused("several offers start with that id; type more of it")
        return matches[0]

    def get(self, offer_id: bytes) -> ReceivedOffer | None:
        self._prune()
        return self._offers.get(bytes(offer_id))

    def remove(self, offer_id: bytes) -> None:
        self._offers.pop(bytes(offer_id), None)

    def pending(self, peer: bytes | None = None) -> list[ReceivedOffer]:
        self._prune()
        return [o for o in self._offers.values() if peer is None or o.peer == peer]

    def _prune(self) -> None:
        now = self._clock.seconds()
        for offer_id in [i for i, o in self._offers.items() if now >= o.expires_at]:
            del self._offers[offer_id]
