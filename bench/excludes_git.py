"""Exclude matching correctness against git: ours and pathspec's.

Generates random trees and random gitignore patterns (the same alphabet as
tests/test_sources_excludes.py, without ``[:class:]`` brackets, which
pathspec does not support), asks ``git check-ignore`` about every path, and
counts the paths where ``barterbackup.sources.excludes`` and, when it is
importable, ``pathspec.GitIgnoreSpec`` decide differently.

Usage: python -m bench.excludes_git [CASES]   (default 300)
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from barterbackup.sources.excludes import compile_excludes
from tests.gitignore_reference import GitReference
from tests.test_sources_excludes import all_paths, excluded_with_parents, make_tree

COMPONENTS = ["a", "b", "ab", "ba", "a.tmp", "b.txt", "c-d", "x", "aa", "[a]"]
SEGMENTS = ["a", "b", "ab", "*", "**", "?", "a*", "*.tmp", "[ab]", "[!a]", "*b"]
SEGMENTS += ["a?", "[a-b]", "\\[a]", "x", "c-d"]


def random_case(rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    files = list(
        {
            "/".join(rng.choice(COMPONENTS) for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(1, 25))
        }
    )
    prefixes = {f.rsplit("/", 1)[0] for f in files if "/" in f}
    directories = {"/".join(p.split("/")[:i]) for p in prefixes for i in (1, 2, 3)}
    files = [f for f in files if f not in directories]
    patterns = [
        ("!" if rng.random() < 0.5 else "")
        + ("/" if rng.random() < 0.5 else "")
        + "/".join(rng.choice(SEGMENTS) for _ in range(rng.randint(1, 3)))
        + ("/" if rng.random() < 0.5 else "")
        for _ in range(rng.randint(1, 6))
    ]
    return files, sorted(directories), patterns


def main() -> None:
    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    try:
        import pathspec
    except ImportError:
        pathspec = None
    warnings.simplefilter("ignore")
    rng = random.Random(7)
    total = ours_wrong = theirs_wrong = 0
    for _ in range(cases):
        files, directories, patterns = random_case(rng)
        scratch = Path(tempfile.mkdtemp(prefix="bb-exgit-"))
        try:
            tree = scratch / "tree"
            tree.mkdir()
            make_tree(tree, files, directories)
            git = GitReference(tree, scratch)
            git.set_patterns(patterns)
            paths = all_paths(tree)
            ignored = git.ignored(paths)
            ours = compile_excludes(patterns)
            spec = pathspec.GitIgnoreSpec.from_lines(patterns) if pathspec else None
            for path, is_dir in paths.items():
                total += 1
                expected = path in ignored
                if excluded_with_parents(ours, path, is_dir) != expected:
                    ours_wrong += 1
                if spec is not None:
                    if spec.match_file(path + "/" if is_dir else path) != expected:
                        theirs_wrong += 1
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"{cases} random cases, {total:,} path decisions compared with git")
    print(f"barterbackup.sources.excludes disagrees on {ours_wrong:,}")
    if pathspec is not None:
        version = pathspec.__version__
        print(f"pathspec {version} GitIgnoreSpec disagrees on {theirs_wrong:,}")
    else:
        print("pathspec: not installed")
    if ours_wrong:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
