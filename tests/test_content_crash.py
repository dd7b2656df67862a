"""Crash safety: SIGKILL at every numbered durable write of a commit."""

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
from barterbackup.testing.stores import open_content_store
from barterbackup.tree import iter_nodes
from tests.content_crash_child import MASTER, file_set

CHILD = Path(__file__).with_name("content_crash_child.py")
REPOSITORY = CHILD.parent.parent
# Every crash_point(n) call of ContentStore._commit / PackStore.install_all
# (docs/storage-format.md lists what each follows).
CRASH_POINTS = range(1, 8)
# The revision that survives a crash at each point: the old one before the
# commit point (6, writing ``current``), the new one from it on.
OUTCOMES = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2}
KEYS = node_keys_from_master(MASTER)


def run_child(node_dir: Path, revision: int, crash_at: int | None) -> int:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    environment.pop(CRASH_ENVIRONMENT_VARIABLE, None)
    if crash_at is not None:
        environment[CRASH_ENVIRONMENT_VARIABLE] = str(crash_at)
    completed = subprocess.run(
        [sys.executable, str(CHILD), str(node_dir.resolve()), str(revision)],
        env=environment,
        cwd=REPOSITORY,
        timeout=60,
        capture_output=True,
    )
    return completed.returncode


def read_all(store: ContentStore) -> dict[str, bytes]:
    return {name: b"".join(store.read_file(name)) for name in store.list_files()}


class CrashPointTests(TestCase):
    def check_crash_at(self, point: int) -> int:
        node_dir = Path(self.mktemp()).resolve()
        node_dir.mkdir(parents=True)
        self.assertEqual(run_child(node_dir, 1, None), 0)
        code = run_child(node_dir, 2, point)
        self.assertEqual(code, -9, f"crash point {point} was never reached")
        store = open_content_store(node_dir, KEYS)
        self.addCleanup(store.close)
        self.assertEqual(list(node_dir.rglob(f"*{TEMP_SUFFIX}")), [])
        assert store.current is not None
        number = store.current.number
        self.assertIn(number, (1, 2))
        self.assertEqual(read_all(store), file_set(number))
        # Nothing of the crashed commit is named: no revision file above
        # the pointer, and every blob of the committed trees is stored.
        revisions = sorted(p.name for p in (node_dir / "content/revisions").iterdir())
        self.assertTrue(all(int(name.split(".")[0]) <= number for name in revisions))
        for tree in (store.current.sections, store.current.manifest):
            for node in iter_nodes(tree, store._source):
                self.assertTrue(store.has_blob(node.ref.hash))
        self.assertEqual(store.metadata.get().revision, number)
        self.assertEqual(store.metadata.get().content_id, store.current.content_id)
        # The store keeps working: a further commit and gc succeed.
        update = store.begin_update()
        writer = update.add_file("after-crash")
        writer.write(b"x")
        writer.close()
        self.assertEqual(update.commit().revision.number, number + 1)
        store.gc()
        self.assertEqual(b"".join(store.read_file("after-crash")), b"x")
        return number

    def test_every_crash_point(self) -> None:
        outcomes = {point: self.check_crash_at(point) for point in CRASH_POINTS}
        self.assertEqual(outcomes, OUTCOMES)

    def test_no_crash_gives_revision_2(self) -> None:
        node_dir = Path(self.mktemp()).resolve()
        node_dir.mkdir()
        self.assertEqual(run_child(node_dir, 1, None), 0)
        self.assertEqual(run_child(node_dir, 2, None), 0)
        store = open_content_store(node_dir, KEYS)
        self.addCleanup(store.close)
        self.assertEqual(read_all(store), file_set(2))
