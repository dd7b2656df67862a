"""``make demo``: nodes back each other up under contracts over a private
Tor network.

Everything runs on 127.0.0.1 with no internet: four Tor directory
authorities (barterbackup.testing.tornet), then four real daemons
(``twistd barterbackup``), each launching its own tor joined to that network
and publishing its onion service under the key derived from its password.
The demo drives them only through the ``barterbackup`` CLI, as a user would:
unlock; alice, bob and carol exchange addresses; alice adds a sample
directory and proposes storage contracts to bob and carol (the accepted
contract syncs her content there); a spot check passes with its stated
confidence; alice edits files and only the delta travels; bob shares
dave with his peers and alice finds him with ``peers discover``; then carol's
node stops: alice's contract with carol turns suspect, ``status --check``
says "under-replicated", and once the (shortened) outage limit is over the
contract breaks and alice's node forms a replacement contract with dave by
itself and syncs her content to it before letting carol go. Then alice
and bob agree on a chat key and chat encrypted: alice sends a message and
offers a photo, bob (a script reading ``chat --json`` events) fetches it
and answers, and alice reads the answer later. Last, alice loses her
machine (daemon stopped, node directory deleted): a new daemon and
``barterbackup recover`` with her password alone bring back her files,
peers and contracts from bob and dave, and she reads a photo back.

The daemons run with ``--contract-timings`` (checks every minute, a
one-minute outage limit): the default timings are measured in days.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

from barterbackup.testing.daemon import BIN, DaemonProcess
from barterbackup.testing.tornet import TorNetwork

NAMES = ("alice", "bob", "carol", "dave")
# Demo passphrases (fixed so the onion addresses are the same every run).
PASSWORDS = {
    "alice": "quartz-lantern-ember-violet-harbor-cobalt-meadow",
    "bob": "saffron-glacier-tundra-orchid-beacon-falcon-pebble",
    "carol": "walnut-prism-meteor-canyon-thimble-juniper-sonnet",
    "dave": "harbor-nebula-quilt-sparrow-granite-lilac-orbit",
}
READY_TIMEOUT = 240.0
# What the daemons are told instead of days: checks every minute, an
# outage breaks a contract after a minute, a broken peer is replaced at
# once (docs/operator-guide.md, "Contract timings").
CONTRACT_TIMINGS = {
    "check_interval": 60,
    "answer_deadline": 30,
    "outage_limit": 60,
    "grace_after_outage": 600,
    "grace_after_failed_checks": 300,
    "ending_keep": 300,
    "probe_delay": 5,
    "replan_delay": 2,
    "maintain_every": 15,
    "retry_peer_after": 30,
}
# How long the demo waits for a contract to change state at most.
STATE_TIMEOUT = 240.0
CHAT_TIMEOUT = 300.0


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def make_sample(root: Path, seed: int = 7) -> None:
    """A small photo-album-like tree: a few large binaries, text, small files."""
    rng = random.Random(seed)
    (root / "photos").mkdir(parents=True)
    (root / "notes").mkdir()
    for i in range(4):
        (root / "photos" / f"img_{i:03}.jpg").write_bytes(rng.randbytes(2_000_000))
    words = "backup onion peer revision section delta tor replica".split()
    for i in range(30):
        text = " ".join(rng.choice(words) for _ in range(4000))
        (root / "notes" / f"note_{i:02}.txt").write_text(text)


def change_sample(root: Path, seed: int = 8) -> int:
    """Edit two files in place and add one; return the bytes changed."""
    rng = random.Random(seed)
    photo = root / "photos" / "img_001.jpg"
    data = bytearray(photo.read_bytes())
    data[500_000 : 500_000 + 65536] = rng.randbytes(65536)
    photo.write_bytes(bytes(data))
    note = root / "notes" / "note_03.txt"
    note.write_text(note.read_text().replace("backup", "BACKUP", 50))
    (root / "notes" / "new.txt").write_text("a new file\n" * 100)
    return 65536 + 300 + 1100


class ScriptedChat:
    """``barterbackup chat PEER --json`` driven by a script, as bob's side."""

    def __init__(self, node_dir: Path, peer: str) -> None:
        command = [
            str(BIN / "barterbackup"),
            "--node-dir",
            str(node_dir),
            "chat",
            peer,
            "--json",
        ]
        print(f"[bob] $ barterbackup chat {peer} --json   (kept open)", flush=True)
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        for line in stdout:
            event = json.loads(line)
            if event.get("type") == "progress":
                done, total = event["bytes_done"], event["bytes_total"] or 1
                print(
                    f"[bob]   > progress {event['label']}: {done} / {total} bytes "
                    f"({done * 100 // total}%)",
                    flush=True,
                )
            else:
                print(f"[bob]   > {line.strip()}", flush=True)
            with self._changed:
                self._events.append(event)
                self._changed.notify_all()

    def wait_for(self, kind: str, test: Any = None) -> dict[str, Any]:
        deadline = time.monotonic() + CHAT_TIMEOUT
        with self._changed:
            while True:
                for event in self._events:
                    if event.get("type") == kind and (test is None or test(event)):
                        self._events.remove(event)
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise SystemExit(f"demo failed: bob's chat showed no {kind}")
                self._changed.wait(min(left, 1.0))

    def send(self, line: str) -> None:
        print(f"[bob]   < {line}", flush=True)
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        if self.process.wait(CHAT_TIMEOUT) != 0:
            raise SystemExit("demo failed: bob's chat did not end cleanly")


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.daemons: dict[str, DaemonProcess] = {}
        self.addresses: dict[str, str] = {}
        self.network_config = workdir / "tor-network.json"
        self.timings = workdir / "contract-timings.json"

    def cli(
        self, name: str, *args: str, show: bool = False, input: str | None = None
    ) -> str:
        """Run the CLI against one node; ``show`` lets its output through,
        ``input`` is piped to it."""
        daemon = self.daemons[name]
        command = [str(BIN / "barterbackup"), "--node-dir", str(daemon.node_dir), *args]
        print(f"[{name}] $ barterbackup {' '.join(args)}", flush=True)
        for line in (input or "").splitlines():
            print(f"[{name}]   < {line}", flush=True)
        if show:
            result = subprocess.run(command, timeout=600, input=input, text=True)
            if result.returncode != 0:
                raise SystemExit(f"demo failed: barterbackup {' '.join(args)}")
            return ""
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=600, input=input
        )
        if done.returncode != 0:
            raise SystemExit(
                f"demo failed: barterbackup {' '.join(args)}: {done.stderr.strip()}"
            )
        return done.stdout

    def start_daemon(self, name: str) -> Path:
        """Start ``name``'s daemon; returns its password file."""
        node_dir = self.workdir / name
        daemon = DaemonProcess(
            node_dir,
            log_path=self.workdir / f"{name}.log",
            extra_args=[
                "--tor-network-config",
                str(self.network_config),
                "--contract-timings",
                str(self.timings),
            ],
        )
        daemon.start()
        self.daemons[name] = daemon
        password_file = self.workdir / f"{name}.password"
        password_file.write_text(PASSWORDS[name] + "\n")
        return password_file

    def start_nodes(self, network_config: Path, timings: Path) -> None:
        self.network_config, self.timings = network_config, timings
        for name in NAMES:
            password_file = self.start_daemon(name)
            out = self.cli(
                name, "unlock", "--create", "--password-file", str(password_file)
            )
            self.addresses[name] = out.split()[-1]
            print(f"  {name} is {self.addresses[name]}")
            # Contracts are formed by hand first; alice asks for replicas
            # later in the story.
            self.cli_quiet(name, "storage", "set", "--min-replicas", "0")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        pending = set(NAMES)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                status = json.loads(self.cli_quiet(name, "status", "--json"))
                state = status.get("peer_network", "")
                if state == "ready":
                    print(f"  {name}: onion published ({status['peer_endpoint']})")
                    pending.discard(name)
                elif state.startswith("failed"):
                    raise SystemExit(
                        f"{name}: {state}\n{self.daemons[name].log_tail()}"
                    )
            time.sleep(1)
        if pending:
            raise SystemExit(f"nodes not ready after {READY_TIMEOUT:.0f} s: {pending}")

    def cli_quiet(self, name: str, *args: str) -> str:
        daemon = self.daemons[name]
        return daemon.cli(*args, check=True).stdout.decode()

    def contract_state(self, name: str, peer: str) -> tuple[str, str]:
        contracts = json.loads(self.cli_quiet(name, "contracts", "list", "--json"))
        mine = [c for c in contracts if c["peer"] == self.addresses[peer]]
        if not mine:
            return "none", ""
        return mine[-1]["state"], mine[-1].get("detail", "")

    def wait_for_state(self, name: str, peer: str, wanted: tuple[str, ...]) -> str:
        deadline = time.monotonic() + STATE_TIMEOUT
        seen = ""
        while time.monotonic() < deadline:
            state, detail = self.contract_state(name, peer)
            if state != seen:
                print(
                    f"  {name}'s contract with {peer}: {state}"
                    + (f" ({detail})" if detail else ""),
                    flush=True,
                )
                seen = state
            if state in wanted:
                return state
            time.sleep(1)
        raise SystemExit(
            f"{name}'s contract with {peer} did not become {wanted} within "
            f"{STATE_TIMEOUT:.0f} s\n{self.daemons[name].log_tail()}"
        )

    def run_scenario(self) -> None:
        alice = "alice"
        say("alice, bob and carol exchange addresses and connect over Tor")
        for a, b in (("alice", "bob"), ("alice", "carol")):
            self.cli(a, "peers", "connect", self.addresses[b], "--share")
            self.cli(b, "peers", "connect", self.addresses[a])
        print(self.cli(alice, "peers", "list"), end="")

        sample = self.workdir / "sample"
        make_sample(sample)
        say("alice adds a sample directory (8 MB photos, 30 notes)")
        print(self.cli(alice, "files", "add", str(sample)), end="")

        say("alice proposes storage contracts; once accepted, her content syncs")
        started = time.monotonic()
        for peer in ("bob", "carol"):
            self.cli(
                alice,
                "contracts",
                "propose",
                self.addresses[peer],
                "--ours",
                "64MiB",
                "--theirs",
                "64MiB",
                show=True,
            )
        first = time.monotonic() - started
        print(self.cli(alice, "contracts", "list"), end="")

        say("a spot check of every contract: 460 positions, a 32-byte answer")
        self.cli(alice, "contracts", "check", "--all", show=True)

        changed = change_sample(sample)
        say(f"alice edits two files and adds one (~{changed} bytes changed)")
        print(self.cli(alice, "files", "add", str(sample)), end="")
        say("the new revision syncs to her contracts: only changed sections travel")
        started = time.monotonic()
        self.cli(alice, "replicate", show=True)
        second = time.monotonic() - started

        say("what bob keeps for his peers, contract by contract")
        print(self.cli("bob", "storage", "show"), end="")
        say("alice's view of her peers, with their scores")
        print(self.cli(alice, "peers", "list"), end="")
        restored = self.cli(alice, "files", "get", "sample/notes/new.txt")
        print(
            f"  sample/notes/new.txt read back: {len(restored)} bytes, intact: "
            f"{restored == (sample / 'notes' / 'new.txt').read_text()}"
        )

        say("bob knows dave and lets his peers learn of him (--share)")
        self.cli("bob", "peers", "connect", self.addresses["dave"], "--share")
        say("alice asks her peers whom they share: dave, through bob")
        print(self.cli(alice, "peers", "discover"), end="")
        say("alice wants 2 replicas and connects dave; then carol's node stops")
        self.cli(alice, "storage", "set", "--min-replicas", "2")
        self.cli(alice, "peers", "connect", self.addresses["dave"])
        self.cli("dave", "peers", "connect", self.addresses[alice])
        self.daemons["carol"].stop()
        print("  carol's daemon stopped")
        self.wait_for_state(alice, "carol", ("suspect",))
        status = self.daemons[alice].cli("status", "--check")
        print(
            f"[alice] $ barterbackup status --check   (exit {status.returncode})\n"
            f"  {status.stdout.decode().strip()}"
        )
        say("past the outage limit the contract breaks; alice's node replaces it")
        self.wait_for_state(alice, "carol", ("broken",))
        self.wait_for_state(alice, "dave", ("active",))
        print(self.cli(alice, "contracts", "list"), end="")
        status = self.daemons[alice].cli("status", "--check")
        print(
            f"[alice] $ barterbackup status --check   (exit {status.returncode})\n"
            f"  {status.stdout.decode().strip()}"
        )
        say(
            f"contracts formed and synced in {first:.1f} s, the delta in {second:.1f} s"
        )
        self.run_chat(sample)
        self.run_recovery(sample)

    def run_recovery(self, sample: Path) -> None:
        """Alice loses her machine and recovers with her password alone."""
        alice = "alice"
        say("alice's replicas hold her newest revision (and her node state)")
        time.sleep(6)  # The contract changes reach a state-only revision.
        self.cli(alice, "replicate", show=True)
        before = json.loads(self.cli_quiet(alice, "status", "--json"))["revision"]
        say("alice loses her machine: daemon gone, node directory deleted")
        self.daemons[alice].stop()
        shutil.rmtree(self.workdir / alice)
        print(f"  {self.workdir / alice} deleted")
        say("a new machine, the same password: `recover` (no address typed)")
        started = time.monotonic()
        password_file = self.start_daemon(alice)
        self.cli(alice, "recover", "--password-file", str(password_file), show=True)
        took = time.monotonic() - started
        status = json.loads(self.cli_quiet(alice, "status", "--json"))
        print(
            f"  revision {status['revision']} back (was {before}) in {took:.1f} s, "
            "from daemon start"
        )
        print(self.cli(alice, "contracts", "list"), end="")
        restored = self.workdir / "img_001.restored"
        self.cli(
            alice, "files", "get", "sample/photos/img_001.jpg", "-o", str(restored)
        )
        same = restored.read_bytes() == (sample / "photos" / "img_001.jpg").read_bytes()
        print(f"  sample/photos/img_001.jpg read back after the loss: intact: {same}")
        if not same or status["revision"] != before:
            raise SystemExit("demo failed: the recovery did not bring everything back")

    def run_chat(self, sample: Path) -> None:
        """An encrypted chat with a file offer between alice and bob."""
        alice, bob = self.addresses["alice"], self.addresses["bob"]
        say("alice and bob agree on a chat key (alice generates, bob types it in)")
        made = self.cli("alice", "peers", "key", bob, "--generate")
        print(made, end="")
        key_file = self.workdir / "chat-key.txt"
        key_file.write_text(made.splitlines()[1].strip() + "\n")
        print(
            self.cli(
                "bob", "peers", "key", alice, "--set", "--key-file", str(key_file)
            ),
            end="",
        )

        say("bob opens a chat with alice (a script reading `chat --json` events)")
        downloads = self.workdir / "bob-downloads"
        downloads.mkdir()
        bob_chat = ScriptedChat(self.daemons["bob"].node_dir, alice)
        bob_chat.wait_for("opened")

        say("alice sends a message and offers a photo (lines piped to `chat`)")
        photo = sample / "photos" / "img_002.jpg"
        lines = f"hi bob, here is a photo from the album\n/file {photo}\n"
        self.cli("alice", "chat", bob, show=True, input=lines)

        message = bob_chat.wait_for("message")
        print(f"  bob reads: {message['text']!r} (encrypted: {message['encrypted']})")
        offer = bob_chat.wait_for("file_offered")
        print(
            f"  bob sees the offer of {offer['name']} ({offer['size']} bytes), "
            f"id {offer['offer_id'][:8]}; he types /get {offer['offer_id'][:8]}"
        )
        bob_chat.send(f"/get {offer['offer_id'][:8]} {downloads}")
        done = bob_chat.wait_for("transfer", lambda e: e["phase"] in ("done", "failed"))
        if done["phase"] != "done":
            raise SystemExit(f"demo failed: the fetch failed: {done['message']}")
        received = Path(done["path"])
        same = (
            hashlib.sha256(received.read_bytes()).digest()
            == hashlib.sha256(photo.read_bytes()).digest()
        )
        print(f"  bob saved {received} (identical to alice's: {same})")
        bob_chat.send("got it, thanks!")
        bob_chat.wait_for("delivery", lambda e: e["state"] == "delivered")
        bob_chat.close()

        say("alice left already: bob's answer waits on her node (in memory)")
        print(self.cli("alice", "chat", "--list"), end="")
        say("alice opens the chat again and reads it")
        self.cli("alice", "chat", bob, show=True, input="")

    def stop(self) -> None:
        for daemon in self.daemons.values():
            try:
                daemon.stop()
            except Exception as e:  # keep stopping the others
                print(f"stopping a daemon: {e}", file=sys.stderr)


