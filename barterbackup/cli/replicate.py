"""``barterbackup replicate``: sync my contracts now.

Each peer under a contract in force gets our current revision by itself
soon after every commit; ``replicate`` waits until they hold it, showing
progress, and says which did not get it and why.
"""

from __future__ import annotations

import argparse

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import CliError, human_size, rpc, stub
from barterbackup.cli.output import (
    Output,
    add_output_arguments,
    message_fields,
    report_progress_events,
)


def register(commands: argparse._SubParsersAction) -> None:
    replicate = commands.add_parser(
        "replicate",
        help="sync the current revision to the peers under contract now and "
        "wait until they hold it",
    )
    replicate.add_argument(
        "peers",
        nargs="*",
        metavar="ONION",
        help="default: every peer under a contract in force",
    )
    add_output_arguments(replicate)
    replicate.set_defaults(run=run_replicate)


def run_replicate(args: argparse.Namespace) -> int:
    client = stub(args)
    out = Output.for_args(args)
    request = clirpc_pb2.ReplicateContentRequest(onion_addresses=args.peers)
    events = rpc(
        lambda: report_progress_events(
            (r.progress for r in client.ReplicateContent(request)), out, "replicating"
        )
    )
    finals = [e for e in events if e.phase in ("done", "failed")]
    lines = []
    for event in finals:
        if event.phase == "done":
            lines.append(
                f"{event.peer}: holds revision {event.revision} "
                f"({human_size(event.bytes_total)}; {event.message})"
            )
        else:
            lines.append(f"{event.peer}: FAILED: {event.message}")
    failed = any(e.phase == "failed" for e in finals)
    out.result(
        {"peers": [message_fields(e) for e in finals]}, "\n".join(lines), ok=not failed
    )
    if failed:
        raise CliError("some peers under contract do not hold the revision yet")
    return 0
