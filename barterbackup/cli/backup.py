"""``barterbackup backup now``: back up the source folders at once.

Progress goes through ``cli.output`` (one updating line on a terminal, a
line every 10 s otherwise, none with ``--quiet``, JSON lines with
``--json``); the result is the run's outcome. A run already in progress is
not interrupted: this one starts after it (phase "waiting").
"""

from __future__ import annotations

import argparse

import grpc

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import CliError, human_size, rpc_error, stub
from barterbackup.cli.output import Output, add_output_arguments, message_fields

# Skipped entries shown one by one; the count says how many in all.
SHOWN_WARNINGS = 20


def register(commands: argparse._SubParsersAction) -> None:
    backup = commands.add_parser("backup", help="back up the source folders")
    sub = backup.add_subparsers(dest="backup_command", metavar="COMMAND", required=True)
    now = sub.add_parser(
        "now",
        help="back up the source folders now and wait for the outcome",
        description=(
            "Back up every source folder now: unchanged files are not read, "
            "and a run that finds no change commits no revision. Unreadable "
            "files are skipped with a warning; the exit status is 1 only "
            "when the run failed."
        ),
    )
    add_output_arguments(now)
    now.set_defaults(run=run_now)


def summary(info: clirpc_pb2.BackupRunInfo) -> str:
    """The outcome in one line (as `status` shows the last run)."""
    if info.error:
        return f"backup failed: {info.error}"
    if info.committed:
        text = (
            f"revision {info.revision}: {info.files:,} files, "
            f"{human_size(info.bytes)}; {human_size(info.read_bytes)} read, "
            f"{human_size(info.new_bytes)} new"
        )
    else:
        text = f"no changes; revision {info.revision} kept"
    if info.warning_count:
        text += f"; {info.warning_count:,} skipped"
    if info.unavailable_sources:
        text += f"; could not read {', '.join(info.unavailable_sources)}"
    return text


def run_now(args: argparse.Namespace) -> int:
    client = stub(args)
    out = Output.for_args(args)
    result: clirpc_pb2.BackupRunInfo | None = None
    try:
        for response in client.BackupNow(clirpc_pb2.BackupNowRequest()):
            if response.HasField("result"):
                result = response.result
                break
            event = response.progress
            out.progress(
                event.bytes_done,
                event.bytes_total,
                phase=event.phase,
                label="backup",
                files_done=event.files_done,
                files_total=event.files_total,
                message=event.message,
            )
    except grpc.RpcError as error:
        out.finish()
        raise rpc_error(error) from None
    out.finish()
    if result is None:
        raise CliError("the daemon ended the backup without an outcome")
    for warning in result.warnings[:SHOWN_WARNINGS]:
        out.message(f"skipped {warning.path}: {warning.reason}", level="warning")
    if result.warning_count > SHOWN_WARNINGS:
        out.message(
            f"… {result.warning_count - SHOWN_WARNINGS:,} more skipped",
            level="warning",
        )
    ok = not result.error
    out.result(message_fields(result), summary(result), ok=ok)
    return 0 if ok else 1
