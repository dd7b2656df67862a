"""``make bench``: every benchmark, each in its own process, in one run.

Each prints a table of ratios against a baseline measured in the same run
(never absolute timings alone: these machines are noisy). Each runs in a
subprocess because a Twisted reactor runs once per process.

    .venv/bin/python -m bench            # the full sizes of the issues
    .venv/bin/python -m bench --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

FULL = [
    ("SetFile through the real daemon, daemon RSS", ["bench.daemon_pack", "1024"]),
    ("content packing, memory, incremental cost", ["bench.content_pack", "1024"]),
    ("section sizes: delta bytes vs packing cost", ["bench.chunking", "1024"]),
    ("delta sync on the wire vs rsync", ["bench.delta", "1024"]),
    ("full sync over loopback TCP vs SHA-256", ["bench.sync_tcp", "1024"]),
    ("bbrpc over plain TCP vs a socket copy", ["bench.peer_tcp"]),
    ("replica sync over onions vs raw onion bytes", ["bench.onion_sync", "32"]),
    (
        "recovery over onions: 3 replicas vs 1, vs raw onion bytes",
        ["bench.recovery", "256"],
    ),
    ("chat AEAD sealing vs SHA-256, per-piece CPU path", ["bench.chat_aead"]),
    (
        "EncryptedDownload vs plain Download, TCP and onion",
        ["bench.chat_download", "256", "32"],
    ),
    ("source walk of 1 M files vs find, walk RSS", ["bench.walk", "1000000"]),
    ("exclude patterns vs git check-ignore (and pathspec)", ["bench.excludes_git"]),
    ("replica delete vs the other replicas' queries", ["bench.replica_delete"]),
    ("spot-check cost and detection", ["bench.contract_checks"]),
    ("spot checks through tree, store and wire", ["bench.contract_wire"]),
    ("one node with 50 contracts checked every minute", ["bench.contract_load"]),
    (
        "restore vs restic restore, check --read-data vs SHA-256",
        ["bench.restore", "1024", "--files", "2000"],
    ),
    (
        "backups through the daemon vs restic and SHA-256",
        ["bench.backup", "1024", "--files", "2000"],
    ),
]
QUICK = [
    (
        "SetFile through the real daemon, daemon RSS",
        ["bench.daemon_pack", "128", "--rss-small", "32", "--rss-large", "256"],
    ),
    (
        "content packing, memory, incremental cost",
        ["bench.content_pack", "128", "--no-4g"],
    ),
    (
        "section sizes: delta bytes vs packing cost",
        ["bench.chunking", "128", "--repeat", "1", "--sizes", "12/3/64,8/4/64"],
    ),
    ("delta sync on the wire vs rsync", ["bench.delta", "128"]),
    ("full sync over loopback TCP vs SHA-256", ["bench.sync_tcp", "128"]),
    ("bbrpc over plain TCP vs a socket copy", ["bench.peer_tcp", "64"]),
    ("replica sync over onions vs raw onion bytes", ["bench.onion_sync", "8"]),
    (
        "recovery over onions: 3 replicas vs 1, vs raw onion bytes",
        ["bench.recovery", "16"],
    ),
    ("chat AEAD sealing vs SHA-256, per-piece CPU path", ["bench.chat_aead", "32"]),
    (
        "EncryptedDownload vs plain Download, TCP and onion",
        ["bench.chat_download", "64", "8"],
    ),
    ("source walk of 100 k files vs find, walk RSS", ["bench.walk", "100000"]),
    (
        "exclude patterns vs git check-ignore (and pathspec)",
        ["bench.excludes_git", "50"],
    ),
    (
        "replica delete vs the other replicas' queries",
        ["bench.replica_delete", "64"],
    ),
    ("spot-check cost and detection", ["bench.contract_checks", "--quick"]),
    ("spot checks through tree, store and wire", ["bench.contract_wire", "--quick"]),
    (
        "one node with 10 contracts checked every minute",
        ["bench.contract_load", "--peers", "10", "--minutes", "5"],
    ),
    (
        "restore vs restic restore, check --read-data vs SHA-256",
        ["bench.restore", "128", "--files", "400", "--repeat", "1"],
    ),
    (
        "backups through the daemon vs restic and SHA-256",
        ["bench.backup", "128", "--files", "500"],
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark.")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args()
    failed = []
    for title, command in QUICK if args.quick else FULL:
        print(f"\n### {title}  (python -m {' '.join(command)})", flush=True)
        began = time.monotonic()
        result = subprocess.run([sys.executable, "-m", *command])
        print(f"({time.monotonic() - began:.0f} s)", flush=True)
        if result.returncode != 0:
            failed.append(title)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
