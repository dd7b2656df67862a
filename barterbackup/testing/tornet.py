"""A private Tor network on 127.0.0.1 for tests and the demo.

Follows the measured recipe in TORNET.md: four directory authorities (each
also relay, guard and HSDir, no exits) run by Debian's ``tor`` with
``TestingTorNetwork 1``; client tors and the nodes' own txtorcon-launched
tors join it with :meth:`TorNetwork.client_torrc_options`. Nothing listens on
or connects to anything but 127.0.0.1.

Every tor runs as a daemon (``RunAsDaemon 1``) so no process pipe stays in
the reactor between trial tests; its PID comes from its ``PidFile`` and is
recorded at launch. Teardown sends SIGTERM, then SIGKILL after 5 s, and only
to processes whose ``/proc/PID/cmdline`` still names our torrc. Each tor also
has ``__OwningControllerProcess`` set to our PID, so it exits if we die.

Ports of node ``i``: ORPort ``base+i``, DirPort ``base+100+i``, ControlPort
``base+200+i``, SocksPort ``base+300+i``.

Use from trial::

    net = TorNetwork(reactor, Path(self.mktemp()))
    self.addCleanup(net.stop)
    await net.start()

or from a script with ``task.react``; :meth:`TorNetwork.stop_now` (also run
at interpreter exit) stops everything synchronously.
"""

from __future__ import annotations

import atexit
import functools
import os
import random
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from barterbackup.store.atomic import make_private_directory
from barterbackup.transport.tor import TorControl, open_tor_control

LOOPBACK = "127.0.0.1"
AUTHORITY_COUNT = 4
# Port blocks are 100 wide per role; this many nodes fit in one network.
MAX_NODES = 20
OR_OFFSET, DIR_OFFSET, CONTROL_OFFSET, SOCKS_OFFSET = 0, 100, 200, 300
LOWEST_BASE_PORT, HIGHEST_BASE_PORT = 20000, 60000

KEYGEN_TIMEOUT = 30.0
LAUNCH_TIMEOUT = 30.0
CONSENSUS_TIMEOUT = 90.0
BOOTSTRAP_TIMEOUT = 60.0
POLL_INTERVAL = 0.25
TERM_GRACE = 5.0
KILL_GRACE = 2.0
LOG_TAIL_LINES = 15


class TorNetworkError(Exception):
    """The private network could not be set up or a tor misbehaved."""


@dataclass(frozen=True)
class NodePorts:
    """The four ports of node ``index`` in a network based at ``base``."""

    index: int
    or_port: int
    dir_port: int
    control_port: int
    socks_port: int

    @classmethod
    def for_index(cls, base: int, index: int) -> NodePorts:
        if not 0 <= index < MAX_NODES:
            raise ValueError(f"node index {index} outside 0..{MAX_NODES - 1}")
        return cls(
            index=index,
            or_port=base + OR_OFFSET + index,
            dir_port=base + DIR_OFFSET + index,
            control_port=base + CONTROL_OFFSET + index,
            socks_port=base + SOCKS_OFFSET + index,
        )


@dataclass(frozen=True)
class AuthorityIdentity:
    """What every tor of the network must know about one authority."""

    nickname: str
    ports: NodePorts
    v3ident: str
    fingerprint: str

    def dir_authority_line(self) -> str:
        """The value of this authority's ``DirAuthority`` option."""
        return (
            f"{self.nickname} orport={self.ports.or_port} no-v2 "
            f"v3ident={self.v3ident} {LOOPBACK}:{self.ports.dir_port} "
            f"{self.fingerprint}"
        )


TorrcOptions = list[tuple[str, str]]


def network_client_options(authorities: Sequence[AuthorityIdentity]) -> TorrcOptions:
    """Options any tor needs to join the network as a client.

    This is what a node's own txtorcon-launched tor gets on top of its
    launcher's defaults (DataDirectory, SocksPort, ControlPort).
    """
    options: TorrcOptions = [("TestingTorNetwork", "1")]
    options += [("DirAuthority", a.dir_authority_line()) for a in authorities]
    options += [
        # Three of four relays suffice: the default (60% of paths but at
        # least 3 exits' worth of weight) is never met without exits.
        ("PathsNeededToBuildCircuits", "0.67"),
        # With only 4 relays vanguards-lite picks the guard as last hop
        # (Tor bug 21534) and bootstrap swings 10-26 s instead of 3-4 s.
        ("VanguardsLiteEnabled", "0"),
    ]
    return options


