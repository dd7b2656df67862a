"""Keep glibc from handing large freed buffers back to the kernel at once.

A bbrpc Download moves 1 MiB pieces, and each piece passes through a few
buffers of about that size (the received chunks, the joined frame, the
parsed message, the caller's copy of its data). glibc serves such sizes
either by mmap or from the heap top, and gives them back to the kernel on
free (munmap, or trimming the top once more than twice the last large
free is unused). Every next buffer then starts as fresh pages, and the
kernel faults in and zeroes all 256 of them: measured on loopback, up to
200 000 minor faults per 256 MiB, and a transfer 2-4x slower, varying from
run to run with the heap's layout.

Fixing both thresholds keeps freed buffers in the heap for reuse. The
cost is that up to ``TRIM_THRESHOLD`` bytes of freed memory may stay with
the process instead of returning to the system.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# Buffers below this come from the heap: every 1 MiB Download piece and the
# frames and messages around it, so they are reused, not remapped. (Larger
# frames are rare: a signed revision, once per push.)
MMAP_THRESHOLD = 4 * 1024 * 1024
# Free heap space kept before trimming: a few pieces' worth. Kept small
# because the daemon's memory must stay flat (≤ 200 MiB) whatever the
# content size; 64 MiB here measured +35-60 MiB of peak RSS while packing.
TRIM_THRESHOLD = 16 * 1024 * 1024

# The daemon's policy instead (keep_memory_lean): two arenas (not one per
# thread: gRPC's pool and the content pipeline each kept their own freed
# MiB buffers), MiB buffers mapped and unmapped, little kept before a trim.
# Measured: daemon peak RSS adding 4 GiB 252 → 183 MiB.
LEAN_ARENAS = 2
LEAN_MMAP_THRESHOLD = 256 * 1024
LEAN_TRIM_THRESHOLD = 4 * 1024 * 1024

# The first policy chosen in a process wins; later calls change nothing.
_tuned: bool | None = None


def keep_freed_buffers_for_reuse() -> bool:
    """Favour throughput: keep freed large buffers for reuse (once per process).

    Returns whether the process's allocator policy is set: False (and
    nothing changed) where the C library is not glibc or has no mallopt.
    Safe to call repeatedly; if keep_memory_lean() came first, it stays.
    """
    global _tuned
    if _tuned is None:
        _tuned = _set(
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    return _tuned


def keep_memory_lean() -> bool:
    """Favour flat memory: the daemon's policy, set before its threads start.

    A backup daemon runs for months beside other programs and must stay
    under 200 MiB whatever the content size; its peers are reached through
    Tor at a few MB/s, so the page faults of mapping MiB buffers afresh
    cost nothing that matters. Call it before starting threads.
    """
    global _tuned
    if _tuned is None:
        _tuned = _set(
            (_M_ARENA_MAX, LEAN_ARENAS),
            (_M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, LEAN_TRIM_THRESHOLD),
        )
    return _tuned


def _set(*settings: tuple[int, int]) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    return all(mallopt(parameter, value) for parameter, value in settings)
