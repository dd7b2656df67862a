"""``barterbackup files``: add, get, remove and list files of the file set."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import (
    CliError,
    human_size,
    rpc,
    rpc_error,
    stub,
    write_output_file,
)
from barterbackup.cli.output import Output, add_output_arguments, message_fields

# SetFile data messages carry this much. 4 MiB messages measured no clear
# speed gain but ~30 MiB more daemon RSS while streaming (gRPC buffers).
SEND_CHUNK = 1024 * 1024
# StatFiles names per call (the daemon's bound).
STAT_BATCH = 10_000


def register(commands: argparse._SubParsersAction) -> None:
    files = commands.add_parser("files", help="manage the file set")
    sub = files.add_subparsers(dest="files_command", metavar="COMMAND", required=True)

    add = sub.add_parser(
        "add",
        help="add or replace files and directories (one new revision)",
        description=(
            "Add files, or whole directories (walked recursively), to the "
            "file set. A directory's files are named DIRNAME/relative/path. "
            "Symbolic links and special files are skipped with a warning. "
            "Files unchanged since the current revision (same size, mtime, "
            "ctime, inode and device) are not read again. On the daemon's "
            "machine the daemon reads the paths itself; when it cannot (other "
            "user, other machine, or --stream) the bytes are sent."
        ),
    )
    add.add_argument("paths", nargs="+", metavar="PATH")
    add.add_argument(
        "--as",
        dest="as_name",
        metavar="NAME",
        help="name in the file set (only with a single PATH)",
    )
    add.add_argument(
        "--stream",
        action="store_true",
        help="send the bytes even if the daemon could read the paths itself",
    )
    add_output_arguments(add)
    add.set_defaults(run=run_add)

    get = sub.add_parser("get", help="read a file back from the current revision")
    get.add_argument("name")
    get.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (default: stdout)"
    )
    add_output_arguments(get)
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


def collect(
    paths: list[str], as_name: str | None, warn: Callable[[str], None]
) -> list[LocalFile]:
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
            for path, relative in _walk(top, warn):
                name = f"{top_name}/{relative}" if top_name else relative
                _add(found, LocalFile(path, name, path.lstat()))
        else:
            warn(f"skipping {raw}: not a regular file or directory")
    return [found[name] for name in sorted(found)]


def _add(found: dict[str, LocalFile], local: LocalFile) -> None:
    if local.name in found:
        raise CliError(
            f"two paths map to the same name {local.name!r}: "
            f"{found[local.name].path} and {local.path}"
        )
    found[local.name] = local


def _walk(top: Path, warn: Callable[[str], None]) -> Iterator[tuple[Path, str]]:
    def fail(error: OSError) -> None:
        raise CliError(f"cannot read {error.filename}: {error.strerror}")

    for directory, dirnames, filenames in os.walk(top, onerror=fail):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(directory) / filename
            if not stat.S_ISREG(path.lstat().st_mode):
                warn(f"skipping {path}: not a regular file")
                continue
            yield path, path.relative_to(top).as_posix()


def _requests(
    files: list[LocalFile], out: Output, total: int
) -> Iterator[clirpc_pb2.SetFileRequest]:
    sent = 0
    for number, local in enumerate(files):
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
                out.progress(
                    sent,
                    total,
                    phase="sending",
                    label="files add",
                    files_done=number,
                    files_total=len(files),
                )
                yield clirpc_pb2.SetFileRequest(data=chunk)


@dataclass(frozen=True)
class TopPath:
    """A PATH of ``files add`` as this process sees it."""

    path: str
    name: str
    info: os.stat_result


def _top_paths(paths: list[str], as_name: str | None) -> list[TopPath]:
    if as_name and len(paths) != 1:
        raise CliError("--as works with a single PATH")
    tops = []
    for raw in paths:
        absolute = os.path.abspath(os.path.expanduser(raw))
        try:
            info = os.lstat(absolute)
        except OSError as e:
            raise CliError(f"cannot read {raw}: {e.strerror}") from None
        tops.append(TopPath(absolute, as_name or Path(absolute).resolve().name, info))
    return tops


def _daemon_can_try(tops: list[TopPath]) -> bool:
    """Whether the daemon may read these itself: files and folders only, a
    folder's name one component (its files' first)."""
    for top in tops:
        if stat.S_ISDIR(top.info.st_mode):
            if not top.name or "/" in top.name:
                return False
        elif not stat.S_ISREG(top.info.st_mode):
            return False
    return len({top.name for top in tops}) == len(tops)


def _added_by_daemon(
    client: Any, tops: list[TopPath], out: Output
) -> clirpc_pb2.AddPathsResponse | None:
    """AddPaths; None when the daemon cannot read the paths (then stream)."""
    request = clirpc_pb2.AddPathsRequest(
        paths=[
            clirpc_pb2.PathToAdd(
                path=top.path,
                name=top.name,
                device=top.info.st_dev,
                inode=top.info.st_ino,
            )
            for top in tops
        ]
    )
    try:
        for response in client.AddPaths(request):
            if response.HasField("result"):
                return response
            event = response.progress
            out.progress(
                event.bytes_done,
                event.bytes_total,
                phase=event.phase,
                label="files add",
                files_done=event.files_done,
                files_total=event.files_total,
                message=event.message,
            )
    except grpc.RpcError as e:
        if e.code() in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNIMPLEMENTED,
        ):
            out.message(f"{e.details()}; sending the bytes instead")
            return None
        raise rpc_error(e) from None
    raise CliError("the daemon ended AddPaths without a result")


def _changed_only(client: Any, files: list[LocalFile]) -> tuple[list[LocalFile], int]:
    """The files whose stat differs from the daemon's files cache, and the
    current revision."""
    changed: list[LocalFile] = []
    revision = 0
    for start in range(0, len(files), STAT_BATCH):
        batch = files[start : start + STAT_BATCH]
        response = rpc(partial(client.StatFiles, _stat_request(batch)))
        revision = response.revision
        for local, known in zip(batch, response.files, strict=True):
            info = local.info
            if not (
                known.present
                and (
                    known.size,
                    known.mtime_ns,
                    known.ctime_ns,
                    known.inode,
                    known.device,
                )
                == (
                    info.st_size,
                    info.st_mtime_ns,
                    info.st_ctime_ns,
                    info.st_ino,
                    info.st_dev,
                )
            ):
                changed.append(local)
    return changed, revision


def _stat_request(batch: list[LocalFile]) -> clirpc_pb2.StatFilesRequest:
    return clirpc_pb2.StatFilesRequest(names=[f.name for f in batch])


def _streamed(
    client: Any, args: argparse.Namespace, out: Output
) -> tuple[clirpc_pb2.SetFileResponse, int]:
    files = collect(args.paths, args.as_name, lambda text: out.message(text, "warning"))
    if not files:
        raise CliError("no regular files to add")
    changed, revision = _changed_only(client, files)
    if not changed:
        return clirpc_pb2.SetFileResponse(revision=revision, changed=False), 0
    total = sum(f.size for f in changed)
    failure: list[CliError] = []

    def guarded() -> Iterator[clirpc_pb2.SetFileRequest]:
        try:
            yield from _requests(changed, out, total)
        except CliError as e:
            failure.append(e)
            raise

    try:
        response = rpc(lambda: client.SetFile(guarded()))
    except CliError:
        if failure:
            raise failure[0] from None
        raise
    return response, 0


def run_add(args: argparse.Namespace) -> int:
    out = Output.for_args(args)
    tops = _top_paths(args.paths, args.as_name)
    client = stub(args)
    answer = None
    if not args.stream and _daemon_can_try(tops):
        answer = _added_by_daemon(client, tops, out)
    if answer is not None:
        response, warnings = answer.result, answer.warning_count
        out.finish()
        for warning in answer.warnings:
            out.message(f"skipped {warning.path}: {warning.reason}", "warning")
    else:
        response, warnings = _streamed(client, args, out)
        out.finish()
    fields = message_fields(response)
    fields["warning_count"] = warnings
    fields["read_by_daemon"] = answer is not None
    if not response.changed:
        out.result(fields, f"no changes; revision {response.revision} kept")
        return 0
    out.result(
        fields,
        f"revision {response.revision}: {response.files_written} file(s), "
        f"{human_size(response.bytes_written)} added, "
        f"{human_size(response.new_section_bytes)} of new sections stored",
    )
    return 0


def run_get(args: argparse.Namespace) -> int:
    client = stub(args)
    responses = client.GetFile(clirpc_pb2.GetFileRequest(name=args.name))
    if args.output:
        out = Output.for_args(args)
        done = 0
        total = 0

        def chunks() -> Iterator[bytes]:
            nonlocal done, total
            for response in responses:
                if response.size:
                    total = response.size
                done += len(response.data)
                out.progress(done, total, phase="reading", label=args.name)
                yield response.data

        # Written to a temp file first: a failed read leaves no partial file.
        rpc(lambda: write_output_file(Path(args.output), chunks()))
        out.result({"name": args.name, "path": args.output, "bytes": done})
        return 0

    stdout = sys.stdout.buffer

    def copy() -> None:
        for response in responses:
            stdout.write(response.data)
        stdout.flush()

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