def _common_options(
    nickname: str,
    data_dir: Path,
    ports: NodePorts,
    authorities: Sequence[AuthorityIdentity],
    owner_pid: int,
) -> TorrcOptions:
    return [
        ("DataDirectory", str(data_dir)),
        ("PidFile", str(data_dir / "tor.pid")),
        ("RunAsDaemon", "1"),
        ("Nickname", nickname),
        ("Log", f"notice file {data_dir / 'notice.log'}"),
        ("SafeLogging", "0"),
        ("ProtocolWarnings", "1"),
        ("Sandbox", "0"),
        ("ShutdownWaitLength", "0"),
        ("ControlPort", f"{LOOPBACK}:{ports.control_port}"),
        ("CookieAuthentication", "1"),
        ("TestingDirAuthVoteHSDir", "*"),
        ("TestingDirAuthVoteGuard", "*"),
        ("TestingDirAuthVoteExit", "*"),
        ("TestingMinExitFlagThreshold", "0"),
        ("V3AuthNIntervalsValid", "2"),
        ("__OwningControllerProcess", str(owner_pid)),
        *network_client_options(authorities),
    ]


def authority_torrc(
    identity: AuthorityIdentity,
    data_dir: Path,
    authorities: Sequence[AuthorityIdentity],
    owner_pid: int,
) -> TorrcOptions:
    """Options of a directory authority that is also relay, guard, HSDir."""
    ports = identity.ports
    return [
        *_common_options(identity.nickname, data_dir, ports, authorities, owner_pid),
        ("SocksPort", "0"),
        ("Address", LOOPBACK),
        ("ORPort", f"{LOOPBACK}:{ports.or_port}"),
        ("DirPort", f"{LOOPBACK}:{ports.dir_port}"),
        ("AssumeReachable", "1"),
        ("ContactInfo", f"{identity.nickname}@test.invalid"),
        ("ExitRelay", "0"),
        ("ExitPolicy", "reject *:*"),
        ("AuthoritativeDirectory", "1"),
        ("V3AuthoritativeDirectory", "1"),
        # Fast voting (measured stable over 50 consensuses); chutney's
        # 20/4/4 takes 31-37 s to come up.
        ("TestingV3AuthInitialVotingInterval", "5"),
        ("TestingV3AuthInitialVoteDelay", "2"),
        ("TestingV3AuthInitialDistDelay", "2"),
        ("V3AuthVotingInterval", "10"),
        ("V3AuthVoteDelay", "2"),
        ("V3AuthDistDelay", "2"),
    ]


def client_torrc(
    nickname: str,
    data_dir: Path,
    ports: NodePorts,
    authorities: Sequence[AuthorityIdentity],
    owner_pid: int,
) -> TorrcOptions:
    """Options of a client tor with a SOCKS port on 127.0.0.1."""
    return [
        *_common_options(nickname, data_dir, ports, authorities, owner_pid),
        ("SocksPort", f"{LOOPBACK}:{ports.socks_port}"),
    ]


def render_torrc(options: TorrcOptions) -> str:
    """A torrc file for ``options``; refuses values that could inject lines."""
    lines = []
    for option, value in options:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", option):
            raise ValueError(f"bad torrc option name {option!r}")
        if "\n" in value or "\r" in value or "\\" in value:
            raise ValueError(f"bad torrc value for {option}: {value!r}")
        lines.append(f"{option} {value}")
    return "\n".join(lines) + "\n"


