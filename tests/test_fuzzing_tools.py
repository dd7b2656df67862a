"""The fuzz campaign's own machinery: run lengths, counts, reports, and the
table `make fuzz` prints."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from tests.fuzzing import CI_EXAMPLES, MIN_CI_EXAMPLES, FuzzPlan, fuzz_target, messages

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import fuzz as fuzz_tool


class PlanTests(SynchronousTestCase):
    def environment(self, **values: str) -> None:
        env = {k: v for k, v in os.environ.items() if "BARTERBACKUP_FUZZ" not in k}
        env.update({f"BARTERBACKUP_FUZZ_{k}": v for k, v in values.items()})
        self.patch(os, "environ", env)

    def test_ci_divides_by_cost_with_a_floor(self) -> None:
        self.environment()
        self.assertEqual(FuzzPlan.from_environment(1).examples, CI_EXAMPLES)
        self.assertEqual(FuzzPlan.from_environment(2).examples, CI_EXAMPLES // 2)
        self.assertEqual(FuzzPlan.from_environment(10**6).examples, MIN_CI_EXAMPLES)
        (chunk, seed), *more = FuzzPlan.from_environment(1).chunks()
        self.assertEqual(
            (chunk.max_examples, chunk.derandomize, seed), (CI_EXAMPLES, True, None)
        )
        self.assertEqual(more, [])

    def test_long_runs_chunks_of_fresh_seeds(self) -> None:
        self.environment(PROFILE="long", EXAMPLES="2500", SEED="7")
        chunks = list(FuzzPlan.from_environment(1).chunks())
        self.assertEqual([c.max_examples for c, _ in chunks], [1000, 1000, 500])
        self.assertEqual([s for _, s in chunks], [7, 8, 9])
        # An expensive target's chunks are smaller (the time cap bites sooner).
        chunks = list(FuzzPlan.from_environment(4).chunks())
        self.assertEqual(len(chunks), 10)
        self.assertFalse(any(c.derandomize for c, _ in chunks))

    def test_an_unknown_profile_is_refused(self) -> None:
        self.environment(PROFILE="forever")
        self.assertRaises(ValueError, FuzzPlan.from_environment, 1)


class TargetTests(SynchronousTestCase):
    def test_examples_and_failures_are_reported(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.patch(
            os,
            "environ",
            {
                "BARTERBACKUP_FUZZ_REPORT": str(directory),
                "BARTERBACKUP_FUZZ_EXAMPLES": "40",
            },
        )

        @fuzz_target("demo.passes", value=st.integers())
        def passes(case: Any, value: int) -> None:
            pass

        @fuzz_target("demo.fails", value=st.integers(0, 1000))
        def fails(case: Any, value: int) -> None:
            assert value < 500

        passes(self)
        self.assertRaises(AssertionError, fails, self)
        reports = {r["target"]: r for r in fuzz_tool.read_reports(directory)}
        self.assertEqual(reports["demo.passes"]["examples"], 40)
        self.assertEqual(reports["demo.passes"]["failures"], 0)
        self.assertEqual(reports["demo.fails"]["failures"], 1)
        self.assertGreater(reports["demo.fails"]["examples"], 0)
        text = fuzz_tool.table(list(reports.values()))
        self.assertIn("demo.fails", text)
        self.assertTrue(text.endswith("failures found"))
        self.assertIn(" 1 failures found", text)
        json.dumps(reports)  # what the runner reads back

    def test_every_message_type_can_be_generated(self) -> None:
        self.patch(os, "environ", {})

        @fuzz_target("demo.envelopes", envelope=messages(bbrpc_pb2.Envelope.DESCRIPTOR))
        def generate(case: Any, envelope: Any) -> None:
            bbrpc_pb2.Envelope.FromString(envelope.SerializeToString())

        generate(self)

    def test_the_runner_finds_every_fuzz_module(self) -> None:
        modules = fuzz_tool.fuzz_modules()
        self.assertIn("tests.test_fuzz_bbrpc", modules)
        self.assertIn("tests.test_fuzz_store", modules)
