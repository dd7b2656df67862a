"""Restore to a directory vs ``restic restore``; ``check --read-data`` vs SHA-256.

Run from the repository root::

    .venv/bin/python -m bench.restore [SIZE_MIB] [--files N] [--workdir DIR]
        [--repeat N]

A file set of SIZE_MIB (default 1024) in N files (default 2,000: most of
them small, a hundred carrying most of the bytes) is written to disk,
packed into a content store (the engine, as ``files add`` does) and backed
up by restic. Then, in the same run, each restore is timed into a fresh
directory, best of ``--repeat``:

* barterbackup: ``recovery.restore.Restorer``, the code the daemon runs for
  ``barterbackup restore`` in its worker thread (every section read from
  the packs, checked, decrypted, checked again; temp file, mode, mtime,
  link into place);
* ``restic restore latest --target DIR`` (restic verifies its blobs too).

Both read their repository from the page cache (each is warmed by a first
run), so the figure compares the restore paths, not the disk. The restored
trees are compared byte for byte with the source afterwards.

``check --read-data`` (``recovery.check``) reads and hashes every section
of the store; its throughput is divided by hashlib SHA-256 over the same
bytes (the pack files, read in 1 MiB blocks). The plain check (index
lookups, no data read) is timed too.

A missing restic is a failure: the benchmark tries ``apt-get install -y
restic`` (as tools/system-deps.sh does) and exits 1 if it is still missing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from barterbackup.content.engine import ContentStore
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.recovery.check import check_store
from barterbackup.recovery.restore import Restorer
from barterbackup.testing.stores import open_content_store
from bench.content_data import FileSpec, file_chunks, write_file_set

MIB = 1024 * 1024
READ_BLOCK = MIB
BENCH_MASTER = hashlib.sha256(b"barterbackup restore bench").digest()
LARGE_SHARE = 0.8  # of the bytes, in LARGE_FILES files
LARGE_FILES = 100
RESTIC_PASSWORD = "bench-password"


def restore_set(total_bytes: int, files: int, seed: int = 0) -> list[FileSpec]:
    """``files`` files of about ``total_bytes``: 100 large files hold 80 %
    of the bytes, the rest are small (a photo library, a source tree)."""
    rng = random.Random(seed)
    large = min(LARGE_FILES, files // 4)
    small = files - large
    small_bytes = int(total_bytes * (1 - LARGE_SHARE))
    specs = []
    for i in range(small):
        size = max(1, int(rng.expovariate(1.0) * small_bytes / small))
        kind = "text" if i % 3 == 0 else "random"
        specs.append(FileSpec(f"small/{i // 100:02d}/file{i:05d}", size, kind, seed))
    remaining = total_bytes - sum(spec.size for spec in specs)
    for i in range(large):
        specs.append(
            FileSpec(
                f"large/{i // 10}/blob{i:03d}.bin", remaining // large, "random", seed
            )
        )
    return specs


def pack(store: ContentStore, data_dir: Path, specs: list[FileSpec]) -> None:
    update = store.begin_update()
    for spec in specs:
        info = (data_dir / spec.name).stat()
        writer = update.add_file(
            spec.name, mode=info.st_mode & 0o7777, mtime_ns=info.st_mtime_ns
        )
        for block in file_chunks(spec):
            writer.write(block)
        writer.close()
    update.commit()


def ensure_restic() -> str | None:
    restic = shutil.which("restic")
    if restic is not None:
        return restic
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print("restic is missing: installing it (apt-get install -y restic)")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "restic"],
        check=False,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
    )
    return shutil.which("restic")


def restic_env(workdir: Path) -> dict[str, str]:
    return dict(
        os.environ,
        RESTIC_PASSWORD=RESTIC_PASSWORD,
        RESTIC_REPOSITORY=str(workdir / "restic-repo"),
        RESTIC_CACHE_DIR=str(workdir / "restic-cache"),
    )


def restic_backup(restic: str, workdir: Path, data_dir: Path) -> None:
    env = restic_env(workdir)
    subprocess.run([restic, "init"], env=env, check=True, capture_output=True)
    # From inside the data directory: restored paths are then relative.
    subprocess.run(
        [restic, "backup", "--quiet", "."],
        env=env,
        check=True,
        capture_output=True,
        cwd=data_dir,
    )


def time_restic_restore(restic: str, workdir: Path, target: Path) -> float:
    shutil.rmtree(target, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [restic, "restore", "latest", "--target", str(target)],
        env=restic_env(workdir),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def time_our_restore(store: ContentStore, target: Path) -> float:
    shutil.rmtree(target, ignore_errors=True)
    start = time.perf_counter()
    outcome = Restorer(store, target.absolute(), []).run()
    seconds = time.perf_counter() - start
    if not outcome.ok:
        raise SystemExit(f"restore failed: {outcome}")
    return seconds


def tree_digest(root: Path, specs: list[FileSpec]) -> bytes:
    digest = hashlib.sha256()
    for spec in sorted(specs, key=lambda s: s.name):
        digest.update(spec.name.encode() + b"\0")
        digest.update(hashlib.sha256((root / spec.name).read_bytes()).digest())
    return digest.digest()


def hash_packs(packs_dir: Path) -> tuple[float, int]:
    """Seconds for hashlib.sha256 over every pack file, and their bytes."""
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    total = 0
    start = time.perf_counter()
    for path in sorted(packs_dir.glob("*.pack")):
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                digest.update(view[:count])
                total += count
        digest.digest()
    return time.perf_counter() - start, total


def best(values: list[float]) -> float:
    return min(values)


def run(workdir: Path, size_bytes: int, files: int, repeat: int) -> int:
    restic = ensure_restic()
    specs = restore_set(size_bytes, files)
    total = sum(spec.size for spec in specs)
    data_dir = workdir / "data"
    write_file_set(data_dir, specs)
    print(f"file set: {len(specs):,} files, {total / MIB:.0f} MiB")
    store = open_content_store(workdir / "node", node_keys_from_master(BENCH_MASTER))
    try:
        pack(store, data_dir, specs)
        if restic is not None:
            restic_backup(restic, workdir, data_dir)
        os.sync()
        source_digest = tree_digest(data_dir, specs)

        # Warm both repositories, then the timed runs, alternating.
        ours_target, restic_target = workdir / "ours", workdir / "restic"
        time_our_restore(store, ours_target)
        if restic is not None:
            time_restic_restore(restic, workdir, restic_target)
        ours, theirs = [], []
        for _ in range(max(1, repeat)):
            ours.append(time_our_restore(store, ours_target))
            if restic is not None:
                theirs.append(time_restic_restore(restic, workdir, restic_target))
        if tree_digest(ours_target, specs) != source_digest:
            print("FAILED: our restored tree differs from the source")
            return 1
        if restic is not None and tree_digest(restic_target, specs) != source_digest:
            print("FAILED: restic's restored tree differs from the source")
            return 1
        shutil.rmtree(ours_target, ignore_errors=True)
        shutil.rmtree(restic_target, ignore_errors=True)

        sha_runs, checks, plain = [], [], []
        pack_bytes = 0
        for _ in range(max(1, repeat)):
            seconds, pack_bytes = hash_packs(store.packs.directory)
            sha_runs.append(seconds)
            start = time.perf_counter()
            outcome = check_store(store, read_data=True)
            checks.append(time.perf_counter() - start)
            if not outcome.ok:
                print(f"FAILED: check --read-data found damage: {outcome.summary()}")
                return 1
            start = time.perf_counter()
            check_store(store, read_data=False)
            plain.append(time.perf_counter() - start)
        read_bytes = outcome.bytes_read
    finally:
        store.close()

    rows = [
        ("our restore", f"{best(ours):.2f} s  {total / best(ours) / 1e6:.0f} MB/s"),
    ]
    if theirs:
        rows.append(
            (
                "restic restore",
                f"{best(theirs):.2f} s  {total / best(theirs) / 1e6:.0f} MB/s",
            )
        )
        rows.append(
            (
                "restore ÷ restic restore (time)",
                f"{best(ours) / best(theirs):.2f}  (throughput "
                f"{best(theirs) / best(ours):.2f} x)",
            )
        )
    else:
        rows.append(("restic restore", "FAILED: restic is not installed"))
    check_rate = read_bytes / best(checks) / 1e6
    sha_rate = pack_bytes / best(sha_runs) / 1e6
    rows += [
        ("check --read-data", f"{best(checks):.2f} s  {check_rate:.0f} MB/s"),
        ("SHA-256 of the packs", f"{best(sha_runs):.2f} s  {sha_rate:.0f} MB/s"),
        ("check --read-data ÷ SHA-256 (throughput)", f"{check_rate / sha_rate:.2f}"),
        ("plain check (index only)", f"{best(plain):.2f} s"),
        (
            "runs (best of)",
            f"{max(1, repeat)}; ours {', '.join(f'{s:.2f}' for s in ours)}",
        ),
    ]
    if theirs:
        rows.append(("restic runs", ", ".join(f"{s:.2f}" for s in theirs)))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0 if theirs else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("size_mib", nargs="?", type=int, default=1024)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args.workdir, args.size_mib * MIB, args.files, args.repeat)
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as workdir:
        return run(Path(workdir), args.size_mib * MIB, args.files, args.repeat)


if __name__ == "__main__":
    sys.exit(main())