async def main(reactor: Any, workdir: Path) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    say("starting a private Tor network on 127.0.0.1 (4 directory authorities)")
    network = TorNetwork(reactor, workdir / "tornet")
    demo = Demo(workdir)
    began = time.monotonic()
    try:
        await network.start()
        print(f"  consensus ready in {time.monotonic() - began:.1f} s")
        config = workdir / "tor-network.json"
        config.write_text(
            json.dumps({"torrc": [list(o) for o in network.client_torrc_options()]})
        )
        timings = workdir / "contract-timings.json"
        timings.write_text(json.dumps(CONTRACT_TIMINGS))
        say("starting four nodes, each with its own tor")
        await deferToThread(demo.start_nodes, config, timings)
        await deferToThread(demo.wait_ready)
        await deferToThread(demo.run_scenario)
        say(f"demo finished in {time.monotonic() - began:.1f} s; stopping everything")
    finally:
        await deferToThread(demo.stop)
        await network.stop()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("BARTERBACKUP_DEMO_DIR", "demo-run")),
        help="where the network and nodes live (wiped first; default ./demo-run)",
    )
    args = parser.parse_args()
    task.react(
        lambda reactor: defer.ensureDeferred(main(reactor, args.workdir.resolve()))
    )


if __name__ == "__main__":
    run()
