"""Content ids we asked each peer to store: what that peer may Download."""

from __future__ import annotations

from collections import OrderedDict

from barterbackup.revisions import VerifiedRevision

OFFERS_PER_PEER = 4


class OfferedContent:
    """The last few revisions offered to each peer.

    Only the last few revisions per peer are kept; a peer asked to store an
    older one is asked again (with the newer one) anyway.
    """

    def __init__(self, per_peer: int = OFFERS_PER_PEER) -> None:
        self._per_peer = per_peer
        self._offers: dict[bytes, OrderedDict[bytes, VerifiedRevision]] = {}

    def offer(self, peer_pubkey: bytes, revision: VerifiedRevision) -> None:
        offers = self._offers.setdefault(peer_pubkey, OrderedDict())
        offers[revision.content_id] = revision
        offers.move_to_end(revision.content_id)
        while len(offers) > self._per_peer:
            offers.popitem(last=False)

    def lookup(self, peer_pubkey: bytes, content_id: bytes) -> VerifiedRevision | None:
        offers = self._offers.get(peer_pubkey)
        return offers.get(content_id) if offers is not None else None

    def is_offered_to_anyone(self, content_id: bytes) -> bool:
        return any(content_id in offers for offers in self._offers.values())
