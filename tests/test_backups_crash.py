"""A backup run SIGKILLed mid-read or mid-commit leaves the last revision
intact, and the next run completes."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import TestCase

from barterbackup.keys.derive import node_keys_from_master
from barterbackup.store.atomic import TEMP_SUFFIX
from barterbackup.store.crash import CRASH_ENVIRONMENT_VARIABLE
from barterbackup.testing.stores import open_content_store
from tests.backup_crash_child import MASTER

CHILD = Path(__file__).with_name("backup_crash_child.py")
REPOSITORY = CHILD.parent.parent


def run_child(
    node_dir: Path, tree: Path, kill_after: int | None = None, crash_at: int = 0
) -> int:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    environment.pop(CRASH_ENVIRONMENT_VARIABLE, None)
    if crash_at:
        environment[CRASH_ENVIRONMENT_VARIABLE] = str(crash_at)
    arguments = [sys.executable, str(CHILD), str(node_dir), str(tree)]
    if kill_after is not None:
        arguments.append(str(kill_after))
    completed = subprocess.run(
        arguments, env=environment, cwd=REPOSITORY, timeout=60, capture_output=True
    )
    return completed.returncode


def tree_files(tree: Path) -> dict[str, bytes]:
    return {
        f"tree/{path.relative_to(tree).as_posix()}": path.read_bytes()
        for path in tree.rglob("*")
        if path.is_file()
    }


class BackupCrashTests(TestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="bb-crash-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.tree = self.base / "tree"
        rng = random.Random(5)
        for index in range(40):
            path = self.tree / f"d{index % 4}" / f"f{index:02d}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(rng.randint(1, 90_000)))

    def stored(self, node_dir: Path) -> tuple[int, dict[str, bytes]]:
        store = open_content_store(node_dir, node_keys_from_master(MASTER))
        try:
            assert store.current is not None
            files = {
                name: b"".join(store.read_file(name)) for name in store.list_files()
            }
            return store.current.number, files
        finally:
            store.close()

    def change_tree(self) -> None:
        rng = random.Random(6)
        for index in range(0, 40, 3):
            path = self.tree / f"d{index % 4}" / f"f{index:02d}"
            path.write_bytes(rng.randbytes(rng.randint(1, 90_000)))
        (self.tree / "d1" / "f01").unlink()
        (self.tree / "new").write_bytes(b"a new file")

    def check(self, kill_after: int | None, crash_at: int = 0) -> None:
        node_dir = self.base / f"node-{kill_after}-{crash_at}"
        self.assertEqual(run_child(node_dir, self.tree), 0)
        first = tree_files(self.tree)
        self.assertEqual(self.stored(node_dir), (1, first))
        self.change_tree()
        try:
            code = run_child(node_dir, self.tree, kill_after, crash_at)
            self.assertEqual(code, -9, "the child was not killed")
            self.assertEqual(self.stored(node_dir), (1, first))
            # Opening the store removed what the killed update left.
            self.assertEqual(list(node_dir.rglob(f"*{TEMP_SUFFIX}")), [])
            # The next run completes from the same (changed) tree.
            self.assertEqual(run_child(node_dir, self.tree), 0)
            self.assertEqual(self.stored(node_dir), (2, tree_files(self.tree)))
        finally:
            shutil.rmtree(self.tree)
            self.setUp_tree_again()

    def setUp_tree_again(self) -> None:
        rng = random.Random(5)
        for index in range(40):
            path = self.tree / f"d{index % 4}" / f"f{index:02d}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(rng.randint(1, 90_000)))

    def test_killed_while_reading(self) -> None:
        self.check(kill_after=5)

    def test_killed_before_the_commit_point(self) -> None:
        # Point 5: the new root is written, ``current`` not yet.
        self.check(kill_after=None, crash_at=5)
