"""SetFile through the real daemon: throughput against hashlib, peak RSS.

The issue's benchmark 1 and 2, end to end as a user runs them: a generated
mixed file set (bench.content_data: large random files, text, 1000 small
files) is written to disk, then

* hashlib SHA-256 reads and hashes every file (the baseline, same run, same
  page cache);
* ``barterbackup files add DIR`` streams it through the CLI and the gRPC
  socket into a real ``twistd barterbackup`` daemon, which chunks, encrypts,
  hashes and stores it;

and the ratio of the two is printed. Peak RSS (VmHWM) of a fresh daemon is
read from /proc after adding a small and a large file set; the peak is reset
after unlock, whose Argon2id uses 64 MiB by design.

    .venv/bin/python -m bench.daemon_pack [SIZE_MIB] [--rss-small MIB] [--rss-large MIB]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from barterbackup.testing.daemon import DaemonProcess
from bench.content_data import file_set, write_file_set

MIB = 1024 * 1024
PASSWORD = "quartz-lantern-ember-violet-harbor-cobalt-meadow"
READ_BLOCK = 1024 * 1024


def hash_tree(root: Path) -> tuple[float, int]:
    """Seconds to SHA-256 every file under root (one hash per file)."""
    total = 0
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    began = time.perf_counter()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                digest.update(view[:count])
                total += count
    return time.perf_counter() - began, total


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def add_through_daemon(workdir: Path, tree: Path, name: str) -> dict[str, Any]:
    """Start a fresh daemon, unlock it, add ``tree``; time and peak RSS."""
    daemon = DaemonProcess(
        workdir / name,
        log_path=workdir / f"{name}.log",
        extra_args=["--transport", "tcp"],
    )
    daemon.start()
    try:
        password = workdir / "password"
        password.write_text(PASSWORD + "\n")
        daemon.cli("unlock", "--create", "--password-file", str(password), check=True)
        # Unlock's Argon2id takes 64 MiB by design; measure the peak while
        # adding files, not since start-up (Linux: 5 resets VmHWM).
        before = peak_rss_mib(daemon.pid)
        Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")
        began = time.perf_counter()
        daemon.cli("files", "add", str(tree), check=True, timeout=3600)
        seconds = time.perf_counter() - began
        return {
            "seconds": seconds,
            "peak_rss_mib": peak_rss_mib(daemon.pid),
            "unlock_peak_rss_mib": before,
        }
    finally:
        daemon.stop()


def make_tree(workdir: Path, size: int, name: str) -> Path:
    tree = workdir / name
    write_file_set(tree, file_set(size))
    return tree


def run(size: int, rss_small: int, rss_large: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bb-bench-daemon-"))
    try:
        tree = make_tree(workdir, size, "tree")
        hash_tree(tree)  # warm the page cache for both sides
        hash_seconds, total = hash_tree(tree)
        through = add_through_daemon(workdir, tree, "node-throughput")
        hash_again, _ = hash_tree(tree)
        baseline = min(hash_seconds, hash_again)
        shutil.rmtree(tree)
        small_tree = make_tree(workdir, rss_small, "small")
        small = add_through_daemon(workdir, small_tree, "node-small")
        shutil.rmtree(small_tree)
        large_tree = make_tree(workdir, rss_large, "large")
        large = add_through_daemon(workdir, large_tree, "node-large")
        return {
            "bytes": total,
            "sha256_mb_s": total / baseline / 1e6,
            "daemon_mb_s": total / through["seconds"] / 1e6,
            "ratio": baseline / through["seconds"],
            "rss_small_mib": small["peak_rss_mib"],
            "rss_unlock_mib": small["unlock_peak_rss_mib"],
            "rss_large_mib": large["peak_rss_mib"],
            "rss_small_size": rss_small,
            "rss_large_size": rss_large,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(f: dict[str, Any]) -> None:
    growth = f["rss_large_mib"] / f["rss_small_mib"]
    rows = [
        (f"file set through CLI → daemon ({f['bytes'] / MIB:.0f} MiB)", ""),
        ("  hashlib SHA-256 of the same files", f"{f['sha256_mb_s']:.0f} MB/s"),
        ("  barterbackup files add (daemon)", f"{f['daemon_mb_s']:.0f} MB/s"),
        ("  ratio (goal >= 0.6)", f"{f['ratio']:.2f}"),
        ("daemon peak RSS", ""),
        ("  during unlock (Argon2id, m = 64 MiB)", f"{f['rss_unlock_mib']:.0f} MiB"),
        (
            f"  adding {f['rss_small_size'] / MIB:.0f} MiB",
            f"{f['rss_small_mib']:.0f} MiB",
        ),
        (
            f"  adding {f['rss_large_size'] / MIB:.0f} MiB",
            f"{f['rss_large_mib']:.0f} MiB",
        ),
        ("  large / small (goal <= 1.2, large <= 200 MiB)", f"{growth:.2f}"),
    ]
    for label, value in rows:
        print(f"{label:<52} {value:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size_mib", nargs="?", type=int, default=1024)
    parser.add_argument("--rss-small", type=int, default=100, metavar="MIB")
    parser.add_argument("--rss-large", type=int, default=4096, metavar="MIB")
    args = parser.parse_args()
    print_table(run(args.size_mib * MIB, args.rss_small * MIB, args.rss_large * MIB))


if __name__ == "__main__":
    main()
