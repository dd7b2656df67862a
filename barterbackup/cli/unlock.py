"""``barterbackup init`` and ``barterbackup unlock``."""

from __future__ import annotations

import argparse
import getpass
import sys

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import CliError, rpc, stub


def register(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser(
        "init",
        help="set up a new node with a generated main passphrase",
        description=(
            "Generate a strong main passphrase, show it once, and set up the "
            "node with it. Write the passphrase down: it is the only way to "
            "recover your backups after losing this machine."
        ),
    )
    init.set_defaults(run=run_init)
    unlock = commands.add_parser(
        "unlock",
        help="unlock the node with the main password",
        description="Unlock the node (prompts without echo).",
    )
    unlock.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from the first line of FILE ('-' for stdin)",
    )
    unlock.add_argument(
        "--create",
        action="store_true",
        help="set up an empty node directory with this password (new node, "
        "or recovery after a loss)",
    )
    unlock.set_defaults(run=run_unlock)


def read_password(path: str | None, confirm: bool) -> str:
    if path:
        try:
            handle = sys.stdin if path == "-" else open(path, encoding="utf-8")
            with handle:
                line = handle.readline()
        except OSError as e:
            raise CliError(f"cannot read password file: {e.strerror}") from None
        password = line.rstrip("\r\n")
        if not password:
            raise CliError("the password file is empty")
        return password
    if not sys.stdin.isatty():
        raise CliError(
            "no terminal to ask for the password: use --password-file FILE "
            "(or '-' to read it from standard input)"
        )
    password = getpass.getpass("Main password: ")
    if confirm and getpass.getpass("Main password again: ") != password:
        raise CliError("the two passwords differ; nothing was changed")
    return password


def run_unlock(args: argparse.Namespace) -> int:
    client = stub(args)
    password = read_password(args.password_file, confirm=args.create)
    response = rpc(
        lambda: client.Unlock(
            clirpc_pb2.UnlockRequest(password=password, create_if_missing=args.create)
        )
    )
    verb = "created and unlocked" if response.created else "unlocked"
    print(f"node {verb}: {response.onion_address}")
    return 0


def run_init(args: argparse.Namespace) -> int:
    client = stub(args)
    status = rpc(lambda: client.GetStatus(clirpc_pb2.GetStatusRequest()))
    if status.unlocked:
        raise CliError("this node is already set up and unlocked")
    # The node generates the passphrase (it owns the password policy) and
    # sends it back this once, over the owner-only socket.
    response = rpc(
        lambda: client.Unlock(clirpc_pb2.UnlockRequest(generate_passphrase=True))
    )
    if not response.created or not response.passphrase:
        raise CliError("this node directory was already set up")
    passphrase = response.passphrase
    print("Your main passphrase (write it down; it is shown only once):")
    print()
    print(f"    {passphrase}")
    print()
    print("It is the only way to unlock this node and to recover your backups")
    print("from your peers after losing this machine.")
    print(f"node created and unlocked: {response.onion_address}")
    return 0
