"""``barterbackup recover``: fetch our newest revision back from peers.

A daemon without the recovery subsystem answers UNIMPLEMENTED, which is
printed as it is.
"""

from __future__ import annotations

import argparse

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import rpc, show_progress_stream, stub


def register(commands: argparse._SubParsersAction) -> None:
    recover = commands.add_parser(
        "recover", help="fetch our newest revision back from peers"
    )
    recover.add_argument("peers", nargs="*", metavar="ONION")
    recover.set_defaults(run=run_recover)


def run_recover(args: argparse.Namespace) -> int:
    client = stub(args)
    request = clirpc_pb2.RecoverContentRequest(peers=args.peers)
    rpc(
        lambda: show_progress_stream(
            (r.progress for r in client.RecoverContent(request)), "recovering"
        )
    )
    return 0
