"""A small SOCKS5 client endpoint (RFC 1928 CONNECT, RFC 1929 auth).

Why not ``txtorcon.TorClientEndpoint``: in txtorcon 26.6 bytes that arrive
in the same read as the SOCKS reply stay buffered until more data comes (its
state machine relays only on the *next* read). A peer that speaks first and
then waits (a handshake hello, a short reply before close) is then never
heard. It also cannot send SOCKS username/password, which Tor uses to put
streams on separate circuits (``IsolateSOCKSAuth``), the way to run bulk
transfers in parallel.

Hosts always go to the proxy as domain names (ATYP 3), so the proxy (Tor)
resolves them and nothing here ever does DNS.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.address import HostnameAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

VERSION = 5
NO_AUTH, USERNAME_PASSWORD, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04
# Longest reply: header 4 + domain length byte + 255 + port 2.
MAX_REPLY = 4 + 1 + 255 + 2

REPLY_MESSAGES = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable (for Tor: onion descriptor not found or "
    "introduction failed)",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
    # Tor's extended onion-service errors (prop 304).
    0xF0: "onion service descriptor cannot be found",
    0xF1: "onion service descriptor is invalid",
    0xF2: "onion service introduction failed",
    0xF3: "onion service rendezvous failed",
    0xF4: "onion service missing client authorization",
    0xF5: "onion service wrong client authorization",
    0xF6: "onion address is invalid",
    0xF7: "onion service introduction timed out",
}


class SocksError(Exception):
    """The SOCKS proxy refused or broke the connection."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def connect_request(host: str, port: int) -> bytes:
    """The CONNECT request for ``host:port`` as a domain name."""
    name = host.encode("ascii")
    if not 0 < len(name) <= 255:
        raise ValueError(f"SOCKS host name length must be 1..255: {host!r}")
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    return (
        bytes([VERSION, CONNECT, 0, ATYP_DOMAIN, len(name)])
        + name
        + struct.pack("!H", port)
    )


def auth_request(username: bytes, password: bytes) -> bytes:
    """The RFC 1929 username/password sub-negotiation."""
    if not (0 < len(username) <= 255 and 0 < len(password) <= 255):
        raise ValueError("SOCKS username and password must be 1..255 bytes")
    return bytes([1, len(username)]) + username + bytes([len(password)]) + password


def reply_length(buffer: bytes) -> int | None:
    """Length of the CONNECT reply at the start of ``buffer``, if known."""
    if len(buffer) < 5:
        return None
    atyp = buffer[3]
    if atyp == ATYP_IPV4:
        return 4 + 4 + 2
    if atyp == ATYP_IPV6:
        return 4 + 16 + 2
    if atyp == ATYP_DOMAIN:
        return 4 + 1 + buffer[4] + 2
    raise SocksError(f"SOCKS reply has unknown address type {atyp}")


class _SocksClient(Protocol):
    """Runs the SOCKS5 handshake, then hands the connection to ``app``."""

    def __init__(
        self,
        host: str,
        port: int,
        factory: IProtocolFactory,
        credentials: tuple[bytes, bytes] | None,
    ) -> None:
        self._request = connect_request(host, port)
        self._address = HostnameAddress(host.encode("ascii"), port)
        self._app_factory = factory
        self._credentials = credentials
        self._buffer = b""
        self._stage = "method"
        self._app: Any = None
        self.ready: Deferred[IProtocol] = Deferred(canceller=self._abort)

    def connectionMade(self) -> None:
        method = USERNAME_PASSWORD if self._credentials else NO_AUTH
        self._write(bytes([VERSION, 1, method]))

    def dataReceived(self, data: bytes) -> None:
        if self._app is not None:
            self._app.dataReceived(data)
            return
        self._buffer += data
        try:
            self._advance()
        except SocksError as error:
            self._fail(error)

    def _advance(self) -> None:
        if self._stage == "method" and len(self._buffer) >= 2:
            version, method = self._take(2)
            if version != VERSION:
                raise SocksError(f"not a SOCKS5 proxy (version {version})")
            if method == USERNAME_PASSWORD and self._credentials:
                self._stage = "auth"
                self._write(auth_request(*self._credentials))
            elif method == NO_AUTH and not self._credentials:
                self._send_connect()
            else:
                raise SocksError(f"SOCKS proxy chose unusable method {method:#x}")
        if self._stage == "auth" and len(self._buffer) >= 2:
            _version, status = self._take(2)
            if status != 0:
                raise SocksError("SOCKS proxy refused our username/password")
            self._send_connect()
        if self._stage == "reply":
            if len(self._buffer) > 0 and self._buffer[0] != VERSION:
                raise SocksError("malformed SOCKS reply")
            if len(self._buffer) >= 2 and self._buffer[1] != 0:
                code = self._buffer[1]
                message = REPLY_MESSAGES.get(code, f"error {code:#x}")
                raise SocksError(f"SOCKS proxy: {message}", code)
            length = reply_length(self._buffer)
            if length is None or len(self._buffer) < length:
                return
            self._take(length)
            self._connected()

    def _connected(self) -> None:
        factory: Any = self._app_factory
        app = factory.buildProtocol(self._address)
        if app is None:
            self._fail(SocksError("the protocol factory refused the connection"))
            return
        self._app = app
        leftover, self._buffer = self._buffer, b""
        app.makeConnection(self.transport)
        self.ready.callback(app)
        # Bytes that came with the reply belong to the application.
        if leftover:
            app.dataReceived(leftover)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._app is not None:
            self._app.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(
                SocksError(f"SOCKS connection lost during handshake: {reason.value}")
            )

    def _abort(self, _ready: Deferred[IProtocol]) -> None:
        """Cancelled (e.g. timed out) during the handshake: drop the socket."""
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _send_connect(self) -> None:
        self._stage = "reply"
        self._write(self._request)

    def _take(self, count: int) -> bytes:
        taken, self._buffer = self._buffer[:count], self._buffer[count:]
        return taken

    def _write(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)

    def _fail(self, error: SocksError) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        transport: Any = self.transport
        transport.loseConnection()


@implementer(IStreamClientEndpoint)
class Socks5ClientEndpoint:
    """Connects to ``host:port`` through the SOCKS5 proxy at ``proxy``.

    ``isolation``: if given, sent as SOCKS username and password; Tor puts
    streams with different credentials on different circuits.
    ``timeout``: seconds for reaching the proxy *and* the destination (Tor
    itself gives up on a stream only after two minutes); needs ``reactor``.
    """

    def __init__(
        self,
        proxy: IStreamClientEndpoint,
        host: str,
        port: int,
        isolation: str | None = None,
        *,
        reactor: IReactorTime | None = None,
        timeout: float | None = None,
    ) -> None:
        connect_request(host, port)  # validate now, not at connect time
        if timeout is not None and reactor is None:
            raise ValueError("a SOCKS connect timeout needs a reactor")
        self.proxy = proxy
        self.host = host
        self.port = port
        self.isolation = isolation
        self.timeout = timeout
        self._reactor = reactor

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        credentials = None
        if self.isolation is not None:
            token = self.isolation.encode("utf-8")
            credentials = (token, token)
        client = _SocksClient(self.host, self.port, protocolFactory, credentials)
        proxy: Any = self.proxy
        connecting: Deferred[Any] = proxy.connect(Factory.forProtocol(lambda: client))

        def handshake(_proxy_protocol: Any) -> Deferred[IProtocol]:
            return client.ready

        connected: Deferred[IProtocol] = connecting.addCallback(handshake)
        if self.timeout is not None and self._reactor is not None:
            connected.addTimeout(self.timeout, self._reactor)
        return connected
