"""The pack store's reservation table behaves like a dict of prefixes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.store.packs import _ReservationTable

# Few distinct low bits, so probing and collisions are exercised.
PREFIX = st.one_of(
    st.integers(0, 2**64 - 1), st.integers(0, 40).map(lambda n: n << 20 | 7)
)
LOCATION = st.integers(-(2**63), -1)
OPERATION = st.tuples(st.sampled_from(["add", "remove", "get"]), PREFIX, LOCATION)


class ReservationTableTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(operations=st.lists(OPERATION, max_size=3000))
    def test_matches_a_dict(self, operations: list[tuple[str, int, int]]) -> None:
        table = _ReservationTable()
        model: dict[int, int] = {}
        for operation, prefix, location in operations:
            if operation == "add":
                self.assertEqual(table.add(prefix, location), prefix not in model)
                model.setdefault(prefix, location)
            elif operation == "remove":
                target = model.get(prefix, location)  # mostly a stored one
                removed = model.get(prefix) == target
                self.assertEqual(table.remove(prefix, target), removed)
                if removed:
                    del model[prefix]
            self.assertEqual(table.get(prefix), model.get(prefix))
            self.assertEqual(table.count, len(model))
        for prefix, location in model.items():
            self.assertEqual(table.get(prefix), location)

    def test_grows_and_keeps_everything(self) -> None:
        table = _ReservationTable()
        for number in range(5000):
            self.assertTrue(table.add(number * 0x9E3779B97F4A7C15 % 2**64, ~number))
        for number in range(5000):
            self.assertEqual(table.get(number * 0x9E3779B97F4A7C15 % 2**64), ~number)
        self.assertIsNone(table.get(12345))

    def test_refuses_stored_locations(self) -> None:
        self.assertRaises(ValueError, _ReservationTable().add, 5, 0)
