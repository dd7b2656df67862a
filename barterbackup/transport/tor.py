"""Tor transport: our onion service in, onion-only SOCKS connections out.

The only module of barterbackup that imports txtorcon. By default it launches
the node's own tor (``txtorcon.launch``); it can also attach to a running tor
through its control port. The onion key is derived from the main password
(:mod:`barterbackup.keys`), so the address is known before Tor starts and we
check that Tor publishes exactly that one.

Outbound connections go only to v3 onion addresses and only through the
tor's SOCKS port: no DNS, no direct socket, no exit traffic (fail closed,
like Tahoe-LAFS in anonymous mode). They use our own SOCKS5 client
(:mod:`barterbackup.transport.socks`; see there why not txtorcon's).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import txtorcon
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    clientFromString,
)
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IStreamClientEndpoint,
)
from twisted.internet.task import deferLater

from barterbackup.keys.derive import NodeKeys
from barterbackup.keys.onion import InvalidOnionAddress, normalize_onion_address
from barterbackup.logs import get_logger
from barterbackup.store.atomic import make_private_directory
from barterbackup.transport.base import (
    DestinationRefused,
    TransportError,
    listening_address,
    stop_listening,
)
from barterbackup.transport.onion import OnionDefences, PublishedOnion, publish_onion
from barterbackup.transport.socks import Socks5ClientEndpoint

log = get_logger("barterbackup.transport")

# The virtual port every node publishes on its onion; peers connect to it.
DEFAULT_ONION_PORT = 4177
LAUNCH_TIMEOUT = 120.0
PUBLISH_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
# Reaching a peer's onion normally takes 0.3-2 s here, a few seconds on the
# real network; Tor's own limit for a stream is 120 s.
CONNECT_TIMEOUT = 60.0
POLL_INTERVAL = 0.2
CONTROL_SOCKET = "control.socket"
# Tor refuses Unix control sockets whose path does not fit sockaddr_un.
MAX_UNIX_SOCKET_PATH = 100
# Options the transport sets itself; letting extra_torrc override them could
# open a SOCKS port on another interface or move the data directory.
RESERVED_TORRC_OPTIONS = frozenset(
    name.lower()
    for name in (
        "DataDirectory",
        "ControlPort",
        "SocksPort",
        "CookieAuthentication",
        "__OwningControllerProcess",
        "HiddenServiceDir",
        "HiddenServicePort",
        "HiddenServiceNonAnonymousMode",
        "HiddenServiceSingleHopMode",
    )
)

_T = TypeVar("_T")


class TorStartupError(TransportError):
    """Tor could not be launched, reached or bootstrapped in time."""


class OnionPublishError(TransportError):
    """Tor did not publish our onion service in time."""


class OnionAddressMismatch(TransportError):
    """Tor published another address than the one derived from our keys.

    This would mean peers cannot find us under the address recovery relies
    on, so it is fatal.
    """

    def __init__(self, expected: str, published: str) -> None:
        super().__init__(
            f"Tor published {published} but our keys give {expected}; "
            "refusing to serve under the wrong address"
        )
        self.expected = expected
        self.published = published


class TorLike(Protocol):
    """What we use of ``txtorcon.Tor`` (so tests can pass a fake).

    ``protocol`` is its control connection (``get_info``,
    ``queue_command``, ``add_event_listener``, ``remove_event_listener``).
    """

    @property
    def protocol(self) -> Any: ...

    def quit(self) -> Deferred[Any]: ...


TorConnector = Callable[[], Awaitable[TorLike]]


class TorTransport:
    """Serve on our derived onion address; reach peers by theirs.

    :param keys: the node's keys; ``keys.tor_private_key`` is published.
    :param data_dir: Tor's DataDirectory when we launch tor (created 0700).
    :param control_endpoint: attach to a running tor instead of launching
        one, e.g. ``"unix:/run/tor/control"`` or ``"tcp:127.0.0.1:9051"``.
    :param extra_torrc: further options for a launched tor, e.g.
        ``TorNetwork.client_torrc_options()`` to join a private network.
    :param connect_tor: replaces launching/attaching (tests pass a fake).
    """

    name = "tor"
    reaches_by_address = True

    def __init__(
        self,
        reactor: IReactorCore,
        keys: NodeKeys,
        data_dir: Path,
        *,
        control_endpoint: str | None = None,
        extra_torrc: Sequence[tuple[str, str]] = (),
        tor_binary: str = "tor",
        onion_port: int = DEFAULT_ONION_PORT,
        launch_timeout: float = LAUNCH_TIMEOUT,
        publish_timeout: float = PUBLISH_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        connect_tor: TorConnector | None = None,
        defences: OnionDefences | None = None,
    ) -> None:
        for option, _value in extra_torrc:
            if option.lower() in RESERVED_TORRC_OPTIONS:
                raise ValueError(f"extra_torrc may not set {option}")
        if control_endpoint is not None:
            _check_control_endpoint(control_endpoint)
        self._reactor = reactor
        self._keys = keys
        self._data_dir = Path(data_dir)
        self._control_endpoint = control_endpoint
        self._extra_torrc = list(extra_torrc)
        self._tor_binary = tor_binary
        self._onion_port = onion_port
        self._launch_timeout = launch_timeout
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._connect_tor = connect_tor or self._launch_or_attach
        self._defences = defences or OnionDefences()
        self._tor: TorLike | None = None
        # The launched tor's process holder (its quit() stops the process);
        # we talk to tor through self._tor, a separate control connection.
        self._launched: Any = None
        self._temporary_dirs: list[Path] = []
        self._process_ended: Deferred[None] = Deferred()
        # For start-up error messages: what tor printed, how far it got.
        self._output = _OutputTail()
        self._bootstrap_phase = "not connected to tor yet"
        self._socks_port: int | None = None
        self._onion: PublishedOnion | None = None
        self._listening: IListeningPort | None = None

    @property
    def advertised(self) -> str:
        """Our onion address (what peers dial), known before Tor starts."""
        return self._keys.onion_address

    @property
    def onion_port(self) -> int:
        return self._onion_port

    @property
    def socks_port(self) -> int | None:
        """The 127.0.0.1 SOCKS port we connect through, once started."""
        return self._socks_port

    @property
    def tor(self) -> TorLike | None:
        """The txtorcon ``Tor`` in use, once started."""
        return self._tor

    @property
    def launched_pid(self) -> int | None:
        """PID of the tor we launched (None if attached or not started)."""
        if self._launched is None or self._launched.process is None:
            return None
        pid = self._launched.process.transport.pid
        return None if pid is None else int(pid)

    async def start(self) -> None:
        """Launch or attach to tor, wait for bootstrap, find its SOCKS port."""
        if self._tor is not None:
            raise TransportError("this Tor transport is already started")
        connecting = Deferred.fromCoroutine(_awaited(self._connect_tor()))
        try:
            tor = await _bounded(
                self._reactor,
                connecting,
                self._launch_timeout,
                TorStartupError,
                f"tor did not start and bootstrap within {self._launch_timeout:g} s"
                f" (data directory {self._data_dir})",
            )
        except TorStartupError as error:
            await self.stop()
            raise TorStartupError(
                f"{error}; last status: {self._bootstrap_phase}\n{self._output.text()}"
            ) from None
        except BaseException:
            await self.stop()
            raise
        self._tor = tor
        try:
            self._socks_port = await _loopback_socks_port(tor)
        except BaseException:
            await self.stop()
            raise

    async def _launch_or_attach(self) -> TorLike:
        if self._control_endpoint is not None:
            endpoint = clientFromString(self._reactor, self._control_endpoint)
            tor: TorLike = await txtorcon.connect(self._reactor, endpoint)
            await self._wait_bootstrapped(tor)
            return tor
        return await self._launch()

    async def _launch(self) -> TorLike:
        """Launch our own tor, connect to it, wait for bootstrap 100%.

        ``txtorcon.launch`` waits for a STATUS_CLIENT event reporting 100%,
        but only subscribes after authenticating; on a private network tor
        bootstraps in ~1 s and the event can come first, leaving launch
        hanging forever. So we launch with ``control_port=0`` (launch returns
        once tor is spawned) and a ``ControlSocket`` we connect to ourselves,
        then poll ``status/bootstrap-phase``.
        """
        data_dir = make_private_directory(self._data_dir.resolve())
        socket_dir = data_dir
        if len(str(data_dir / CONTROL_SOCKET)) > MAX_UNIX_SOCKET_PATH:
            # Too long for a socket address: use a short private directory.
            socket_dir = Path(tempfile.mkdtemp(prefix="bb-tor-"))
            self._temporary_dirs.append(socket_dir)
        socket_path = socket_dir / CONTROL_SOCKET
        config = txtorcon.TorConfig()
        for option, value in _grouped(self._extra_torrc):
            setattr(config, option, value)
        config.ControlSocket = str(socket_path)
        self._launched = await txtorcon.launch(
            self._reactor,
            data_directory=str(data_dir),
            control_port=0,
            tor_binary=self._tor_binary,
            stdout=self._output,
            _tor_config=config,
        )
        self._process_ended = _watch_process_end(self._launched.process)
        endpoint = UNIXClientEndpoint(self._reactor, str(socket_path))
        while True:
            try:
                tor: TorLike = await txtorcon.connect(self._reactor, endpoint)
                break
            except (ConnectError, OSError):
                if self._launched.process.transport.pid is None:
                    raise TorStartupError(
                        f"tor exited during start-up:\n{self._output.text()}"
                    ) from None
                await deferLater(self._reactor, POLL_INTERVAL)
        await self._wait_bootstrapped(tor)
        return tor

    async def _wait_bootstrapped(self, tor: TorLike) -> None:
        """Poll ``status/bootstrap-phase`` until PROGRESS=100.

        Unbounded here: start() bounds the whole start-up with a timeout
        that cancels this wait.
        """
        while True:
            answer = await tor.protocol.get_info("status/bootstrap-phase")
            self._bootstrap_phase = str(answer.get("status/bootstrap-phase", ""))
            if re.search(r"\bPROGRESS=100\b", self._bootstrap_phase):
                return
            await deferLater(self._reactor, POLL_INTERVAL)

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on 127.0.0.1 and publish our onion, virtual port → it.

        Fires once the descriptor reached every HSDir, so peers can connect
        at once. Raises :class:`OnionAddressMismatch` if Tor publishes any
        other address than ``keys.onion_address``.
        """
        return Deferred.fromCoroutine(self._listen(factory))

    async def _listen(self, factory: IProtocolFactory) -> IListeningPort:
        tor = self._require_started()
        if self._listening is not None:
            raise TransportError("this Tor transport is already listening")
        endpoint = TCP4ServerEndpoint(self._reactor, 0, interface="127.0.0.1")
        port: IListeningPort = await endpoint.listen(factory)
        try:
            _host, local_port = listening_address(port)
            publishing = Deferred.fromCoroutine(
                publish_onion(
                    tor.protocol,
                    self._keys.tor_private_key,
                    self._onion_port,
                    local_port,
                    self._defences,
                )
            )
            onion: PublishedOnion = await _bounded(
                self._reactor,
                publishing,
                self._publish_timeout,
                OnionPublishError,
                f"tor did not publish {self._keys.onion_address} within "
                f"{self._publish_timeout:g} s",
            )
            if onion.hostname != self._keys.onion_address:
                await onion.remove()
                raise OnionAddressMismatch(self._keys.onion_address, onion.hostname)
        except BaseException:
            await stop_listening(port)
            raise
        self._onion = onion
        self._listening = port
        log.info(
            "onion {address} port {virt} → 127.0.0.1:{local}",
            address=onion.hostname,
            virt=self._onion_port,
            local=local_port,
        )
        return port

    # client_endpoint takes an isolation string (separate circuits).
    isolates = True

    def client_endpoint(
        self,
        onion_address: str,
        hint: str | None = None,
        *,
        isolation: str | None = None,
    ) -> IStreamClientEndpoint:
        """A SOCKS endpoint through our tor to ``onion_address``.

        Anything but a valid v3 onion address is refused: reaching it would
        need DNS or an exit and would leave Tor. ``hint`` is ignored, so a
        hint can never route a connection around Tor. Streams with different
        ``isolation`` strings go over different circuits (parallel bulk
        transfers).
        """
        try:
            address = normalize_onion_address(onion_address)
        except InvalidOnionAddress as error:
            raise DestinationRefused(
                f"the Tor transport only connects to v3 onion addresses: {error}"
            ) from None
        if self._socks_port is None:
            raise TransportError("the Tor transport is not started")
        socks: Any = TCP4ClientEndpoint(self._reactor, "127.0.0.1", self._socks_port)
        # Typed through Any: mypy without the zope plugin cannot see that
        # @implementer classes provide their interface.
        endpoint: Any = Socks5ClientEndpoint(
            socks,
            address,
            self._onion_port,
            isolation,
            reactor=self._reactor,
            timeout=self._connect_timeout,
        )
        return endpoint

    async def stop(self) -> None:
        """Withdraw the onion, stop listening, stop (or detach from) tor."""
        onion, self._onion = self._onion, None
        port, self._listening = self._listening, None
        tor, self._tor = self._tor, None
        launched, self._launched = self._launched, None
        self._socks_port = None
        try:
            if onion is not None:
                await onion.remove()
        finally:
            if port is not None:
                await stop_listening(port)
            # Closing our control connection drops our ephemeral onion; a
            # tor we attached to keeps running.
            if tor is not None:
                await self._bounded_stop(tor.quit(), "close its control port")
            if launched is not None:
                # SIGTERM, then wait for the process to exit.
                await self._bounded_stop(launched.quit(), "exit")
                # quit() fires when the process is reaped; wait for its pipes
                # to close too, so nothing of it is left in the reactor.
                await self._bounded_stop(self._process_ended, "close its output")
            for directory in self._temporary_dirs:
                shutil.rmtree(directory, ignore_errors=True)
            self._temporary_dirs.clear()

    async def _bounded_stop(self, stopping: Deferred[Any], what: str) -> None:
        await _bounded(
            self._reactor,
            stopping,
            STOP_TIMEOUT,
            TransportError,
            f"tor did not {what} within {STOP_TIMEOUT:g} s",
        )

    def _require_started(self) -> TorLike:
        if self._tor is None:
            raise TransportError("the Tor transport is not started")
        return self._tor


