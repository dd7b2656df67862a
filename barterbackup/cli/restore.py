"""``barterbackup restore DIR [NAME…]``: write a revision's files to disk.

The daemon writes the files itself (it runs as you, on this machine), so
DIR is sent as an absolute path and no file byte crosses the socket. Every
byte is verified before it is written; existing files are kept unless
``--overwrite``; a damaged file fails alone and is named. Exit status 1 when
any file could not be restored or a NAME matched nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import CliError, human_size, rpc, stub
from barterbackup.cli.output import Output, add_output_arguments


def register(commands: argparse._SubParsersAction) -> None:
    restore = commands.add_parser(
        "restore",
        help="write the current (or a stored) revision's files under a directory",
        description=(
            "Write files of the current revision (or of --revision N, if this "
            "node still stores it) under DIR, creating it if needed. NAMEs "
            "select files or directories of the file set (default: every "
            "file). Files that exist in DIR are kept unless --overwrite; "
            "symbolic links inside DIR are never followed. Modes (without "
            "setuid/setgid) and modification times are restored."
        ),
    )
    restore.add_argument("directory", metavar="DIR")
    restore.add_argument("names", nargs="*", metavar="NAME")
    restore.add_argument(
        "--revision",
        type=int,
        default=0,
        metavar="N",
        help="a stored revision (default: the current one)",
    )
    restore.add_argument(
        "--overwrite", action="store_true", help="replace files that exist in DIR"
    )
    add_output_arguments(restore)
    restore.set_defaults(run=run_restore)


def run_restore(args: argparse.Namespace) -> int:
    if args.revision < 0:
        raise CliError("--revision is a revision number (0: the current one)", 2)
    client = stub(args)
    out = Output.for_args(args)
    request = clirpc_pb2.RestoreFilesRequest(
        # The daemon's working directory is not ours: send an absolute path
        # (not resolved: a link the user names is theirs to choose).
        directory=str(Path(args.directory).expanduser().absolute()),
        names=args.names,
        revision=args.revision,
        overwrite=args.overwrite,
    )

    def stream() -> clirpc_pb2.RestoreResult:
        for response in client.RestoreFiles(request):
            if response.HasField("result"):
                return response.result
            event = response.progress
            out.progress(
                event.bytes_done,
                event.bytes_total,
                phase=event.phase,
                label="restore",
                files_done=event.files_done,
                files_total=event.files_total,
                message=event.message,
            )
        raise CliError("the daemon ended the restore without a result")

    result = rpc(stream)
    ok = not result.failed_count and not result.not_found
    out.result(result_fields(result), text=result_text(result), ok=ok)
    if not ok:
        problems = []
        if result.failed_count:
            problems.append(f"{result.failed_count} files could not be restored")
        if result.not_found:
            problems.append(f"{len(result.not_found)} names matched no file")
        raise CliError("; ".join(problems))
    return 0


def result_fields(result: clirpc_pb2.RestoreResult) -> dict[str, object]:
    """The JSON result object's fields."""
    return {
        "revision": result.revision,
        "directory": result.directory,
        "files_restored": result.files_restored,
        "bytes_restored": result.bytes_restored,
        "kept": list(result.kept),
        "kept_count": result.kept_count,
        "failed": [{"name": f.name, "reason": f.reason} for f in result.failed],
        "failed_count": result.failed_count,
        "not_found": list(result.not_found),
    }


def result_text(result: clirpc_pb2.RestoreResult) -> str:
    """What a person reads: what was written, kept and not restored."""
    lines = [
        f"restored {result.files_restored:,} files "
        f"({human_size(result.bytes_restored)}) of revision {result.revision} "
        f"into {result.directory}"
    ]
    if result.kept_count:
        lines.append(
            f"kept {result.kept_count:,} existing files (--overwrite replaces them):"
        )
        lines += [f"  kept: {name}" for name in result.kept]
        if result.kept_count > len(result.kept):
            lines.append(f"  … and {result.kept_count - len(result.kept):,} more")
    if result.failed_count:
        lines.append(f"{result.failed_count:,} files could not be restored:")
        lines += [f"  FAILED: {f.name}: {f.reason}" for f in result.failed]
        if result.failed_count > len(result.failed):
            lines.append(f"  … and {result.failed_count - len(result.failed):,} more")
    for name in result.not_found:
        lines.append(f"not in revision {result.revision}: {name}")
    return "\n".join(lines)
