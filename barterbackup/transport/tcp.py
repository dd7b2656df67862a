"""Plain TCP transport: no Tor, for tests and trusted LANs, chosen only
explicitly.

Peers are still identified by their onion address (the peer handshake proves
it), but the route to them must be given as an explicit endpoint string,
because there is no way to find a peer from its onion address without Tor.

After the handshake nothing protects the bytes: an on-path attacker could
read them or inject frames (over Tor, the onion circuit gives integrity and
confidentiality). So the transport listens on and dials loopback addresses
only, unless it is told the network is trusted (``trusted_lan``, the
daemon's ``--tcp-trusted-lan``). Host names are never resolved: a name would
need DNS, which says whom we talk to.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
)
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

# The endpoints a hint may name: tcp:HOST:PORT (or tcp:host=H:port=P) with
# HOST an IPv4 address, and unix:PATH. Anything else (notably "tor:", which
# txtorcon registers as a plugin, or "tls:") is refused so a hint from a
# peer can never make this transport do something unexpected.
_TCP_HINT = re.compile(r"tcp:(?:host=)?([^:=]+):(?:port=)?([0-9]{1,5})")
_UNIX_HINT = re.compile(r"unix:(?:path=)?(/[^:]+)")
CONNECT_TIMEOUT = 30


def is_loopback(address: str) -> bool:
    """Whether ``address`` is an IPv4 loopback address (127.0.0.0/8)."""
    try:
        return ipaddress.IPv4Address(address).is_loopback
    except ValueError:
        return False


class PlainTcpTransport:
    """Listen on ``interface:listen_port``; reach peers by endpoint hints."""

    name = "tcp"
    reaches_by_address = False

    def __init__(
        self,
        reactor: IReactorTCP,
        listen_port: int = 0,
        interface: str = "127.0.0.1",
        *,
        trusted_lan: bool = False,
    ) -> None:
        try:
            ipaddress.IPv4Address(interface)
        except ValueError:
            raise ValueError(f"{interface!r} is not an IPv4 address") from None
        if not (trusted_lan or is_loopback(interface)):
            raise ValueError(
                f"plain TCP on {interface} would carry peer traffic unprotected "
                "outside this machine; use Tor, or say the network is trusted"
            )
        self._trusted_lan = trusted_lan
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
        return self._endpoint_for(peer, hint)

    def _endpoint_for(self, peer: str, hint: str) -> IStreamClientEndpoint:
        unix = _UNIX_HINT.fullmatch(hint)
        # Typed through Any below: mypy without the zope plugin cannot see
        # that @implementer classes provide their interface.
        endpoint: Any
        if unix:
            endpoint = UNIXClientEndpoint(self._reactor, unix.group(1))
            return endpoint
        if not hint.startswith(("tcp:", "unix:")):
            raise DestinationRefused(
                f"endpoint {hint!r} for {peer} is not a tcp: or unix: endpoint"
            )
        tcp = _TCP_HINT.fullmatch(hint)
        if not tcp or not 1 <= int(tcp.group(2)) <= 65535:
            raise DestinationRefused(
                f"bad endpoint {hint!r} for {peer}: expected tcp:ADDRESS:PORT "
                "or unix:/PATH"
            )
        host, port = tcp.group(1), int(tcp.group(2))
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise DestinationRefused(
                f"endpoint {hint!r} for {peer} names a host, not an IPv4 "
                "address: resolving it would need DNS"
            ) from None
        if not (self._trusted_lan or is_loopback(host)):
            raise DestinationRefused(
                f"endpoint {hint!r} for {peer} is outside this machine: plain "
                "TCP leaves peer traffic unprotected there (use Tor, or trust "
                "the network with --tcp-trusted-lan)"
            )
        endpoint = TCP4ClientEndpoint(
            self._reactor, host, port, timeout=CONNECT_TIMEOUT
        )
        return endpoint

    async def stop(self) -> None:
        ports, self._ports = self._ports, []
        stopping = [Deferred.fromCoroutine(stop_listening(port)) for port in ports]
        await gatherResults(stopping, consumeErrors=True)
