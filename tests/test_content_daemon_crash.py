"""Crash safety through the real daemon: SIGKILL mid-SetFile at each point.

Slower than tests/test_content_crash.py (two daemon starts per point); it
shows the same guarantee holds inside ``twistd barterbackup``, with the
commit driven by a gRPC worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import clirpc_pb2
from barterbackup.keys.derive import derive_node_keys
from barterbackup.store.atomic import TEMP_SUFFIX
from barterbackup.store.crash import CRASH_ENVIRONMENT_VARIABLE
from barterbackup.testing.daemon import DaemonProcess
from barterbackup.testing.stores import open_content_store
from tests.content_crash_child import file_set
from tests.passwords import STRONG
from tests.test_content_crash import CRASH_POINTS, OUTCOMES
from tests.util import short_tempdir

KEYS = derive_node_keys(STRONG)
CHUNK = 100_000


def set_file_requests(
    previous: dict[str, bytes], wanted: dict[str, bytes]
) -> Iterator[clirpc_pb2.SetFileRequest]:
    for name in sorted(set(previous) - set(wanted)):
        yield clirpc_pb2.SetFileRequest(
            header=clirpc_pb2.FileHeader(name=name, remove=True)
        )
    for name, data in sorted(wanted.items()):
        if previous.get(name) == data:
            continue  # unchanged files are not sent again
        yield clirpc_pb2.SetFileRequest(
            header=clirpc_pb2.FileHeader(name=name, size=len(data), mode=0o600)
        )
        for start in range(0, len(data), CHUNK):
            yield clirpc_pb2.SetFileRequest(data=data[start : start + CHUNK])


class DaemonCrashTests(SynchronousTestCase):
    def start_daemon(self, node_dir: Path, crash_at: int | None) -> DaemonProcess:
        environment = dict(os.environ)
        environment.pop(CRASH_ENVIRONMENT_VARIABLE, None)
        if crash_at is not None:
            environment[CRASH_ENVIRONMENT_VARIABLE] = str(crash_at)
        daemon = DaemonProcess(
            node_dir,
            log_path=node_dir.parent / "daemon.log",
            extra_args=["--transport", "tcp"],
            env=environment,
        )
        daemon.start()
        self.addCleanup(daemon.kill)
        daemon.stub().Unlock(
            clirpc_pb2.UnlockRequest(password=STRONG, create_if_missing=True),
            timeout=60,
        )
        return daemon

    def check_crash_at(self, point: int) -> int:
        node_dir = short_tempdir(self) / "node"
        daemon = self.start_daemon(node_dir, None)
        daemon.stub().SetFile(set_file_requests({}, file_set(1)), timeout=60)
        daemon.stop()
        daemon = self.start_daemon(node_dir, point)
        with self.assertRaises(grpc.RpcError):
            daemon.stub().SetFile(
                set_file_requests(file_set(1), file_set(2)), timeout=60
            )
        assert daemon.process is not None
        self.assertEqual(daemon.process.wait(10), -9, f"point {point} not reached")
        store = open_content_store(node_dir, KEYS)
        self.addCleanup(store.close)
        self.assertEqual(list(node_dir.rglob(f"*{TEMP_SUFFIX}")), [])
        assert store.current is not None
        number = store.current.number
        files = {name: b"".join(store.read_file(name)) for name in store.list_files()}
        self.assertEqual(files, file_set(number))
        self.assertEqual(store.metadata.get().revision, number)
        return number

    def test_every_crash_point_in_the_daemon(self) -> None:
        outcomes = {point: self.check_crash_at(point) for point in CRASH_POINTS}
        self.assertEqual(outcomes, OUTCOMES)
