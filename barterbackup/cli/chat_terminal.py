"""The interactive chat screen: what arrives is printed above the line being typed.

The bottom of the terminal holds the progress lines of running fetches (if
any) and the prompt with what the user has typed so far (readline's line
buffer). When something arrives, the screen moves to the top of that
bottom area, clears it, prints the new lines, and draws the area again:
progress lines, then the prompt and the buffer, so typing goes on where it
was. One lock keeps the event thread and the prompt from interleaving.

Progress lines are drawn by ``cli/output.py`` (the one progress reporter):
each fetch gets an ``Output`` in terminal mode whose "stderr" is a
``ProgressLine`` of this screen, so the text (rate, ETA, …) is the same as
every other command's.
"""

from __future__ import annotations

import shutil
import sys
import threading
from typing import TextIO

from barterbackup.cli import output

try:
    import readline
except ImportError:  # pragma: no cover - every Linux Python has it
    readline = None  # type: ignore[assignment]

CLEAR_LINE = "\r" + output.CLEAR_TO_END
UP_ONE = "\x1b[1A"


class Screen:
    """Lines above the prompt, progress lines between them and the prompt."""

    def __init__(self, prompt: str, stream: TextIO | None = None) -> None:
        self.prompt = prompt
        self._out = stream or sys.stdout
        self._lock = threading.Lock()
        self._progress: dict[str, str] = {}
        # How many progress lines are on the screen above the prompt.
        self._shown = 0
        # _reading: readline shows the prompt and waits for input.
        self._reading = False
        self._prompt_pending = False

    @property
    def width(self) -> int:
        return max(shutil.get_terminal_size().columns, 20)

    def show(self, lines: list[str]) -> None:
        """Print ``lines`` above the progress lines and the prompt."""
        with self._lock:
            self._redraw(lines)

    def set_progress(self, key: str, text: str | None) -> None:
        """Draw (or with None remove) the progress line ``key``."""
        with self._lock:
            if text is None:
                self._progress.pop(key, None)
            else:
                self._progress[key] = text[: self.width - 1]
            self._redraw([])

    def _redraw(self, lines: list[str]) -> None:
        parts = [CLEAR_LINE]
        parts += [UP_ONE + CLEAR_LINE] * self._shown
        parts += [line + "\n" for line in lines]
        parts += [text + "\n" for text in self._progress.values()]
        self._shown = len(self._progress)
        if self._reading:
            buffer = readline.get_line_buffer() if readline is not None else ""
            parts.append(self.prompt + buffer)
        self._out.write("".join(parts))
        self._out.flush()

    def read_line(self) -> str:
        """One line from the user (EOFError on Ctrl-D).

        The screen stays locked until readline has drawn the prompt (its
        pre-input hook), so a line arriving meanwhile cannot split it.
        """
        use_hook = readline is not None
        if use_hook:
            self._lock.acquire()
            self._prompt_pending = True
            readline.set_pre_input_hook(self._prompt_drawn)
        try:
            line = input(self.prompt)
        finally:
            if use_hook:
                readline.set_pre_input_hook(None)
                if self._prompt_pending:
                    self._prompt_pending = False
                    self._lock.release()
            with self._lock:
                self._reading = False
        self.typed(line)
        return line

    def _prompt_drawn(self) -> None:
        if self._prompt_pending:
            self._prompt_pending = False
            self._reading = True
            self._lock.release()

    def typed(self, line: str) -> None:
        """The user entered ``line``: move the progress lines below it."""
        with self._lock:
            if not self._shown:
                return
            rows = -(-len(self.prompt + line) // self.width) or 1
            parts = [UP_ONE + CLEAR_LINE] * (rows + self._shown)
            parts.append(self.prompt + line + "\n")
            parts += [text + "\n" for text in self._progress.values()]
            self._shown = len(self._progress)
            self._out.write("".join(parts))
            self._out.flush()

    def progress_stream(self, key: str) -> ProgressLine:
        return ProgressLine(self, key)


class ProgressLine:
    """A text stream for ``output.Output`` that draws into one screen line.

    ``Output`` in terminal mode writes ``\\r`` + text + clear-to-end for each
    redraw and ``\\n`` when it finishes; the last state then becomes a line
    of its own.
    """

    def __init__(self, screen: Screen, key: str) -> None:
        self._screen = screen
        self._key = key
        self._text = ""

    def write(self, data: str) -> int:
        if data == "\n":
            finished = self._text
            self._screen.set_progress(self._key, None)
            if finished:
                self._screen.show([finished])
        else:
            self._text = data.lstrip("\r").replace(output.CLEAR_TO_END, "")
            self._screen.set_progress(self._key, self._text)
        return len(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True
