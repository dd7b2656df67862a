"""The source walk: manifest order, what it skips and why, stat fields."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content.manifest import sort_key
from barterbackup.sources.excludes import compile_excludes
from barterbackup.sources.walker import (
    MAX_KEPT_SKIPPED,
    FileChanged,
    WalkReport,
    WalkRoot,
    open_entry,
    walk_root,
    walk_sources,
)
from tests.gitignore_reference import GitReference, git_available
from tests.util import short_tempdir


def manifest_sorted(names: list[str]) -> list[str]:
    return sorted(names, key=sort_key)


def write_files(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())


def names_of(roots: list[WalkRoot], report: WalkReport | None = None) -> list[str]:
    return [entry.name for entry in walk_sources(roots, report or WalkReport())]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# Components chosen to tell component order from byte order: "-" and "."
# sort before "/", "0" after it, and multi-byte characters.
COMPONENTS = ["a", "a-c", "a.b", "a0", "b", "A", "é", "日本", "a b", "~", "a_"]


@st.composite
def trees(draw: st.DrawFn) -> list[str]:
    """Relative file paths of a random tree (no path is also a directory)."""
    files = draw(
        st.lists(
            st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4).map("/".join),
            min_size=1,
            max_size=40,
            unique=True,
        )
    )
    directories = {
        "/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)
    }
    return [f for f in files if f not in directories]


class OrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="bb-walk-"))
        self.addCleanup(shutil.rmtree, self.base, True)

    def fresh(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.base))

    def test_manifest_order_not_byte_order(self) -> None:
        # Bytewise "a-c/x" < "a/b"; the manifest compares components.
        root = self.fresh()
        write_files(root, ["a/b", "a-c/x", "a.txt", "a0", "b"])
        self.assertEqual(
            names_of([WalkRoot(str(root), "src")]),
            ["src/a/b", "src/a-c/x", "src/a.txt", "src/a0", "src/b"],
        )

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(files=trees())
    def test_walk_is_sorted_names(self, files: list[str]) -> None:
        root = self.fresh()
        write_files(root, files)
        expected = manifest_sorted([f"docs/{f}" for f in files])
        self.assertEqual(names_of([WalkRoot(str(root), "docs")]), expected)

    @settings(
        max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        sources=st.dictionaries(
            st.sampled_from(["a", "a-b", "a.b", "a0", "b", "é"]),
            trees(),
            min_size=1,
            max_size=4,
        )
    )
    def test_sources_merge_by_prefix(self, sources: dict[str, list[str]]) -> None:
        roots = []
        expected = []
        for prefix, files in sources.items():
            root = self.fresh()
            write_files(root, files)
            roots.append(WalkRoot(str(root), prefix))
            expected += [f"{prefix}/{f}" for f in files]
        self.assertEqual(names_of(roots), manifest_sorted(expected))

    def test_prefixes_must_be_distinct_single_names(self) -> None:
        root = str(self.fresh())
        with self.assertRaises(ValueError):
            names_of([WalkRoot(root, "x"), WalkRoot(root, "x")])
        with self.assertRaises(ValueError):
            names_of([WalkRoot(root, "x/y")])

    def test_entry_fields_come_from_lstat(self) -> None:
        root = self.fresh()
        write_files(root, ["d/file.txt"])
        os.chmod(root / "d/file.txt", 0o640)
        os.utime(root / "d/file.txt", ns=(1, 1_234_567_890_123_456_789))
        (entry,) = walk_sources([WalkRoot(str(root), "src")], WalkReport())
        info = os.lstat(root / "d/file.txt")
        self.assertEqual(entry.name, "src/d/file.txt")
        self.assertEqual(entry.path, str(root / "d/file.txt"))
        self.assertEqual(entry.size, len(b"d/file.txt"))
        self.assertEqual(entry.mode, 0o640)
        self.assertEqual(entry.mtime_ns, 1_234_567_890_123_456_789)
        self.assertEqual(entry.ctime_ns, info.st_ctime_ns)
        self.assertEqual(entry.inode, info.st_ino)
        self.assertEqual(entry.device, info.st_dev)

    def test_walk_is_lazy_and_closes_directories(self) -> None:
        root = self.fresh()
        write_files(root, [f"d{i}/e{j}/f" for i in range(5) for j in range(5)])
        before = open_fds()
        walk = walk_sources([WalkRoot(str(root), "src")], WalkReport())
        first = next(walk)
        self.assertEqual(first.name, "src/d0/e0/f")
        # Only the directories on the current path are open: root, d0, d0/e0.
        self.assertEqual(open_fds() - before, 3)
        walk.close()
        self.assertEqual(open_fds(), before)
        list(walk_sources([WalkRoot(str(root), "src")], WalkReport()))
        self.assertEqual(open_fds(), before)


class ExcludeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="bb-walk-"))
        self.addCleanup(shutil.rmtree, self.base, True)

    def test_excluded_directory_is_not_entered(self) -> None:
        root = self.base / "src"
        write_files(root, ["keep/a.txt", "node_modules/x.js", "sub/node_modules/y.js"])
        # Would be reported if the walk went in.
        os.mkfifo(root / "node_modules/pipe")
        report = WalkReport()
        excludes = compile_excludes(["node_modules/"])
        names = names_of([WalkRoot(str(root), "src", excludes)], report)
        self.assertEqual(names, ["src/keep/a.txt"])
        self.assertEqual(report.skipped, [])

    def test_walk_matches_git_ls_files(self) -> None:
        if not git_available():
            raise self.skipTest("git is not installed")
        root = self.base / "tree"
        write_files(
            root,
            [
                "a.tmp",
                "keep.tmp",
                "build/out.o",
                "src/build/keep.c",
                "src/main.c",
                "src/main.o",
                "node_modules/m/index.js",
                "lib/cache/x",
                "lib/deep/cache/y",
                "lib/cache.txt",
                "docs/a.pdf",
                "docs/sub/b.pdf",
            ],
        )
        patterns = ["*.tmp", "!keep.tmp", "/build/", "*.o", "node_modules/"]
        patterns += ["**/cache", "docs/*.pdf"]
        git = GitReference(root, self.base)
        git.set_patterns(patterns)
        ours = names_of([WalkRoot(str(root), "p", compile_excludes(patterns))])
        self.assertEqual([name[2:] for name in ours], git.listed_files())


class SkipTests(SynchronousTestCase):
    """What the walk leaves out. As root, chmod 000 does not stop reads, so
    unreadability is shown with entries that vanish or change between the
    listing and the lstat/open, and with special files and refused names."""

    def setUp(self) -> None:
        self.root = short_tempdir(self) / "s"
        self.root.mkdir()

    def walk(self, report: WalkReport, **kwargs: object) -> list[str]:
        return names_of([WalkRoot(str(self.root), "src", **kwargs)], report)  # type: ignore[arg-type]

    def reasons(self, report: WalkReport) -> dict[str, str]:
        return {os.path.relpath(s.path, self.root): s.reason for s in report.skipped}

    def test_special_files_are_skipped_with_a_reason(self) -> None:
        write_files(self.root, ["ok.txt", "target.txt"])
        os.mkfifo(self.root / "fifo")
        os.symlink("/nonexistent/file", self.root / "broken-link")
        os.symlink("target.txt", self.root / "file-link")
        os.symlink(".", self.root / "dir-link")
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(str(self.root / "sock"))
        expected = {
            "fifo": "FIFO",
            "broken-link": "symbolic link (not followed)",
            "file-link": "symbolic link (not followed)",
            "dir-link": "symbolic link (not followed)",
            "sock": "socket",
        }
        try:
            os.mknod(self.root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            expected["null"] = "character device"
        except PermissionError:
            pass  # not root: the other kinds still show the rule
        report = WalkReport()
        self.assertEqual(self.walk(report), ["src/ok.txt", "src/target.txt"])
        self.assertEqual(self.reasons(report), expected)
        self.assertEqual(report.skipped_count, len(expected))

    def test_refused_names_are_skipped(self) -> None:
        write_files(self.root, ["good", "back\\slash", "dir\\name/inside"])
        os.close(os.open(os.fsencode(self.root) + b"/latin1-\xe9", os.O_CREAT))
        report = WalkReport()
        self.assertEqual(self.walk(report), ["src/good"])
        reasons = self.reasons(report)
        self.assertIn("backslash", reasons["back\\slash"])
        # A refused directory is one warning, not one per file inside.
        self.assertIn("backslash", reasons["dir\\name"])
        self.assertNotIn("dir\\name/inside", reasons)
        (latin1,) = [k for k in reasons if k.startswith("latin1-")]
        self.assertIn("UTF-8", reasons[latin1])

    def test_long_names_are_skipped(self) -> None:
        # 17 levels of 250-byte directories exceed the 4096-byte name limit
        # (and PATH_MAX: made, and walked, relative to directory descriptors).
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        for level in range(17):
            name = f"{level:02d}" + "d" * 248
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
        os.close(fd)
        report = WalkReport()
        self.assertEqual(self.walk(report), [])
        self.assertEqual(report.skipped_count, 1)
        self.assertIn("longer than 4096", report.skipped[0].reason)

    def test_file_removed_between_listing_and_stat(self) -> None:
        write_files(self.root, ["a", "b", "c"])
        report = WalkReport()
        walk = walk_sources([WalkRoot(str(self.root), "src")], report)
        self.assertEqual(next(walk).name, "src/a")
        os.unlink(self.root / "b")  # the directory was listed already
        self.assertEqual([e.name for e in walk], ["src/c"])
        self.assertEqual(
            self.reasons(report), {"b": "cannot stat: No such file or directory"}
        )

    def test_directory_removed_or_swapped_after_listing(self) -> None:
        write_files(self.root, ["a", "gone/x", "link/y", "z"])
        report = WalkReport()
        walk = walk_sources([WalkRoot(str(self.root), "src")], report)
        self.assertEqual(next(walk).name, "src/a")
        shutil.rmtree(self.root / "gone")
        shutil.rmtree(self.root / "link")
        os.symlink("/etc", self.root / "link")  # never followed out of the source
        self.assertEqual([e.name for e in walk], ["src/z"])
        reasons = self.reasons(report)
        self.assertEqual(
            reasons["gone"], "cannot open directory: No such file or directory"
        )
        self.assertIn("cannot open directory", reasons["link"])

    def test_missing_source_is_unavailable_not_empty(self) -> None:
        write_files(self.root, ["a"])
        report = WalkReport()
        roots = [
            WalkRoot(str(self.root), "here"),
            WalkRoot(str(self.root) + "-missing", "gone"),
        ]
        self.assertEqual(names_of(roots, report), ["here/a"])
        self.assertEqual(report.unavailable_sources, ["gone"])

    def test_source_folder_may_be_a_symlink(self) -> None:
        write_files(self.root, ["a"])
        link = self.root.parent / "link"
        os.symlink(self.root, link)
        self.assertEqual(names_of([WalkRoot(str(link), "l")]), ["l/a"])

    def test_skipped_directories_by_identity(self) -> None:
        write_files(self.root, ["a", "node/secret", "z"])
        report = WalkReport()
        # Named through a symlink: the identity (device, inode) still matches.
        os.symlink(self.root / "node", self.root.parent / "alias")
        names = [
            e.name
            for e in walk_sources(
                [WalkRoot(str(self.root), "src")],
                report,
                skip_directories=[str(self.root.parent / "alias")],
            )
        ]
        self.assertEqual(names, ["src/a", "src/z"])
        self.assertEqual(report.skipped, [])

    def test_report_keeps_a_bounded_number(self) -> None:
        report = WalkReport()
        for index in range(MAX_KEPT_SKIPPED + 5):
            report.skip(f"/x/{index}", "FIFO")
        self.assertEqual(len(report.skipped), MAX_KEPT_SKIPPED)
        self.assertEqual(report.skipped_count, MAX_KEPT_SKIPPED + 5)


class OpenEntryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = short_tempdir(self)
        write_files(self.root, ["f", "other"])

    def entry(self) -> object:
        (entry, _other) = walk_root(WalkRoot(str(self.root), "s"), WalkReport())
        return entry

    def test_reads_the_walked_file(self) -> None:
        entry = self.entry()
        with open_entry(entry) as handle:  # type: ignore[arg-type]
            self.assertEqual(handle.read(), b"f")

    def test_refuses_a_replaced_file(self) -> None:
        entry = self.entry()
        os.rename(self.root / "other", self.root / "f")
        with self.assertRaises(FileChanged):
            open_entry(entry)  # type: ignore[arg-type]

    def test_refuses_a_symlink_put_in_its_place(self) -> None:
        entry = self.entry()
        os.unlink(self.root / "f")
        os.symlink(self.root / "other", self.root / "f")
        with self.assertRaises(OSError):
            open_entry(entry)  # type: ignore[arg-type]

    def test_a_fifo_put_in_its_place_does_not_block(self) -> None:
        entry = self.entry()
        os.unlink(self.root / "f")
        os.mkfifo(self.root / "f")
        with self.assertRaises(FileChanged):
            open_entry(entry)  # type: ignore[arg-type]
