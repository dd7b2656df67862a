"""``barterbackup``: the command-line client of a barterbackup node."""

from __future__ import annotations

import argparse
import sys

from barterbackup import __version__
from barterbackup.cli import (
    backup,
    chat,
    check,
    contracts,
    files,
    peers,
    recover,
    replicate,
    restore,
    schedule,
    sources,
    status,
    storage,
    unlock,
)
from barterbackup.cli.common import EXIT_FAILED, CliError

GROUPS = (
    unlock,
    status,
    sources,
    schedule,
    backup,
    files,
    restore,
    check,
    peers,
    storage,
    replicate,
    contracts,
    recover,
    chat,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="barterbackup",
        description="Mutual backup over Tor: talk to your barterbackup node.",
        epilog=(
            "Exit status: 0 success, 1 the operation failed, 2 usage error, "
            "3 the daemon is not running or not accessible, 4 (status --check) "
            "the data is at risk."
        ),
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--node-dir",
        metavar="DIR",
        help="node directory (default: $BARTERBACKUP_NODE_DIR or ~/.barterbackup)",
    )
    parser.add_argument(
        "--socket", metavar="PATH", help="daemon socket (default: NODE_DIR/rpc/...)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CliError as e:
        print(f"barterbackup: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("barterbackup: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
