"""``barterbackup status``."""

from __future__ import annotations

import argparse

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import human_size, print_json, rpc, stub, to_dict


def register(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="show the node's state")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    client = stub(args)
    status = rpc(lambda: client.GetStatus(clirpc_pb2.GetStatusRequest()))
    if args.json:
        print_json(to_dict(status))
        return 0
    print(f"barterbackup {status.version}")
    if not status.unlocked:
        print("state:     locked (run `barterbackup unlock`)")
        return 0
    print("state:     unlocked")
    print(f"onion:     {status.onion_address}")
    print(f"revision:  {status.revision}")
    print(f"files:     {status.file_count}")
    print(f"content:   {human_size(status.content_length)}")
    print(f"transport: {status.transport} {status.peer_endpoint}".rstrip())
    print(f"peers:     {status.peer_network}")
    return 0
