"""Content ids a peer may Download from us: only while we push them to it.

An offer is made when a push (SetContentRevision) starts and withdrawn when
it ends, completed or not. A replica fetches the blobs of a revision only
during the call that asks it to store that revision, so once it holds the
revision it can never download our content again: in particular not while
we spot-check it, where fetching the bytes from us would let a replica that
lost them pass (docs/contracts.md, "Spot checks").

An offer therefore lives exactly as long as a push, and a push runs only
under a contract in force; after a restart the contract book pushes again
what its contracts still need, which makes the offers again.
"""

from __future__ import annotations

from collections import Counter

from barterbackup.revisions import VerifiedRevision


class OfferedContent:
    """The revisions being pushed to each peer right now."""

    def __init__(self) -> None:
        self._offers: dict[bytes, dict[bytes, VerifiedRevision]] = {}
        # Pushes of one revision to one peer may overlap (a retry queued
        # behind a push still ending): an offer ends with the last of them.
        self._counts: Counter[tuple[bytes, bytes]] = Counter()

    def offer(self, peer_pubkey: bytes, revision: VerifiedRevision) -> None:
        """Let ``peer_pubkey`` download ``revision`` until ``withdraw``."""
        self._offers.setdefault(peer_pubkey, {})[revision.content_id] = revision
        self._counts[(peer_pubkey, revision.content_id)] += 1

    def withdraw(self, peer_pubkey: bytes, content_id: bytes) -> None:
        """End one offer made with ``offer`` (the push ended)."""
        key = (peer_pubkey, content_id)
        if self._counts[key] > 1:
            self._counts[key] -= 1
            return
        self._counts.pop(key, None)
        offers = self._offers.get(peer_pubkey)
        if offers is not None:
            offers.pop(content_id, None)
            if not offers:
                del self._offers[peer_pubkey]

    def lookup(self, peer_pubkey: bytes, content_id: bytes) -> VerifiedRevision | None:
        offers = self._offers.get(peer_pubkey)
        return offers.get(content_id) if offers is not None else None

    def offered_to(self, peer_pubkey: bytes) -> list[bytes]:
        """The content ids ``peer_pubkey`` may download now."""
        return list(self._offers.get(peer_pubkey, {}))

    def is_offered_to_anyone(self, content_id: bytes) -> bool:
        return any(content_id in offers for offers in self._offers.values())