def ports_are_free(ports: Sequence[int]) -> bool:
    """True if every port can be bound on 127.0.0.1 right now."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def all_ports(base: int) -> list[int]:
    """Every port a network based at ``base`` may use."""
    return [
        base + offset + i
        for offset in (OR_OFFSET, DIR_OFFSET, CONTROL_OFFSET, SOCKS_OFFSET)
        for i in range(MAX_NODES)
    ]


def choose_base_port(rng: random.Random | None = None, attempts: int = 50) -> int:
    """A random base whose whole port range is free on 127.0.0.1.

    Random rather than fixed so two networks (two test runs) started at
    the same moment are unlikely to pick the same range.
    """
    rng = rng or random.Random()
    for _ in range(attempts):
        base = rng.randrange(LOWEST_BASE_PORT, HIGHEST_BASE_PORT, 10)
        if ports_are_free(all_ports(base)):
            return base
    raise TorNetworkError(f"no free port range found in {attempts} attempts")


def log_tail(data_dir: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a tor's notice.log, for error messages."""
    try:
        text = (data_dir / "notice.log").read_text(errors="replace")
    except OSError as error:
        return f"(no notice.log: {error.strerror})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class TorProcess:
    """One tor we launched: its identity, where it lives, its PID."""

    nickname: str
    ports: NodePorts
    data_dir: Path
    torrc: Path
    pid: int | None = None

    @property
    def control_endpoint(self) -> str:
        return f"tcp:{LOOPBACK}:{self.ports.control_port}"

    @property
    def socks_port(self) -> int:
        return self.ports.socks_port

    @property
    def control_port(self) -> int:
        return self.ports.control_port

    def is_running(self) -> bool:
        """True if our PID is alive and still this tor (not a reused PID)."""
        return self.pid is not None and _is_our_tor(self.pid, self.torrc)

    def signal(self, signum: int) -> None:
        if self.pid is not None and _is_our_tor(self.pid, self.torrc):
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass


def _read_pid(pid_file: Path) -> int | None:
    """The PID in tor's PidFile once completely written ("1234\\n")."""
    try:
        text = pid_file.read_text()
    except OSError:
        return None
    # Tor writes the file in place, not atomically: wait for the newline.
    if not text.endswith("\n") or not text.strip().isdigit():
        return None
    return int(text)


def _is_our_tor(pid: int, torrc: Path) -> bool:
    proc = Path("/proc") / str(pid)
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        stat = (proc / "stat").read_text()
    except OSError:
        return False
    # A zombie is dead; our container's PID 1 may never reap it.
    state = stat.rpartition(")")[2].split()[0]
    return state != "Z" and str(torrc).encode() in cmdline


class _CollectOutput(protocol.ProcessProtocol):
    """Collects a short-lived helper's output and exit status."""

    def __init__(self, stdin: bytes | None = None) -> None:
        self.stdin = stdin
        self.output = bytearray()
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if self.stdin is not None:
            transport.write(self.stdin)
        transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data[-65536:]

    def errReceived(self, data: bytes) -> None:
        self.output += data[-65536:]

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(-1 if code is None else int(code))


