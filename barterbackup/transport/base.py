"""The interface every transport implements, and its errors."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamClientEndpoint,
)


class TransportError(Exception):
    """A transport could not start, publish, connect or stop."""


class DestinationRefused(TransportError):
    """A transport refuses to reach a destination it cannot reach safely.

    For Tor this means anything that is not a v3 onion address (reaching it
    would need DNS or an exit, and the node must never leave Tor); for plain
    TCP it means an onion address without an explicit endpoint.
    """


class Transport(Protocol):
    """How peers reach our 127.0.0.1 server and how we reach peers.

    Lifecycle: ``start()``, then ``listen(factory)`` at most once, any number
    of ``client_endpoint(...)``, then ``stop()``.
    """

    @property
    def name(self) -> str:
        """Short name for logs and config: ``"tor"`` or ``"tcp"``."""
        ...

    @property
    def reaches_by_address(self) -> bool:
        """True when a peer's onion address alone is enough to reach it
        (Tor); False when an endpoint hint is needed (plain TCP)."""
        ...

    @property
    def advertised(self) -> str:
        """Where peers reach us (an onion address or an endpoint string)."""
        ...

    async def start(self) -> None:
        """Get ready to listen and connect (e.g. launch and bootstrap Tor)."""
        ...

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Serve ``factory`` on 127.0.0.1 and make it reachable by peers."""
        ...

    def client_endpoint(
        self, onion_address: str, hint: str | None = None
    ) -> IStreamClientEndpoint:
        """An endpoint reaching the peer whose identity is ``onion_address``.

        ``hint`` is transport specific (an endpoint string for plain TCP);
        raises :class:`DestinationRefused` when the peer cannot be reached
        safely.
        """
        ...

    async def stop(self) -> None:
        """Stop listening, withdraw what was published, release resources."""
        ...


def listening_address(port: IListeningPort) -> tuple[str, int]:
    """The (host, port) a listening port is bound to."""
    # Through Any: mypy without the zope plugin cannot call interface methods.
    bound: Any = port
    address = bound.getHost()
    return str(address.host), int(address.port)


async def stop_listening(port: IListeningPort) -> None:
    """Stop ``port``, waiting if it returns a Deferred."""
    bound: Any = port
    result = bound.stopListening()
    if isinstance(result, Deferred):
        await result
