"""Run the long fuzz campaign and print what every target did.

``make fuzz`` runs this. It runs trial on every ``tests/test_fuzz_*.py``
module with the ``long`` profile of ``tests/fuzzing.py`` and ends with one
line per target: examples run, distinct failures found, seconds, and the
seeds that reproduce the run. The exit status is trial's.

Environment (read by tests/fuzzing.py):

* ``BARTERBACKUP_FUZZ_EXAMPLES``: examples per target (default 20000);
* ``BARTERBACKUP_FUZZ_SECONDS``: a target starts no new chunk of 1000
  examples after this many seconds (default: no limit);
* ``BARTERBACKUP_FUZZ_SEED``: the first chunk's seed (default: random).

Usage: python tools/fuzz.py [trial arguments, e.g. tests.test_fuzz_store]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def fuzz_modules() -> list[str]:
    """Every fuzz test module, as trial names it."""
    return sorted(f"tests.{p.stem}" for p in (ROOT / "tests").glob("test_fuzz_*.py"))


def read_reports(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def table(reports: list[dict[str, Any]]) -> str:
    """The counts per target, and totals, as printed at the end of a run."""
    lines = [f"{'target':40} {'examples':>9} {'failures':>9} {'seconds':>8}  seeds"]
    for report in sorted(reports, key=lambda r: str(r["target"])):
        seeds = report.get("seeds") or []
        shown = f"{seeds[0]}..{seeds[-1]}" if seeds else "-"
        lines.append(
            f"{report['target']:40} {report['examples']:>9} "
            f"{report['failures']:>9} {report['seconds']:>8.1f}  {shown}"
        )
    examples = sum(r["examples"] for r in reports)
    failures = sum(r["failures"] for r in reports)
    lines.append(
        f"{len(reports)} targets, {examples} examples, {failures} failures found"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    trial = Path(sys.executable).parent / "trial"
    with tempfile.TemporaryDirectory(prefix="bb-fuzz-") as directory:
        env = dict(os.environ)
        env["BARTERBACKUP_FUZZ_PROFILE"] = "long"
        env["BARTERBACKUP_FUZZ_REPORT"] = directory
        command = [str(trial), "-j2", *(argv or fuzz_modules())]
        code = subprocess.call(command, env=env, cwd=ROOT)
        print()
        print(table(read_reports(Path(directory))))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
