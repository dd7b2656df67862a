"""``barterbackup replicate``: sync my contracts now.

Each peer under a contract in force gets our current revision by itself
soon after every commit; ``replicate`` waits until they hold it, showing
progress, and says which did not get it and why.
"""

from __future__ import annotations

import argparse

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import (
    CliError,
    human_size,
    print_json,
    rpc,
    show_progress_stream,
    stub,
    to_dict,
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
    replicate.add_argument("--json", action="store_true", help="print events as JSON")
    replicate.set_defaults(run=run_replicate)


def run_replicate(args: argparse.Namespace) -> int:
    client = stub(args)
    request = clirpc_pb2.ReplicateContentRequest(onion_addresses=args.peers)
    events = rpc(
        lambda: show_progress_stream(
            (r.progress for r in client.ReplicateContent(request)),
            "replicating",
            quiet_json=args.json,
        )
    )
    if args.json:
        print_json([to_dict(e) for e in events])
    finals = [e for e in events if e.phase in ("done", "failed")]
    for event in finals if not args.json else []:
        if event.phase == "done":
            print(
                f"{event.peer}: holds revision {event.revision} "
                f"({human_size(event.bytes_total)}; {event.message})"
            )
        else:
            print(f"{event.peer}: FAILED: {event.message}")
    if any(e.phase == "failed" for e in finals):
        raise CliError("some peers under contract do not hold the revision yet")
    return 0
