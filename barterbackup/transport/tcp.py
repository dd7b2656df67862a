"""Plain TCP transport: no Tor, for tests and LANs, chosen only explicitly.

Peers are still identified by their onion address (the peer handshake proves
it), but the route to them must be given as an explicit endpoint string,
because there is no way to find a peer from its onion address without Tor.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint, clientFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTCP,
    IStreamClientEndpoint,
)

from barterbackup.keys.onion import InvalidOnionAddress, normalize_onion_address
from barterbackup.transport.base import (
    DestinationRefused,
    TransportError,
    listening_address,
    stop_listening,
)

# Endpoint types a hint may name. Anything else (notably "tor:", which
# txtorcon registers as a plugin, or "tls:") is refused so a hint from a
# peer can never make this transport do something unexpected.
ALLOWED_HINT_PREFIXES = ("tcp:", "unix:")


class PlainTcpTransport:
    """Listen on ``interface:listen_port``; reach peers by endpoint hints."""

    name = "tcp"
    reaches_by_address = False

    def __init__(
        self,
        reactor: IReactorTCP,
        listen_port: int = 0,
        interface: str = "127.0.0.1",
    ) -> None:
        self._reactor = reactor
        self._listen_port = listen_port
        self._interface = interface
        self._ports: list[IListeningPort] = []

    @property
    def advertised(self) -> str:
        """``tcp:HOST:PORT`` once listening, else an empty string."""
        if not self._ports:
            return ""
        host, port = listening_address(self._ports[0])
        return f"tcp:{host}:{port}"

    async def start(self) -> None:
        """Nothing to prepare for plain TCP."""

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        if self._ports:
            raise TransportError("this transport is already listening")
        endpoint = TCP4ServerEndpoint(
            self._reactor, self._listen_port, interface=self._interface
        )
        listening: Deferred[IListeningPort] = endpoint.listen(factory)

        def remember(port: IListeningPort) -> IListeningPort:
            self._ports.append(port)
            return port

        return listening.addCallback(remember)

    def client_endpoint(
        self, onion_address: str, hint: str | None = None
    ) -> IStreamClientEndpoint:
        """The endpoint named by ``hint`` (``tcp:HOST:PORT`` or ``unix:PATH``).

        ``onion_address`` is validated but not used for routing: the peer
        handshake checks that whoever answers owns it.
        """
        try:
            peer = normalize_onion_address(onion_address)
        except InvalidOnionAddress as error:
            raise DestinationRefused(str(error)) from None
        if hint is None:
            raise DestinationRefused(
                f"the plain TCP transport cannot reach {peer} without an "
                "explicit endpoint such as 'tcp:127.0.0.1:PORT' "
                "(use the Tor transport to reach onion addresses)"
            )
        if not hint.startswith(ALLOWED_HINT_PREFIXES):
            raise DestinationRefused(
                f"endpoint {hint!r} for {peer} is not a tcp: or unix: endpoint"
            )
        try:
            endpoint: IStreamClientEndpoint = clientFromString(self._reactor, hint)
        except (ValueError, TypeError) as error:
            raise DestinationRefused(
                f"bad endpoint {hint!r} for {peer}: {error}"
            ) from None
        return endpoint

    async def stop(self) -> None:
        ports, self._ports = self._ports, []
        stopping = [Deferred.fromCoroutine(stop_listening(port)) for port in ports]
        await gatherResults(stopping, consumeErrors=True)
