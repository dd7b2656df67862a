"""The plain summary line `make test` prints after trial's own."""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import trial_summary


class SummaryTests(SynchronousTestCase):
    def test_passed(self) -> None:
        self.assertEqual(
            trial_summary.summary("PASSED (successes=220)"), "220 passed, 0 failed"
        )

    def test_failed_counts_failures_and_errors(self) -> None:
        line = "FAILED (failures=1, errors=2, successes=206, skips=3)"
        self.assertEqual(trial_summary.summary(line), "206 passed, 3 failed, 3 skipped")

    def test_other_lines(self) -> None:
        self.assertIsNone(trial_summary.summary("Ran 3 tests in 0.1s"))
