"""Child process for tests/test_store_crash.py (not a test module itself).

Usage: python tests/store_crash_child.py (metadata|contract) DIR

Writes the "new" state of one store over the "old" one the parent wrote;
BARTERBACKUP_CRASH_AT (set by the parent) kills it at a numbered point of
the atomic write.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_store_crash import write_new

if __name__ == "__main__":
    write_new(sys.argv[1], Path(sys.argv[2]))
