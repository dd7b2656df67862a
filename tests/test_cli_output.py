"""CLI progress output on a pty, on a pipe, with --quiet and with --json."""

from __future__ import annotations

import argparse
import io
import json
import os
from typing import TextIO

from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import ProgressBar
from barterbackup.cli.output import (
    JSON,
    PLAIN,
    QUIET,
    TERMINAL,
    Output,
    add_output_arguments,
    format_duration,
    report_progress_events,
)

MIB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def args_for(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_output_arguments(parser)
    return parser.parse_args(list(argv))


def drain(fd: int) -> str:
    """Everything written so far to the other end of ``fd``."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


class OutputTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.stdout = io.StringIO()

    def pty(self) -> tuple[TextIO, int]:
        leader, follower = os.openpty()
        stream = open(follower, "w", closefd=True)
        self.addCleanup(stream.close)
        self.addCleanup(os.close, leader)
        return stream, leader

    def pipe(self) -> tuple[TextIO, int]:
        reader, writer = os.pipe()
        stream = open(writer, "w", closefd=True)
        self.addCleanup(stream.close)
        self.addCleanup(os.close, reader)
        return stream, reader

    def transfer(self, output: Output, seconds: int, per_second: int = 20) -> None:
        """A 10 MiB transfer at 1 MiB/s, ``per_second`` events a second."""
        total = 10 * MIB
        start = self.clock.now
        for tick in range(seconds * per_second + 1):
            self.clock.now = start + tick / per_second
            done = min(total, tick * MIB // per_second)
            output.progress(done, total, phase="reading", label="backup")


class TerminalTests(OutputTestCase):
    def test_mode_follows_the_stream(self) -> None:
        terminal, _ = self.pty()
        pipe, _ = self.pipe()
        self.assertEqual(Output.for_args(args_for(), terminal).mode, TERMINAL)
        self.assertEqual(Output.for_args(args_for(), pipe).mode, PLAIN)
        self.assertEqual(Output.for_args(args_for("--quiet"), terminal).mode, QUIET)
        self.assertEqual(Output.for_args(args_for("--json"), terminal).mode, JSON)

    def test_one_updating_line_with_rate_and_eta(self) -> None:
        stream, leader = self.pty()
        output = Output.for_args(args_for(), stream, self.stdout, clock=self.clock)
        self.transfer(output, seconds=4)
        text = drain(leader)
        self.assertNotIn("\n", text)
        # 81 events in 4 s, redrawn at most 10 times a second.
        self.assertLessEqual(len(text.split("\r")[1:]), 41)
        self.assertGreater(len(text.split("\r")[1:]), 20)
        output.result({"revision": 3}, text="revision 3")
        text = drain(leader)
        self.assertTrue(text.endswith("\r\n"))  # the pty's newline
        last = text.split("\r")[1]
        self.assertIn("backup: reading", last)
        self.assertIn("4.0 MiB / 10.0 MiB (40%)", last)
        self.assertIn("1.0 MiB/s", last)
        self.assertIn("ETA 0:06", last)
        self.assertEqual(self.stdout.getvalue(), "revision 3\n")

    def test_line_fits_the_terminal(self) -> None:
        stream, leader = self.pty()
        output = Output(TERMINAL, stream, self.stdout, self.clock, width=30)
        output.progress(5, 10, phase="a long phase name", label="a long label")
        (draw,) = drain(leader).split("\r")[1:]
        self.assertLessEqual(len(draw.replace("\x1b[K", "")), 29)

    def test_message_keeps_the_line(self) -> None:
        stream, leader = self.pty()
        output = Output(TERMINAL, stream, self.stdout, self.clock)
        output.progress(1, 10, label="backup")
        output.message("skipped /home/u/fifo: FIFO", level="warning")
        text = drain(leader)
        self.assertIn("\r\x1b[Kskipped /home/u/fifo: FIFO\r\n", text)  # pty: \r\n
        self.assertTrue(text.rstrip("\x1b[K").split("\r")[-1].startswith("backup"))

    def test_peers_share_one_line(self) -> None:
        stream, leader = self.pty()
        output = Output(TERMINAL, stream, self.stdout, self.clock)
        output.progress(1 * MIB, 4 * MIB, phase="syncing", key="a" * 56)
        self.clock.now += 1
        output.progress(3 * MIB, 4 * MIB, phase="syncing", key="b" * 56)
        last = drain(leader).split("\r")[-1]
        self.assertIn("(2): syncing", last)
        self.assertIn("4.0 MiB / 8.0 MiB (50%)", last)


class PlainTests(OutputTestCase):
    def test_at_most_one_line_every_ten_seconds(self) -> None:
        stream, reader = self.pipe()
        output = Output.for_args(args_for(), stream, self.stdout, clock=self.clock)
        self.transfer(output, seconds=35)
        output.finish()
        lines = drain(reader).splitlines()
        self.assertEqual(len(lines), 4)  # at 0, 10, 20 and 30 s
        self.assertNotIn("\r", "".join(lines))
        self.assertIn("10.0 MiB / 10.0 MiB (100%)", lines[-1])

    def test_quiet_shows_no_progress_but_messages(self) -> None:
        stream, reader = self.pipe()
        output = Output.for_args(args_for("-q"), stream, self.stdout, clock=self.clock)
        self.transfer(output, seconds=30)
        output.message("3 files skipped", level="warning")
        output.result({}, text="done")
        self.assertEqual(drain(reader), "3 files skipped\n")
        self.assertEqual(self.stdout.getvalue(), "done\n")

    def test_progress_bar_off_a_terminal_is_plain(self) -> None:
        stream, reader = self.pipe()
        bar = ProgressBar("adding", 100, stream=stream)
        for done in range(101):
            bar.update(done)
        bar.finish()
        lines = drain(reader).splitlines()
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("adding"))


class JsonTests(OutputTestCase):
    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.getvalue().splitlines()]

    def test_every_line_is_json_and_the_result_is_last(self) -> None:
        stream, reader = self.pipe()
        output = Output.for_args(args_for("--json"), stream, self.stdout, self.clock)
        self.clock.now += 0.5
        output.progress(0, 0, phase="scanning", label="backup", files_done=0)
        self.clock.now += 0.5  # within a second of the last: not shown
        output.progress(0, 0, phase="scanning", files_done=200)
        self.clock.now += 0.5
        output.progress(0, 0, phase="scanning", files_done=500)
        self.transfer(output, seconds=3)
        output.message("skipped /x: FIFO", level="warning")
        output.result({"revision": 4, "committed": True}, ok=True)
        events = self.lines()
        self.assertEqual(drain(reader), "")  # nothing on stderr
        self.assertEqual(
            events[-1], {"type": "result", "ok": True, "revision": 4, "committed": True}
        )
        self.assertEqual(
            events[-2],
            {"type": "message", "level": "warning", "text": "skipped /x: FIFO"},
        )
        progress = [e for e in events if e["type"] == "progress"]
        self.assertEqual(
            set(progress[0]),
            {
                "type",
                "label",
                "key",
                "phase",
                "bytes_done",
                "bytes_total",
                "files_done",
                "files_total",
                "rate_bytes_per_second",
                "eta_seconds",
                "elapsed_seconds",
                "message",
            },
        )
        self.assertEqual([p["phase"] for p in progress[:2]], ["scanning", "scanning"])
        self.assertEqual(progress[1]["files_done"], 500)
        # Phase changes always, otherwise at most one a second: 4 in 3 s.
        reading = [p for p in progress if p["phase"] == "reading"]
        self.assertEqual(len(reading), 4)
        self.assertEqual(reading[-1]["bytes_done"], 3 * MIB)
        self.assertEqual(reading[-1]["rate_bytes_per_second"], float(MIB))
        self.assertEqual(reading[-1]["eta_seconds"], 7.0)
        self.assertIsNone(progress[0]["eta_seconds"])

    def test_streamed_progress_events(self) -> None:
        output = Output(JSON, io.StringIO(), self.stdout, self.clock)
        events = [
            clirpc_pb2.Progress(
                phase="syncing", peer="p1", bytes_done=1, bytes_total=2
            ),
            clirpc_pb2.Progress(phase="done", peer="p1", bytes_done=2, bytes_total=2),
            clirpc_pb2.Progress(phase="failed", peer="p2", message="gone"),
        ]
        seen = report_progress_events(iter(events), output, "replicating")
        self.assertEqual(seen, events)
        lines = self.lines()
        self.assertEqual(
            [(e["key"], e["phase"]) for e in lines],
            [("p1", "syncing"), ("p1", "done"), ("p2", "failed")],
        )
        self.assertEqual(lines[2]["message"], "gone")


class FormatTests(SynchronousTestCase):
    def test_durations(self) -> None:
        self.assertEqual(format_duration(6), "0:06")
        self.assertEqual(format_duration(75), "1:15")
        self.assertEqual(format_duration(3725), "1:02:05")

    def test_unknown_mode(self) -> None:
        with self.assertRaises(ValueError):
            Output("fancy", io.StringIO(), io.StringIO())
