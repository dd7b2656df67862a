"""``barterbackup contracts``: storage contracts with peers.

``list`` shows every contract (peer, state, sizes each way, what we store,
the last check and its verdict, the next check, the peer's scores);
``propose`` offers one and follows it to active with a progress bar;
``check`` spot-checks peers now; ``end`` ends one gracefully; ``approve``
and ``decline`` answer proposals that wait for the user (policy manual).
"""

from __future__ import annotations

import argparse
import sys
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
from barterbackup.cli.output import (
    Output,
    add_output_arguments,
    message_fields,
    report_progress_events,
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
    propose.add_argument(
        "--ours",
        type=parse_size,
        required=True,
        metavar="SIZE",
        help="how much of our content the peer keeps",
    )
    propose.add_argument(
        "--theirs",
        type=parse_size,
        required=True,
        metavar="SIZE",
        help="how much of the peer's content we keep",
    )
    add_output_arguments(propose)
    propose.set_defaults(run=run_propose)
    check = sub.add_parser("check", help="spot-check peers now")
    check.add_argument("peers", nargs="*", metavar="ONION")
    check.add_argument(
        "--all", action="store_true", help="every contract that can be checked"
    )
    check.add_argument(
        "--kind",
        choices=("digest", "sample"),
        default="",
        help="digest: against our copy; sample: against the audit samples "
        "(default: digest when we hold our data)",
    )
    check.add_argument("--samples", type=int, default=0, metavar="N")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(run=run_check)
    end = sub.add_parser("end", help="end a contract gracefully")
    end.add_argument("target", metavar="ONION|CONTRACT_ID")
    end.add_argument("--reason", default="", help="shown to the peer's user")
    end.set_defaults(run=run_end)
    approve = sub.add_parser("approve", help="accept a proposal waiting for you")
    approve.add_argument("contract_id", metavar="CONTRACT_ID")
    approve.set_defaults(run=run_approve)
    decline = sub.add_parser("decline", help="refuse a proposal waiting for you")
    decline.add_argument("contract_id", metavar="CONTRACT_ID")
    decline.add_argument("--reason", default="", help="shown to the proposer")
    decline.set_defaults(run=run_decline)


def _contract_id(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise CliError("a contract id is 64 hexadecimal digits") from None
    if len(value) != 32:
        raise CliError("a contract id is 64 hexadecimal digits")
    return value


def _is_contract_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _scores(c: clirpc_pb2.ContractInfo) -> str:
    return f"audit {c.audit_score:.2f}, uptime {c.uptime_score:.2f}"


def describe(c: clirpc_pb2.ContractInfo) -> list[str]:
    """A contract in a few lines, for people."""
    who = "we proposed" if c.we_proposed else "they proposed"
    lines = [
        f"{c.peer} {c.state.upper()} ({who}; id {c.contract_id.hex()[:16]}…)",
        f"  they keep {human_size(c.our_bytes)} of ours"
        f" (hold revision {c.peer_revision or '-'}), we keep "
        f"{human_size(c.their_bytes)} of theirs (storing "
        f"{human_size(c.stored_bytes)})",
    ]
    if c.last_check:
        verdict = c.last_verdict or ("passed" if c.last_check_passed else "failed")
        lines.append(f"  last check {human_time(c.last_check)}: {verdict}")
    else:
        lines.append("  not checked yet")
    nxt = f"next check {human_time(c.next_check)}; " if c.next_check else ""
    lines.append(f"  {nxt}{_scores(c)}")
    if c.detail:
        lines.append(f"  {c.detail}")
    return lines


def run_list(args: argparse.Namespace) -> int:
    client = stub(args)
    response = rpc(lambda: client.GetContracts(clirpc_pb2.GetContractsRequest()))
    if args.json:
        print_json([to_dict(c) for c in response.contracts])
        return 0
    if not response.contracts:
        print(
            "no contracts yet: `barterbackup contracts propose ONION "
            "--ours SIZE --theirs SIZE`"
        )
    for c in response.contracts:
        print("\n".join(describe(c)))
    return 0


def run_propose(args: argparse.Namespace) -> int:
    client = stub(args)
    request = clirpc_pb2.ProposeContractRequest(
        peer=args.peer, our_bytes=args.ours, their_bytes=args.theirs
    )
    final: list[clirpc_pb2.ContractInfo] = []

    def events() -> Iterator[clirpc_pb2.Progress]:
        for response in client.ProposeContract(request):
            if response.HasField("contract"):
                final.append(response.contract)
            yield response.progress

    out = Output.for_args(args)
    rpc(lambda: report_progress_events(events(), out, "contract"))
    if not final:
        raise CliError("the daemon ended the proposal without an answer")
    contract = final[-1]
    out.result(message_fields(contract), "\n".join(describe(contract)))
    return 0


def _check_one(
    client: object, request: clirpc_pb2.CheckContractRequest, quiet: bool
) -> clirpc_pb2.CheckContractResponse | None:
    last: list[clirpc_pb2.CheckContractResponse] = []

    def events() -> Iterator[clirpc_pb2.Progress]:
        for response in client.CheckContract(request):  # type: ignore[attr-defined]
            last.append(response)
            yield response.progress

    show_progress_stream(events(), "check", quiet_json=quiet)
    return last[-1] if last else None


def _checked(
    client: object, request: clirpc_pb2.CheckContractRequest, quiet: bool
) -> clirpc_pb2.CheckContractResponse | None:
    return rpc(lambda: _check_one(client, request, quiet))


def run_check(args: argparse.Namespace) -> int:
    if args.all == bool(args.peers):
        raise CliError("name the peers to check, or give --all")
    if args.samples and not 1 <= args.samples <= 4096:
        raise CliError("--samples must be between 1 and 4096")
    client = stub(args)
    targets: list[tuple[str, clirpc_pb2.CheckContractRequest]] = []
    if args.all:
        listed = rpc(lambda: client.GetContracts(clirpc_pb2.GetContractsRequest()))
        for c in listed.contracts:
            if c.state in ("active", "suspect"):
                targets.append(
                    (
                        c.peer,
                        clirpc_pb2.CheckContractRequest(
                            contract_id=c.contract_id,
                            kind=args.kind,
                            samples=args.samples,
                        ),
                    )
                )
        if not targets:
            raise CliError("no contract can be checked now (none is active)")
    else:
        for peer in args.peers:
            targets.append(
                (
                    peer,
                    clirpc_pb2.CheckContractRequest(
                        peer=peer, kind=args.kind, samples=args.samples
                    ),
                )
            )
    results = []
    failed = False
    for peer, request in targets:
        try:
            response = _checked(client, request, args.json)
        except CliError as error:
            print(f"{peer}: {error}", file=sys.stderr)
            failed = True
            continue
        if response is None:
            print(f"{peer}: the check ended without a verdict", file=sys.stderr)
            failed = True
            continue
        results.append(to_dict(response))
        if not response.passed:
            failed = True
        if not args.json:
            print(f"{response.contract.peer or peer}: {response.verdict}")
    if args.json:
        print_json(results)
    if failed:
        raise CliError("not every check passed")
    return 0


def run_end(args: argparse.Namespace) -> int:
    client = stub(args)
    request = clirpc_pb2.EndContractRequest(reason=args.reason)
    if _is_contract_id(args.target):
        request.contract_id = _contract_id(args.target)
    else:
        request.peer = args.target
    response = rpc(lambda: client.EndContract(request))
    print("\n".join(describe(response.contract)))
    return 0


def run_approve(args: argparse.Namespace) -> int:
    return _answer(args, True, "")


def run_decline(args: argparse.Namespace) -> int:
    return _answer(args, False, args.reason)


def _answer(args: argparse.Namespace, accept: bool, reason: str) -> int:
    client = stub(args)
    request = clirpc_pb2.AnswerContractRequest(
        contract_id=_contract_id(args.contract_id), accept=accept, reason=reason
    )
    response = rpc(lambda: client.AnswerContract(request))
    print("\n".join(describe(response.contract)))
    return 0
