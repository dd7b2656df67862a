"""The progress queue between the reactor and a gRPC stream stays bounded."""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.progress import Progress
from barterbackup.rpc.queues import Finished, ProgressQueue


class ProgressQueueTests(SynchronousTestCase):
    def drain(self, events: ProgressQueue) -> list[object]:
        items = []
        while (item := events.get(0)) is not None:
            items.append(item)
            if not isinstance(item, Progress):
                break
        return items

    def test_a_flood_of_progress_keeps_one_event_per_peer_and_phase(self) -> None:
        events = ProgressQueue()
        for done in range(100_000):
            events.put(Progress("syncing", peer="a", bytes_done=done))
            events.put(Progress("syncing", peer="b", bytes_done=done))
        self.assertEqual(len(events), 2)
        events.end(None)
        a, b, end = self.drain(events)
        self.assertEqual((a.peer, a.bytes_done), ("a", 99_999))  # type: ignore[attr-defined]
        self.assertEqual((b.peer, b.bytes_done), ("b", 99_999))  # type: ignore[attr-defined]
        self.assertEqual(end, Finished(None))

    def test_final_events_are_never_replaced_or_dropped(self) -> None:
        events = ProgressQueue(limit=3)
        events.put(Progress("done", peer="a"))
        events.put(Progress("failed", peer="b", message="gone"))
        for peer in "cdefgh":
            events.put(Progress("syncing", peer=peer))
        self.assertEqual(len(events), 3)
        phases = [item.phase for item in self.drain(events)]  # type: ignore[attr-defined]
        self.assertEqual(phases, ["done", "failed", "syncing"])

    def test_events_before_the_end_are_all_delivered(self) -> None:
        events = ProgressQueue()
        events.put(Progress("syncing", peer="a"))
        events.put(Progress("done", peer="a"))
        failure = Failure(ValueError("broken"))
        events.end(failure)
        items = self.drain(events)
        self.assertEqual([i.phase for i in items[:2]], ["syncing", "done"])  # type: ignore[attr-defined]
        self.assertIs(items[2], failure)
        # The end stays: a reader asking again learns it again.
        self.assertIs(events.get(0), failure)

    def test_nothing_yet(self) -> None:
        self.assertIsNone(ProgressQueue().get(0))
