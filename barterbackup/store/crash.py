"""Numbered crash points: a test hook for crash-safety tests.

``crash_point(n)`` kills the process with SIGKILL when the environment
variable BARTERBACKUP_CRASH_AT equals ``n``. The variable is read once, only
tests set it, and without it the function does nothing. SIGKILL (not an
exception) is the point: no ``finally`` block or atexit handler runs, as in a
power cut between two durable writes.
"""

from __future__ import annotations

import os
import signal

CRASH_ENVIRONMENT_VARIABLE = "BARTERBACKUP_CRASH_AT"
_crash_at = os.environ.get(CRASH_ENVIRONMENT_VARIABLE)


def crash_point(number: int) -> None:
    if _crash_at is not None and _crash_at == str(number):
        os.kill(os.getpid(), signal.SIGKILL)
