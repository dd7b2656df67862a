"""Exclude patterns of a source folder, with the semantics of ``.gitignore``.

The patterns are those of one ``.gitignore`` at the top of the source folder
(gitignore(5)), matched the way git's ``dir.c`` and ``wildmatch.c`` match
them:

* A pattern without a ``/`` (a trailing one aside) matches a file or
  directory name at any depth: ``*.tmp``, ``node_modules/``.
* A pattern with a ``/`` at the start or in the middle is anchored: it
  matches the path relative to the source folder (``/build/``, ``doc/*.pdf``).
* A trailing ``/`` matches directories only.
* ``*`` and ``?`` do not match ``/``; ``[…]`` is a bracket expression (``!``
  or ``^`` negates it, ``[:alpha:]`` style classes work); ``\\`` escapes the
  next character; ``**/`` at the start or between slashes matches any number
  of directories, and ``/**`` at the end everything inside.
* ``!pattern`` re-includes what an earlier pattern excluded; the last
  matching pattern wins. As in git, nothing inside an excluded directory can
  be re-included: the walker never enters it.
* Trailing spaces are dropped unless escaped (``\\ ``).

Two conscious differences from git: matching is on characters, not UTF-8
bytes (``?`` matches one ``é``, git's matches one of its two bytes), and a
pattern git would silently never match (an unterminated ``[``, a trailing
``\\``, an unknown ``[:class:]``) is refused with an error, so a typo does not
quietly back up what the user meant to exclude. ``compile_excludes`` takes
one pattern per entry and refuses blank entries and ``#`` comments (a name
starting with ``#`` is written ``\\#``); ``patterns_from_lines`` reads the
lines of a ``.gitignore`` file, where blank lines and comments are skipped.

Speed: the patterns are compiled into four regular expressions (names and
paths, for files and for directories) whose alternatives are named after the
pattern's index, in reverse order, so one ``fullmatch`` per expression finds
the last matching pattern with no Python loop over the patterns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_PATTERNS = 1000
MAX_PATTERN_LENGTH = 4096

# The bracket classes of wildmatch, with git's ASCII-only ctype (sane_ctype).
_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r",
    "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}


class InvalidPattern(ValueError):
    """An exclude pattern is malformed; the message says what is wrong."""


@dataclass(frozen=True)
class ExcludePattern:
    """One compiled pattern.

    ``text`` is the pattern as given; ``negated`` is true for ``!pattern``;
    ``directory_only`` for a trailing ``/``; ``anchored`` when it matches
    the whole relative path rather than the last name; ``regex`` is the
    translation matched with ``fullmatch``.
    """

    text: str
    negated: bool
    directory_only: bool
    anchored: bool
    regex: str


def _trim_trailing_spaces(text: str) -> str:
    # git's trim_trailing_spaces: only spaces, not tabs, and "\ " is kept.
    last_space = None
    index = 0
    while index < len(text):
        char = text[index]
        if char == " ":
            if last_space is None:
                last_space = index
        elif char == "\\":
            index += 1
            if index >= len(text):
                return text
            last_space = None
        else:
            last_space = None
        index += 1
    return text if last_space is None else text[:last_space]


def compile_pattern(text: str) -> ExcludePattern:
    """Compile one gitignore pattern, or raise InvalidPattern."""
    if not isinstance(text, str):
        raise InvalidPattern("an exclude pattern must be a string")
    if len(text) > MAX_PATTERN_LENGTH:
        raise InvalidPattern(
            f"exclude pattern is longer than {MAX_PATTERN_LENGTH} characters"
        )
    if "\x00" in text or "\n" in text or "\r" in text:
        raise InvalidPattern(f"exclude pattern {text!r} contains a line break or NUL")
    body = _trim_trailing_spaces(text)
    if not body:
        raise InvalidPattern("exclude pattern is empty")
    if body.startswith("#"):
        raise InvalidPattern(
            f"exclude pattern {text!r} starts with '#', which makes it a comment; "
            "write '\\#' for a name that starts with '#'"
        )
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    directory_only = body.endswith("/")
    if directory_only:
        body = body[:-1]
    if not body:
        raise InvalidPattern(f"exclude pattern {text!r} matches nothing")
    anchored = "/" in body
    if anchored and body.startswith("/"):
        body = body[1:]
        if not body:
            raise InvalidPattern(f"exclude pattern {text!r} matches nothing")
    try:
        regex = _translate(body)
    except InvalidPattern as e:
        raise InvalidPattern(f"exclude pattern {text!r}: {e}") from None
    return ExcludePattern(text, negated, directory_only, anchored, regex)


def _translate(pattern: str) -> str:
    """wildmatch (with WM_PATHNAME) as a regular expression."""
    out: list[str] = []
    index = 0
    length = len(pattern)
    while index < length:
        char = pattern[index]
        if char == "\\":
            if index + 1 >= length:
                raise InvalidPattern("it ends with an unescaped backslash")
            out.append(re.escape(pattern[index + 1]))
            index += 2
        elif char == "*":
            end = index
            while end < length and pattern[end] == "*":
                end += 1
            after_slash = index == 0 or pattern[index - 1] == "/"
            before_slash = (
                end == length or pattern[end] == "/" or pattern.startswith("\\/", end)
            )
            if end - index >= 2 and after_slash and before_slash:
                if end == length:
                    out.append(".*")
                elif pattern[end] == "/":
                    out.append("(?:.*/)?")
                    end += 1
                else:
                    # "**\/": wildmatch gives it no zero-directory case.
                    out.append(".*")
            else:
                out.append("[^/]*")
            index = end
        elif char == "?":
            out.append("[^/]")
            index += 1
        elif char == "[":
            fragment, index = _bracket(pattern, index)
            out.append(fragment)
        else:
            out.append(re.escape(char))
            index += 1
    return "".join(out)


def _bracket(pattern: str, start: int) -> tuple[str, int]:
    """The bracket expression at ``start``: (regex, index after its ``]``)."""
    index = start + 1
    length = len(pattern)
    negated = index < length and pattern[index] in "!^"
    if negated:
        index += 1
    items: list[str] = []
    previous: str | None = None
    first = True
    while True:
        if index >= length:
            raise InvalidPattern("a '[' is not closed by ']'")
        char = pattern[index]
        if char == "]" and not first:
            break
        first = False
        if char == "\\":
            index += 1
            if index >= length:
                raise InvalidPattern("a '[' is not closed by ']'")
            previous = pattern[index]
            items.append(re.escape(previous))
        elif (
            char == "-"
            and previous is not None
            and index + 1 < length
            and pattern[index + 1] != "]"
        ):
            index += 1
            last = pattern[index]
            if last == "\\":
                index += 1
                if index >= length:
                    raise InvalidPattern("a '[' is not closed by ']'")
                last = pattern[index]
            # A reversed range matches nothing, as in wildmatch.
            if previous <= last:
                items.append(f"{re.escape(previous)}-{re.escape(last)}")
            previous = None
        elif char == "[" and pattern.startswith(":", index + 1):
            close = pattern.find("]", index + 2)
            if close == -1:
                raise InvalidPattern("a '[' is not closed by ']'")
            if close - (index + 2) - 1 < 0 or pattern[close - 1] != ":":
                # No ":]": the "[" is an ordinary member of the set.
                previous = "["
                items.append("\\[")
            else:
                name = pattern[index + 2 : close - 1]
                if name not in _CLASSES:
                    raise InvalidPattern(f"unknown character class [:{name}:]")
                items.append(_CLASSES[name])
                previous = None
                index = close
        else:
            previous = char
            items.append(re.escape(char))
        index += 1
    members = "".join(items)
    # A bracket expression never matches "/" (WM_PATHNAME).
    if negated:
        return f"[^/{members}]", index + 1
    return f"(?!/)[{members}]", index + 1


def patterns_from_lines(lines: Iterable[str]) -> list[str]:
    """The patterns of a ``.gitignore`` file's lines (blanks and comments out)."""
    patterns = []
    for line in lines:
        line = line.rstrip("\r\n")
        if line.startswith("#") or not _trim_trailing_spaces(line):
            continue
        patterns.append(line)
    return patterns


