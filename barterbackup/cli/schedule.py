"""``barterbackup schedule``: when the daemon backs up its sources."""

from __future__ import annotations

import argparse
import re
import time

from barterbackup._proto import clirpc_pb2
from barterbackup.cli.common import print_json, rpc, stub, to_dict

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_INTERVAL = re.compile(r"(?:\d+[smhdw])+")
_PART = re.compile(r"(\d+)([smhdw])")


def register(commands: argparse._SubParsersAction) -> None:
    schedule = commands.add_parser("schedule", help="when backups run by themselves")
    sub = schedule.add_subparsers(
        dest="schedule_command", metavar="COMMAND", required=True
    )
    change = sub.add_parser(
        "set",
        help="back up every INTERVAL, or never (off)",
        description=(
            "Back up the sources every INTERVAL, counted from the end of the "
            "last run (whatever started it); a run missed while the machine "
            "was off starts at unlock. 'off' leaves only `backup now`."
        ),
    )
    change.add_argument(
        "--every",
        required=True,
        type=parse_every,
        metavar="INTERVAL",
        help="30m, 1h, 6h, 1d, 1h30m … (at least 1m), or off",
    )
    change.add_argument("--json", action="store_true", help="machine-readable output")
    change.set_defaults(run=run_set)
    show = sub.add_parser("show", help="the schedule and the next run")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(run=run_show)


def parse_every(text: str) -> int:
    """``"1h"`` → 3600, ``"off"`` → 0 (the daemon checks the bounds)."""
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned in ("off", "never", "0"):
        return 0
    if not _INTERVAL.fullmatch(cleaned):
        raise argparse.ArgumentTypeError(
            f"not an interval: {text!r} (examples: 30m, 1h, 6h, 1d, 1h30m, off)"
        )
    return sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned))


def format_every(seconds: int) -> str:
    if not seconds:
        return "off"
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def describe(schedule: clirpc_pb2.ScheduleInfo, now: float) -> str:
    """One line: the interval and what happens next."""
    text = f"every {format_every(schedule.every_seconds)}"
    if not schedule.every_seconds:
        text = "off (only `barterbackup backup now`)"
    if schedule.running:
        text += "; a backup is running"
        if schedule.run_queued:
            text += ", another starts after it"
    elif schedule.next_run:
        wait = max(0, schedule.next_run - now)
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(schedule.next_run))
        text += f"; next run {stamp} (in {format_every(int(wait) // 60 * 60) or '<1m'})"
    return text


def _print(schedule: clirpc_pb2.ScheduleInfo, as_json: bool) -> None:
    if as_json:
        print_json(to_dict(schedule))
    else:
        print(f"schedule: {describe(schedule, time.time())}")


def run_set(args: argparse.Namespace) -> int:
    client = stub(args)
    request = clirpc_pb2.SetScheduleRequest(every_seconds=args.every)
    response = rpc(lambda: client.SetSchedule(request))
    _print(response.schedule, args.json)
    return 0


def run_show(args: argparse.Namespace) -> int:
    client = stub(args)
    response = rpc(lambda: client.GetSchedule(clirpc_pb2.GetScheduleRequest()))
    _print(response.schedule, args.json)
    return 0