class TorControl:
    """A control-port connection to a tor we did not launch via txtorcon.

    Used by the private test network launcher to poll its tors, so that this
    module stays the only one importing txtorcon.
    """

    def __init__(self, tor: Any) -> None:
        self._tor = tor

    async def get_info(self, key: str) -> str:
        """The value of ``GETINFO key`` (multi-line values joined by \\n)."""
        raw: str = await self._tor.protocol.get_info_raw(key)
        prefix = key + "="
        if raw.startswith(prefix):
            raw = raw[len(prefix) :]
        return raw.strip("\n")

    async def close(self) -> None:
        await self._tor.protocol.quit()


async def open_tor_control(reactor: IReactorCore, endpoint: str) -> TorControl:
    """Connect (cookie auth) to the control port named by ``endpoint``."""
    _check_control_endpoint(endpoint)
    tor = await txtorcon.connect(reactor, clientFromString(reactor, endpoint))
    return TorControl(tor)


def _check_control_endpoint(endpoint: str) -> None:
    """Refuse control endpoints that are not local: they carry secrets."""
    if endpoint.startswith("unix:"):
        return
    if endpoint.startswith("tcp:"):
        host = endpoint.split(":")[1]
        if host.startswith("host="):
            host = host[len("host=") :]
        if host in ("127.0.0.1", "localhost", "::1"):
            return
    raise ValueError(
        f"control endpoint {endpoint!r} must be unix:PATH or tcp:127.0.0.1:PORT"
    )


