"""Check the comment style rules of the seed on every .proto file.

Rules (SEED.md, "Proto style rules"):

* A comment is English sentences: its text starts with a capital letter and
  ends with punctuation. A comment block is the run of ``//`` lines above a
  declaration; blank ``//`` lines separate paragraphs, each checked alone.
* The comment of a field (and of an enum value or oneof) starts with the
  field's name, as in "name is ...".
* Lines are at most 80 columns, with tabs counted as 8.

Usage: ``python tools/lint_proto.py [FILE ...]`` (default: proto/*.proto).
Exit status 1 and one line per problem when anything is off.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_COLUMNS = 80
TAB_WIDTH = 8
ENDING_PUNCTUATION = ".!?:)"
# A field: optional label, a type, a name, "= number".
FIELD = re.compile(
    r"^\s*(?:repeated\s+|optional\s+)?(?:map<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*\d+"
)
ENUM_VALUE = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s*-?\d+")
ONEOF = re.compile(r"^\s*oneof\s+(\w+)\s*\{")
COMMENT = re.compile(r"^\s*//\s?(.*)$")


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _columns(line: str) -> int:
    return len(line.expandtabs(TAB_WIDTH))


def _paragraphs(block: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    paragraphs: list[list[tuple[int, str]]] = [[]]
    for number, text in block:
        if text.strip():
            paragraphs[-1].append((number, text.strip()))
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def _declared_name(line: str) -> str | None:
    for pattern in (ONEOF, FIELD, ENUM_VALUE):
        match = pattern.match(line)
        if match:
            return match.group(1)
    return None


def lint_text(text: str, path: str = "<proto>") -> list[Problem]:
    problems: list[Problem] = []
    block: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if _columns(line) > MAX_COLUMNS:
            problems.append(
                Problem(
                    path,
                    number,
                    f"line is {_columns(line)} columns, "
                    f"more than {MAX_COLUMNS} (tabs count as 8)",
                )
            )
        comment = COMMENT.match(line)
        if comment:
            block.append((number, comment.group(1)))
            continue
        if block:
            problems.extend(_check_block(block, line, path))
            block = []
    if block:
        problems.extend(_check_block(block, "", path))
    return problems


def _check_block(
    block: list[tuple[int, str]], declaration: str, path: str
) -> list[Problem]:
    problems = []
    name = _declared_name(declaration)
    paragraphs = _paragraphs(block)
    for index, paragraph in enumerate(paragraphs):
        first_line, first = paragraph[0]
        last_line, last = paragraph[-1]
        # The one allowed lowercase start: a field comment opening with the
        # field's own name ("name is ...").
        starts_with_name = index == 0 and first.split()[0] == name
        if not (first[0].isupper() or first[0].isdigit() or starts_with_name):
            problems.append(
                Problem(
                    path,
                    first_line,
                    "comment must start with a capital letter",
                )
            )
        if last[-1] not in ENDING_PUNCTUATION:
            problems.append(
                Problem(path, last_line, "comment must end with punctuation")
            )
    if name and paragraphs:
        first_line, first = paragraphs[0][0]
        if first.split()[0] != name:
            problems.append(
                Problem(
                    path,
                    first_line,
                    f"comment of {name!r} must start with its name",
                )
            )
    return problems


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(Path("proto").glob("*.proto"))
    problems = []
    for path in paths:
        problems.extend(lint_text(path.read_text(), str(path)))
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} proto style problem(s)")
        return 1
    print(f"proto style: {len(paths)} file(s) clean")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
