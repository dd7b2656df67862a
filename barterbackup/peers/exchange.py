"""Asking a peer for the peers it may share (``PeerExchange``).

The answer is outside bytes from a peer that may lie: any number of
strings of any length and content. What we take from it is bounded and
checked before anything else sees it:

* an answer of more than ``MAX_EXCHANGED_PEERS`` addresses is refused
  whole (``BadPeerExchange``): an honest node sends at most that many
  (``shareable_for_exchange``), so a longer list is a peer breaking the
  protocol, and refusing it costs no more than counting;
* each entry must be a v3 onion address (at most ``MAX_ADDRESS_CHARS``
  characters, so a huge string is dropped unread, then the checksum and
  version checked); entries that are not, duplicates (after normalizing
  the case), our own address and the answering peer's own address are
  dropped and counted.

The result is a list of candidates, never a record: a peer we merely heard
of gets no entry in the peer table (issue 13, finding 6), so no peer can
make us keep, or redial, more than the candidates of the one answer the
caller holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from barterbackup._proto import bbrpc_pb2
from barterbackup.keys.onion import (
    ADDRESS_LENGTH,
    SUFFIX,
    InvalidOnionAddress,
    normalize_onion_address,
)

# How many addresses one answer may hold. A node shares the peers its user
# marked ``--share``; a few dozen is a large circle, and 256 addresses of 62
# characters are ~16 KiB, well under the frame limit.
MAX_EXCHANGED_PEERS = 256
# The longest address accepted: 56 base32 characters and ".onion".
MAX_ADDRESS_CHARS = ADDRESS_LENGTH + len(SUFFIX)


class BadPeerExchange(ValueError):
    """A PeerExchange answer breaking the protocol (too many addresses)."""


@dataclass(frozen=True)
class ExchangedPeers:
    """What one answer gave: valid, distinct candidates, and what was not."""

    addresses: tuple[str, ...]
    dropped: int


def shareable_for_exchange(addresses: Iterable[str], asker: str | None) -> list[str]:
    """The answer an honest node gives ``asker``: never the asker itself
    (a peer list is a social graph), at most ``MAX_EXCHANGED_PEERS``."""
    shared: list[str] = []
    for address in addresses:
        if address == asker:
            continue
        if len(shared) == MAX_EXCHANGED_PEERS:
            break
        shared.append(address)
    return shared


def peers_of_exchange(
    response: bbrpc_pb2.PeerExchangeResponse,
    *,
    own_address: str,
    answerer_address: str,
) -> ExchangedPeers:
    """The candidates in ``response``; raises BadPeerExchange for a list
    longer than MAX_EXCHANGED_PEERS (nothing of it is taken)."""
    entries = response.onion_addresses
    # Counted before any entry is looked at.
    if len(entries) > MAX_EXCHANGED_PEERS:
        raise BadPeerExchange(
            f"a peer exchange lists at most {MAX_EXCHANGED_PEERS} addresses, "
            f"not {len(entries)}"
        )
    excluded = {own_address, answerer_address}
    accepted: list[str] = []
    seen: set[str] = set()
    dropped = 0
    for entry in entries:
        address = _valid_address(entry)
        if address is None or address in excluded or address in seen:
            dropped += 1
            continue
        seen.add(address)
        accepted.append(address)
    return ExchangedPeers(tuple(accepted), dropped)


def _valid_address(entry: str) -> str | None:
    # Only the exact shape: no surrounding spaces, no control characters
    # (normalize_onion_address would strip spaces, and its error would
    # quote the entry).
    if len(entry) > MAX_ADDRESS_CHARS or entry != entry.strip():
        return None
    try:
        return normalize_onion_address(entry)
    except InvalidOnionAddress:
        return None


async def ask_peer_exchange(connection: Any, own_address: str) -> ExchangedPeers:
    """Ask the peer at the end of ``connection`` for the peers it shares.

    Fails with the call's error, or with BadPeerExchange.
    """
    call: Deferred[bbrpc_pb2.PeerExchangeResponse] = connection.call(
        "peer_exchange_request", bbrpc_pb2.PeerExchangeRequest()
    )
    response = await call
    return peers_of_exchange(
        response,
        own_address=own_address,
        answerer_address=str(connection.peer_onion_address),
    )
