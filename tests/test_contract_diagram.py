"""docs/contracts.md holds the state diagram the machine's code gives."""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import contract_diagram  # noqa: E402


class DiagramTests(SynchronousTestCase):
    def test_committed_diagram_matches_the_machine(self) -> None:
        text = contract_diagram.DOC.read_text()
        self.assertEqual(
            contract_diagram.updated(text),
            text,
            "docs/contracts.md is stale: run python tools/contract_diagram.py",
        )

    def test_every_state_and_public_input_is_drawn(self) -> None:
        block = contract_diagram.render()
        for state in contract_diagram.STATE_ORDER:
            self.assertIn(f"| {state} |", block)
        for event in (
            "accepted",
            "refused",
            "synced",
            "revision_committed",
            "check_passed",
            "check_failed",
            "check_unanswered",
            "peer_unreachable",
            "peer_reachable",
            "end_requested",
            "peer_ended",
            "grace_expired",
            "outage_limit_reached",
        ):
            self.assertIn(f"`{event}`", block)

    def test_a_changed_machine_is_noticed(self) -> None:
        text = contract_diagram.DOC.read_text()
        stale = text.replace("proposed --> syncing: accepted", "proposed --> active")
        self.assertNotEqual(stale, text)
        self.assertNotEqual(contract_diagram.updated(stale), stale)
