"""Source walk benchmark: files/s and peak RSS, against find(1).

Creates FILE_COUNT empty files (default 1,000,000, in directories of 1,000)
under a temp directory, then in the same run:

* ``find DIR -type f | wc -l``: the floor (names and types from the listing,
  no stat);
* ``find DIR -type f -printf '%s %T@ %C@ %i %D\\n' | wc -l``: find doing the
  one lstat per file the walker does;
* ``walk_sources`` over the tree (sorted, stat'ed, names validated), in a
  child process so its peak RSS is its own: once over a tenth of the files
  and once over all of them (flat memory: the two peaks should be close);
* the same walk with ten typical exclude patterns (none matching), to show
  what matching costs per entry;
* excludes alone: 1 M paths through ``Excludes.excluded`` and, when the
  ``pathspec`` library is importable, through ``pathspec.GitIgnoreSpec``.

Usage: python -m bench.walk [FILE_COUNT [WORKDIR]]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from barterbackup.sources.excludes import compile_excludes
from barterbackup.sources.walker import WalkReport, WalkRoot, walk_sources

FILES_PER_DIR = 1000
TYPICAL_EXCLUDES = [
    "*.tmp",
    "*.swp",
    "/build/",
    "node_modules/",
    "**/cache",
    "__pycache__/",
    ".git/",
    "*.o",
    "dist/",
    "!keep.tmp",
]


def make_tree(root: Path, count: int) -> None:
    for index in range(count):
        directory = root / f"d{index // FILES_PER_DIR:04d}"
        if index % FILES_PER_DIR == 0:
            directory.mkdir(parents=True)
        os.close(os.open(directory / f"f{index % FILES_PER_DIR:04d}.dat", os.O_CREAT))


def timed_shell(command: str) -> tuple[float, int]:
    began = time.perf_counter()
    output = subprocess.run(
        command, shell=True, check=True, capture_output=True, text=True
    ).stdout
    return time.perf_counter() - began, int(output.strip())


def walk_child(root: str, limit: int, excludes: bool) -> dict[str, float]:
    """Runs in a child process: walk, count, report seconds and peak RSS.

    With ``limit``, the walk stops after that many files: the same as a
    smaller tree of the same layout, for the memory comparison.
    """
    exclude = compile_excludes(TYPICAL_EXCLUDES if excludes else [])
    report = WalkReport()
    began = time.perf_counter()
    files = walk_sources([WalkRoot(root, "src", exclude)], report)
    count = sum(1 for _ in itertools.islice(files, limit or None))
    seconds = time.perf_counter() - began
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"files": count, "seconds": seconds, "peak_mib": peak_kib / 1024}


def run_child(root: Path, limit: int = 0, excludes: bool = False) -> dict:
    command = [sys.executable, "-m", "bench.walk", "--child", str(root)]
    command += ["--limit", str(limit)]
    if excludes:
        command.append("--excludes")
    output = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(output.stdout)


def bench_excludes(count: int) -> list[tuple[str, str]]:
    rng = random.Random(1)
    extensions = ["py", "txt", "tmp", "c", "o", "jpg"]
    paths = [
        f"src/dir{rng.randrange(1000)}/sub{rng.randrange(50)}/file{i}."
        f"{rng.choice(extensions)}"
        for i in range(count)
    ]
    names = [path.rsplit("/", 1)[1] for path in paths]
    ours = compile_excludes(TYPICAL_EXCLUDES)
    began = time.perf_counter()
    excluded = sum(
        1
        for path, name in zip(paths, names, strict=True)
        if ours.excluded(path, name, False)
    )
    our_seconds = time.perf_counter() - began
    rows = [
        (
            f"excludes: {count:,} paths, 10 patterns (ours)",
            f"{count / our_seconds:,.0f} paths/s ({our_seconds:.2f} s, "
            f"{excluded:,} excluded)",
        )
    ]
    try:
        import pathspec
    except ImportError:
        rows.append(("excludes: pathspec", "not installed (pip install pathspec)"))
        return rows
    spec = pathspec.GitIgnoreSpec.from_lines(TYPICAL_EXCLUDES)
    began = time.perf_counter()
    theirs = sum(1 for path in paths if spec.match_file(path))
    their_seconds = time.perf_counter() - began
    rows.append(
        (
            f"excludes: same paths, pathspec {pathspec.__version__}",
            f"{count / their_seconds:,.0f} paths/s ({their_seconds:.2f} s, "
            f"{theirs:,} excluded)",
        )
    )
    rows.append(
        ("excludes: ours / pathspec (speed)", f"{their_seconds / our_seconds:.1f}x")
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", nargs="?", type=int, default=1_000_000)
    parser.add_argument("workdir", nargs="?")
    parser.add_argument("--child", metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--excludes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(walk_child(args.child, args.limit, args.excludes)))
        return

    workdir = Path(tempfile.mkdtemp(prefix="bb-walk-", dir=args.workdir))
    try:
        root = workdir / "tree"
        began = time.perf_counter()
        make_tree(root, args.count)
        made = time.perf_counter() - began
        rows = [("tree", f"{args.count:,} empty files in {made:.0f} s")]
        # Warm the dentry and inode caches once, so no contender pays for it.
        timed_shell(f"find {root} -type f | wc -l")

        find_s, find_n = timed_shell(f"find {root} -type f | wc -l")
        rows.append(
            ("find -type f | wc -l", f"{find_n / find_s:,.0f} files/s ({find_s:.2f} s)")
        )
        stat_s, stat_n = timed_shell(
            f"find {root} -type f -printf '%s %T@ %C@ %i %D\\n' | wc -l"
        )
        rows.append(
            (
                "find -type f -printf (lstat each)",
                f"{stat_n / stat_s:,.0f} files/s ({stat_s:.2f} s)",
            )
        )
        small = run_child(root, limit=max(1, args.count // 10))
        full = run_child(root)
        with_excludes = run_child(root, excludes=True)
        if full["files"] != find_n:
            raise SystemExit(f"walk found {full['files']} files, find {find_n}")
        for label, result in (
            (f"walk_sources, {small['files']:,} files", small),
            (f"walk_sources, {full['files']:,} files", full),
            (
                f"walk_sources + 10 excludes, {with_excludes['files']:,} files",
                with_excludes,
            ),
        ):
            rows.append(
                (
                    label,
                    f"{result['files'] / result['seconds']:,.0f} files/s "
                    f"({result['seconds']:.2f} s), "
                    f"peak RSS {result['peak_mib']:.0f} MiB",
                )
            )
        rows.append(("walk / find -type f (speed)", f"{find_s / full['seconds']:.2f}x"))
        rows.append(("walk / find -printf (speed)", f"{stat_s / full['seconds']:.2f}x"))
        rows.append(
            (
                "peak RSS, all files / a tenth",
                f"{full['peak_mib'] / small['peak_mib']:.2f}x",
            )
        )
        rows += bench_excludes(args.count)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
