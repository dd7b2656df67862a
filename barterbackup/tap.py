"""``twistd barterbackup``: options and the service tree of the daemon.

This is the one module that uses the global reactor.
"""

from __future__ import annotations

# (gRPC fork support is switched off in barterbackup/__init__.py: the daemon
# forks tor while gRPC threads run.)
import fcntl
import ipaddress
import json
import os
from pathlib import Path
from typing import Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.python import usage

from barterbackup import __version__, paths
from barterbackup.allocator import keep_memory_lean
from barterbackup.contracts.settings import BookSettings, settings_from_json
from barterbackup.logs import LEVELS, get_logger, set_log_level
from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from barterbackup.node.session import production_environment
from barterbackup.rpc.server import CliRpcServer, check_socket_path
from barterbackup.store.atomic import make_private_directory
from barterbackup.transport.onion import OnionDefences

log = get_logger("barterbackup.tap")


class Options(usage.Options):
    synopsis = "--node-dir DIR [options]"
    longdesc = (
        "Run a barterbackup node: the local CLI API on a Unix socket in the "
        "node directory, and (once unlocked) the peer protocol over Tor."
    )
    optParameters = [
        ["node-dir", "d", None, "Node directory (default: ~/.barterbackup)."],
        ["socket", "s", None, "CLI socket path (default: NODE_DIR/rpc/clirpc.sock)."],
        ["log-level", None, "info", f"Log level: {', '.join(LEVELS)}."],
        ["transport", None, "tor", "How peers reach us: 'tor' (default) or 'tcp'."],
        ["tcp-port", None, "0", "With --transport=tcp: port to listen on (0: any)."],
        [
            "tcp-interface",
            None,
            "127.0.0.1",
            "With --transport=tcp: IPv4 address to listen on (loopback unless "
            "--tcp-trusted-lan).",
        ],
        ["tor-control", None, None, "Attach to a running tor's control endpoint."],
        ["tor-binary", None, "tor", "The tor executable to launch."],
        [
            "tor-network-config",
            None,
            None,
            "JSON file of extra torrc options (a private test network).",
        ],
        [
            "contract-timings",
            None,
            None,
            "JSON file shortening the contract timings (demos and tests).",
        ],
        [
            "onion-pow-rate",
            None,
            str(OnionDefences.pow_queue_rate),
            "Under attack, introductions per second Tor takes from its queue.",
        ],
        [
            "onion-pow-burst",
            None,
            str(OnionDefences.pow_queue_burst),
            "Under attack, introductions Tor takes in one burst.",
        ],
        [
            "onion-max-streams",
            None,
            str(OnionDefences.max_streams_per_circuit),
            "Close a circuit that opens more streams to us (0: no limit).",
        ],
    ]
    optFlags = [
        ["no-onion-pow", None, "Turn off Tor's proof-of-work defence."],
        [
            "tcp-trusted-lan",
            None,
            "With --transport=tcp: allow addresses outside this machine. Plain "
            "TCP has no integrity after the handshake: trusted networks only.",
        ],
    ]

    def postOptions(self) -> None:
        try:
            node_dir = Path(self["node-dir"] or paths.default_node_dir()).expanduser()
            self["node-dir"] = node_dir.resolve()
            socket = Path(self["socket"]).expanduser() if self["socket"] else None
        except (RuntimeError, OSError) as e:
            # "~nosuchuser/x", a symbolic link loop: a usage error, not a
            # traceback.
            raise usage.UsageError(f"bad --node-dir or --socket: {e}") from None
        self["socket"] = socket or paths.default_socket_path(self["node-dir"])
        try:
            check_socket_path(self["socket"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["log-level"] not in LEVELS:
            raise usage.UsageError(f"--log-level must be one of {', '.join(LEVELS)}")
        if self["transport"] not in ("tor", "tcp"):
            raise usage.UsageError("--transport must be 'tor' or 'tcp'")
        try:
            port = int(self["tcp-port"])
        except ValueError:
            raise usage.UsageError("--tcp-port must be a number") from None
        if not 0 <= port <= 65535:
            raise usage.UsageError("--tcp-port must be between 0 and 65535")
        self["tcp-port"] = port
        try:
            address = ipaddress.IPv4Address(self["tcp-interface"])
        except ValueError:
            raise usage.UsageError("--tcp-interface must be an IPv4 address") from None
        if not (address.is_loopback or self["tcp-trusted-lan"]):
            raise usage.UsageError(
                "--tcp-interface outside loopback needs --tcp-trusted-lan: plain "
                "TCP carries peer traffic unprotected"
            )
        self["extra-torrc"] = _read_torrc_options(self["tor-network-config"])
        self["contract-settings"] = _read_contract_settings(self["contract-timings"])
        self["onion-defences"] = self._onion_defences()

    def _onion_defences(self) -> OnionDefences:
        numbers = {}
        for option in ("onion-pow-rate", "onion-pow-burst", "onion-max-streams"):
            try:
                numbers[option] = int(self[option])
            except ValueError:
                raise usage.UsageError(f"--{option} must be a number") from None
        try:
            return OnionDefences(
                proof_of_work=not self["no-onion-pow"],
                pow_queue_rate=numbers["onion-pow-rate"],
                pow_queue_burst=numbers["onion-pow-burst"],
                max_streams_per_circuit=numbers["onion-max-streams"],
            )
        except ValueError as error:
            raise usage.UsageError(str(error)) from None


def _read_contract_settings(path: str | None) -> BookSettings | None:
    if not path:
        return None
    try:
        return settings_from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as e:
        raise usage.UsageError(f"cannot use --contract-timings {path}: {e}") from None


def _read_torrc_options(path: str | None) -> tuple[tuple[str, str], ...]:
    if not path:
        return ()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise usage.UsageError(
            f"cannot read --tor-network-config {path}: {e}"
        ) from None
    options = data.get("torrc") if isinstance(data, dict) else None
    if not isinstance(options, list) or not all(
        isinstance(o, list) and len(o) == 2 and all(isinstance(x, str) for x in o)
        for o in options
    ):
        raise usage.UsageError(
            f"--tor-network-config {path} must hold {{'torrc': [[option, value], ...]}}"
        )
    return tuple((k, v) for k, v in options)


class NodeDirectoryLock(Service):
    """Holds an exclusive lock on the node directory while the daemon runs."""

    def __init__(self, node_dir: Path) -> None:
        self._path = paths.lock_path(node_dir)
        self._fd: int | None = None

    def startService(self) -> None:
        make_private_directory(self._path.parent)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"another barterbackup daemon is using {self._path.parent}"
            ) from None
        self._fd = fd
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_service(options: Options, reactor: Any) -> IService:
    set_log_level(options["log-level"])
    # Before any thread starts: flat memory over peak loopback throughput.
    keep_memory_lean()
    config = NodeConfig(
        node_dir=options["node-dir"],
        transport=options["transport"],
        tcp_listen_port=options["tcp-port"],
        tcp_interface=options["tcp-interface"],
        tcp_trusted_lan=bool(options["tcp-trusted-lan"]),
        tor_control=options["tor-control"],
        tor_binary=options["tor-binary"],
        extra_torrc=options["extra-torrc"],
        contract_settings=options["contract-settings"],
        onion_defences=options["onion-defences"],
    )
    node = Node(production_environment(reactor, config), config)
    top = MultiService()
    NodeDirectoryLock(config.node_dir).setServiceParent(top)
    # Stopped after the CLI server (services stop in reverse order): the
    # node's session closes the peer network, a tor we launched, the stores.
    node.setServiceParent(top)
    CliRpcServer(reactor, node, options["socket"]).setServiceParent(top)
    log.info(
        "barterbackup {version} starting in {node_dir}",
        version=__version__,
        node_dir=str(config.node_dir),
    )
    return cast(IService, top)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    return make_service(options, reactor)