class TorNetwork:
    """Four authorities on 127.0.0.1 plus any number of client tors.

    :param base_dir: where every tor's data directory and torrc go.
    :param key_cache: optional directory keeping authority identity keys
        between runs (saves ~1 s each); signing keys and certificates are
        made fresh for the ports of this run.
    :param base_port: first port, or None to pick a free random range.
    """

    def __init__(
        self,
        reactor: IReactorCore,
        base_dir: Path,
        *,
        authorities: int = AUTHORITY_COUNT,
        base_port: int | None = None,
        key_cache: Path | None = None,
        tor_binary: str = "tor",
        gencert_binary: str = "tor-gencert",
    ) -> None:
        if authorities < AUTHORITY_COUNT:
            # With 3 relays clients bootstrap but onions are never reachable
            # ("Failed to find node for hop #3").
            raise ValueError(f"an onion path needs {AUTHORITY_COUNT} relays")
        self._reactor: Any = reactor
        self.base_dir = Path(base_dir).resolve()
        self._authority_count = authorities
        self._requested_base = base_port
        self._key_cache = None if key_cache is None else Path(key_cache)
        self._tor_binary = tor_binary
        self._gencert_binary = gencert_binary
        self.base_port: int | None = None
        self.authorities: list[AuthorityIdentity] = []
        self.processes: list[TorProcess] = []
        self.clients: list[TorProcess] = []
        self.timings: dict[str, float] = {}
        self._atexit_registered = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Launch the authorities; fires once the consensus is complete."""
        return Deferred.fromCoroutine(self._start(wait_for_consensus=True))

    def launch(self) -> Deferred[None]:
        """Launch the authorities without waiting for their consensus."""
        return Deferred.fromCoroutine(self._start(wait_for_consensus=False))

    async def _start(self, wait_for_consensus: bool) -> None:
        if self.processes:
            raise TorNetworkError("this network is already started")
        began = time.monotonic()
        self.base_port = self._requested_base or choose_base_port()
        if not ports_are_free(all_ports(self.base_port)):
            raise TorNetworkError(f"ports of base {self.base_port} are in use")
        make_private_directory(self.base_dir)
        self._register_atexit()
        try:
            nicknames = [f"auth{i}" for i in range(self._authority_count)]
            self.authorities = list(
                await _gather(
                    [
                        Deferred.fromCoroutine(self._make_authority(i, nick))
                        for i, nick in enumerate(nicknames)
                    ],
                    consumeErrors=True,
                )
            )
            self.timings["keys"] = time.monotonic() - began
            launched = time.monotonic()
            authorities = [
                self._new_process(
                    a.nickname, a.ports, functools.partial(self._authority_torrc, a)
                )
                for a in self.authorities
            ]
            await self._launch_all(authorities)
            if wait_for_consensus:
                await self._wait_all(
                    authorities, self._consensus_complete, CONSENSUS_TIMEOUT
                )
                self.timings["consensus"] = time.monotonic() - launched
        except BaseException:
            await self.stop()
            raise

    def start_client(self) -> Deferred[TorProcess]:
        """Launch a client tor; fires once it is bootstrapped to 100%."""
        return Deferred.fromCoroutine(self._start_client())

    async def _start_client(self) -> TorProcess:
        if not self.authorities or self.base_port is None:
            raise TorNetworkError("start the network before its clients")
        index = len(self.processes)
        ports = NodePorts.for_index(self.base_port, index)
        nickname = f"client{index}"
        client = self._new_process(
            nickname,
            ports,
            lambda d: client_torrc(nickname, d, ports, self.authorities, os.getpid()),
        )
        began = time.monotonic()
        await self._launch_all([client])
        await self._wait_all([client], _bootstrapped, BOOTSTRAP_TIMEOUT)
        self.timings[f"{nickname} bootstrap"] = time.monotonic() - began
        self.clients.append(client)
        return client

    def client_torrc_options(self) -> TorrcOptions:
        """Options a node's own tor needs to join this network."""
        if not self.authorities:
            raise TorNetworkError("start the network first")
        return network_client_options(self.authorities)

    def stop(self) -> Deferred[None]:
        """SIGTERM every tor of ours, SIGKILL what is left after 5 s."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        running = self._recover_pids()
        for process in running:
            process.signal(signal.SIGTERM)
        await self._until(lambda: not any(p.is_running() for p in running), TERM_GRACE)
        for process in running:
            process.signal(signal.SIGKILL)
        await self._until(lambda: not any(p.is_running() for p in running), KILL_GRACE)
        self._unregister_atexit()
        survivors = [p.pid for p in running if p.is_running()]
        if survivors:
            raise TorNetworkError(f"tor processes {survivors} survived SIGKILL")

    def stop_now(self) -> None:
        """Synchronous :meth:`stop` for scripts and interpreter exit."""
        running = self._recover_pids()
        for process in running:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE
        while any(p.is_running() for p in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in running:
            process.signal(signal.SIGKILL)
        self._unregister_atexit()

    def _recover_pids(self) -> list[TorProcess]:
        """Our running tors, including any whose launch we stopped waiting for.

        A launch can fail (timeout, error) after tor daemonized; its PID file
        then still tells us which process to stop.
        """
        for process in self.processes:
            if process.pid is None:
                process.pid = _read_pid(process.data_dir / "tor.pid")
        return [p for p in self.processes if p.is_running()]

    def running_pids(self) -> list[int]:
        """PIDs of our tors that are still alive."""
        return [p.pid for p in self.processes if p.pid is not None and p.is_running()]

    # -- authorities -------------------------------------------------------

    async def _make_authority(self, index: int, nickname: str) -> AuthorityIdentity:
        assert self.base_port is not None
        ports = NodePorts.for_index(self.base_port, index)
        data_dir = make_private_directory(self.base_dir / nickname)
        keys_dir = make_private_directory(data_dir / "keys")
        identity_key = keys_dir / "authority_identity_key"
        cached = None if self._key_cache is None else self._key_cache / nickname
        if cached is not None and (cached / identity_key.name).exists():
            identity_key.write_bytes((cached / identity_key.name).read_bytes())
            os.chmod(identity_key, 0o600)
        args = [
            "-i",
            str(identity_key),
            "-s",
            str(keys_dir / "authority_signing_key"),
            "-c",
            str(keys_dir / "authority_certificate"),
            "-m",
            "12",
            "-a",
            f"{LOOPBACK}:{ports.dir_port}",
            "--passphrase-fd",
            "0",
        ]
        if not identity_key.exists():
            args.insert(0, "--create-identity-key")
        await self._run(self._gencert_binary, args, stdin=b"")
        if cached is not None and not (cached / identity_key.name).exists():
            make_private_directory(cached)
            (cached / identity_key.name).write_bytes(identity_key.read_bytes())
        certificate = (keys_dir / "authority_certificate").read_text()
        match = re.search(r"^fingerprint ([0-9A-F]{40})$", certificate, re.M)
        if match is None:
            raise TorNetworkError(f"no fingerprint in {nickname}'s certificate")
        output = await self._run(
            self._tor_binary,
            [
                "--ignore-missing-torrc",
                "-f",
                "/dev/null",
                "--orport",
                "1",
                "--datadirectory",
                str(data_dir),
                "--nickname",
                nickname,
                "--list-fingerprint",
            ],
        )
        last = output.strip().splitlines()[-1] if output.strip() else ""
        fingerprint = "".join(last.split()[1:])
        if not re.fullmatch(r"[0-9A-F]{40}", fingerprint) or not last.startswith(
            nickname + " "
        ):
            raise TorNetworkError(f"no relay fingerprint for {nickname}: {last!r}")
        return AuthorityIdentity(nickname, ports, match.group(1), fingerprint)

    def _authority_torrc(
        self, identity: AuthorityIdentity, data_dir: Path
    ) -> TorrcOptions:
        return authority_torrc(identity, data_dir, self.authorities, os.getpid())

    async def _consensus_complete(self, control: TorControl) -> str | None:
        """None when ready, else what is still missing."""
        if not await control.get_info("consensus/valid-after"):
            return "no consensus yet"
        listed = re.findall(r"^r (\S+) ", await control.get_info("ns/all"), re.M)
        missing = {a.nickname for a in self.authorities} - set(listed)
        if missing:
            return f"consensus lacks {sorted(missing)}"
        microdescriptors = (await control.get_info("md/all")).count("onion-key")
        if microdescriptors < len(self.authorities):
            return f"{microdescriptors} of {len(self.authorities)} microdescriptors"
        return None

    # -- processes ---------------------------------------------------------

    def _new_process(
        self,
        nickname: str,
        ports: NodePorts,
        torrc_for: Callable[[Path], TorrcOptions],
    ) -> TorProcess:
        data_dir = make_private_directory(self.base_dir / nickname)
        torrc = data_dir / "torrc"
        torrc.write_text(render_torrc(torrc_for(data_dir)))
        (data_dir / "tor.pid").unlink(missing_ok=True)
        process = TorProcess(nickname, ports, data_dir, torrc)
        self.processes.append(process)
        return process

    async def _launch_all(self, processes: Sequence[TorProcess]) -> None:
        await _gather(
            [Deferred.fromCoroutine(self._launch(p)) for p in processes],
            consumeErrors=True,
        )

    async def _launch(self, process: TorProcess) -> None:
        """Run tor; it daemonizes once its ports are open, then read its PID."""
        output = await self._run(
            self._tor_binary, ["-f", str(process.torrc)], check=False
        )
        pid_file = process.data_dir / "tor.pid"
        await self._until(lambda: _read_pid(pid_file) is not None, LAUNCH_TIMEOUT)
        pid = _read_pid(pid_file)
        if pid is None:
            raise TorNetworkError(
                f"{process.nickname} did not start:\n{output[-2000:]}\n"
                f"{log_tail(process.data_dir)}"
            )
        process.pid = pid

    async def _wait_all(
        self,
        processes: Sequence[TorProcess],
        check: Callable[[TorControl], Awaitable[str | None]],
        timeout: float,
    ) -> None:
        await _gather(
            [
                Deferred.fromCoroutine(self._wait_ready(p, check, timeout))
                for p in processes
            ],
            consumeErrors=True,
        )

    async def _wait_ready(
        self,
        process: TorProcess,
        check: Callable[[TorControl], Awaitable[str | None]],
        timeout: float,
    ) -> None:
        """Poll ``check`` over the control port until it returns None."""
        deadline = time.monotonic() + timeout
        control: TorControl | None = None
        status = "control port not reachable"
        try:
            while time.monotonic() < deadline:
                if not process.is_running():
                    raise TorNetworkError(
                        f"{process.nickname} exited:\n{log_tail(process.data_dir)}"
                    )
                try:
                    if control is None:
                        control = await open_tor_control(
                            self._reactor, process.control_endpoint
                        )
                    result = await check(control)
                except ConnectError:
                    result = status
                if result is None:
                    return
                status = result
                await deferLater(self._reactor, POLL_INTERVAL)
        finally:
            if control is not None:
                await control.close()
        raise TorNetworkError(
            f"{process.nickname} not ready after {timeout:g} s ({status}); "
            f"tail of its notice.log:\n{log_tail(process.data_dir)}"
        )

    async def _run(
        self,
        executable: str,
        args: Sequence[str],
        stdin: bytes | None = None,
        check: bool = True,
    ) -> str:
        """Run a helper to completion (bounded); its combined output."""
        collector = _CollectOutput(stdin)
        transport = self._reactor.spawnProcess(
            collector,
            executable,
            [executable, *args],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            path=str(self.base_dir),
        )
        collector.ended.addTimeout(KEYGEN_TIMEOUT, self._reactor)
        try:
            code = await collector.ended
        except Exception:
            transport.signalProcess("KILL")
            raise TorNetworkError(
                f"{executable} did not finish in {KEYGEN_TIMEOUT:g} s"
            ) from None
        output = bytes(collector.output).decode(errors="replace")
        if check and code != 0:
            raise TorNetworkError(f"{executable} failed ({code}):\n{output[-2000:]}")
        return output

    async def _until(self, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            await deferLater(self._reactor, 0.05)

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self.stop_now)
            self._atexit_registered = True

    def _unregister_atexit(self) -> None:
        if self._atexit_registered:
            atexit.unregister(self.stop_now)
            self._atexit_registered = False


async def _gather(deferreds: Sequence[Deferred[Any]], consumeErrors: bool) -> list[Any]:
    """``gatherResults`` that raises the first error itself, not FirstError."""
    try:
        return list(await gatherResults(list(deferreds), consumeErrors=consumeErrors))
    except FirstError as first:
        first.subFailure.raiseException()
        raise  # unreachable: raiseException always raises


async def _bootstrapped(control: TorControl) -> str | None:
    phase = await control.get_info("status/bootstrap-phase")
    if "PROGRESS=100 " in phase + " ":
        return None
    found = re.search(r'PROGRESS=(\d+).*SUMMARY="([^"]*)"', phase)
    return f"bootstrap {found.group(1)}%: {found.group(2)}" if found else phase


async def _serve(reactor: Any, argv: Sequence[str]) -> None:
    """Run a network until SIGINT/SIGTERM; print how to join it."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m barterbackup.testing.tornet",
        description="Run a private Tor network on 127.0.0.1 until interrupted.",
    )
    parser.add_argument("directory", type=Path, help="where the tors live")
    parser.add_argument("--clients", type=int, default=0, help="client tors")
    parser.add_argument("--key-cache", type=Path, default=None)
    args = parser.parse_args(argv)
    network = TorNetwork(reactor, args.directory, key_cache=args.key_cache)
    stopped: Deferred[None] = Deferred()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: reactor.callFromThread(stopped.callback, None))
    try:
        await network.start()
        clients = [await network.start_client() for _ in range(args.clients)]
        print(
            json.dumps(
                {
                    "client_torrc_options": network.client_torrc_options(),
                    "clients": [
                        {"socks_port": c.socks_port, "control": c.control_endpoint}
                        for c in clients
                    ],
                    "timings": network.timings,
                },
                indent=1,
            ),
            flush=True,
        )
        await stopped
    finally:
        await network.stop()


if __name__ == "__main__":
    import sys

    from twisted.internet.task import react

    react(lambda reactor: Deferred.fromCoroutine(_serve(reactor, sys.argv[1:])))
