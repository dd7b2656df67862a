"""``barterbackup chat``: chat with a peer, offer files and fetch theirs.

    barterbackup chat ONION            interactive, on a terminal
    barterbackup chat ONION < FILE     each line a message (or a command)
    barterbackup chat ONION --json     events as JSON lines on stdout
    barterbackup chat --list           queued messages and pending offers

Commands, typed or as lines of a pipe: ``/file PATH`` offers a file,
``/stored NAME`` offers a file of the backed-up file set (as ``files
list`` names it), ``/get ID [DIR]`` fetches an offer (into DIR, default the current
directory) with a progress bar, ``/quit`` leaves, ``/help``. A line
starting with ``//`` sends that line without its first slash.

Encrypted whenever a chat key is set for the peer (``peers key``); plain
only with ``--plain``. From a pipe, the command leaves once standard input
ends and every message and fetch has an outcome (or ``--wait`` seconds
passed); it exits 1 if a message could not be sent or a fetch failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import grpc

from barterbackup._proto import clirpc_pb2, clirpc_pb2_grpc
from barterbackup.cli import output
from barterbackup.cli.chat_terminal import Screen
from barterbackup.cli.common import (
    EXIT_FAILED,
    CliError,
    human_size,
    human_time,
    print_json,
    rpc,
    rpc_error,
    stub,
    to_dict,
)
from barterbackup.cli.output import Output, format_bytes

HELP = """\
commands:
  /file PATH       offer a file to the peer
  /stored NAME     offer a file of the backed-up file set (`files list`)
  /get ID [DIR]    fetch the peer's offer ID into DIR (default: here)
  /quit            leave the chat
  //text           send a message that starts with "/"
