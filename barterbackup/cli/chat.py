"""``barterbackup chat``: chat with a peer, lines from standard input.

A daemon without the chat subsystem answers UNIMPLEMENTED, which is
printed as it is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import rpc, stub


def register(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser("chat", help="chat with a peer (lines from stdin)")
    chat.add_argument("peer", metavar="ONION")
    chat.set_defaults(run=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    client = stub(args)

    def actions() -> Iterator[clirpc_pb2.ChatAction]:
        yield clirpc_pb2.ChatAction(peer=args.peer, init=clirpc_pb2.ChatInit())
        for line in sys.stdin:
            yield clirpc_pb2.ChatAction(peer=args.peer, message=line.rstrip("\n"))
        yield clirpc_pb2.ChatAction(peer=args.peer, stop=clirpc_pb2.ChatStop())

    def show() -> None:
        for event in client.Chat(actions()):
            kind = event.WhichOneof("event")
            if kind == "message":
                print(f"<{event.peer[:16]}> {event.message}")
            elif kind == "file_offered":
                print(f"* {event.peer[:16]} offers {event.file_offered}")
            elif kind == "stopped":
                print(f"* chat closed: {event.stopped.reason}")

    rpc(show)
    return 0
