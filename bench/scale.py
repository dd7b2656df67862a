"""``make bench-scale``: the content engine at the sizes of a real home directory.

Two workloads, each step in a fresh child process (with the daemon's
allocator policy, ``keep_memory_lean``) so that its peak RSS (VmHWM) is
its own:

* **20 GiB mixed set** (bench.content_data: large random files, text, 1000
  small files), generated in memory and packed into a ContentStore,
  against the same set at 1 GiB in the same run: seconds, CPU seconds,
  peak RSS, and the RSS ratio (goal: 20 GiB ≤ 200 MiB and within 1.2x of
  1 GiB).
* **1,000,000 small files** (a mail folder's shape: ~96-byte messages in
  100 folders) added in one update, then listed (streamed) and read back
  one by one, each in its own process (goal: ≤ 200 MiB each).

Disk: the packs of the 20 GiB set (~20.1 GiB: sections, tree nodes,
manifest) plus its update journal while it is packed (~110 MB), and ~0.4
GiB for the small files; ``--workdir`` (default: a new directory under
/tmp) needs ~21 GiB free. Everything is deleted at the end unless
``--keep``.

Each packed node is then replicated over loopback TCP (bench.scale_sync:
owner and replica in two processes at once, each its own peak RSS), and
read back file by file (goal for all of them: ≤ 200 MiB). The replica
needs as much disk again as the owner (~42 GiB free in all by default).

    .venv/bin/python -m bench.scale [--size-gib 20] [--files 1000000]
        [--workdir DIR] [--keep] [--skip-mixed] [--skip-files]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from barterbackup.allocator import keep_memory_lean
from barterbackup.keys.derive import derive_node_keys
from barterbackup.store.identity import write_identity
from barterbackup.testing.stores import open_content_store
from bench.content_data import file_chunks, file_set
from bench.scale_sync import push_node, serve_replica
from bench.sync_rig import run_on_reactor

MIB = 1024 * 1024
GIB = 1024 * MIB
PASSWORD = "quartz-lantern-ember-violet-harbor-cobalt-meadow"
REPOSITORY = Path(__file__).resolve().parent.parent
SMALL_FOLDERS = 100


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM; not getrusage, which a child
    inherits from a big parent across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measured() -> dict[str, float]:
    return {"peak_rss_mib": peak_rss_mib(), "cpu_seconds": cpu_seconds()}


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def small_file_names(count: int) -> Iterator[tuple[str, int]]:
    """(name, size) of ``count`` mail-like files, in manifest order."""
    per_folder = -(-count // SMALL_FOLDERS)
    for number in range(count):
        folder, message = divmod(number, per_folder)
        # Sizes 16..176 bytes (mean 96): the 800,000 files, 73 MiB.
        size = 16 + (number * 2654435761) % 161
        yield f"mail/folder{folder:03d}/cur/{message:07d}.host:2,S", size


def node_keys() -> Any:
    """The keys of PASSWORD; the peak RSS is reset after them (Argon2id
    takes 64 MiB by design, which is not what is measured)."""
    keys = derive_node_keys(PASSWORD)
    Path("/proc/self/clear_refs").write_text("5")
    return keys


def _keys_for(node_dir: Path) -> Any:
    keys = node_keys()
    node_dir.mkdir(parents=True, exist_ok=True)
    write_identity(node_dir, keys.onion_address)
    return keys


def pack_node(node_dir: Path, kind: str, amount: int) -> dict[str, float]:
    """Pack a workload into ``node_dir`` (a daemon unlocks it with PASSWORD).

    ``kind`` is "mixed" (``amount`` bytes of bench.content_data's set) or
    "files" (``amount`` small files). Returns seconds, CPU seconds and peak
    RSS of this process; the node directory is left for the caller (the
    replication benchmark serves it).
    """
    keys = _keys_for(node_dir)
    store = open_content_store(node_dir, keys)
    began, cpu = time.perf_counter(), cpu_seconds()
    update = store.begin_update()
    if kind == "mixed":
        for spec in file_set(amount):
            with update.add_file(spec.name) as writer:
                for block in file_chunks(spec):
                    writer.write(block)
    else:
        payload = os.urandom(1024 * 1024)
        position = 0
        for name, size in small_file_names(amount):
            if position + size > len(payload):
                position = 0
            with update.add_file(name, mtime_ns=position) as writer:
                writer.write(payload[position : position + size])
            position += size
    packed = time.perf_counter()
    result = update.commit()
    ended = time.perf_counter()
    store.close()
    return {
        "seconds": ended - began,
        "commit_seconds": ended - packed,
        "cpu_seconds": cpu_seconds() - cpu,
        "peak_rss_mib": peak_rss_mib(),
        "bytes": result.content_length,
        "sections": result.revision.section_count,
        "files": result.files_written,
    }


def list_node(node_dir: Path) -> dict[str, float]:
    """Stream every name of the current revision."""
    store = open_content_store(node_dir, node_keys())
    began, cpu = time.perf_counter(), cpu_seconds()
    count = sum(1 for _ in store.list_files())
    figures = {
        "seconds": time.perf_counter() - began,
        "cpu_seconds": cpu_seconds() - cpu,
        "peak_rss_mib": peak_rss_mib(),
        "files": count,
    }
    store.close()
    return figures


def read_node(node_dir: Path) -> dict[str, float]:
    """Read every file back by name, verified, as GetFile does."""
    store = open_content_store(node_dir, node_keys())
    began, cpu = time.perf_counter(), cpu_seconds()
    files = total = 0
    for name in store.list_files():
        for chunk in store.read_file(name):
            total += len(chunk)
        files += 1
    figures = {
        "seconds": time.perf_counter() - began,
        "cpu_seconds": cpu_seconds() - cpu,
        "peak_rss_mib": peak_rss_mib(),
        "files": files,
        "bytes": total,
    }
    store.close()
    return figures


def in_child(*arguments: str) -> dict[str, Any]:
    """Run one step in a fresh process; its figures (a JSON line)."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--child", *arguments],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"bench.scale {arguments[0]} failed ({completed.returncode}):\n"
            f"{completed.stderr[-4000:]}"
        )
    figures: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return figures


