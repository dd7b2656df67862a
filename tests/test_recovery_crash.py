"""Crash safety of recovery: SIGKILL at every numbered durable write of
storing fetched blobs (11-13) and installing the revision (14-17), then a
resumed run that fetches nothing stored before and installs the revision."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from barterbackup.content.engine import ContentStore
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.store.atomic import TEMP_SUFFIX
from barterbackup.store.crash import CRASH_ENVIRONMENT_VARIABLE
from barterbackup.sync.fetch import live_blobs
from barterbackup.testing.stores import open_content_store
from tests.content_crash_child import MASTER, commit, file_set

CHILD = Path(__file__).with_name("recovery_crash_child.py")
REPOSITORY = CHILD.parent.parent
# Points 11-13: the pack of fetched blobs installed (content/recovered.py);
# 14-17: install_revision (names, revision file, ``current``, Metadata).
CRASH_POINTS = range(11, 18)
# ``current`` is written between 15 and 16: from 16 on the revision is ours.
INSTALLED_FROM = 16
KEYS = node_keys_from_master(MASTER)


def run_child(source: Path, target: Path, crash_at: int | None) -> tuple[int, str]:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    environment.pop(CRASH_ENVIRONMENT_VARIABLE, None)
    if crash_at is not None:
        environment[CRASH_ENVIRONMENT_VARIABLE] = str(crash_at)
    completed = subprocess.run(
        [sys.executable, str(CHILD), str(source), str(target)],
        env=environment,
        cwd=REPOSITORY,
        timeout=60,
        capture_output=True,
    )
    return completed.returncode, completed.stdout.decode()


def read_all(store: ContentStore) -> dict[str, bytes]:
    return {name: b"".join(store.read_file(name)) for name in store.list_files()}


class _Source:
    def __init__(self, store: ContentStore) -> None:
        self._store = store

    def get(self, node_hash: bytes) -> bytes:
        data: bytes = self._store.read_blob(node_hash)
        return data


class InstallCrashTests(TestCase):
    def setUp(self) -> None:
        self.source = Path(self.mktemp()).resolve()
        self.source.mkdir(parents=True)
        commit(self.source, 1)
        store = open_content_store(self.source, KEYS)
        assert store.current is not None
        self.needed = len(set(live_blobs(store.current, _Source(store))))
        store.close()

    def check_crash_at(self, point: int) -> None:
        target = Path(self.mktemp()).resolve()
        target.mkdir(parents=True)
        code, _ = run_child(self.source, target, point)
        self.assertEqual(code, -9, f"crash point {point} was never reached")
        store = open_content_store(target, KEYS)
        # Opening cleans up what the crash left half written.
        self.assertEqual(list(target.rglob(f"*{TEMP_SUFFIX}")), [], f"point {point}")
        if point < INSTALLED_FROM:
            # Nothing is current: the node is still an empty one.
            self.assertIsNone(store.current, f"point {point}")
            self.assertEqual(store.metadata.get().revision, 0)
        else:
            assert store.current is not None
            self.assertEqual(store.current.number, 1)
            self.assertEqual(read_all(store), file_set(1))
        stored_before = sum(1 for _ in live_blobs_stored(store, self.source))
        store.close()
        # The resumed recovery fetches only what was not stored...
        code, out = run_child(self.source, target, None)
        self.assertEqual(code, 0, out)
        fetched_again = int(out.split()[-1])
        self.assertEqual(fetched_again, self.needed - stored_before, f"point {point}")
        if point > 13:
            self.assertEqual(fetched_again, 0)
        # ...and the revision is current, every file byte for byte.
        store = open_content_store(target, KEYS)
        self.addCleanup(store.close)
        assert store.current is not None
        self.assertEqual(store.current.number, 1)
        self.assertEqual(read_all(store), file_set(1))
        self.assertEqual(store.metadata.get().revision, 1)
        self.assertIsNone(store.missing_blob(store.current))
        # The store keeps working: a commit and gc after the recovery.
        update = store.begin_update()
        writer = update.add_file("after-recovery")
        writer.write(b"x")
        writer.close()
        self.assertEqual(update.commit().revision.number, 2)
        store.gc()
        self.assertEqual(b"".join(store.read_file("after-recovery")), b"x")

    def test_every_crash_point(self) -> None:
        for point in CRASH_POINTS:
            self.check_crash_at(point)


def live_blobs_stored(store: ContentStore, source_dir: Path) -> list[bytes]:
    """The blobs of the source's revision that ``store`` has already."""
    source = open_content_store(source_dir, KEYS)
    try:
        assert source.current is not None
        wanted = set(live_blobs(source.current, _Source(source)))
    finally:
        source.close()
    return [sha256 for sha256 in wanted if store.has_blob(sha256)]