anything else is sent as a message"""
DEFAULT_WAIT_SECONDS = 120.0
# How long leaving waits for the daemon to close the stream.
END_WAIT_SECONDS = 10.0
FINAL_DELIVERY_STATES = ("delivered", "queued", "not sent")


def register(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser(
        "chat",
        help="chat with a peer, offer and fetch files",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("peer", metavar="ONION", nargs="?", help="the peer's address")
    chat.add_argument(
        "--list", action="store_true", help="list queued messages and pending offers"
    )
    chat.add_argument(
        "--plain",
        action="store_true",
        help="chat without the chat key (only the Tor and peer channel protect it)",
    )
    chat.add_argument(
        "--json", action="store_true", help="JSON lines on stdout, one per event"
    )
    chat.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_SECONDS,
        metavar="SECONDS",
        help="from a pipe: how long to wait for outcomes once input ends "
        f"(default {DEFAULT_WAIT_SECONDS:.0f})",
    )
    chat.set_defaults(run=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    if args.list:
        if args.peer:
            raise CliError("--list takes no peer")
        return run_list(args)
    if not args.peer:
        raise CliError("name the peer to chat with (or --list)", code=2)
    client = stub(args)
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not args.json
    if interactive:
        screen = Screen("you> ")
        display: Display = TerminalDisplay(screen)
    elif args.json:
        display = JsonDisplay()
    else:
        display = TextDisplay()
    session = ChatClient(client, args.peer, args.plain, display)
    session.start()
    if interactive:
        return session.interactive(screen)
    return session.from_lines(sys.stdin, args.wait)


# -- what the user typed ------------------------------------------------------


def parse_line(line: str, cwd: Path) -> tuple[str, ...]:
    """A line → ("message", text) | ("file", path) | ("get", id, dir) | …"""
    text = line.rstrip("\r\n")
    if text.startswith("//"):
        return ("message", text[1:])
    if not text.startswith("/"):
        return ("message", text) if text.strip() else ("empty",)
    command, _, rest = text[1:].partition(" ")
    rest = rest.strip()
    if command == "file":
        if not rest:
            return ("usage", "/file PATH")
        return ("file", str((cwd / Path(rest).expanduser()).resolve()))
    if command == "stored":
        if not rest:
            return ("usage", "/stored NAME")
        return ("stored", rest)
    if command == "get":
        offer_id, _, directory = rest.partition(" ")
        if not offer_id:
            return ("usage", "/get ID [DIR]")
        target = cwd / Path(directory.strip() or ".").expanduser()
        return ("get", offer_id, str(target.resolve()))
    if command in ("quit", "exit"):
        return ("quit", rest)
    if command == "help":
        return ("help",)
    return ("usage", f"unknown command /{command}; /help lists them")


# -- showing events -------------------------------------------------------------


def _short(peer: str) -> str:
    return peer.removesuffix(".onion")[:16]


def describe(event: clirpc_pb2.ChatEvent) -> list[str]:
    """The lines a person reads for ``event`` (transfers in progress: none)."""
    kind = event.WhichOneof("event")
    who = _short(event.peer)
    if kind == "opened":
        opened = event.opened
        if opened.encrypted:
            how = f"encrypted, key fingerprint {opened.fingerprint}"
        else:
            how = "PLAIN: protected by Tor and the peer channel, not by a chat key"
        return [f"* chat with {event.peer} open ({how})"]
    if kind == "message":
        message = event.message
        stamp = f"[{time.strftime('%H:%M', time.localtime(message.received_at))}] "
        head = f"<{who}> " + (stamp if message.replayed else "")
        plain = "" if message.encrypted else " (plain)"
        lines = message.text.split("\n")
        return [head + lines[0] + plain] + ["    " + rest for rest in lines[1:]]
    if kind == "delivery":
        delivery = event.delivery
        if delivery.state == "queued":
            return [f"* {delivery.detail}"]
        if delivery.state == "not sent":
            return [f"! not sent: {delivery.detail}"]
        if delivery.state == "delivered" and event.action_id == 0:
            return [f"* {delivery.detail}"]
        return []
    if kind == "file_offered":
        offer = event.file_offered
        renamed = (
            f" (offered as {offer.offered_name!r})"
            if offer.offered_name != offer.name
            else ""
        )
        return [
            f"* {who} offers {offer.name}{renamed}, {format_bytes(offer.size)}, "
            f"sha256 {offer.sha256[:16]}…, until {human_time(offer.expires_at)}: "
            f"/get {offer.offer_id[:8]}"
        ]
    if kind == "file_shared":
        offer = event.file_shared
        return [
            f"* offered {offer.name} ({format_bytes(offer.size)}) as "
            f"{offer.offer_id[:8]}, until {human_time(offer.expires_at)}"
        ]
    if kind == "transfer":
        transfer = event.transfer
        if transfer.phase == "done":
            return [f"* saved {transfer.path} (SHA-256 checked)"]
        if transfer.phase == "failed":
            return [f"! fetching {transfer.name} failed: {transfer.message}"]
        return []
    if kind == "closed":
        closed = event.closed
        if closed.key_mismatch:
            return [f"! {closed.reason}"]
        if closed.by_peer and not closed.cut:
            why = "" if closed.reason == "left the chat" else f": {closed.reason}"
            return [f"* {who} left the chat{why}"]
        return [f"* chat session ended: {closed.reason}"]
    if kind == "notice":
        mark = "!" if event.notice.error else "*"
        return [f"{mark} {event.notice.text}"]
    if kind == "ended":
        return [f"* chat closed ({event.ended.reason})"]
    return []


def event_json(event: clirpc_pb2.ChatEvent) -> dict[str, Any]:
    """``event`` as one JSON object: its kind as "type", numbers as numbers."""
    kind = event.WhichOneof("event") or "unknown"
    body = getattr(event, kind) if kind != "unknown" else None
    fields = (
        {f.name: getattr(body, f.name) for f in body.DESCRIPTOR.fields} if body else {}
    )
    return {"type": kind, "peer": event.peer, "action_id": event.action_id, **fields}


class Display:
    """Where events go: a terminal screen, lines, or JSON."""

    def event(self, event: clirpc_pb2.ChatEvent) -> None:
        raise NotImplementedError

    def line(self, text: str) -> None:
        raise NotImplementedError


class _Transfers:
    """One ``Output`` per running fetch, made by ``make``."""

    def __init__(self, make: Callable[[str], Output]) -> None:
        self._make = make
        self._outputs: dict[str, Output] = {}

    def show(self, transfer: clirpc_pb2.ChatTransfer) -> None:
        key = transfer.offer_id
        out = self._outputs.get(key)
        if out is None:
            out = self._outputs[key] = self._make(key)
        out.progress(
            transfer.bytes_done,
            transfer.bytes_total,
            phase=transfer.phase,
            label=transfer.name,
            key=key[:8],
        )
        if transfer.phase in ("done", "failed"):
            out.finish()
            del self._outputs[key]


class TextDisplay(Display):
    """Lines on stdout; fetch progress on stderr (cli/output.py)."""

    def __init__(self) -> None:
        mode = output.TERMINAL if sys.stderr.isatty() else output.PLAIN
        self._transfers = _Transfers(lambda key: Output(mode, sys.stderr, sys.stdout))
        self._lock = threading.Lock()

    def event(self, event: clirpc_pb2.ChatEvent) -> None:
        with self._lock:
            if event.HasField("transfer"):
                self._transfers.show(event.transfer)
            for text in describe(event):
                print(text, flush=True)

    def line(self, text: str) -> None:
        with self._lock:
            print(text, flush=True)


class JsonDisplay(Display):
    """One JSON object per event on stdout; progress as output.py's JSON."""

    def __init__(self) -> None:
        self._transfers = _Transfers(
            lambda key: Output(output.JSON, sys.stderr, sys.stdout)
        )
        self._lock = threading.Lock()

    def event(self, event: clirpc_pb2.ChatEvent) -> None:
        with self._lock:
            if event.HasField("transfer") and event.transfer.phase == "fetching":
                self._transfers.show(event.transfer)
                return
            if event.HasField("transfer"):
                self._transfers.show(event.transfer)
            sys.stdout.write(json.dumps(event_json(event), sort_keys=True) + "\n")
            sys.stdout.flush()

    def line(self, text: str) -> None:
        with self._lock:
            sys.stdout.write(json.dumps({"type": "info", "text": text}) + "\n")
            sys.stdout.flush()


