"""``barterbackup storage``: what this node lends its peers, and to whom.

Only contracts grant storage: ``--total`` caps what all contracts together
may oblige this node to keep, ``--policy`` says who may make one, and
``--min-replicas`` how many contracts should keep our own content (the node
forms them by itself; 0: none).
"""

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
    change.add_argument(
        "--total",
        type=parse_size,
        metavar="SIZE",
        help="what all contracts together may oblige this node to keep",
    )
    change.add_argument(
        "--min-replicas",
        type=int,
        metavar="N",
        help="contracts that should keep our data (0: form none by itself)",
    )
    change.add_argument(
        "--policy",
        choices=("known", "open", "manual"),
        help="who may make a contract with this node: peers you connected "
        "(known), anyone within limits (open), or you decide each (manual)",
    )
    change.add_argument("--json", action="store_true", help="machine-readable output")
    change.set_defaults(run=run_set)


def _print(config: clirpc_pb2.GetStorageConfigResponse) -> None:
    print(f"budget:       {human_size(config.total_bytes)} for all contracts")
    print(f"promised:     {human_size(config.obligated_bytes)} under contracts")
    print(f"free:         {human_size(config.free_bytes)}")
    print(f"used:         {human_size(config.used_bytes)} on disk")
    print(f"policy:       {config.acceptance_policy}")
    print(f"min replicas: {config.min_replicas}")
    for o in config.obligations:
        granted = (
            f"of {human_size(o.granted_bytes)}" if o.granted_bytes else "(kept, frozen)"
        )
        print(
            f"  {o.onion_address} [{o.state}]: revision {o.revision or '-'}, "
            f"{human_size(o.stored_bytes)} {granted}"
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
    if args.total is None and args.min_replicas is None and args.policy is None:
        raise CliError("nothing to change: give --total, --min-replicas or --policy")
    if args.min_replicas is not None and not 0 <= args.min_replicas <= 64:
        raise CliError("--min-replicas must be between 0 and 64")
    client = stub(args)
    request = clirpc_pb2.SetStorageConfigRequest()
    if args.total is not None:
        request.total_bytes = args.total
    if args.min_replicas is not None:
        request.min_replicas = args.min_replicas
    if args.policy is not None:
        request.acceptance_policy = args.policy
    response = rpc(lambda: client.SetStorageConfig(request))
    if args.json:
        print_json(to_dict(response.config))
    else:
        _print(response.config)
    return 0