def replicate(node_dir: Path, replica_dir: Path) -> tuple[dict[str, Any], ...]:
    """Owner and replica children at once; (owner figures, replica figures)."""
    port_file = replica_dir.with_suffix(".port")
    replica = subprocess.Popen(
        [
            *(sys.executable, "-m", "bench.scale", "--child", "replica"),
            *(str(replica_dir), str(port_file)),
        ],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text():
            if replica.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the replica process did not start listening")
            time.sleep(0.2)
        owner = in_child("push", str(node_dir), port_file.read_text())
        out, _ = replica.communicate(timeout=600)
    finally:
        if replica.poll() is None:
            replica.kill()
            replica.wait()
    if replica.returncode != 0:
        raise RuntimeError(f"the replica process failed ({replica.returncode})")
    shutil.rmtree(replica_dir, ignore_errors=True)
    return owner, json.loads(out.strip().splitlines()[-1])


def run(
    workdir: Path, size: int, files: int, mixed: bool, small: bool, keep: bool
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if mixed:
        for label, amount in (("mixed_1gib", GIB), ("mixed_large", size)):
            node_dir = workdir / label
            figures[label] = in_child("pack", str(node_dir), "mixed", str(amount))
            figures[f"{label}_push"], figures[f"{label}_replica"] = replicate(
                node_dir, workdir / f"{label}-replica"
            )
            figures[f"{label}_read"] = in_child("read", str(node_dir))
            if not keep:
                shutil.rmtree(node_dir, ignore_errors=True)
    if small:
        node_dir = workdir / "files"
        figures["files_add"] = in_child("pack", str(node_dir), "files", str(files))
        figures["files_push"], figures["files_replica"] = replicate(
            node_dir, workdir / "files-replica"
        )
        figures["files_list"] = in_child("list", str(node_dir))
        figures["files_read"] = in_child("read", str(node_dir))
        if not keep:
            shutil.rmtree(node_dir, ignore_errors=True)
    return figures


def print_table(figures: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []

    def row(label: str, f: dict[str, Any], extra: str = "") -> None:
        rows.append(
            (
                label,
                f"{f['seconds']:.1f} s, {f['cpu_seconds']:.1f} s CPU, "
                f"peak RSS {f['peak_rss_mib']:.0f} MiB{extra}",
            )
        )

    small, large = figures.get("mixed_1gib"), figures.get("mixed_large")
    if small and large:
        for label, f in (("pack 1 GiB mixed set", small), ("pack large set", large)):
            rate = f["bytes"] / f["seconds"] / 1e6
            row(
                f"{label} ({f['bytes'] / GIB:.1f} GiB, {f['sections']} sections)",
                f,
                f", {rate:.0f} MB/s",
            )
        ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
        rows.append(("  RSS large / 1 GiB (goal <= 1.2, <= 200 MiB)", f"{ratio:.2f}"))
        for step, label in (
            ("push", "replicate over TCP: owner"),
            ("replica", "replicate over TCP: replica"),
            ("read", "read back, every file"),
        ):
            one, big = figures[f"mixed_1gib_{step}"], figures[f"mixed_large_{step}"]
            rate = big.get("bytes", large["bytes"]) / big["seconds"] / 1e6
            row(f"{label} (large set)", big, f", {rate:.0f} MB/s")
            rows.append(
                (
                    f"  RSS large / 1 GiB, {step} (goal <= 1.2)",
                    f"{big['peak_rss_mib'] / one['peak_rss_mib']:.2f}",
                )
            )
    for key, label in (
        ("files_add", "add small files (one update)"),
        ("files_push", "replicate them over TCP: owner"),
        ("files_replica", "replicate them over TCP: replica"),
        ("files_list", "list them (streamed)"),
        ("files_read", "read each back by name"),
    ):
        if key in figures:
            f = figures[key]
            count = f.get("files", figures["files_add"]["files"])
            row(f"{label}: {count} files", f, " (goal <= 200 MiB)")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=20)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the node dirs")
    parser.add_argument("--skip-mixed", action="store_true")
    parser.add_argument("--skip-files", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # The daemon's allocator policy (tap.py sets it before any thread).
        keep_memory_lean()
        step, node_dir, *rest = args.child
        if step == "pack":
            result = pack_node(Path(node_dir), rest[0], int(rest[1]))
        elif step == "replica":
            result = run_on_reactor(
                serve_replica, Path(node_dir), Path(rest[0]), measured
            )
        elif step == "push":
            result = run_on_reactor(
                push_node, Path(node_dir), node_keys(), int(rest[0]), measured
            )
        elif step == "list":
            result = list_node(Path(node_dir))
        else:
            result = read_node(Path(node_dir))
        print(json.dumps(result))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bb-scale-", dir="/tmp"))
    try:
        figures = run(
            workdir,
            int(args.size_gib * GIB),
            args.files,
            mixed=not args.skip_mixed,
            small=not args.skip_files,
            keep=args.keep,
        )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(figures)


if __name__ == "__main__":
    main()
