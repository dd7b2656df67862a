"""Child process for tests/test_backups_crash.py (not a test module itself).

Usage: python tests/backup_crash_child.py NODE_DIR TREE [KILL_AFTER_FILES]

Runs one backup of TREE (source name "tree") into NODE_DIR's content store
and commits. With KILL_AFTER_FILES the process SIGKILLs itself once that
many files were read into the update (mid-run); BARTERBACKUP_CRASH_AT kills
it at a numbered point of the commit.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from barterbackup.content.engine import Update
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.sources.run import back_up
from barterbackup.sources.walker import WalkReport, WalkRoot
from barterbackup.testing.stores import open_content_store

MASTER = bytes(range(32, 64))


class Changes:
    """The engine's update as a run tells it (node.facade.FileSetUpdate's
    job in the daemon; the node package is not imported here: it is slow
    to import, and the child starts three times a test)."""

    def __init__(self, update: Update) -> None:
        self.update = update
        self.writer: Any = None

    def add_file(self, name: str, **fields: int) -> None:
        self.close()
        self.writer = self.update.add_file(name, **fields)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def remove_file(self, name: str) -> None:
        self.close()
        self.update.remove_file(name)

    def keep_file(self, name: str) -> None:
        self.close()
        self.update.keep_file(name)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class KillAfter:
    """The update, SIGKILLing the process after ``count`` files started."""

    def __init__(self, inner: Changes, count: int) -> None:
        self.inner = inner
        self.count = count

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def add_file(self, name: str, **fields: int) -> None:
        if self.count == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        self.count -= 1
        self.inner.add_file(name, **fields)


def main(node_dir: Path, tree: Path, kill_after: int | None) -> None:
    store = open_content_store(node_dir, node_keys_from_master(MASTER))
    update = store.begin_update()
    inner = Changes(update)
    changes: Any = inner if kill_after is None else KillAfter(inner, kill_after)
    back_up(changes, [WalkRoot(str(tree), "tree")], store.records(), WalkReport())
    inner.close()
    update.commit()
    store.close()


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        int(sys.argv[3]) if len(sys.argv) > 3 else None,
    )
