"""The package's dependencies point one way (docs/architecture.md).

Every module's imports are read from its source (AST: imports inside
functions and under ``TYPE_CHECKING`` count too) and checked against the
layers below, lowest first. A module may import from a lower layer or
from its own component; never upwards, never sideways into another
component of its layer, and never in a cycle.
"""

from __future__ import annotations

import ast
import configparser
from collections.abc import Iterable, Mapping
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "barterbackup"

# Components, lowest layer first; components of one layer are independent.
LAYERS: list[list[str]] = [
    [
        "barterbackup",
        "barterbackup._proto",
        "barterbackup.logs",
        "barterbackup.paths",
        "barterbackup.errors",
        "barterbackup.progress",
        "barterbackup.protowire",
        "barterbackup.allocator",
        "barterbackup.untrusted",
    ],
    ["barterbackup.keys"],
    ["barterbackup.tree"],
    ["barterbackup.revisions"],
    ["barterbackup.store"],
    ["barterbackup.content"],
    ["barterbackup.bbrpc", "barterbackup.transport"],
    ["barterbackup.sync"],
    ["barterbackup.peers"],
    [
        "barterbackup.contracts",
        "barterbackup.recovery",
        "barterbackup.chat",
        "barterbackup.sources",
    ],
    ["barterbackup.node"],
    ["barterbackup.rpc"],
    ["barterbackup.cli"],
    ["barterbackup.tap", "barterbackup.testing"],
    ["barterbackup.demo"],
]

# Narrower than the layers: what a component may import at all (besides
# itself and the foundation layer).
ONLY: dict[str, set[str]] = {
    # The wire library knows nothing of stores, content or the node.
    "barterbackup.bbrpc": {"barterbackup.keys"},
    "barterbackup.transport": {"barterbackup.keys", "barterbackup.store"},
    # The CLI talks to the daemon through gRPC only.
    "barterbackup.cli": {"barterbackup.rpc.client"},
}
# What the CLI may take from the foundation layer.
CLI_FOUNDATION = {"barterbackup", "barterbackup._proto", "barterbackup.paths"}


def component_of(module: str) -> str:
    """The longest component name that ``module`` is or lies in."""
    best = ""
    for layer in LAYERS:
        for component in layer:
            inside = module == component or module.startswith(component + ".")
            if inside and len(component) > len(best):
                best = component
    if not best:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return best


def rank_of(component: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if component in layer:
            return rank
    raise AssertionError(f"{component} is in no layer")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_sources() -> dict[str, str]:
    return {
        module_name(path): path.read_text()
        for path in PACKAGE.rglob("*.py")
        if "_proto" not in path.parts
    }


def imports_of(module: str, source: str, known: Iterable[str]) -> set[str]:
    """The barterbackup modules ``module`` imports, wherever in the file."""
    known = set(known)
    package = module if source_is_package(module, known) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import name" imports pkg.name when that is a module.
            names = [
                f"{base}.{alias.name}"
                if f"{base}.{alias.name}" in known
                or f"{base}.{alias.name}".startswith("barterbackup._proto.")
                else base
                for alias in node.names
            ]
        else:
            continue
        found.update(
            n for n in names if n == "barterbackup" or n.startswith("barterbackup.")
        )
    found.discard(module)
    return found


def source_is_package(module: str, known: set[str]) -> bool:
    return any(other.startswith(module + ".") for other in known)


def violations(sources: Mapping[str, str]) -> list[str]:
    """Every import against the layers, and every import cycle."""
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for module, source in sorted(sources.items()):
        imported = imports_of(module, source, sources)
        graph[module] = {m for m in imported if m in sources}
        mine = component_of(module)
        for target in sorted(imported):
            theirs = component_of(target)
            if theirs == mine:
                continue
            why = _refusal(mine, theirs, target)
            if why:
                problems.append(f"{module} imports {target}: {why}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def _refusal(mine: str, theirs: str, target: str) -> str:
    if mine in ONLY:
        allowed = ONLY[mine]
        foundation = CLI_FOUNDATION if mine == "barterbackup.cli" else set(LAYERS[0])
        if theirs in foundation or any(
            target == a or target.startswith(a + ".") for a in allowed
        ):
            return ""
        return f"{mine} may import only {sorted(allowed | foundation)}"
    if rank_of(theirs) < rank_of(mine):
        return ""
    if rank_of(theirs) == rank_of(mine):
        return f"{mine} and {theirs} are independent components of one layer"
    return f"{theirs} is above {mine}"


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (one path per cycle found)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


class LayeringTests(SynchronousTestCase):
    def test_the_package_follows_the_layers(self) -> None:
        self.assertEqual(violations(read_sources()), [])

    def test_a_wrong_import_is_caught(self) -> None:
        sources = read_sources()
        sources["barterbackup.bbrpc.connection"] += (
            "\nif TYPE_CHECKING:\n    from barterbackup.node.facade import Node\n"
        )
        sources["barterbackup.cli.status"] += "\nfrom barterbackup.node import facade\n"
        sources["barterbackup.sync.push"] += "\nimport barterbackup.peers.pool\n"
        # (The upward imports also close cycles, reported on their own.)
        found = [p for p in violations(sources) if not p.startswith("import cycle")]
        self.assertEqual(
            [p.split(":")[0] for p in found],
            [
                "barterbackup.bbrpc.connection imports barterbackup.node.facade",
                "barterbackup.cli.status imports barterbackup.node.facade",
                "barterbackup.sync.push imports barterbackup.peers.pool",
            ],
        )

    def test_a_cycle_is_caught(self) -> None:
        sources = read_sources()
        sources["barterbackup.bbrpc.framing"] += (
            "\ndef late():\n    from barterbackup.bbrpc import connection\n"
        )
        found = violations(sources)
        self.assertEqual(len(found), 1)
        self.assertTrue(found[0].startswith("import cycle: barterbackup.bbrpc"))
        self.assertIn("barterbackup.bbrpc.framing", found[0])

    def test_one_logger(self) -> None:
        """Every module logs through barterbackup.logs (--log-level governs it)."""
        offenders = []
        for module, source in read_sources().items():
            if module == "barterbackup.logs":
                continue
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names]
                    origin = getattr(node, "module", "") or ""
                    if "logging" in names or origin == "logging":
                        offenders.append(f"{module} imports logging")
                    if origin == "twisted.logger" and "Logger" in names:
                        offenders.append(f"{module} makes its own Logger")
        self.assertEqual(offenders, [])

    def test_setup_cfg_lists_every_package(self) -> None:
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        listed = set(config["options"]["packages"].split())
        packages = {
            module_name(path.parent / "__init__.py")
            for path in PACKAGE.rglob("__init__.py")
        }
        self.assertEqual(packages - listed, set())
