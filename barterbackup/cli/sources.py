"""``barterbackup sources``: the folders the daemon backs up by itself."""

from __future__ import annotations

import argparse
import os

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import print_json, rpc, stub, to_dict


def register(commands: argparse._SubParsersAction) -> None:
    sources = commands.add_parser("sources", help="folders the daemon backs up")
    sub = sources.add_subparsers(
        dest="sources_command", metavar="COMMAND", required=True
    )
    add = sub.add_parser(
        "add",
        help="back up a folder (the daemon reads it itself)",
        description=(
            "Back up the folder PATH on every run. Its files are named "
            "NAME/relative/path in the file set (NAME defaults to the "
            "folder's base name). The daemon reads the folder itself, so it "
            "must be able to read it. Exclude patterns are gitignore-style: "
            "'*.tmp', 'node_modules/', '/build/', '!keep.tmp'."
        ),
    )
    add.add_argument("path", metavar="PATH")
    add.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="gitignore-style pattern of what not to back up (repeatable)",
    )
    add.add_argument("--name", default="", help="the name of its files' top folder")
    add.add_argument(
        "--replace",
        action="store_true",
        help="change the name or excludes of a folder that is a source already",
    )
    add.add_argument("--json", action="store_true", help="machine-readable output")
    add.set_defaults(run=run_add)
    listing = sub.add_parser("list", help="list the source folders")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=run_list)
    remove = sub.add_parser(
        "rm",
        help="stop backing up a folder",
        description=(
            "Stop backing up a folder, named by its path or (with --name) its "
            "name. Its files stay in the file set as the last run left them; "
            "`barterbackup files rm` removes them."
        ),
    )
    remove.add_argument("path", nargs="?", default="", metavar="PATH")
    remove.add_argument("--name", default="", help="name the source by its name")
    remove.add_argument("--json", action="store_true", help="machine-readable output")
    remove.set_defaults(run=run_remove)


def _absolute(path: str) -> str:
    """The daemon has its own working directory: send an absolute path."""
    return os.path.abspath(os.path.expanduser(path)) if path else ""


def _describe(source: clirpc_pb2.SourceInfo) -> str:
    text = f"{source.name}: {source.path}"
    if source.excludes:
        text += f"  (excludes: {' '.join(source.excludes)})"
    return text


def run_add(args: argparse.Namespace) -> int:
    client = stub(args)
    request = clirpc_pb2.AddSourceRequest(
        path=_absolute(args.path),
        name=args.name,
        excludes=args.exclude,
        replace=args.replace,
    )
    response = rpc(lambda: client.AddSource(request))
    if args.json:
        print_json(to_dict(response.source))
    else:
        print(f"backing up {_describe(response.source)}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    client = stub(args)
    response = rpc(lambda: client.ListSources(clirpc_pb2.ListSourcesRequest()))
    if args.json:
        print_json([to_dict(s) for s in response.sources])
        return 0
    if not response.sources:
        print("no source folders (add one: barterbackup sources add PATH)")
    for source in response.sources:
        print(_describe(source))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    client = stub(args)
    request = clirpc_pb2.RemoveSourceRequest(
        path=_absolute(args.path) if not args.name else "", name=args.name
    )
    response = rpc(lambda: client.RemoveSource(request))
    if args.json:
        print_json(to_dict(response.removed))
    else:
        print(f"no longer backing up {_describe(response.removed)}")
    return 0
