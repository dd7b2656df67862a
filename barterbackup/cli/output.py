"""How every long CLI operation reports progress and its result.

One ``Output`` per command run, in one of four modes:

``terminal`` (stderr is a terminal)
    One line on stderr redrawn in place, at most 10 times a second: label,
    phase, bytes done of total, percentage, rate, ETA (and files, and the
    event's detail). ``finish()`` draws it a last time and ends the line.
``plain`` (stderr is not a terminal: logs, cron, pipes)
    At most one progress line every 10 s on stderr, the first at once;
    never redrawn, so a log holds a few lines, not one per MiB.
``quiet`` (``--quiet``)
    No progress at all. Messages (warnings) and results are still printed.
``json`` (``--json``)
    JSON lines on stdout, one object per line, nothing else on stdout:

    * progress, at most one per second per key plus every change of phase::

        {"type": "progress", "label": "backup", "key": "", "phase": "reading",
         "bytes_done": 1048576, "bytes_total": 4194304, "files_done": 10,
         "files_total": 0, "rate_bytes_per_second": 524288.0,
         "eta_seconds": 6.0, "elapsed_seconds": 2.0, "message": ""}

      (``*_total`` 0: not known; ``eta_seconds`` null: not known yet);
    * a message: ``{"type": "message", "level": "warning", "text": "..."}``;
    * last, the command's result: ``{"type": "result", "ok": true, ...}``
      with the command's own fields.

The clock (``time.monotonic`` by default) and streams are injected, so tests
drive a pty, a pipe and ``--json`` with no sleeping.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from google.protobuf.message import Message

from barterbackup._proto import clirpc_pb2

TERMINAL = "terminal"
PLAIN = "plain"
QUIET = "quiet"
JSON = "json"
MODES = (TERMINAL, PLAIN, QUIET, JSON)

TERMINAL_REDRAW_SECONDS = 0.1
PLAIN_LINE_SECONDS = 10.0
JSON_PROGRESS_SECONDS = 1.0
# The rate is measured over the last few seconds, so the ETA follows a
# change of speed instead of averaging over the whole run.
RATE_WINDOW_SECONDS = 10.0
CLEAR_TO_END = "\x1b[K"


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Give a command the shared ``--json`` and ``--quiet`` options."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="JSON lines on stdout: progress events, then a result object",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def format_bytes(n: float) -> str:
    """1536 → ``"1.5 KiB"`` (the units of ``barterbackup.cli.common``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if round(value, 1) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """75 → ``"1:15"``, 3725 → ``"1:02:05"``."""
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class _Track:
    """The state of one key's progress (one peer, or the whole operation)."""

    phase: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    message: str = ""
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    last_json: float | None = None

    def sample(self, now: float) -> None:
        self.samples.append((now, self.bytes_done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_SECONDS:
            self.samples.popleft()

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


class Output:
    """Progress, messages and the result of one command (see module doc)."""

    def __init__(
        self,
        mode: str,
        stderr: TextIO,
        stdout: TextIO,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown output mode {mode!r}")
        self.mode = mode
        self._err = stderr
        self._out = stdout
        self._clock = clock
        self._width = width
        self._started = clock()
        self._label = ""
        self._tracks: dict[str, _Track] = {}
        self._last_draw: float | None = None
        self._line_shown = False

    @classmethod
    def for_args(
        cls,
        args: argparse.Namespace,
        stderr: TextIO | None = None,
        stdout: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Output:
        """The mode a command's ``--json``/``--quiet`` and stderr ask for."""
        err = stderr or sys.stderr
        if getattr(args, "json", False):
            mode = JSON
        elif getattr(args, "quiet", False):
            mode = QUIET
        else:
            mode = TERMINAL if _is_terminal(err) else PLAIN
        return cls(mode, err, stdout or sys.stdout, clock)

    # Progress.

    def progress(
        self,
        bytes_done: int = 0,
        bytes_total: int = 0,
        *,
        phase: str = "",
        label: str = "",
        key: str = "",
        files_done: int = 0,
        files_total: int = 0,
        message: str = "",
    ) -> None:
        """One progress event; ``key`` separates concurrent parts (peers)."""
        now = self._clock()
        if label:
            self._label = label
        track = self._tracks.setdefault(key, _Track())
        phase_changed = phase != track.phase
        if phase_changed:
            track.samples.clear()  # bytes count per phase: a new rate
        track.phase = phase
        track.bytes_done, track.bytes_total = bytes_done, bytes_total
        track.files_done, track.files_total = files_done, files_total
        track.message = message
        track.sample(now)
        if self.mode == TERMINAL:
            last = self._last_draw
            if last is None or now - last >= TERMINAL_REDRAW_SECONDS or phase_changed:
                self._draw(now)
        elif self.mode == PLAIN:
            last = self._last_draw
            if last is None or now - last >= PLAIN_LINE_SECONDS:
                self._last_draw = now
                self._err.write(self._line(now) + "\n")
                self._err.flush()
        elif self.mode == JSON:
            if (
                phase_changed
                or track.last_json is None
                or now - track.last_json >= JSON_PROGRESS_SECONDS
            ):
                track.last_json = now
                self._json(self._event(key, track, now))

    def _event(self, key: str, track: _Track, now: float) -> dict[str, Any]:
        rate = track.rate()
        eta = None
        if rate > 0 and track.bytes_total:
            eta = max(0.0, (track.bytes_total - track.bytes_done) / rate)
        return {
            "type": "progress",
            "label": self._label,
            "key": key,
            "phase": track.phase,
            "bytes_done": track.bytes_done,
            "bytes_total": track.bytes_total,
            "files_done": track.files_done,
            "files_total": track.files_total,
            "rate_bytes_per_second": round(rate, 1),
            "eta_seconds": None if eta is None else round(eta, 1),
            "elapsed_seconds": round(now - self._started, 1),
            "message": track.message,
        }

    def _line(self, now: float) -> str:
        """The progress text: every key summed, for one line."""
        tracks = list(self._tracks.values())
        done = sum(t.bytes_done for t in tracks)
        total = sum(t.bytes_total for t in tracks)
        files = sum(t.files_done for t in tracks)
        files_total = sum(t.files_total for t in tracks)
        rate = sum(t.rate() for t in tracks)
        if len(tracks) == 1:
            (key,) = self._tracks
            head, phase = (
                " ".join(filter(None, [self._label, key[:16]])),
                tracks[0].phase,
            )
        else:
            phases = sorted({t.phase for t in tracks if t.phase})
            head = f"{self._label} ({len(tracks)})".lstrip()
            phase = ", ".join(phases)
        if phase:
            head = f"{head}: {phase}" if head else phase
        parts = [head] if head else []
        if total:
            parts.append(
                f"{format_bytes(done)} / {format_bytes(total)} "
                f"({min(done / total, 1.0) * 100:.0f}%)"
            )
        elif done:
            parts.append(format_bytes(done))
        if files or files_total:
            parts.append(
                f"{files:,} / {files_total:,} files"
                if files_total
                else f"{files:,} files"
            )
        if rate > 0:
            parts.append(f"{format_bytes(rate)}/s")
            if total and done < total:
                parts.append(f"ETA {format_duration((total - done) / rate)}")
        messages = [t.message for t in tracks if t.message]
        if len(tracks) == 1 and messages:
            parts.append(messages[0])
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        width = self._width or _terminal_width(self._err)
        text = self._line(now)[: max(width - 1, 10)]
        self._err.write(f"\r{text}{CLEAR_TO_END}")
        self._err.flush()
        self._line_shown = True

    def _clear_line(self) -> None:
        if self._line_shown:
            self._err.write(f"\r{CLEAR_TO_END}")
            self._line_shown = False

    # Messages and the result.

    def message(self, text: str, level: str = "info") -> None:
        """A line of its own (a warning, one peer's outcome): always shown."""
        if self.mode == JSON:
            self._json({"type": "message", "level": level, "text": text})
            return
        self._clear_line()
        self._err.write(f"{text}\n")
        if self.mode == TERMINAL and self._tracks:
            self._draw(self._clock())
        else:
            self._err.flush()

    def finish(self) -> None:
        """End the progress display (the terminal line gets its last state)."""
        if self.mode == TERMINAL and self._tracks:
            self._draw(self._clock())
            self._err.write("\n")
            self._err.flush()
            self._line_shown = False

    def result(self, fields: dict[str, Any], text: str = "", ok: bool = True) -> None:
        """The command's outcome: a JSON object, or ``text`` on stdout."""
        self.finish()
        if self.mode == JSON:
            self._json({"type": "result", "ok": ok, **fields})
        elif text:
            self._out.write(text.rstrip("\n") + "\n")
            self._out.flush()

    def _json(self, value: dict[str, Any]) -> None:
        self._out.write(json.dumps(value, sort_keys=True) + "\n")
        self._out.flush()


def message_fields(message: Message) -> dict[str, Any]:
    """A protobuf message as a JSON-ready dict: every field, by its proto
    name, 64-bit integers as numbers (``MessageToDict`` writes them as
    strings), bytes as hex."""
    fields: dict[str, Any] = {}
    for descriptor in message.DESCRIPTOR.fields:
        value = getattr(message, descriptor.name)
        if descriptor.type == descriptor.TYPE_MESSAGE:
            if _is_repeated(descriptor):
                fields[descriptor.name] = [message_fields(item) for item in value]
            elif message.HasField(descriptor.name):
                fields[descriptor.name] = message_fields(value)
            else:
                fields[descriptor.name] = None
        elif descriptor.type == descriptor.TYPE_BYTES:
            fields[descriptor.name] = (
                [bytes(v).hex() for v in value]
                if _is_repeated(descriptor)
                else value.hex()
            )
        else:
            fields[descriptor.name] = list(value) if _is_repeated(descriptor) else value
    return fields


def _is_repeated(descriptor: Any) -> bool:
    return bool(descriptor.is_repeated)


def _terminal_width(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80
    return columns if columns > 0 else 80  # a pty nobody sized says 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def report_progress_events(
    events: Iterable[clirpc_pb2.Progress], output: Output, label: str
) -> list[clirpc_pb2.Progress]:
    """Show streamed ``Progress`` events, one key per peer; return them all."""
    seen = []
    for event in events:
        seen.append(event)
        output.progress(
            event.bytes_done,
            event.bytes_total,
            phase=event.phase,
            label=label,
            key=event.peer,
            files_done=event.files_done,
            files_total=event.files_total,
            message=event.message,
        )
    output.finish()
    return seen
