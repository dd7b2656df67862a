"""``barterbackup status``: is my data safe, then the details.

The first line answers the question (``cli.status_line``); ``--check``
prints only that line and exits with ``EXIT_AT_RISK`` when the data is at
risk (under-replicated, a failed check, a failed backup…), for cron jobs
and monitoring.
"""

from __future__ import annotations

import argparse
import time

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.backup import summary
from barterbackup.cli.common import (
    human_size,
    human_time,
    print_json,
    rpc,
    stub,
    to_dict,
)
from barterbackup.cli.schedule import describe as describe_schedule
from barterbackup.cli.status_line import EXIT_AT_RISK, safety_from_status, status_line


def register(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="show the node's state")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--check",
        action="store_true",
        help=f"print the headline only; exit {EXIT_AT_RISK} when the data is at risk",
    )
    status.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    client = stub(args)
    status = rpc(lambda: client.GetStatus(clirpc_pb2.GetStatusRequest()))
    line = status_line(safety_from_status(status), time.time())
    if args.json:
        data = to_dict(status)
        data["headline"] = line.text
        data["at_risk"] = line.at_risk
        print_json(data)
        return EXIT_AT_RISK if args.check and line.at_risk else 0
    print(line.text)
    if args.check:
        return EXIT_AT_RISK if line.at_risk else 0
    print(f"barterbackup {status.version}")
    if not status.unlocked:
        print("state:     locked (run `barterbackup unlock`)")
        return 0
    print("state:     unlocked")
    print(f"onion:     {status.onion_address}")
    revision = f"revision:  {status.revision}"
    if status.revision_time:
        revision += f" (committed {human_time(status.revision_time)})"
    print(revision)
    print(f"files:     {status.file_count}")
    print(f"content:   {human_size(status.content_length)}")
    print(f"transport: {status.transport} {status.peer_endpoint}".rstrip())
    print(f"peers:     {status.peer_network}")
    print(
        f"replicas:  {status.replicas_current} of {status.min_replicas} hold the "
        f"current revision"
        + (f", {status.replicas_older} an older one" if status.replicas_older else "")
    )
    if status.HasField("recovery"):
        print(f"recovery:  {recovery_text(status.recovery)}")
    if status.last_check:
        print(
            f"checks:    {status.checks_passed} passed, {status.checks_failed} "
            f"failed; last {human_time(status.last_check)}"
        )
    print(f"sources:   {status.source_count} folder(s)")
    print(f"schedule:  {describe_schedule(status.schedule, time.time())}")
    if status.HasField("last_backup") and status.last_backup.finished_at:
        run = status.last_backup
        print(
            f"last run:  {human_time(run.finished_at)}, {run.trigger}: {summary(run)}"
        )
    for error in status.errors:
        print(f"problem:   {error}")
    return 0


def recovery_text(progress: clirpc_pb2.Progress) -> str:
    """A recovery in progress, in one line."""
    parts = [progress.phase or "running"]
    if progress.revision:
        parts.append(f"revision {progress.revision}")
    if progress.bytes_total:
        parts.append(
            f"{human_size(progress.bytes_done)} of {human_size(progress.bytes_total)}"
        )
    if progress.bytes_per_second > 0:
        parts.append(f"{human_size(int(progress.bytes_per_second))}/s")
    if progress.eta_seconds > 0:
        parts.append(f"ETA {int(progress.eta_seconds)} s")
    if progress.message:
        parts.append(progress.message)
    return ", ".join(parts) + " (`barterbackup recover` follows it)"
