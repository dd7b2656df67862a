"""Everyday backups through the real daemon, against restic and hashlib.

The issue 12 figures, end to end as a user runs them: a real ``twistd
barterbackup`` daemon backs up a source folder (``sources add`` then
``barterbackup backup now``, the daemon reading the folder itself), and in
the same run, on the same warm page cache:

* hashlib SHA-256 reads and hashes every file (the hardware baseline);
* restic (Debian's, installed by this bench if missing: a missing baseline
  is a failure) backs up the same folder into a fresh local repository.

Measured: the first backup (÷ SHA-256, ÷ restic's first), the second
backup of the unchanged set (÷ restic's second), one changed 1 MiB file
(time to a new revision ÷ restic's time to a new snapshot), and with
``--small-files N`` the first backup of N small files ÷ restic's.

    .venv/bin/python -m bench.backup [SIZE_MIB] [--files 2000] [--small-files N]

Times include each command's process start (the CLI and restic alike).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from barterbackup.testing.daemon import DaemonProcess
from bench.content_data import FileSpec, file_chunks

MIB = 1024 * 1024
PASSWORD = "quartz-lantern-ember-violet-harbor-cobalt-meadow"
READ_BLOCK = 1024 * 1024
MEDIUM_FILES = 3


def backup_set(total_bytes: int, files: int, seed: int = 0) -> list[FileSpec]:
    """``files`` files of about ``total_bytes``: 3 large random files hold
    most bytes, 4 text files 5 %, 3 of 1 MiB, the rest small (100 B-16 KiB,
    half text)."""
    rng = random.Random(seed)
    small_count = max(0, files - 3 - 4 - MEDIUM_FILES)
    small = [
        FileSpec(
            f"small/{i // 100:03d}/file{i:05d}.{'txt' if i % 2 else 'bin'}",
            rng.randint(100, 16 * 1024),
            "text" if i % 2 else "random",
            seed,
        )
        for i in range(small_count)
    ]
    medium = [
        FileSpec(f"medium/part{i}.bin", MIB, "random", seed)
        for i in range(MEDIUM_FILES)
    ]
    text = [
        FileSpec(f"text/doc{i}.txt", total_bytes // 80, "text", seed) for i in range(4)
    ]
    used = sum(s.size for s in small + medium + text)
    remaining = max(0, total_bytes - used)
    large = [
        FileSpec(f"large/blob{i}.bin", int(remaining * share), "random", seed)
        for i, share in enumerate([0.5, 0.3, 0.2])
    ]
    return large + text + medium + small


def write_specs(directory: Path, specs: list[FileSpec]) -> None:
    for spec in specs:
        path = directory / spec.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            for block in file_chunks(spec):
                handle.write(block)


def small_tree(directory: Path, count: int, seed: int = 1) -> int:
    """``count`` small files (20-2000 bytes) in directories of 1000;
    returns the bytes written."""
    rng = random.Random(seed)
    total = 0
    for index in range(count):
        if index % 1000 == 0:
            folder = directory / f"d{index // 1000:04d}"
            folder.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(20, 2000))
        (folder / f"m{index:07d}.eml").write_bytes(data)
        total += len(data)
    return total


def hash_tree(root: Path) -> tuple[float, int]:
    """Seconds to SHA-256 every file under ``root`` (one hash per file)."""
    total = 0
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    began = time.perf_counter()
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                digest.update(view[:count])
                total += count
    return time.perf_counter() - began, total


def ensure_restic() -> str:
    """restic's path; installs Debian's package when missing."""
    found = shutil.which("restic")
    if found:
        return found
    print("installing restic (apt-get install -y restic)", flush=True)
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=environment, check=False)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "restic"], env=environment, check=False
    )
    found = shutil.which("restic")
    if not found:
        raise SystemExit("restic is missing and could not be installed: no baseline")
    return found


class Restic:
    def __init__(self, workdir: Path, name: str) -> None:
        self.binary = ensure_restic()
        self.environment = dict(
            os.environ,
            RESTIC_PASSWORD="bench-password",
            RESTIC_REPOSITORY=str(workdir / f"restic-{name}"),
            RESTIC_CACHE_DIR=str(workdir / f"restic-cache-{name}"),
        )
        subprocess.run(
            [self.binary, "init"],
            env=self.environment,
            check=True,
            capture_output=True,
        )

    def backup(self, tree: Path) -> float:
        began = time.perf_counter()
        subprocess.run(
            [self.binary, "backup", "--quiet", str(tree)],
            env=self.environment,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - began


class Daemon:
    """A fresh daemon with ``tree`` as its one source."""

    def __init__(self, workdir: Path, name: str, tree: Path) -> None:
        self.process = DaemonProcess(
            workdir / name,
            log_path=workdir / f"{name}.log",
            extra_args=["--transport", "tcp"],
        )
        self.process.start()
        password = workdir / "password"
        password.write_text(PASSWORD + "\n")
        self.cli("unlock", "--create", "--password-file", str(password))
        self.cli("sources", "add", str(tree))

    def cli(self, *args: str) -> str:
        return self.process.cli(*args, check=True, timeout=7200).stdout.decode()

    def backup(self) -> tuple[float, str]:
        began = time.perf_counter()
        text = self.cli("backup", "now", "--quiet")
        return time.perf_counter() - began, text.strip()

    def stop(self) -> None:
        self.process.stop(timeout=60)


def change_one_file(tree: Path) -> None:
    """Rewrite one 1 MiB file with new bytes (its size kept)."""
    path = tree / "medium/part1.bin"
    path.write_bytes(random.Random(7).randbytes(MIB))


def run(size: int, files: int, small_files: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bb-bench-backup-"))
    figures: dict[str, Any] = {}
    try:
        tree = workdir / "set"
        write_specs(tree, backup_set(size, files))
        os.sync()
        hash_tree(tree)  # warm the page cache for everyone
        sha_seconds, total = hash_tree(tree)
        figures.update(bytes=total, files=files, sha256_seconds=sha_seconds)
        restic = Restic(workdir, "set")
        figures["restic_first"] = restic.backup(tree)
        figures["restic_second"] = restic.backup(tree)
        daemon = Daemon(workdir, "node", tree)
        try:
            figures["bb_first"], figures["bb_first_text"] = daemon.backup()
            figures["bb_second"], figures["bb_second_text"] = daemon.backup()
            change_one_file(tree)
            figures["bb_changed"], figures["bb_changed_text"] = daemon.backup()
        finally:
            daemon.stop()
        figures["restic_changed"] = restic.backup(tree)
        figures["sha256_again"], _ = hash_tree(tree)
        shutil.rmtree(workdir / "node", ignore_errors=True)
        if small_files:
            many = workdir / "many"
            figures["small_bytes"] = small_tree(many, small_files)
            os.sync()
            hash_tree(many)
            restic_many = Restic(workdir, "many")
            figures["restic_many"] = restic_many.backup(many)
            daemon = Daemon(workdir, "node-many", many)
            try:
                figures["bb_many"], figures["bb_many_text"] = daemon.backup()
            finally:
                daemon.stop()
        figures["small_files"] = small_files
        return figures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(f: dict[str, Any]) -> None:
    sha = min(f["sha256_seconds"], f["sha256_again"])
    mb = f["bytes"] / 1e6
    rows = [
        (f"source folder of {f['bytes'] / MIB:.0f} MiB, {f['files']:,} files", ""),
        ("  hashlib SHA-256 of the files", f"{mb / sha:.0f} MB/s"),
        (
            "  barterbackup first backup (daemon reads)",
            f"{mb / f['bb_first']:.0f} MB/s",
        ),
        ("  restic first backup", f"{mb / f['restic_first']:.0f} MB/s"),
        ("  first ÷ SHA-256 (goal >= 0.5)", f"{sha / f['bb_first']:.2f}"),
        (
            "  first ÷ restic's first, throughput (goal >= 2.5)",
            f"{f['restic_first'] / f['bb_first']:.2f}",
        ),
        ("  barterbackup second backup, unchanged", f"{f['bb_second']:.2f} s"),
        ("  restic second backup, unchanged", f"{f['restic_second']:.2f} s"),
        (
            "  second ÷ restic's second (goal <= 1.0)",
            f"{f['bb_second'] / f['restic_second']:.2f}",
        ),
        ("  one 1 MiB file changed: barterbackup", f"{f['bb_changed']:.2f} s"),
        ("  one 1 MiB file changed: restic", f"{f['restic_changed']:.2f} s"),
        (
            "  changed ÷ restic (goal <= 1.0)",
            f"{f['bb_changed'] / f['restic_changed']:.2f}",
        ),
    ]
    if f["small_files"]:
        rows += [
            (
                f"{f['small_files']:,} small files ({f['small_bytes'] / MIB:.0f} MiB)",
                "",
            ),
            ("  barterbackup first backup", f"{f['bb_many']:.1f} s"),
            ("  restic first backup", f"{f['restic_many']:.1f} s"),
            ("  ÷ restic (goal <= 1.0)", f"{f['bb_many'] / f['restic_many']:.2f}"),
        ]
    for label, value in rows:
        print(f"{label:<56} {value:>10}")
    for key in ("bb_first_text", "bb_second_text", "bb_changed_text", "bb_many_text"):
        if key in f:
            print(f"  ({key[3:-5]}: {f[key]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size_mib", nargs="?", type=int, default=1024)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--small-files", type=int, default=0, metavar="N")
    args = parser.parse_args()
    print_table(run(args.size_mib * MIB, args.files, args.small_files))


if __name__ == "__main__":
    main()