class TerminalDisplay(Display):
    """The interactive screen: events above the line being typed."""

    def __init__(self, screen: Screen) -> None:
        self._screen = screen
        self._transfers = _Transfers(
            lambda key: Output(
                output.TERMINAL,
                cast(TextIO, screen.progress_stream(key)),
                sys.stdout,
                width=screen.width,
            )
        )
        self._lock = threading.Lock()

    def event(self, event: clirpc_pb2.ChatEvent) -> None:
        with self._lock:
            lines = describe(event)
            if event.HasField("transfer"):
                self._transfers.show(event.transfer)
            if lines:
                self._screen.show(lines)

    def line(self, text: str) -> None:
        self._screen.show([text])


# -- the stream -----------------------------------------------------------------


class ChatClient:
    """One Chat RPC: actions go up through a queue, events come down on a
    thread and go to the display; outcomes are counted for scripts."""

    def __init__(
        self,
        client: clirpc_pb2_grpc.CliRpcStub,
        peer: str,
        plain: bool,
        display: Display,
    ) -> None:
        self._display = display
        self._actions: queue.Queue[clirpc_pb2.ChatAction | None] = queue.Queue()
        self._actions.put(
            clirpc_pb2.ChatAction(peer=peer, init=clirpc_pb2.ChatInit(plain=plain))
        )
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        # Actions still waiting for their outcome, and how many failed.
        self._pending: set[int] = set()
        self.failures = 0
        self.ended = False
        self.error: CliError | None = None
        self._main_waiting_for_input = False
        self._responses = client.Chat(self._requests())
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        self._reader.start()

    def _requests(self) -> Iterator[clirpc_pb2.ChatAction]:
        while (action := self._actions.get()) is not None:
            yield action

    def _read(self) -> None:
        try:
            for event in self._responses:
                self._settle(event)
                self._display.event(event)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = rpc_error(e)
        finally:
            self._actions.put(None)
            with self._changed:
                self.ended = True
                self._changed.notify_all()
                if self._main_waiting_for_input:
                    # Wake the prompt up: the chat is over. A real signal
                    # to the main thread, so readline's wait returns.
                    signal.pthread_kill(
                        threading.main_thread().ident or 0, signal.SIGINT
                    )

    def _settle(self, event: clirpc_pb2.ChatEvent) -> None:
        action = event.action_id
        kind = event.WhichOneof("event")
        final = failed = False
        if kind == "delivery" and event.delivery.state in FINAL_DELIVERY_STATES:
            final, failed = True, event.delivery.state == "not sent"
        elif kind == "file_shared":
            final = True
        elif kind == "transfer" and event.transfer.phase in ("done", "failed"):
            final, failed = True, event.transfer.phase == "failed"
        elif kind == "notice" and event.notice.error:
            final = failed = True
        if not (action and final):
            return
        with self._changed:
            if action in self._pending:
                self._pending.discard(action)
                self.failures += failed
                self._changed.notify_all()

    def act(self, **fields: Any) -> int:
        action_id = next(self._ids)
        with self._changed:
            self._pending.add(action_id)
        self._actions.put(clirpc_pb2.ChatAction(action_id=action_id, **fields))
        return action_id

    def leave(self, reason: str = "") -> None:
        self._actions.put(
            clirpc_pb2.ChatAction(stop=clirpc_pb2.ChatStop(reason=reason))
        )

    def wait(self, until: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        with self._changed:
            while not until():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def handle(self, line: str) -> bool:
        """Act on one line; False once the user asked to leave."""
        parsed = parse_line(line, Path.cwd())
        kind = parsed[0]
        if kind == "message":
            self.act(message=parsed[1])
        elif kind == "file":
            self.act(offer_file=parsed[1])
        elif kind == "stored":
            self.act(offer_stored_file=parsed[1])
        elif kind == "get":
            self.act(
                accept_file=clirpc_pb2.ChatAccept(
                    offer_id=parsed[1], directory=parsed[2]
                )
            )
        elif kind == "quit":
            self.leave(parsed[1] or "left the chat")
            return False
        elif kind == "help":
            self._display.line(HELP)
        elif kind == "usage":
            self._display.line(f"! {parsed[1]}")
        return True

    def finish(self) -> int:
        self.wait(lambda: self.ended, END_WAIT_SECONDS)
        if self.error is not None:
            raise self.error
        return EXIT_FAILED if self.failures else 0

    def interactive(self, screen: Screen) -> int:
        self._display.line(
            "* type a message and press Enter; /help for commands, /quit to leave"
        )
        try:
            while True:
                # Under the lock: either this loop sees the end, or the
                # event thread sees the flag and interrupts the prompt.
                with self._changed:
                    if self.ended:
                        break
                    self._main_waiting_for_input = True
                try:
                    line = screen.read_line()
                finally:
                    with self._changed:
                        self._main_waiting_for_input = False
                if not self.handle(line):
                    break
        except EOFError:
            self.leave("left the chat")
        except KeyboardInterrupt:
            if not self.ended:
                self.leave("left the chat")
        print()
        self.wait(lambda: self.ended, END_WAIT_SECONDS)
        if self.error is not None:
            raise self.error
        return 0

    def from_lines(self, lines: Any, wait_seconds: float) -> int:
        for line in lines:
            if self.ended or not self.handle(line):
                return self.finish()
        # Input ended: wait until every action has an outcome, then leave.
        settled = self.wait(lambda: not self._pending or self.ended, wait_seconds)
        if not settled:
            self._display.line(
                f"! {len(self._pending)} actions had no outcome after "
                f"{wait_seconds:.0f} s; leaving"
            )
            self.failures += 1
        if not self.ended:
            self.leave("done")
        return self.finish()


# -- chat --list ------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    client = stub(args)
    response = rpc(lambda: client.ListChats(clirpc_pb2.ListChatsRequest()))
    if args.json:
        print_json([to_dict(c) for c in response.chats])
        return 0
    if not response.chats:
        print("no queued messages, offers or chats")
        return 0
    for chat in response.chats:
        state = "connected" if chat.connected else "offline"
        key = (
            f"chat key {chat.key_fingerprint}"
            if chat.key_fingerprint
            else "no chat key"
        )
        print(f"{chat.peer} ({state}, {key})")
        for session in chat.sessions:
            print(f"  session: {session}")
        if chat.attached:
            print(f"  {chat.attached} chat client(s) attached")
        if chat.unread:
            print(
                f"  {chat.unread} message(s) received, shown when you run "
                f"`barterbackup chat {chat.peer}`"
            )
        for queued in chat.queued:
            text = queued.text.replace("\n", " ")
            text = text if len(text) <= 60 else text[:59] + "…"
            print(
                f"  queued #{queued.queued_id} ({human_time(queued.queued_at)}): {text}"
            )
        for offer in chat.offers_received:
            print(
                f"  offered to you: {offer.offer_id[:8]} {offer.name} "
                f"({human_size(offer.size)}) until {human_time(offer.expires_at)}"
            )
        for offer in chat.offers_made:
            print(
                f"  offered by you: {offer.offer_id[:8]} {offer.name} "
                f"({human_size(offer.size)}) until {human_time(offer.expires_at)}"
            )
    return 0
