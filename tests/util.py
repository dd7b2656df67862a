"""Small helpers shared by the tests."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from barterbackup.node.session import production_environment
from barterbackup.progress import Progress
from barterbackup.testing.daemon import DaemonProcess
from barterbackup.testing.fakeengine import FakeContentEngine

if TYPE_CHECKING:
    from barterbackup.content.engine import CommitResult


def short_tempdir(case: SynchronousTestCase) -> Path:
    """A fresh directory with a short path, removed after the test.

    Unix socket paths are limited to 107 bytes, which trial's deep
    _trial_temp paths exceed.
    """
    path = Path(tempfile.mkdtemp(prefix="bb-"))
    case.addCleanup(shutil.rmtree, path, True)
    return path


def tcp_daemon(case: SynchronousTestCase, node_dir: Path) -> DaemonProcess:
    """A real daemon on plain TCP (loopback) for ``node_dir``, started and
    killed after the test; its log beside the node directory."""
    daemon = DaemonProcess(
        node_dir,
        log_path=node_dir.with_name(f"{node_dir.name}.log"),
        extra_args=["--transport", "tcp"],
    )
    daemon.start()
    case.addCleanup(daemon.kill)
    return daemon


def unlocked_tcp_daemon(
    case: SynchronousTestCase, node_dir: Path, password: str
) -> DaemonProcess:
    """``tcp_daemon`` for a new node, unlocked with ``password`` (given to
    the CLI in a file beside the node directory)."""
    daemon = tcp_daemon(case, node_dir)
    secret = node_dir.with_name(f"{node_dir.name}.password")
    secret.write_text(password + "\n")
    daemon.cli("unlock", "--create", "--password-file", str(secret), check=True)
    return daemon


def start_node(reactor: Any, config: NodeConfig, content: str = "real") -> Node:
    """A daemon's Node on the real reactor, started (stop it with
    ``stopService``); ``content="fake"`` gives it the fake content engine."""
    env = production_environment(reactor, config)
    if content == "fake":
        env = dataclasses.replace(env, open_content=FakeContentEngine.open)
    node = Node(env, config)
    node.startService()
    return node


PASSWORDS = [
    "quartz-lantern-ember-violet-harbor-cobalt-meadow",
    "saffron-glacier-tundra-orchid-beacon-falcon-pebble",
    "walnut-prism-meteor-canyon-thimble-juniper-sonnet",
]


def write_files(node: Node, files: dict[str, bytes]) -> Deferred[CommitResult]:
    """Commit ``files`` as one revision (disk work in a thread, like gRPC)."""

    async def run() -> CommitResult:
        update = await node.begin_update()

        def work() -> CommitResult:
            try:
                for name, data in files.items():
                    update.add_file(name)
                    update.write(data)
                return update.commit()
            finally:
                update.abort()

        try:
            result: CommitResult = await deferToThread(work)
        finally:
            update.finish()
        node.revision_committed()
        return result

    return Deferred.fromCoroutine(run())


def replicate(node: Node, peers: list[str]) -> Deferred[list[Progress]]:
    """Push the current revision to ``peers``; fires with every event."""
    events: list[Progress] = []
    return node.replicate(peers, events.append).addCallback(lambda _: events)


class Waiter:
    """A chat listener that keeps every update and lets a test await one."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.updates: list[Any] = []
        self._seconds = seconds
        self._waiting: list[tuple[Any, Deferred[Any]]] = []

    def __call__(self, update: Any) -> None:
        self.updates.append(update)
        for entry in list(self._waiting):
            predicate, d = entry
            if predicate(update):
                self._waiting.remove(entry)
                d.callback(update)

    def next(self, predicate: Any) -> Deferred[Any]:
        """Fires with the first update (seen already or to come) matching."""
        for update in self.updates:
            if predicate(update):
                d: Deferred[Any] = Deferred()
                d.callback(update)
                return d
        d = Deferred()
        self._waiting.append((predicate, d))
        return d.addTimeout(self._seconds, reactor)
