"""glibc allocator thresholds: freed large buffers are reused, not re-faulted."""

from __future__ import annotations

import platform
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.allocator import keep_freed_buffers_for_reuse

# Allocates and frees 4 x 1 MiB 64 times (like the buffers of a stream of
# pieces) and prints the minor page faults those 64 rounds took, after two
# warm-up rounds.
_CHURN = """
import resource, sys
if sys.argv[1] == "tuned":
    from barterbackup.allocator import keep_freed_buffers_for_reuse
    assert keep_freed_buffers_for_reuse()

MIB = 1 << 20
def churn():
    held = [bytes(MIB) for _ in range(4)]
    del held
churn()  # the first rounds fault pages in, tuned or not
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(64):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_PER_ROUND = 4 * 256


def _child(script: str, mode: str) -> int:
    """Run ``script`` in a fresh interpreter (the allocator policy is
    process-wide and set once); return the number it prints."""
    out = subprocess.run(
        [sys.executable, "-c", script, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(out.stdout)


def _faults(mode: str) -> int:
    return _child(_CHURN, mode)


class AllocatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        if platform.libc_ver()[0] != "glibc":
            self.skipTest("the thresholds are a glibc feature")

    def test_set_once_and_idempotent(self) -> None:
        self.assertTrue(keep_freed_buffers_for_reuse())
        self.assertTrue(keep_freed_buffers_for_reuse())

    def test_freed_buffers_are_reused(self) -> None:
        # 64 rounds after warming up fault in less than one buffer's pages:
        self.assertLess(_faults("tuned"), 256)
        # without the thresholds, glibc gives the pages back and every few
        # rounds faults them in again (measured: ~6 600 faults).
        self.assertGreater(_faults("default"), PAGES_PER_ROUND)

    def test_lean_policy_returns_memory_and_wins_when_first(self) -> None:
        # The daemon's policy gives freed MiB buffers back to the kernel,
        # even after the first bbrpc connection asked for the other policy.
        self.assertGreaterEqual(_released_mib("lean"), 10)
        # The throughput policy keeps them for reuse instead.
        self.assertLess(_released_mib("tuned"), 4)


# Fills 12 separate 1 MiB buffers (touching every page), frees them, prints
# how many MiB of resident memory went back to the kernel.
_RELEASE = """
import sys
from pathlib import Path
from barterbackup import allocator
if sys.argv[1] == "lean":
    assert allocator.keep_memory_lean()
assert allocator.keep_freed_buffers_for_reuse()
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
held = [bytes([i]) * (1 << 20) for i in range(12)]
peak = rss()
del held
print(int(peak - rss()))
"""


def _released_mib(mode: str) -> int:
    return _child(_RELEASE, mode)
