"""Write the contract machine's state diagram into docs/contracts.md.

The diagram is generated from the machine's own transitions
(``ContractMachine.__automat_automaton__``), so it cannot drift from the
code: ``--check`` (run by tests/test_contract_diagram.py) exits non-zero
when the committed block differs from what the code gives.

The block holds a Mermaid ``stateDiagram-v2`` (events that change nothing
and the bookkeeping inputs every state takes are left out of the picture)
and a table of every transition with the behaviour it runs.

Usage: ``python tools/contract_diagram.py [--check]``.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "contracts.md"
BEGIN = "<!-- contract-diagram:begin (tools/contract_diagram.py writes this) -->"
END = "<!-- contract-diagram:end -->"
# Taken by every state; shown in a sentence rather than on every node.
BOOKKEEPING = ("_entered", "snapshot", "restarted")
STATE_ORDER = ("proposed", "syncing", "active", "suspect", "broken", "ending", "ended")
IGNORED = "returns(None)"


def _machine_module() -> ModuleType:
    sys.path.insert(0, str(ROOT))
    from barterbackup.contracts import machine

    return machine


def _feeds(function: Callable[..., object], module: ModuleType) -> set[str]:
    """The private inputs a behaviour may give the machine.

    Read from its source and from the module's helpers it calls, so an
    arrow can name the events that lead along it.
    """
    seen: set[str] = set()
    found: set[str] = set()
    pending = [function]
    while pending:
        current = pending.pop()
        if current.__name__ in seen:
            continue
        seen.add(current.__name__)
        source = inspect.getsource(current)
        found |= set(re.findall(r"inputs\.(_\w+)\(", source)) - {"_entered"}
        for name in re.findall(r"\b(_\w+)\(", source):
            helper = getattr(module, name, None)
            if inspect.isfunction(helper) and helper.__module__ == module.__name__:
                pending.append(helper)
    return found


def _transitions() -> list[tuple[str, str, str, list[str], set[str]]]:
    module = _machine_module()
    automaton = module.ContractMachine.__automat_automaton__
    rows = []
    for old, symbol, new, outputs in automaton.allTransitions():
        methods = [o for o in outputs if not o.name.startswith("data:")]
        work = [o.name for o in methods]
        feeds: set[str] = set()
        for output in methods:
            if work != [IGNORED]:
                feeds |= _feeds(output.method, module)
        rows.append((old.name, symbol, new.name, work, feeds))
    order = {name: i for i, name in enumerate(STATE_ORDER)}
    rows.sort(key=lambda r: (order[r[0]], r[1].startswith("_"), r[1]))
    return rows


def render() -> str:
    """The generated block, markers included."""
    rows = _transitions()
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for old, symbol, new, work, feeds in rows:
        if symbol in BOOKKEEPING or work == [IGNORED]:
            continue
        if symbol.startswith("_"):
            # Name the events whose behaviour decides to go this way.
            causes = sorted(s for o, s, _, _, f in rows if o == old and symbol in f)
            label = f"{', '.join(causes)} ({symbol})" if causes else symbol
            edges[(old, new)].append(label)
        elif not feeds:
            edges[(old, new)].append(symbol)
    lines = [BEGIN, "", "```mermaid", "stateDiagram-v2", "    [*] --> proposed"]
    for (old, new), labels in edges.items():
        lines.append(f"    {old} --> {new}: {'; '.join(labels)}")
    lines += ["    ended --> [*]", "```", ""]
    lines.append(
        "An arrow names the events that lead along it; where the way depends "
        "on the state's data (a count, the audit score) the behaviour decides "
        "and gives the machine the follow-up input in parentheses (inputs "
        "starting with `_` are such follow-ups), and the same event may also "
        "leave the state as it is. Every state also takes "
        f"{', '.join(f'`{b}`' for b in BOOKKEEPING)} (save the record and set "
        "the alarm; return the record; resume work after a restart), left out "
        "of the picture; so are events a state ignores (*ignored* below)."
    )
    lines += [
        "",
        "| state | input | next state | behaviour | may give |",
        "|---|---|---|---|---|",
    ]
    for old, symbol, new, work, feeds in rows:
        if symbol in BOOKKEEPING:
            continue
        does = "*ignored*" if work == [IGNORED] else ", ".join(f"`{w}`" for w in work)
        target = "(same)" if new == old else new
        gives = ", ".join(f"`{f}`" for f in sorted(feeds))
        lines.append(f"| {old} | `{symbol}` | {target} | {does} | {gives} |")
    lines += ["", END]
    return "\n".join(lines)


def updated(text: str) -> str:
    """``text`` with the block between the markers replaced."""
    start = text.index(BEGIN)
    end = text.index(END) + len(END)
    return text[:start] + render() + text[end:]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print(
                f"{DOC.relative_to(ROOT)}: the state diagram is stale; run "
                "python tools/contract_diagram.py"
            )
            return 1
        print("contract diagram matches the machine")
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
