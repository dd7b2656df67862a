"""``barterbackup contracts``: storage contracts with peers.

A daemon without the contract subsystem answers UNIMPLEMENTED, which is
printed as it is.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import (
    CliError,
    human_size,
    human_time,
    parse_size,
    print_json,
    rpc,
    show_progress_stream,
    stub,
    to_dict,
)


def register(commands: argparse._SubParsersAction) -> None:
    contracts = commands.add_parser("contracts", help="storage contracts with peers")
    sub = contracts.add_subparsers(
        dest="contracts_command", metavar="COMMAND", required=True
    )
    listing = sub.add_parser("list", help="list contracts")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=run_list)
    propose = sub.add_parser("propose", help="offer a reciprocal contract to a peer")
    propose.add_argument("peer", metavar="ONION")
    propose.add_argument("--ours", type=parse_size, required=True, metavar="SIZE")
    propose.add_argument("--theirs", type=parse_size, required=True, metavar="SIZE")
    propose.set_defaults(run=run_propose)
    check = sub.add_parser("check", help="spot-check a contract now")
    check.add_argument("contract_id", metavar="CONTRACT_ID", help="hex contract id")
    check.add_argument("--samples", type=int, default=0)
    check.set_defaults(run=run_check)


def run_list(args: argparse.Namespace) -> int:
    client = stub(args)
    response = rpc(lambda: client.GetContracts(clirpc_pb2.GetContractsRequest()))
    if args.json:
        print_json([to_dict(c) for c in response.contracts])
        return 0
    for c in response.contracts:
        print(
            f"{c.contract_id.hex()} {c.peer} {c.state}: ours {human_size(c.our_bytes)},"
            f" theirs {human_size(c.their_bytes)}, audit {c.audit_score:.2f}, "
            f"uptime {c.uptime_score:.2f}, last check {human_time(c.last_check)}"
        )
    return 0


def run_propose(args: argparse.Namespace) -> int:
    client = stub(args)
    request = clirpc_pb2.ProposeContractRequest(
        peer=args.peer, our_bytes=args.ours, their_bytes=args.theirs
    )
    rpc(
        lambda: show_progress_stream(
            (r.progress for r in client.ProposeContract(request)), "proposing"
        )
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    try:
        contract_id = bytes.fromhex(args.contract_id)
    except ValueError:
        raise CliError("CONTRACT_ID must be hexadecimal") from None
    client = stub(args)
    request = clirpc_pb2.CheckContractRequest(
        contract_id=contract_id, samples=args.samples
    )
    passed: list[bool] = []

    def events() -> Iterator[clirpc_pb2.Progress]:
        for response in client.CheckContract(request):
            passed.append(response.passed)
            yield response.progress

    rpc(lambda: show_progress_stream(events(), "checking"))
    if not passed or not passed[-1]:
        raise CliError("the spot check failed")
    print("the peer holds our data")
    return 0
