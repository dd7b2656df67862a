"""``barterbackup check [--read-data] [--repair]``: verify our own store.

Every stored revision's tree nodes and manifest chunks are read and
verified, and every section they name is looked up in the pack index
(``--read-data``: read and hashed). Damage is shown as the files it hits.
``--repair`` fetches damaged or missing blobs back from the peers that keep
our content and checks again. Exit status 1 when damage remains (without
``--repair``: when any is found).
"""

from __future__ import annotations

import argparse

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import CliError, human_size, rpc, stub
from barterbackup.cli.output import Output, add_output_arguments


def register(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check",
        help="verify this node's own content store (and repair it from replicas)",
        description=(
            "Verify every stored revision: tree nodes and manifest chunks are "
            "read and hashed, every section is looked up in the pack index "
            "(with --read-data, read and hashed). Damaged files are named. "
            "--repair fetches what is damaged back from the peers that keep "
            "our content, then checks again."
        ),
    )
    check.add_argument(
        "--read-data",
        action="store_true",
        help="read every byte of every section and check its hash",
    )
    check.add_argument(
        "--repair",
        action="store_true",
        help="fetch damaged or missing blobs back from replicas",
    )
    add_output_arguments(check)
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    client = stub(args)
    out = Output.for_args(args)
    request = clirpc_pb2.CheckContentRequest(
        read_data=args.read_data, repair=args.repair
    )

    def stream() -> clirpc_pb2.CheckContentResult:
        for response in client.CheckContent(request):
            if response.HasField("result"):
                return response.result
            event = response.progress
            out.progress(
                event.bytes_done,
                event.bytes_total,
                phase=event.phase,
                label="check",
                message=event.message,
            )
        raise CliError("the daemon ended the check without a result")

    result = rpc(stream)
    ok = not result.remaining_count and not result.remaining_unlisted
    out.result(result_fields(result, ok), text=result_text(result), ok=ok)
    if not ok:
        raise CliError(
            f"{result.remaining_files_count:,} files are damaged"
            + ("" if result.repair_asked else " (--repair fetches them from replicas)")
        )
    return 0


def _files(problems: list[clirpc_pb2.FileProblem]) -> list[dict[str, object]]:
    return [
        {"revision": p.revision, "name": p.name, "reason": p.reason} for p in problems
    ]


def result_fields(result: clirpc_pb2.CheckContentResult, ok: bool) -> dict[str, object]:
    """The JSON result object's fields."""
    return {
        "revisions": list(result.revisions),
        "read_data": result.read_data,
        "tree_nodes": result.tree_nodes,
        "manifest_chunks": result.manifest_chunks,
        "sections": result.sections,
        "section_bytes": result.section_bytes,
        "bytes_read": result.bytes_read,
        "damaged_count": result.damaged_count,
        "damaged": [
            {
                "revision": b.revision,
                "kind": b.kind,
                "sha256": b.sha256.hex(),
                "problem": b.problem,
            }
            for b in result.damaged
        ],
        "damaged_files": _files(list(result.damaged_files)),
        "damaged_files_count": result.damaged_files_count,
        "unlisted": list(result.unlisted),
        "repair_asked": result.repair_asked,
        "blobs_repaired": result.blobs_repaired,
        "remaining_count": result.remaining_count,
        "remaining_files": _files(list(result.remaining_files)),
        "remaining_files_count": result.remaining_files_count,
        "remaining_unlisted": list(result.remaining_unlisted),
        "notes": list(result.notes),
        "damage_left": not ok,
    }


def _file_lines(problems: list[clirpc_pb2.FileProblem], total: int) -> list[str]:
    lines = [f"  revision {p.revision}: {p.name}: {p.reason}" for p in problems]
    if total > len(problems):
        lines.append(f"  … and {total - len(problems):,} more")
    return lines


def result_text(result: clirpc_pb2.CheckContentResult) -> str:
    """What a person reads: what was checked, what is damaged, what is left."""
    revisions = ", ".join(str(n) for n in result.revisions) or "none"
    checked = (
        f"checked revisions {revisions}: {result.tree_nodes:,} tree nodes, "
        f"{result.manifest_chunks:,} manifest chunks, {result.sections:,} "
        f"sections ({human_size(result.section_bytes)})"
    )
    if result.read_data:
        checked += f", {human_size(result.bytes_read)} read and hashed"
    lines = [checked]
    if not result.damaged_count and not result.unlisted:
        lines.append("no damage found")
        return "\n".join(lines)
    lines.append(
        f"DAMAGED: {result.damaged_count:,} blobs; "
        f"{result.damaged_files_count:,} damaged files:"
    )
    lines += _file_lines(list(result.damaged_files), result.damaged_files_count)
    lines += [f"  {text}" for text in result.unlisted]
    if not result.repair_asked:
        return "\n".join(lines)
    lines.append(f"repaired {result.blobs_repaired:,} blobs from replicas")
    if not result.remaining_count and not result.remaining_unlisted:
        lines.append("no damage left")
    else:
        lines.append(
            f"STILL DAMAGED: {result.remaining_count:,} blobs; "
            f"{result.remaining_files_count:,} files:"
        )
        lines += _file_lines(list(result.remaining_files), result.remaining_files_count)
        lines += [f"  {text}" for text in result.remaining_unlisted]
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)
