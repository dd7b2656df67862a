"""What the data plane needs of a peer connection and of blocking work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer

T = TypeVar("T")

# An IReactorTime provider (the reactor or task.Clock). Typed Any because
# mypy here has no zope.interface plugin to check providers.
ReactorTime = Any
# Runs blocking (disk) work: on the reactor's thread pool in the node,
# inline in tests and on the no-network swarm.
Blocking = Callable[[Callable[[], T]], "defer.Deferred[T]"]


def run_inline(work: Callable[[], T]) -> defer.Deferred[T]:
    """Run blocking work right away (tests; the no-network swarm)."""
    return defer.maybeDeferred(work)


class PeerConnectionLike(Protocol):
    """What sync needs of an authenticated peer connection."""

    # Both are set once the handshake proved the peer (None before).
    peer_pubkey: bytes | None
    peer_onion_address: str | None

    def call(self, request_field: str, message: Any) -> defer.Deferred[Any]: ...

    def call_stream(
        self, request_field: str, message: Any, on_item: Callable[[Any], Any]
    ) -> defer.Deferred[None]: ...


def authenticated_peer(conn: PeerConnectionLike) -> bytes:
    """The proven peer key of ``conn``; calls are only served after that."""
    if conn.peer_pubkey is None:
        raise RuntimeError("peer connection is not authenticated yet")
    return conn.peer_pubkey
