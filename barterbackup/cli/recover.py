"""``barterbackup recover``: our content back from the replicas after a loss.

Unlocks the node first if it is locked (creating the node directory when
it is empty: the same password is all a recovery needs), then starts the
recovery, or follows the one running (an ``unlock --create`` on an empty
node starts one by itself), and shows its progress with ``cli.output``:
one line on a terminal, JSON lines with ``--json``. See docs/recovery.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import CliError, rpc, stub
from barterbackup.cli.output import JSON, Output, add_output_arguments
from barterbackup.cli.unlock import read_password

DROPPED = "dropped: "


def register(commands: argparse._SubParsersAction) -> None:
    recover = commands.add_parser(
        "recover",
        help="recover our content from the replicas (after losing this machine)",
        description=(
            "Unlock (or create, on an empty node directory) the node with the "
            "main password, then fetch the newest revision our replicas hold "
            "back from all of them at once and make it current. No address "
            "is needed: the replicas reach us, and the first one tells us "
            "the others."
        ),
    )
    recover.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from the first line of FILE ('-' for stdin); "
        "only asked when the node is locked",
    )
    recover.add_argument(
        "--from",
        dest="peers",
        action="append",
        default=[],
        metavar="ONION",
        help="ask this peer first (repeatable); default: the peers that reach us",
    )
    recover.add_argument(
        "--revision",
        type=int,
        default=0,
        metavar="N",
        help="the revision to recover (default: the newest held completely)",
    )
    add_output_arguments(recover)
    recover.set_defaults(run=run_recover)


def run_recover(args: argparse.Namespace) -> int:
    if args.revision < 0:
        raise CliError("--revision is a revision number (1 or more)")
    client = stub(args)
    output = Output.for_args(args)
    status = rpc(lambda: client.GetStatus(clirpc_pb2.GetStatusRequest()))
    if not status.unlocked:
        password = read_password(args.password_file, confirm=True)
        unlocked = rpc(
            lambda: client.Unlock(
                clirpc_pb2.UnlockRequest(password=password, create_if_missing=True)
            )
        )
        verb = "created and unlocked" if unlocked.created else "unlocked"
        output.message(f"node {verb}: {unlocked.onion_address}")
    request = clirpc_pb2.RecoverContentRequest(peers=args.peers, revision=args.revision)
    final = rpc(lambda: follow(client.RecoverContent(request), output))
    if final is None:
        raise CliError("the daemon ended the recovery without saying how")
    if final.phase == "failed":
        output.result({"phase": final.phase, "message": final.message}, ok=False)
        raise CliError(f"recovery failed: {final.message}")
    output.result(
        {"phase": final.phase, "revision": final.revision, "message": final.message},
        text=final.message or f"revision {final.revision} recovered",
    )
    return 0


def follow(
    responses: Iterable[clirpc_pb2.RecoverContentResponse], output: Output
) -> clirpc_pb2.Progress | None:
    """Show a RecoverContent stream; the last overall event (done, failed)."""
    final = None
    for response in responses:
        event = response.progress
        if event.peer:
            if event.message.startswith(DROPPED):
                output.message(f"{event.peer}: {event.message}", "warning")
            elif output.mode == JSON:
                # Per replica: JSON only (the line shows the whole).
                output.progress(
                    event.bytes_done,
                    event.bytes_total,
                    phase=event.phase,
                    label="recovering",
                    key=event.peer,
                )
            continue
        output.progress(
            event.bytes_done,
            event.bytes_total,
            phase=event.phase,
            label="recovering",
            message=event.message,
        )
        if event.phase in ("done", "failed"):
            final = event
    return final
