"""Discovering peers: asking the peers we know for the peers they share.

``barterbackup peers discover`` asks known peers (the named ones, else every
known peer connected now) with ``PeerExchange`` and merges the answers:
each candidate once, with who shared it and whether it is already in our
peer table. Nothing is recorded: the user connects the ones they want
(``peers connect``), which is what makes a peer known (issue 13, finding 6).

Bounds: each answer is taken through ``exchange.peers_of_exchange`` (at
most ``MAX_EXCHANGED_PEERS``, each a valid address), each ask gives up after
``ASK_SECONDS``, and the merged list keeps at most ``MAX_DISCOVERED``
candidates; what is cut is counted, never silently lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeout

from barterbackup.keys.onion import onion_address_from_pubkey, pubkey_from_onion_address
from barterbackup.peers.exchange import BadPeerExchange, ask_peer_exchange

# An ask over Tor takes a round trip or two (a dial first, if the peer is
# not connected): a minute is generous and keeps a silent peer from holding
# the command.
ASK_SECONDS = 60.0
# Candidates kept from all answers together: a few answers' worth.
MAX_DISCOVERED = 1024
# Peers asked at once when the user names them.
MAX_ASKED = 64


@dataclass(frozen=True)
class DiscoveredPeer:
    """One peer another peer shared."""

    onion_address: str
    shared_by: tuple[str, ...]
    known: bool


@dataclass(frozen=True)
class Discovery:
    """What the asked peers shared, and which could not be asked."""

    peers: tuple[DiscoveredPeer, ...]
    errors: tuple[str, ...]
    dropped: int


class Connections(Protocol):
    """What discovery needs of the connection pool."""

    def connections(self) -> dict[bytes, Any]: ...

    def dial(self, pubkey: bytes, hint: str = "") -> Deferred[Any]: ...


async def discover(
    pool: Connections,
    clock: Any,
    is_known: Callable[[bytes], bool],
    endpoint_of: Callable[[bytes], str],
    own_address: str,
    targets: Sequence[bytes],
) -> Discovery:
    """Ask ``targets`` (known peers; none: every connected known peer)."""
    if not targets:
        targets = [p for p in pool.connections() if is_known(p)]
    asks = [
        Deferred.fromCoroutine(_ask(pool, clock, endpoint_of, own_address, target))
        for target in targets
    ]
    answers: list[tuple[str, Any]] = await gatherResults(asks)
    shared_by: dict[str, list[str]] = {}
    errors: list[str] = []
    dropped = 0
    for asked, answer in answers:
        if isinstance(answer, str):
            errors.append(f"{asked}: {answer}")
            continue
        dropped += answer.dropped
        for address in answer.addresses:
            if address not in shared_by and len(shared_by) == MAX_DISCOVERED:
                dropped += 1
                continue
            shared_by.setdefault(address, []).append(asked)
    peers = tuple(
        DiscoveredPeer(
            onion_address=address,
            shared_by=tuple(sorted(by)),
            known=is_known(pubkey_from_onion_address(address)),
        )
        for address, by in sorted(shared_by.items())
    )
    return Discovery(peers, tuple(errors), dropped)


async def _ask(
    pool: Connections,
    clock: Any,
    endpoint_of: Callable[[bytes], str],
    own_address: str,
    target: bytes,
) -> tuple[str, Any]:
    """(the peer's address, its ExchangedPeers or why it could not be
    asked); the dial and the ask together get ASK_SECONDS."""
    address = onion_address_from_pubkey(target)
    asking = Deferred.fromCoroutine(_exchange(pool, endpoint_of, own_address, target))
    asking.addTimeout(ASK_SECONDS, clock)
    try:
        return address, await asking
    except BadPeerExchange as error:
        return address, str(error)
    except Exception as error:  # each peer's failure is reported, not raised
        return address, _why(error)


async def _exchange(
    pool: Connections,
    endpoint_of: Callable[[bytes], str],
    own_address: str,
    target: bytes,
) -> Any:
    conn = await pool.dial(target, endpoint_of(target))
    return await ask_peer_exchange(conn, own_address)


def _why(error: Exception) -> str:
    if isinstance(error, DeferredTimeout):
        return f"no answer within {ASK_SECONDS:.0f} s"
    text = str(error) or type(error).__name__
    return text[:200]
