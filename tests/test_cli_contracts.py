"""The contract and status commands' output and exit codes (no daemon: the
gRPC stub is replaced by one answering canned messages)."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import clirpc_pb2
from barterbackup.cli import contracts, status
from barterbackup.cli.common import CliError
from barterbackup.cli.main import build_parser
from barterbackup.cli.status_line import EXIT_AT_RISK

PEER = "aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4bqead.onion"


def contract(**fields: Any) -> clirpc_pb2.ContractInfo:
    base: dict[str, Any] = dict(
        contract_id=bytes(range(32)),
        peer=PEER,
        state="active",
        our_bytes=64 * 2**20,
        their_bytes=32 * 2**20,
        stored_bytes=5 * 2**20,
        peer_revision=3,
        audit_score=0.97,
        uptime_score=0.5,
        we_proposed=True,
    )
    base.update(fields)
    return clirpc_pb2.ContractInfo(**base)


class Stub:
    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.requests: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        def call(request: Any) -> Any:
            self.requests.append((name, request))
            return self.answers[name]

        return call


class CliCase(SynchronousTestCase):
    def run_cli(self, stub: Stub, *argv: str) -> tuple[int, str]:
        for module in (contracts, status):
            self.patch(module, "stub", lambda args: stub)
        args = build_parser().parse_args(list(argv))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = int(args.run(args))
        return code, out.getvalue()


class ContractsCommandTests(CliCase):
    def test_list_says_what_a_user_needs(self) -> None:
        stub = Stub(
            GetContracts=clirpc_pb2.GetContractsResponse(
                contracts=[
                    contract(
                        last_check=1_800_000_000,
                        last_check_passed=True,
                        last_verdict="passed: 460 positions sampled",
                    ),
                    contract(state="suspect", detail="unreachable", we_proposed=False),
                ]
            )
        )
        code, out = self.run_cli(stub, "contracts", "list")
        self.assertEqual(code, 0)
        self.assertIn(f"{PEER} ACTIVE (we proposed", out)
        self.assertIn("they keep 64.0 MiB of ours (hold revision 3)", out)
        self.assertIn("we keep 32.0 MiB of theirs (storing 5.0 MiB)", out)
        self.assertIn("passed: 460 positions sampled", out)
        self.assertIn("audit 0.97, uptime 0.50", out)
        self.assertIn("SUSPECT (they proposed", out)
        self.assertIn("  unreachable", out)
        code, out = self.run_cli(stub, "contracts", "list", "--json")
        [first, _] = json.loads(out)
        self.assertEqual(first["state"], "active")

    def test_check_needs_peers_or_all_and_fails_unless_all_pass(self) -> None:
        with self.assertRaises(CliError):
            self.run_cli(Stub(), "contracts", "check")
        failed = clirpc_pb2.CheckContractResponse(
            passed=False, verdict="failed: 3 of 480 sampled positions did not match"
        )
        stub = Stub(CheckContract=[failed])
        with self.assertRaises(CliError):
            self.run_cli(stub, "contracts", "check", PEER, "--kind", "sample")
        [(name, request)] = stub.requests
        self.assertEqual(
            (name, request.peer, request.kind), ("CheckContract", PEER, "sample")
        )
        passed = clirpc_pb2.CheckContractResponse(
            passed=True, verdict="passed: 460 positions sampled"
        )
        code, out = self.run_cli(
            Stub(CheckContract=[passed]), "contracts", "check", PEER
        )
        self.assertEqual(code, 0)
        self.assertIn(f"{PEER}: passed: 460 positions sampled", out)

    def test_end_takes_a_peer_or_an_id(self) -> None:
        answer = clirpc_pb2.EndContractResponse(contract=contract(state="ending"))
        stub = Stub(EndContract=answer)
        self.run_cli(stub, "contracts", "end", PEER, "--reason", "moving")
        self.run_cli(stub, "contracts", "end", bytes(range(32)).hex())
        (_, by_peer), (_, by_id) = stub.requests
        self.assertEqual((by_peer.peer, by_peer.reason), (PEER, "moving"))
        self.assertEqual(by_id.contract_id, bytes(range(32)))
        with self.assertRaises(CliError):
            self.run_cli(stub, "contracts", "approve", "not-hex")


class StatusCommandTests(CliCase):
    def test_check_exits_at_risk_when_under_replicated(self) -> None:
        at_risk = clirpc_pb2.GetStatusResponse(
            unlocked=True, revision=4, min_replicas=2, replicas_current=1
        )
        code, out = self.run_cli(Stub(GetStatus=at_risk), "status", "--check")
        self.assertEqual(code, EXIT_AT_RISK)
        self.assertEqual(
            out.strip(), "at risk: under-replicated: 1 of 2 replicas holds revision 4"
        )
        safe = clirpc_pb2.GetStatusResponse(
            unlocked=True,
            revision=4,
            min_replicas=2,
            replicas_current=2,
            checks_passed=2,
        )
        code, out = self.run_cli(Stub(GetStatus=safe), "status", "--check")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("protected: revision 4 held by 2 of 2"))
        code, out = self.run_cli(Stub(GetStatus=at_risk), "status")
        self.assertEqual(code, 0)
        self.assertIn("replicas:  1 of 2 hold the current revision", out)
