"""``barterbackup peers``: connect to peers and list them."""

from __future__ import annotations

import argparse

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import (
    human_size,
    human_time,
    print_json,
    rpc,
    stub,
    to_dict,
)


def register(commands: argparse._SubParsersAction) -> None:
    peers = commands.add_parser("peers", help="connect to peers and list them")
    sub = peers.add_subparsers(dest="peers_command", metavar="COMMAND", required=True)
    listing = sub.add_parser("list", help="list known peers and their state")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=run_list)
    connect = sub.add_parser("connect", help="connect to a peer by onion address")
    connect.add_argument("onion_address", metavar="ONION")
    connect.add_argument(
        "--endpoint",
        metavar="ENDPOINT",
        help="connect here instead of through Tor, e.g. tcp:127.0.0.1:4000 "
        "(only for nodes started with --transport=tcp)",
    )
    connect.add_argument(
        "--share",
        action="store_true",
        help="allow telling this peer's address to our other peers",
    )
    connect.add_argument("--json", action="store_true", help="machine-readable output")
    connect.set_defaults(run=run_connect)


def _describe(peer: clirpc_pb2.PeerInfo) -> str:
    state = "connected" if peer.connected else "disconnected"
    rtt = f" rtt {peer.rtt_ms} ms" if peer.connected and peer.rtt_ms else ""
    checks = peer.checks_passed + peer.checks_failed
    return (
        f"{peer.onion_address} {state}{rtt}, last seen {human_time(peer.last_seen)}, "
        f"holds our revision {peer.held_revision or '-'}, "
        f"we store {human_size(peer.stored_bytes)} of theirs; "
        f"audit {peer.audit_score:.2f} ({peer.checks_passed} of {checks} checks "
        f"passed), uptime {peer.uptime_score:.2f}"
    )


def run_connect(args: argparse.Namespace) -> int:
    # The daemon checks the address (and says what is wrong with it).
    client = stub(args)
    request = clirpc_pb2.ConnectPeerRequest(
        onion_address=args.onion_address,
        endpoint=args.endpoint or "",
        share_in_exchange=args.share,
    )
    response = rpc(lambda: client.ConnectPeer(request))
    if args.json:
        print_json(to_dict(response.peer))
    else:
        print(_describe(response.peer))
    return 0


def run_list(args: argparse.Namespace) -> int:
    client = stub(args)
    response = rpc(lambda: client.ConnectedPeers(clirpc_pb2.ConnectedPeersRequest()))
    if args.json:
        print_json([to_dict(p) for p in response.peers])
        return 0
    if not response.peers:
        print("no peers yet: `barterbackup peers connect ONION`")
    for peer in response.peers:
        print(_describe(peer))
    return 0
