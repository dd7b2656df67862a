"""Exclude patterns: gitignore semantics, checked against git itself."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.sources.excludes import (
    Excludes,
    InvalidPattern,
    compile_excludes,
    compile_pattern,
    patterns_from_lines,
)
from tests.gitignore_reference import GitReference, git_available


def excluded_with_parents(excludes: Excludes, path: str, is_dir: bool) -> bool:
    """What the walker decides: excluded itself, or inside an excluded dir."""
    parts = path.split("/")
    for depth in range(1, len(parts)):
        directory = "/".join(parts[:depth])
        if excludes.excluded(directory, parts[depth - 1], True):
            return True
    return excludes.excluded(path, parts[-1], is_dir)


def make_tree(root: Path, files: list[str], directories: list[str] = ()) -> None:
    for directory in directories:
        (root / directory).mkdir(parents=True, exist_ok=True)
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def all_paths(root: Path) -> dict[str, bool]:
    """Every path under root (relative) → whether it is a directory."""
    return {
        path.relative_to(root).as_posix(): path.is_dir() for path in root.rglob("*")
    }


# A tree with a file or directory for every case of the table below.
CASE_FILES = [
    "a.tmp",
    "keep.tmp",
    "sub/b.tmp",
    "sub/keep.tmp",
    "build/out.o",
    "sub/build/out.o",
    "node_modules/x/index.js",
    "sub/node_modules/y.js",
    "node_modules.txt",
    "cache/c1",
    "sub/deep/cache/c2",
    "cache.txt",
    "doc/a.pdf",
    "doc/sub/b.pdf",
    "logs/a.log",
    "logs/old/b.log",
    "x/logs/c.log",
    "#hash",
    "space ",
    "Makefile",
    "makefile",
    "[lit]",
    "q1",
    "q12",
    "tmpdir/file",
]

# (patterns, path, is a directory, excluded — itself or by a parent
# directory, as the walker sees it): each case is also asked of git.
CASES = [
    (["*.tmp"], "a.tmp", False, True),
    (["*.tmp"], "sub/b.tmp", False, True),
    (["*.tmp", "!keep.tmp"], "keep.tmp", False, False),
    (["*.tmp", "!keep.tmp"], "sub/keep.tmp", False, False),
    (["*.tmp", "!keep.tmp"], "sub/b.tmp", False, True),
    (["!keep.tmp", "*.tmp"], "keep.tmp", False, True),
    (["/build/"], "build", True, True),
    (["/build/"], "sub/build", True, False),
    (["build/"], "sub/build", True, True),
    (["node_modules/"], "node_modules", True, True),
    (["node_modules/"], "sub/node_modules", True, True),
    (["node_modules/"], "node_modules.txt", False, False),
    (["**/cache"], "cache", True, True),
    (["**/cache"], "sub/deep/cache", True, True),
    (["**/cache"], "cache.txt", False, False),
    (["doc/*.pdf"], "doc/a.pdf", False, True),
    (["doc/*.pdf"], "doc/sub/b.pdf", False, False),
    (["doc/**/*.pdf"], "doc/sub/b.pdf", False, True),
    (["doc/**/*.pdf"], "doc/a.pdf", False, True),
    (["logs/**"], "logs/old/b.log", False, True),
    (["logs/**"], "logs", True, False),
    (["logs/**", "!logs/old/"], "logs/old", True, False),
    (["logs/**", "!logs/old/"], "logs/old/b.log", False, True),
    (["*.log", "!/logs/"], "x/logs/c.log", False, True),
    (["\\#hash"], "#hash", False, True),
    (["space\\ "], "space ", False, True),
    (["space  "], "space ", False, False),
    (["[Mm]akefile"], "makefile", False, True),
    (["[!M]akefile"], "Makefile", False, False),
    (["[!M]akefile"], "makefile", False, True),
    (["\\[lit]"], "[lit]", False, True),
    (["q?"], "q1", False, True),
    (["q?"], "q12", False, False),
    (["q[[:digit:]][[:digit:]]"], "q12", False, True),
    (["tmpdir"], "tmpdir", True, True),
    (["tmpdir/"], "tmpdir/file", False, True),
    (["tmpdir/", "!tmpdir/file"], "tmpdir/file", False, True),
]


class CompileTests(SynchronousTestCase):
    def test_table(self) -> None:
        for patterns, path, is_dir, expected in CASES:
            excludes = compile_excludes(patterns)
            self.assertEqual(
                excluded_with_parents(excludes, path, is_dir),
                expected,
                f"{patterns} on {path!r} (dir={is_dir})",
            )

    def test_refused_patterns(self) -> None:
        for text in ["", "   ", "#comment", "!", "/", "!/", "a\\", "[ab", "x[[:foo:]]"]:
            with self.assertRaises(InvalidPattern, msg=repr(text)):
                compile_pattern(text)
        with self.assertRaises(InvalidPattern):
            compile_pattern("a\nb")
        with self.assertRaises(InvalidPattern):
            compile_excludes(["*.tmp"] * 1001)

    def test_error_names_the_pattern(self) -> None:
        with self.assertRaises(InvalidPattern) as caught:
            compile_pattern("photos/[2024")
        self.assertIn("photos/[2024", str(caught.exception))

    def test_flags(self) -> None:
        pattern = compile_pattern("!/build/")
        self.assertTrue(pattern.negated)
        self.assertTrue(pattern.directory_only)
        self.assertTrue(pattern.anchored)
        self.assertFalse(compile_pattern("node_modules/").anchored)
        self.assertTrue(compile_pattern("a/b").anchored)

    def test_lines_of_a_gitignore_file(self) -> None:
        lines = ["# build output\n", "\n", "*.o\n", "   \n", "\\#x\r\n", "!keep.o"]
        self.assertEqual(patterns_from_lines(lines), ["*.o", "\\#x", "!keep.o"])

    def test_no_patterns_exclude_nothing(self) -> None:
        excludes = compile_excludes([])
        self.assertFalse(excludes)
        self.assertFalse(excludes.excluded("a", "a", False))


class AgainstGitTests(SynchronousTestCase):
    """Every decision compared with git check-ignore on real trees."""

    def setUp(self) -> None:
        if not git_available():
            raise self.skipTest("git is not installed")
        self.scratch = Path(tempfile.mkdtemp(prefix="bb-git-"))
        self.addCleanup(shutil.rmtree, self.scratch, True)

    def reference(self, files: list[str], directories: list[str] = ()) -> GitReference:
        tree = Path(tempfile.mkdtemp(dir=self.scratch))
        make_tree(tree, files, directories)
        return GitReference(tree, Path(tempfile.mkdtemp(dir=self.scratch)))

    def assert_same_as_git(self, git: GitReference, patterns: list[str]) -> None:
        git.set_patterns(patterns)
        paths = all_paths(git.tree)
        ignored = git.ignored(paths)
        excludes = compile_excludes(patterns)
        for path, is_dir in sorted(paths.items()):
            self.assertEqual(
                excluded_with_parents(excludes, path, is_dir),
                path in ignored,
                f"patterns {patterns!r}, path {path!r} (dir={is_dir})",
            )

    def test_table_agrees_with_git(self) -> None:
        git = self.reference(CASE_FILES)
        for patterns, path, _is_dir, expected in CASES:
            git.set_patterns(patterns)
            self.assertEqual(
                path in git.ignored([path]), expected, f"git: {patterns} on {path!r}"
            )
            self.assert_same_as_git(git, patterns)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(data=st.data())
    def test_random_patterns_agree_with_git(self, data: st.DataObject) -> None:
        component = st.sampled_from(
            ["a", "b", "ab", "ba", "a.tmp", "b.txt", "c-d", "x", "aa", "[a]"]
        )
        files = data.draw(
            st.lists(
                st.lists(component, min_size=1, max_size=4).map("/".join),
                min_size=1,
                max_size=25,
                unique=True,
            )
        )
        # A path cannot be both a file and a directory: keep the directory.
        prefixes = {f.rsplit("/", 1)[0] for f in files if "/" in f}
        directories = {"/".join(p.split("/")[:i]) for p in prefixes for i in (1, 2, 3)}
        files = [f for f in files if f not in directories]
        segment = st.sampled_from(
            [
                "a",
                "b",
                "ab",
                "*",
                "**",
                "?",
                "a*",
                "*.tmp",
                "[ab]",
                "[!a]",
                "*b",
                "a?",
                "[a-b]",
                "\\[a]",
                "x",
                "c-d",
                "[[:alpha:]]*",
            ]
        )
        pattern = st.builds(
            lambda negated, leading, parts, trailing: (
                ("!" if negated else "")
                + ("/" if leading else "")
                + "/".join(parts)
                + ("/" if trailing else "")
            ),
            st.booleans(),
            st.booleans(),
            st.lists(segment, min_size=1, max_size=3),
            st.booleans(),
        )
        patterns = data.draw(st.lists(pattern, min_size=1, max_size=6))
        git = self.reference(files, sorted(directories))
        self.assert_same_as_git(git, patterns)
