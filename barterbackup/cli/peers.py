"""``barterbackup peers``: connect to peers, list them, set chat keys."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from barterbackup._proto import clirpc_pb2, clirpc_pb2_grpc
from barterbackup.cli.common import (
    CliError,
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
    discover = sub.add_parser(
        "discover",
        help="ask known peers for the peers they share (nothing is recorded)",
    )
    discover.add_argument(
        "peers",
        nargs="*",
        metavar="ONION",
        help="the known peers to ask (default: every known peer connected now)",
    )
    discover.add_argument("--json", action="store_true", help="machine-readable output")
    discover.set_defaults(run=run_discover)
    key = sub.add_parser(
        "key",
        help="the chat key shared with a peer: generate, set, clear or show it",
        description=(
            "Encrypted chat and file offers use a 32-byte key both people "
            "hold. One side generates it and passes it on out of band (in "
            "person, by a channel you trust); the other sets it. Compare the "
            "fingerprints by voice. Without an option, shows the fingerprint."
        ),
    )
    key.add_argument("onion_address", metavar="ONION")
    action = key.add_mutually_exclusive_group()
    action.add_argument(
        "--generate", action="store_true", help="make a new key and print it"
    )
    action.add_argument(
        "--set",
        action="store_true",
        help="set the key the peer gave you (typed without echo, or --key-file)",
    )
    action.add_argument("--clear", action="store_true", help="remove the key")
    key.add_argument(
        "--key-file",
        metavar="FILE",
        help="with --set: read the key from FILE ('-' for standard input)",
    )
    key.add_argument("--json", action="store_true", help="machine-readable output")
    key.set_defaults(run=run_key)


def _describe(peer: clirpc_pb2.PeerInfo) -> str:
    state = "connected" if peer.connected else "disconnected"
    rtt = f" rtt {peer.rtt_ms} ms" if peer.connected and peer.rtt_ms else ""
    checks = peer.checks_passed + peer.checks_failed
    chat = (
        f", chat key {peer.chat_key_fingerprint}" if peer.chat_key_fingerprint else ""
    )
    return (
        f"{peer.onion_address} {state}{rtt}, last seen {human_time(peer.last_seen)}, "
        f"holds our revision {peer.held_revision or '-'}, "
        f"we store {human_size(peer.stored_bytes)} of theirs; "
        f"audit {peer.audit_score:.2f} ({peer.checks_passed} of {checks} checks "
        f"passed), uptime {peer.uptime_score:.2f}{chat}"
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


def run_discover(args: argparse.Namespace) -> int:
    client = stub(args)
    request = clirpc_pb2.DiscoverPeersRequest(onion_addresses=args.peers)
    response = rpc(lambda: client.DiscoverPeers(request))
    if args.json:
        print_json(to_dict(response))
    else:
        for peer in response.peers:
            known = " (already known)" if peer.known else ""
            print(f"{peer.onion_address}{known}: shared by {', '.join(peer.shared_by)}")
        if response.dropped:
            print(f"{response.dropped} entries of the answers were not valid peers")
        if response.peers:
            print("to add one: `barterbackup peers connect ONION`")
        elif not response.errors:
            print("no peer shared any: they share the peers connected with --share")
    for error in response.errors:
        print(f"could not ask {error}", file=sys.stderr)
    if response.errors and not response.peers:
        raise CliError("no peer could be asked")
    return 0


def _read_key(args: argparse.Namespace) -> str:
    """The key text for --set: from --key-file, or typed without echo."""
    if args.key_file == "-":
        text = sys.stdin.readline()
    elif args.key_file:
        try:
            text = Path(args.key_file).read_text()
        except OSError as e:
            raise CliError(f"cannot read {args.key_file}: {e.strerror}") from None
    elif sys.stdin.isatty():
        text = getpass.getpass("chat key (as the peer gave it): ")
    else:
        text = sys.stdin.readline()
    if not text.strip():
        raise CliError("no key given")
    return text


def run_key(args: argparse.Namespace) -> int:
    if args.key_file and not args.set:
        raise CliError("--key-file goes with --set")
    client = stub(args)
    if not (args.generate or args.set or args.clear):
        return _show_key(args, client)
    request = clirpc_pb2.SetAeadKeyForPeerRequest(
        peer=args.onion_address, generate=args.generate, clear=args.clear
    )
    if args.set:
        # The daemon decodes it: the one implementation of the key format.
        request.key_text = _read_key(args)
    response = rpc(lambda: client.SetAeadKeyForPeer(request))
    if args.json:
        print_json(to_dict(response))
    elif args.clear:
        print(f"chat key for {response.peer} removed")
    elif args.generate:
        print(f"chat key for {response.peer}:")
        print(f"  {response.key_text}")
        print(f"fingerprint: {response.fingerprint}")
        print(
            "Give the key to the peer's owner by a channel you trust; they run\n"
            "`barterbackup peers key YOUR_ONION --set`. Compare fingerprints by "
            "voice."
        )
    else:
        print(f"chat key for {response.peer} set; fingerprint {response.fingerprint}")
    return 0


def _show_key(args: argparse.Namespace, client: clirpc_pb2_grpc.CliRpcStub) -> int:
    listing = rpc(lambda: client.ConnectedPeers(clirpc_pb2.ConnectedPeersRequest()))
    wanted = args.onion_address.strip().lower()
    if not wanted.endswith(".onion"):
        wanted += ".onion"
    found = [p for p in listing.peers if p.onion_address == wanted]
    fingerprint = found[0].chat_key_fingerprint if found else ""
    if args.json:
        print_json({"peer": wanted, "fingerprint": fingerprint})
    elif fingerprint:
        print(f"chat key for {wanted}: fingerprint {fingerprint}")
    else:
        print(
            f"no chat key for {wanted}: `barterbackup peers key {wanted} "
            "--generate` or `--set`"
        )
    return 0
