"""``barterbackup storage``: the budget this node gives its peers."""

from __future__ import annotations

import argparse

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import (
    CliError,
    human_size,
    parse_size,
    print_json,
    rpc,
    stub,
    to_dict,
)


def register(commands: argparse._SubParsersAction) -> None:
    storage = commands.add_parser("storage", help="storage budget for peers")
    sub = storage.add_subparsers(
        dest="storage_command", metavar="COMMAND", required=True
    )
    show = sub.add_parser("show", help="show the budget, its use and obligations")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(run=run_show)
    change = sub.add_parser(
        "set", help="change the budget (options not given keep their value)"
    )
    change.add_argument("--total", type=parse_size, metavar="SIZE", help="all peers")
    change.add_argument("--per-peer", type=parse_size, metavar="SIZE", help="one peer")
    change.add_argument(
        "--min-replicas", type=int, metavar="N", help="peers that should hold our data"
    )
    change.add_argument("--json", action="store_true", help="machine-readable output")
    change.set_defaults(run=run_set)


def _print(config: clirpc_pb2.GetStorageConfigResponse) -> None:
    print(f"budget:       {human_size(config.total_bytes)} for all peers")
    print(f"per peer:     {human_size(config.per_peer_bytes)}")
    print(f"min replicas: {config.min_replicas}")
    print(f"used:         {human_size(config.used_bytes)}")
    print(f"free:         {human_size(config.free_bytes)}")
    for o in config.obligations:
        print(
            f"  {o.onion_address}: revision {o.revision}, "
            f"{human_size(o.stored_bytes)} of {human_size(o.granted_bytes)}"
        )


def run_show(args: argparse.Namespace) -> int:
    client = stub(args)
    config = rpc(lambda: client.GetStorageConfig(clirpc_pb2.GetStorageConfigRequest()))
    if args.json:
        print_json(to_dict(config))
    else:
        _print(config)
    return 0


def run_set(args: argparse.Namespace) -> int:
    if args.total is None and args.per_peer is None and args.min_replicas is None:
        raise CliError("nothing to change: give --total, --per-peer or --min-replicas")
    if args.min_replicas is not None and not 0 <= args.min_replicas <= 64:
        raise CliError("--min-replicas must be between 0 and 64")
    client = stub(args)
    current = rpc(lambda: client.GetStorageConfig(clirpc_pb2.GetStorageConfigRequest()))
    request = clirpc_pb2.SetStorageConfigRequest(
        total_bytes=current.total_bytes if args.total is None else args.total,
        per_peer_bytes=current.per_peer_bytes
        if args.per_peer is None
        else args.per_peer,
        min_replicas=(
            current.min_replicas if args.min_replicas is None else args.min_replicas
        ),
    )
    response = rpc(lambda: client.SetStorageConfig(request))
    if args.json:
        print_json(to_dict(response.config))
    else:
        _print(response.config)
    return 0
