"""A backup run: the files cache, what it reads, removes, keeps and skips."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content.engine import CommitResult, ContentStore
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.node.facade import FileSetUpdate
from barterbackup.sources import run as run_module
from barterbackup.sources.excludes import compile_excludes
from barterbackup.sources.run import (
    RunCancelled,
    ScanCounts,
    add_paths,
    back_up,
    entry_for_file,
)
from barterbackup.sources.schedule import RunProgress
from barterbackup.sources.walker import WalkReport, WalkRoot
from barterbackup.testing.stores import open_content_store

KEYS = node_keys_from_master(bytes(range(32)))


class CountingOpens:
    """Counts the opens (and bytes read) of files under one directory."""

    def __init__(self, case: SynchronousTestCase, root: Path) -> None:
        self.root = str(root)
        self.opened: list[str] = []
        self.bytes = 0
        real_open, real_readv = os.open, os.readv
        reading: set[int] = set()

        def counting_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            fd = real_open(path, flags, *args, **kw)
            if isinstance(path, str) and path.startswith(self.root + "/"):
                if not flags & os.O_DIRECTORY:
                    self.opened.append(path)
                    reading.add(fd)
            return fd

        def counting_readv(fd: int, buffers: Any) -> int:
            count = real_readv(fd, buffers)
            if fd in reading:
                self.bytes += count
            return count

        case.patch(run_module.os, "open", counting_open)
        case.patch(run_module.os, "readv", counting_readv)


class RunTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="bb-run-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.node = self.base / "node"
        self.tree = self.base / "docs"
        self.tree.mkdir()
        self.store = open_content_store(self.node, KEYS)
        self.addCleanup(self.store.close)
        self.excludes: tuple[str, ...] = ()

    def write(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            path = self.tree / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def roots(self) -> list[WalkRoot]:
        return [WalkRoot(str(self.tree), "docs", compile_excludes(self.excludes))]

    def run_backup(
        self, progress: list[RunProgress] | None = None, wrap: Any = None
    ) -> tuple[ScanCounts, WalkReport, CommitResult]:
        report = WalkReport()
        update = FileSetUpdate(None, self.store.begin_update())  # type: ignore[arg-type]
        changes = wrap(update) if wrap else update
        try:
            counts = back_up(
                changes,
                self.roots(),
                self.store.records(),
                report,
                skip_directories=[str(self.node)],
                progress=progress.append if progress is not None else None,
            )
            result = update.commit()
        finally:
            update.abort()
        return counts, report, result

    def files(self) -> dict[str, bytes]:
        return {
            name: b"".join(self.store.read_file(name))
            for name in self.store.list_files()
        }

    def test_first_run_reads_everything_in_order(self) -> None:
        self.write({"a/b": b"1" * 5000, "a-c": b"2", "z": os.urandom(300_000)})
        counts, report, result = self.run_backup()
        self.assertTrue(result.changed)
        self.assertEqual(counts.files_read, 3)
        self.assertEqual(report.skipped_count, 0)
        self.assertEqual(
            self.files(),
            {
                "docs/a/b": b"1" * 5000,
                "docs/a-c": b"2",
                "docs/z": (self.tree / "z").read_bytes(),
            },
        )

    def test_unchanged_tree_reads_nothing_and_commits_nothing(self) -> None:
        self.write({f"d{i % 7}/f{i}": os.urandom(i * 37) for i in range(60)})
        _, _, first = self.run_backup()
        opens = CountingOpens(self, self.tree)
        counts, _, again = self.run_backup()
        self.assertEqual(opens.opened, [])
        self.assertEqual(opens.bytes, 0)
        self.assertEqual(counts.files_read, 0)
        self.assertEqual(counts.files_unchanged, 60)
        self.assertFalse(again.changed)
        self.assertEqual(again.revision.number, first.revision.number)
        self.assertEqual(
            again.summary, f"no changes; revision {first.revision.number} kept"
        )

    def test_same_size_and_mtime_restored_is_caught_by_ctime(self) -> None:
        self.write({"notes.txt": b"version one", "other": b"x"})
        self.run_backup()
        path = self.tree / "notes.txt"
        before = path.stat()
        path.write_bytes(b"version two")  # same size
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -d
        self.assertEqual(path.stat().st_mtime_ns, before.st_mtime_ns)
        opens = CountingOpens(self, self.tree)
        counts, _, result = self.run_backup()
        self.assertTrue(result.changed)
        self.assertEqual(opens.opened, [str(path)])
        self.assertEqual(counts.files_read, 1)
        self.assertEqual(self.files()["docs/notes.txt"], b"version two")

    def test_file_replaced_by_rename_is_read_again(self) -> None:
        self.write({"report": b"old contents"})
        self.run_backup()
        path = self.tree / "report"
        before = path.stat()
        fresh = self.tree / ".report.new"
        fresh.write_bytes(b"new contents")
        os.utime(fresh, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.rename(fresh, path)
        self.assertNotEqual(path.stat().st_ino, before.st_ino)
        counts, _, _ = self.run_backup()
        self.assertEqual(counts.files_read, 1)
        self.assertEqual(self.files()["docs/report"], b"new contents")

    def test_deleted_files_leave_the_set(self) -> None:
        self.write({"keep": b"k", "gone/one": b"1", "gone/two": b"2"})
        self.run_backup()
        shutil.rmtree(self.tree / "gone")
        counts, _, result = self.run_backup()
        self.assertTrue(result.changed)
        self.assertEqual(counts.files_removed, 2)
        self.assertEqual(self.files(), {"docs/keep": b"k"})

    def test_files_outside_the_sources_are_kept(self) -> None:
        update = self.store.begin_update()
        with update.add_file("by-hand.txt") as writer:
            writer.write(b"added with files add")
        with update.add_file("docsy/x") as writer:  # a prefix, not the source
            writer.write(b"y")
        update.commit()
        self.write({"a": b"a"})
        counts, _, _ = self.run_backup()
        self.assertEqual(counts.files_kept_outside, 2)
        self.assertEqual(
            self.files(),
            {"by-hand.txt": b"added with files add", "docsy/x": b"y", "docs/a": b"a"},
        )

    def test_excluded_files_are_not_backed_up_and_leave_when_excluded(self) -> None:
        self.write({"a.tmp": b"t", "b.txt": b"b", "build/out": b"o", "src/x.tmp": b"t"})
        self.run_backup()
        self.assertEqual(len(self.files()), 4)
        self.excludes = ("*.tmp", "/build/")
        self.run_backup()
        self.assertEqual(self.files(), {"docs/b.txt": b"b"})

    def test_unavailable_source_keeps_its_files(self) -> None:
        self.write({"a": b"a", "b/c": b"c"})
        self.run_backup()
        os.rename(self.tree, self.base / "unmounted")
        counts, report, result = self.run_backup()
        self.assertEqual(report.unavailable_sources, ["docs"])
        self.assertEqual(counts.files_removed, 0)
        self.assertFalse(result.changed)
        self.assertEqual(self.files(), {"docs/a": b"a", "docs/b/c": b"c"})

    def test_unreadable_directory_keeps_its_files(self) -> None:
        # Root reads any mode: the open of the directory is made to fail.
        self.write({"a": b"a", "private/key": b"k", "private/sub/z": b"z"})
        self.run_backup()
        self.write({"a": b"changed"})
        real_open = os.open
        walker_os = __import__("barterbackup.sources.walker", fromlist=["os"]).os

        def refusing(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            if path == "private" and flags & os.O_DIRECTORY:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_open(path, flags, *args, **kw)

        self.patch(walker_os, "open", refusing)
        counts, report, _ = self.run_backup()
        self.assertEqual(counts.files_removed, 0)
        self.assertIn("docs/private/", report.unreadable_directories)
        self.assertEqual(
            self.files(),
            {
                "docs/a": b"changed",
                "docs/private/key": b"k",
                "docs/private/sub/z": b"z",
            },
        )

    def test_special_files_and_bad_names_are_skipped_with_warnings(self) -> None:
        self.write({"ok": b"fine"})
        os.mkfifo(self.tree / "pipe")
        os.symlink("/nowhere", self.tree / "broken")
        os.symlink(self.tree / "ok", self.tree / "link")
        (self.tree / "back\\slash").write_bytes(b"b")
        os.close(
            os.open(os.fsencode(self.tree) + b"/bad\xff", os.O_CREAT | os.O_WRONLY)
        )
        counts, report, _ = self.run_backup()
        reasons = {Path(s.path).name: s.reason for s in report.skipped}
        self.assertEqual(self.files(), {"docs/ok": b"fine"})
        self.assertEqual(reasons["pipe"], "FIFO")
        self.assertIn("symbolic link", reasons["broken"])
        self.assertIn("symbolic link", reasons["link"])
        self.assertIn("backslash", reasons["back\\slash"])
        self.assertIn("bad\\xff", [Path(s.path).name for s in report.skipped])
        self.assertEqual(report.skipped_count, 5)
        self.assertEqual(counts.files_read, 1)

    def test_file_removed_between_listing_and_open_is_skipped(self) -> None:
        self.write({"a": b"a", "b": b"b", "c": b"c"})
        real_walk = run_module.walk_sources

        def walk_then_delete(*args: Any, **kw: Any) -> Iterator[Any]:
            for entry in real_walk(*args, **kw):
                if entry.name == "docs/b":
                    os.unlink(entry.path)
                yield entry

        self.patch(run_module, "walk_sources", walk_then_delete)
        _, report, _ = self.run_backup()
        self.assertEqual(self.files(), {"docs/a": b"a", "docs/c": b"c"})
        (skipped,) = report.skipped
        self.assertEqual(skipped.path, str(self.tree / "b"))
        self.assertIn("No such file", skipped.reason)

    def test_unreadable_file_keeps_its_previous_version(self) -> None:
        self.write({"a": b"one", "b": b"b"})
        self.run_backup()
        self.write({"a": b"two!"})
        real_open = os.open
        target = str(self.tree / "a")

        def refusing(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            if path == target:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_open(path, flags, *args, **kw)

        self.patch(run_module.os, "open", refusing)
        _, report, _ = self.run_backup()
        self.assertEqual(self.files(), {"docs/a": b"one", "docs/b": b"b"})
        (skipped,) = report.skipped
        self.assertIn("Permission denied", skipped.reason)
        self.assertIn("previous version is kept", skipped.reason)

    def test_file_changing_while_read_is_read_again(self) -> None:
        self.write({"log": b"a" * 1000})
        path = self.tree / "log"
        appended = []

        class AppendOnce:
            def __init__(self, inner: FileSetUpdate) -> None:
                self.inner = inner

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

            def write(self, data: bytes) -> None:
                self.inner.write(data)
                if not appended:
                    appended.append(True)
                    with open(path, "ab") as handle:
                        handle.write(b"b" * 10)

        _, report, _ = self.run_backup(wrap=AppendOnce)
        self.assertEqual(report.skipped_count, 0)
        self.assertEqual(self.files()["docs/log"], b"a" * 1000 + b"b" * 10)
        # The record holds the stat of the read that was kept: unchanged next.
        _, _, result = self.run_backup()
        self.assertFalse(result.changed)

    def test_file_changing_every_read_is_skipped(self) -> None:
        self.write({"hot": b"old", "cold": b"c"})
        self.run_backup()
        self.write({"hot": b"new"})
        path = self.tree / "hot"

        class AppendAlways:
            def __init__(self, inner: FileSetUpdate) -> None:
                self.inner = inner

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

            def write(self, data: bytes) -> None:
                self.inner.write(data)
                with open(path, "ab") as handle:
                    handle.write(b"+")

        _, report, _ = self.run_backup(wrap=AppendAlways)
        (skipped,) = report.skipped
        self.assertIn("changed while being read", skipped.reason)
        self.assertEqual(self.files()["docs/hot"], b"old")

    def test_new_file_changing_every_read_stays_out(self) -> None:
        self.write({"cold": b"c"})
        self.run_backup()
        self.write({"hot": b"new"})
        path = self.tree / "hot"

        class AppendAlways:
            def __init__(self, inner: FileSetUpdate) -> None:
                self.inner = inner

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

            def write(self, data: bytes) -> None:
                self.inner.write(data)
                with open(path, "ab") as handle:
                    handle.write(b"+")

        _, report, result = self.run_backup(wrap=AppendAlways)
        self.assertEqual(report.skipped_count, 1)
        self.assertFalse(result.changed)
        self.assertEqual(self.files(), {"docs/cold": b"c"})

    def test_node_directory_inside_a_source_is_skipped(self) -> None:
        store = self.store
        self.tree = self.base
        self.write({"file": b"f"})
        _, _, _ = self.run_backup()
        names = list(store.list_files())
        self.assertEqual(names, ["docs/file"])

    def test_progress_counts_files_and_bytes(self) -> None:
        self.write({f"f{i:03}": b"x" * 1000 for i in range(600)})
        events: list[RunProgress] = []
        self.run_backup(events)
        self.assertEqual(events[0].phase, "scanning")
        self.assertEqual(events[-1].files_done, 600)
        self.assertEqual(events[-1].bytes_done, 600_000)
        done = [e.files_done for e in events]
        self.assertEqual(done, sorted(done))
        self.assertGreaterEqual(len(events), 3)  # every 256 files
        self.assertLessEqual(len(events), 6)

    def test_cancelled_run_raises_and_keeps_the_revision(self) -> None:
        import threading

        self.write({"a": b"a"})
        _, _, first = self.run_backup()
        self.write({"b": b"b"})
        stop = threading.Event()
        stop.set()
        update = FileSetUpdate(None, self.store.begin_update())  # type: ignore[arg-type]
        try:
            with self.assertRaises(RunCancelled):
                back_up(
                    update,
                    self.roots(),
                    self.store.records(),
                    WalkReport(),
                    cancelled=stop,
                )
        finally:
            update.abort()
        self.assertEqual(self.store.current, first.revision)


class AddPathsTests(SynchronousTestCase):
    """``files add PATH`` read by the daemon: the same files cache."""

    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="bb-add-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.store: ContentStore = open_content_store(self.base / "node", KEYS)
        self.addCleanup(self.store.close)
        self.tree = self.base / "photos"
        self.tree.mkdir()
        (self.tree / "one.jpg").write_bytes(b"1" * 3000)
        (self.tree / "two.jpg").write_bytes(b"2" * 3000)
        self.single = self.base / "notes.txt"
        self.single.write_bytes(b"notes")

    def lookup(self, name: str) -> Any:
        try:
            return self.store.file_entry(name)
        except KeyError:
            return None

    def add(self) -> tuple[ScanCounts, CommitResult]:
        update = FileSetUpdate(None, self.store.begin_update())  # type: ignore[arg-type]
        try:
            counts = add_paths(
                update,
                [WalkRoot(str(self.tree), "photos")],
                [entry_for_file(str(self.single), "notes.txt")],
                self.lookup,
                WalkReport(),
            )
            result = update.commit()
        finally:
            update.abort()
        return counts, result

    def test_second_add_reads_nothing(self) -> None:
        counts, _ = self.add()
        self.assertEqual(counts.files_read, 3)
        self.assertEqual(
            sorted(self.store.list_files()),
            ["notes.txt", "photos/one.jpg", "photos/two.jpg"],
        )
        opens = CountingOpens(self, self.base)
        counts, again = self.add()
        self.assertEqual(opens.opened, [])
        self.assertFalse(again.changed)

    def test_nothing_is_removed(self) -> None:
        self.add()
        (self.tree / "two.jpg").unlink()
        (self.tree / "three.jpg").write_bytes(b"3")
        counts, _ = self.add()
        self.assertEqual(counts.files_read, 1)
        self.assertEqual(
            sorted(self.store.list_files()),
            ["notes.txt", "photos/one.jpg", "photos/three.jpg", "photos/two.jpg"],
        )

    def test_entry_for_file_refuses_what_is_not_a_regular_file(self) -> None:
        os.symlink(self.single, self.base / "link")
        with self.assertRaises(OSError):
            entry_for_file(str(self.base / "link"), "link")
        with self.assertRaises(OSError):
            entry_for_file(str(self.tree), "photos")
