"""A no-network swarm: N full nodes in one process, on one ``task.Clock``.

The Tahoe-LAFS ``no_network`` idea. Each node is the real ``Node`` facade
with its real session, content store, replica store and peer table, in its
own directory; only the world around it is replaced:

* peers reach each other through an in-memory transport whose connections
  are ``PeerLink``s (the real bbrpc code on both ends, delivered
  synchronously);
* time is one ``task.Clock`` (nothing sleeps; tests advance it);
* blocking work runs inline, and keys come from a cheap derivation instead
  of Argon2id.

So a multi-node test is deterministic and takes milliseconds per node.
With ``content="fake"`` each node's own content comes from
``testing.fakeengine`` instead of the content engine (real revisions, real
trees, no packs), for tests of what lies above the content.

    swarm = Swarm(Path(self.mktemp()), 3)
    a, b, c = swarm.nodes
    swarm.connect(a, b)
    a.write_files({"f.txt": b"hello"})
    swarm.wait(a.node.replicate([], events.append))
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from barterbackup.contracts.settings import BookSettings
from barterbackup.keys.derive import NodeKeys, node_keys_from_master
from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from barterbackup.node.session import NodeEnvironment, open_content_store
from barterbackup.sync.interfaces import run_inline
from barterbackup.testing.fakeengine import FakeContentEngine
from barterbackup.testing.link import PeerLink

if TYPE_CHECKING:
    from barterbackup.content.engine import CommitResult

T = TypeVar("T")

# Strong enough for the password floor; each node's index is appended.
PASSWORD_STEM = "quartz-lantern-ember-violet-harbor-cobalt-meadow-"


def engine_available() -> bool:
    """Whether the content engine imports (the swarm's default content)."""
    try:
        import barterbackup.content.engine  # noqa: F401
    except ImportError:
        return False
    return True


def cheap_keys(password: str) -> NodeKeys:
    """Deterministic keys from a password without Argon2id (tests only)."""
    return node_keys_from_master(hashlib.sha256(password.encode()).digest())


class _ListeningPort:
    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self._network = network
        self._address = address

    def stopListening(self) -> None:
        self._network.listeners.pop(self._address, None)

    def getHost(self) -> Any:
        return self._address


@dataclass
class MemoryNetwork:
    """Where the swarm's nodes listen, and the links between them."""

    listeners: dict[str, Any] = field(default_factory=dict)
    links: list[tuple[str, str, PeerLink]] = field(default_factory=list)
    # on_link(client, server, link) hears of every new link (tests tamper
    # with links that do not exist yet).
    link_hooks: list[Callable[[str, str, PeerLink], None]] = field(default_factory=list)

    def cut(self, address: str) -> None:
        """Cut every link to or from ``address``."""
        for client, server, link in list(self.links):
            if address in (client, server):
                link.disconnect()
        self.links = [entry for entry in self.links if not entry[2].closed]


class _MemoryEndpoint:
    def __init__(self, network: MemoryNetwork, source: str, target: str) -> None:
        self._network = network
        self._source = source
        self._target = target

    def connect(self, factory: Any) -> Deferred[Any]:
        listener = self._network.listeners.get(self._target)
        if listener is None:
            return fail(ConnectionRefusedError(f"{self._target} is not listening"))
        client = factory.buildProtocol(None)
        server = listener.buildProtocol(None)
        link = PeerLink(client, server)
        self._network.links.append((self._source, self._target, link))
        for hook in list(self._network.link_hooks):
            hook(self._source, self._target, link)
        return succeed(client)


class MemoryTransport:
    """A Transport for the swarm: peers are found by onion address."""

    name = "memory"
    reaches_by_address = True

    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self._network = network
        self._address = address
        self._listening = False

    @property
    def advertised(self) -> str:
        return f"memory:{self._address}" if self._listening else ""

    async def start(self) -> None:
        """Nothing to prepare."""

    def listen(self, factory: Any) -> Deferred[Any]:
        self._network.listeners[self._address] = factory
        self._listening = True
        return succeed(_ListeningPort(self._network, self._address))

    def client_endpoint(self, onion_address: str, hint: str | None = None) -> Any:
        return _MemoryEndpoint(self._network, self._address, onion_address)

    async def stop(self) -> None:
        self._network.listeners.pop(self._address, None)
        self._listening = False
        self._network.cut(self._address)


class SwarmNode:
    """One node of the swarm, with shortcuts for tests."""

    def __init__(
        self, swarm: Swarm, index: int, node: Node, password: str, node_dir: Path
    ) -> None:
        self.swarm = swarm
        self.index = index
        self.node = node
        self.password = password
        self.node_dir = node_dir
        # Kept while stopped, for tests that look at a node that is down.
        self._address = node.session.keys.onion_address
        self._pubkey = node.session.keys.onion_pubkey

    @property
    def address(self) -> str:
        return self._address

    @property
    def pubkey(self) -> bytes:
        return self._pubkey

    @property
    def running(self) -> bool:
        return bool(self.node.running)

    @property
    def book(self) -> Any:
        return self.node.session.book

    def lose_replica_of(self, owner: SwarmNode) -> None:
        """Delete everything this node stores for ``owner`` (a lost disk)."""
        self.node.session.replicas.delete(owner.pubkey)

    @property
    def session(self) -> Any:
        return self.node.session

    def write_files(
        self, files: dict[str, bytes], remove: Iterable[str] = ()
    ) -> CommitResult:
        """Commit ``files`` (and removals) as one revision, as SetFile does."""
        update = self.swarm.wait(self.node.begin_update())
        try:
            for name in remove:
                update.remove_file(name)
            for name, data in files.items():
                update.add_file(name)
                update.write(data)
            result = update.commit()
        finally:
            update.abort()
            update.finish()
        self.node.revision_committed()
        return result

    def read_file(self, name: str) -> bytes:
        return b"".join(self.node.open_file(name))


class Swarm:
    """N unlocked nodes in one process on one clock."""

    def __init__(
        self,
        root: Path,
        count: int,
        seed: int = 0,
        content: str = "real",
        settings: BookSettings | None = None,
    ) -> None:
        if content not in ("real", "fake"):
            raise ValueError("content is 'real' (the engine) or 'fake'")
        self.clock = task.Clock()
        # Wall time far from zero: records and handshakes use it.
        self.clock.advance(1_800_000_000)
        self.network = MemoryNetwork()
        self.nodes: list[SwarmNode] = []
        self.content = content
        self.settings = settings or BookSettings()
        self._rng = random.Random(seed)
        for index in range(count):
            self.nodes.append(self.add_node(Path(root) / f"node{index}", index))

    def environment(self) -> NodeEnvironment:
        network = self.network

        def make_transport(keys: NodeKeys) -> MemoryTransport:
            return MemoryTransport(network, keys.onion_address)

        return NodeEnvironment(
            clock=self.clock,
            blocking=run_inline,
            make_transport=make_transport,
            derive_keys=cheap_keys,
            now=self.clock.seconds,
            rng=random.Random(self._rng.random()),
            open_content=(
                FakeContentEngine.open if self.content == "fake" else open_content_store
            ),
            contract_settings=self.settings,
            random_bytes=random.Random(self._rng.random()).randbytes,
        )

    def add_node(self, node_dir: Path, index: int) -> SwarmNode:
        """Start and unlock one more node (its directory may hold one)."""
        node = Node(self.environment(), NodeConfig(node_dir=node_dir))
        node.startService()
        password = f"{PASSWORD_STEM}{index}"
        self.wait(node.unlock(password, create_if_missing=True))
        self.wait(node.session.network.ready())
        return SwarmNode(self, index, node, password, node_dir)

    def stop_node(self, member: SwarmNode) -> None:
        """Stop one node (its links are cut; its directory stays)."""
        if member.running:
            self.wait(member.node.stopService())

    def restart_node(self, member: SwarmNode) -> SwarmNode:
        """Start a stopped node again from its directory, as after a reboot."""
        self.stop_node(member)
        again = self.add_node(member.node_dir, member.index)
        self.nodes[self.nodes.index(member)] = again
        return again

    def connect(self, a: SwarmNode, b: SwarmNode, share: bool = False) -> Any:
        """``a`` connects to ``b`` by address, as ConnectPeer does."""
        return self.wait(a.node.connect_peer(b.address, share=share))

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Let ``seconds`` pass, in steps, firing every timer due."""
        remaining = seconds
        while remaining > 0:
            delta = min(step, remaining)
            self.clock.advance(delta)
            remaining -= delta

    def wait(self, d: Deferred[T], seconds: float = 0.0) -> T:
        """The result of ``d``, advancing the clock up to ``seconds``.

        Raises the failure if ``d`` failed, AssertionError if it has not
        fired by then.
        """
        results: list[Any] = []
        d.addBoth(results.append)
        waited = 0.0
        while not results and waited < seconds:
            self.clock.advance(0.1)
            waited += 0.1
        if not results:
            raise AssertionError(f"not done after {seconds} s of swarm time")
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def wait_failure(self, d: Deferred[Any], seconds: float = 0.0) -> Failure:
        """The failure ``d`` fails with (AssertionError if it succeeds)."""
        try:
            result = self.wait(d, seconds)
        except AssertionError:
            raise
        except Exception:
            failures: list[Failure] = []
            d.addErrback(failures.append)
            return failures[0] if failures else Failure()
        raise AssertionError(f"succeeded with {result!r}")

    def stop(self) -> None:
        for member in self.nodes:
            if member.node.running:
                self.wait(member.node.stopService())