def _watch_process_end(process_protocol: Any) -> Deferred[None]:
    """A Deferred fired after ``processEnded`` of txtorcon's protocol.

    txtorcon offers no such Deferred (``quit()`` fires at reaping, before
    the pipes are closed), so we wrap the instance's method. Its original
    also logs *every* exit as an error, even the clean one ``quit()`` asked
    for; on exit code 0 we only run its cleanup, so operators do not see a
    false error at each shutdown. Other exits keep txtorcon's handling.
    """
    ended: Deferred[None] = Deferred()
    original = process_protocol.processEnded

    def process_ended(status: Any) -> None:
        try:
            if getattr(status.value, "exitCode", None) == 0:
                process_protocol.cleanup()
            else:
                original(status)
        finally:
            ended.callback(None)

    process_protocol.processEnded = process_ended
    return ended


class _OutputTail:
    """Keeps the last lines tor printed, for start-up error messages."""

    def __init__(self, lines: int = 20) -> None:
        self._lines: list[str] = []
        self._limit = lines

    def write(self, data: str) -> None:
        self._lines = (self._lines + data.splitlines())[-self._limit :]

    def text(self) -> str:
        return "\n".join(self._lines)


async def _loopback_socks_port(tor: TorLike) -> int:
    """The first SOCKS listener of ``tor``, which must be on 127.0.0.1."""
    answer = await tor.protocol.get_info("net/listeners/socks")
    listeners = str(answer.get("net/listeners/socks", "")).split()
    for listener in listeners:
        host, _, port = listener.strip('"').rpartition(":")
        if host == "127.0.0.1" and port.isdigit():
            return int(port)
    raise TorStartupError(
        f"tor has no SOCKS listener on 127.0.0.1 (it reports {listeners!r})"
    )


def _grouped(options: Sequence[tuple[str, str]]) -> list[tuple[str, str | list[str]]]:
    """Repeated options (DirAuthority) become one list-valued option."""
    values: dict[str, list[str]] = {}
    for option, value in options:
        values.setdefault(option, []).append(value)
    return [(k, v[0] if len(v) == 1 else v) for k, v in values.items()]


def _log_progress(what: str) -> Callable[[float, str, str], None]:
    def progress(percent: float, tag: str, summary: str) -> None:
        log.debug(
            "{what}: {percent}% {summary}", what=what, percent=percent, summary=summary
        )

    return progress


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


async def _bounded(
    reactor: Any,
    pending: Deferred[_T],
    seconds: float,
    error: type[TransportError],
    message: str,
) -> _T:
    """Wait for ``pending`` at most ``seconds``; else cancel, raise ``error``."""
    pending.addTimeout(seconds, reactor)
    try:
        return await pending
    except (TimeoutError, CancelledError):
        raise error(message) from None
