"""Run trial, pass its output through, and end with a plain summary line.

trial closes with "PASSED (successes=N)" or "FAILED (failures=.., ...)";
CI systems read "N passed, N failed" (and ", N skipped"), so that line is
printed last. The exit status is trial's own.

Usage: python tools/trial_summary.py [trial arguments...]
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

COUNTS = re.compile(r"(\w+)=(\d+)")


def summary(last_line: str) -> str | None:
    if not last_line.startswith(("PASSED", "FAILED")):
        return None
    counts = {k: int(v) for k, v in COUNTS.findall(last_line)}
    passed = counts.get("successes", 0)
    failed = sum(
        counts.get(k, 0) for k in ("failures", "errors", "unexpectedSuccesses")
    )
    skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
    line = f"{passed} passed, {failed} failed"
    return line + (f", {skipped} skipped" if skipped else "")


def main(argv: list[str]) -> int:
    trial = Path(sys.executable).parent / "trial"
    process = subprocess.Popen(
        [str(trial), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    last = ""
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.strip():
            last = line.strip()
    code = process.wait()
    text = summary(last)
    if text:
        print(text)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
