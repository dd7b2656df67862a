"""``barterbackup files``: add, get, remove and list files of the file set."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import (
    CliError,
    ProgressBar,
    human_size,
    rpc,
    stub,
    write_output_file,
)

# SetFile data messages carry this much. 4 MiB messages measured no clear
# speed gain but ~30 MiB more daemon RSS while streaming (gRPC buffers).
SEND_CHUNK = 1024 * 1024


def register(commands: argparse._SubParsersAction) -> None:
    files = commands.add_parser("files", help="manage the file set")
    sub = files.add_subparsers(dest="files_command", metavar="COMMAND", required=True)

    add = sub.add_parser(
        "add",
        help="add or replace files and directories (one new revision)",
        description=(
            "Add files, or whole directories (walked recursively), to the "
            "file set. A directory's files are named DIRNAME/relative/path. "
            "Symbolic links and special files are skipped with a warning."
        ),
    )
    add.add_argument("paths", nargs="+", metavar="PATH")
    add.add_argument(
        "--as",
        dest="as_name",
        metavar="NAME",
        help="name in the file set (only with a single PATH)",
    )
    add.set_defaults(run=run_add)

    get = sub.add_parser("get", help="read a file back from the current revision")
    get.add_argument("name")
    get.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (default: stdout)"
    )
    get.set_defaults(run=run_get)

    remove = sub.add_parser("rm", help="remove files from the file set")
    remove.add_argument("names", nargs="+", metavar="NAME")
    remove.set_defaults(run=run_remove)

    listing = sub.add_parser("list", help="list the file names")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=run_list)


@dataclass(frozen=True)
class LocalFile:
    path: Path
    name: str
    info: os.stat_result

    @property
    def size(self) -> int:
        return self.info.st_size


def collect(paths: list[str], as_name: str | None) -> list[LocalFile]:
    """The regular files under ``paths`` with their file-set names."""
    if as_name and len(paths) != 1:
        raise CliError("--as works with a single PATH")
    found: dict[str, LocalFile] = {}
    for raw in paths:
        top = Path(raw)
        try:
            info = top.lstat()
        except OSError as e:
            raise CliError(f"cannot read {raw}: {e.strerror}") from None
        top_name = as_name or top.resolve().name
        if stat.S_ISREG(info.st_mode):
            _add(found, LocalFile(top, top_name, info))
        elif stat.S_ISDIR(info.st_mode):
            for path, relative in _walk(top):
                name = f"{top_name}/{relative}" if top_name else relative
                _add(found, LocalFile(path, name, path.lstat()))
        else:
            print(f"skipping {raw}: not a regular file or directory", file=sys.stderr)
    return [found[name] for name in sorted(found)]


def _add(found: dict[str, LocalFile], local: LocalFile) -> None:
    if local.name in found:
        raise CliError(
            f"two paths map to the same name {local.name!r}: "
            f"{found[local.name].path} and {local.path}"
        )
    found[local.name] = local


def _walk(top: Path) -> Iterator[tuple[Path, str]]:
    def fail(error: OSError) -> None:
        raise CliError(f"cannot read {error.filename}: {error.strerror}")

    for directory, dirnames, filenames in os.walk(top, onerror=fail):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(directory) / filename
            if not stat.S_ISREG(path.lstat().st_mode):
                print(f"skipping {path}: not a regular file", file=sys.stderr)
                continue
            yield path, path.relative_to(top).as_posix()


def _requests(
    files: list[LocalFile], progress: ProgressBar
) -> Iterator[clirpc_pb2.SetFileRequest]:
    sent = 0
    for local in files:
        info = local.info
        yield clirpc_pb2.SetFileRequest(
            header=clirpc_pb2.FileHeader(
                name=local.name,
                size=info.st_size,
                mode=stat.S_IMODE(info.st_mode),
                mtime_ns=info.st_mtime_ns,
                ctime_ns=info.st_ctime_ns,
                inode=info.st_ino,
                device=info.st_dev,
            )
        )
        try:
            handle = open(local.path, "rb")
        except OSError as e:
            # Raising ends the stream: the daemon aborts the whole revision.
            raise CliError(f"cannot read {local.path}: {e.strerror}") from None
        with handle:
            while chunk := handle.read(SEND_CHUNK):
                sent += len(chunk)
                progress.update(sent)
                yield clirpc_pb2.SetFileRequest(data=chunk)


def run_add(args: argparse.Namespace) -> int:
    files = collect(args.paths, args.as_name)
    if not files:
        raise CliError("no regular files to add")
    client = stub(args)
    total = sum(f.size for f in files)
    progress = ProgressBar("adding", total)
    failure: list[CliError] = []

    def guarded() -> Iterator[clirpc_pb2.SetFileRequest]:
        try:
            yield from _requests(files, progress)
        except CliError as e:
            failure.append(e)
            raise

    try:
        response = rpc(lambda: client.SetFile(guarded()))
    except CliError:
        if failure:
            raise failure[0] from None
        raise
    progress.finish()
    if not response.changed:
        print(f"no changes; revision {response.revision} kept")
        return 0
    print(
        f"revision {response.revision}: {response.files_written} file(s), "
        f"{human_size(response.bytes_written)} added, "
        f"{human_size(response.new_section_bytes)} of new sections stored"
    )
    return 0


def run_get(args: argparse.Namespace) -> int:
    client = stub(args)
    responses = client.GetFile(clirpc_pb2.GetFileRequest(name=args.name))
    if args.output:
        progress = ProgressBar(f"reading {args.name}")

        def chunks() -> Iterator[bytes]:
            done = 0
            for response in responses:
                if response.size:
                    progress.total = response.size
                done += len(response.data)
                progress.update(done)
                yield response.data

        # Written to a temp file first: a failed read leaves no partial file.
        rpc(lambda: write_output_file(Path(args.output), chunks()))
        progress.finish()
        return 0

    out = sys.stdout.buffer

    def copy() -> None:
        for response in responses:
            out.write(response.data)
        out.flush()

    rpc(copy)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    client = stub(args)
    requests = [
        clirpc_pb2.SetFileRequest(header=clirpc_pb2.FileHeader(name=n, remove=True))
        for n in args.names
    ]
    response = rpc(lambda: client.SetFile(iter(requests)))
    print(f"revision {response.revision}: {response.files_removed} file(s) removed")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print the names as they stream in (a million never sit in memory)."""
    client = stub(args)
    out = sys.stdout

    def names() -> Iterator[str]:
        for response in client.ListFiles(clirpc_pb2.ListFilesRequest()):
            yield from response.names

    def show() -> None:
        if not args.json:
            for name in names():
                out.write(name + "\n")
            return
        # A JSON array, written element by element.
        separator = "[\n  "
        for name in names():
            out.write(separator + json.dumps(name))
            separator = ",\n  "
        out.write("\n]\n" if separator != "[\n  " else "[]\n")

    rpc(show)
    out.flush()
    return 0