class Excludes:
    """A compiled list of exclude patterns; ``excluded()`` is the hot path."""

    def __init__(self, patterns: Sequence[ExcludePattern]) -> None:
        self.patterns = tuple(patterns)
        self._negated = tuple(p.negated for p in self.patterns)

        def combined(directory: bool, anchored: bool) -> re.Pattern[str] | None:
            alternatives = [
                f"(?P<p{index}>{pattern.regex})"
                for index, pattern in reversed(list(enumerate(self.patterns)))
                if pattern.anchored == anchored
                and (directory or not pattern.directory_only)
            ]
            return re.compile("|".join(alternatives)) if alternatives else None

        self._file_names = combined(directory=False, anchored=False)
        self._file_paths = combined(directory=False, anchored=True)
        self._dir_names = combined(directory=True, anchored=False)
        self._dir_paths = combined(directory=True, anchored=True)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def excluded(self, path: str, name: str, is_dir: bool) -> bool:
        """Whether the entry at ``path`` (relative, "/"-joined) is excluded.

        ``name`` is the last component of ``path``. Only this entry's own
        patterns are considered: the caller does not ask about what lies in
        an excluded directory.
        """
        if is_dir:
            by_name, by_path = self._dir_names, self._dir_paths
        else:
            by_name, by_path = self._file_names, self._file_paths
        winner = -1
        if by_name is not None:
            match = by_name.fullmatch(name)
            if match is not None:
                winner = int(match.lastgroup[1:])  # type: ignore[index]
        if by_path is not None:
            match = by_path.fullmatch(path)
            if match is not None:
                winner = max(winner, int(match.lastgroup[1:]))  # type: ignore[index]
        return winner >= 0 and not self._negated[winner]


def compile_excludes(patterns: Iterable[str]) -> Excludes:
    """Compile user-given patterns (one per entry), or raise InvalidPattern."""
    compiled = []
    for text in patterns:
        compiled.append(compile_pattern(text))
        if len(compiled) > MAX_PATTERNS:
            raise InvalidPattern(f"more than {MAX_PATTERNS} exclude patterns")
    return Excludes(compiled)


NO_EXCLUDES = Excludes(())
