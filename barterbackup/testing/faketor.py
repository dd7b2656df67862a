"""A fake of the few ``txtorcon.Tor`` calls TorTransport makes.

Its control protocol answers GETINFO from a dict and takes ``ADD_ONION`` /
``DEL_ONION`` the way Tor does: it computes the onion address from the key
blob (public key = scalar of the expanded key times the base point), so a
test can tell a correct key hand-over from a wrong one without running Tor,
and it reports descriptor uploads as ``HS_DESC`` events. Pass
``publish_as`` to make it publish some other address, ``hang_publish`` to
make uploads never finish, ``refuse_publish`` to make Tor refuse the
command, ``failed_uploads`` to make that many of its uploads fail.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
from twisted.internet.defer import Deferred, fail, succeed

from barterbackup.keys.onion import onion_address_from_pubkey

KEY_PREFIX = "ED25519-V3:"
# The HSDirs the fake uploads a descriptor to (Tor uploads to 4 per
# replica, 2 replicas, on the real network).
HSDIRS = ("$" + "A" * 40, "$" + "B" * 40, "$" + "C" * 40)


def onion_address_of_key_blob(blob: str) -> str:
    """The address Tor publishes for an ``ED25519-V3:`` key blob."""
    if not blob.startswith(KEY_PREFIX):
        raise ValueError("not an ED25519-V3 key blob")
    expanded = base64.b64decode(blob[len(KEY_PREFIX) :])
    if len(expanded) != 64:
        raise ValueError("an expanded Ed25519 key is 64 bytes")
    pubkey = nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(expanded[:32])
    return onion_address_from_pubkey(pubkey)


class TorCommandRefused(Exception):
    """What txtorcon raises for a 5xx reply (its TorProtocolError)."""


@dataclass
class FakeOnionService:
    """One ADD_ONION the fake took: its key, keywords and port mapping."""

    service_id: str
    key_blob: str
    keywords: list[str]
    port: str
    removed: bool = False

    @property
    def hostname(self) -> str:
        return f"{self.service_id}.onion"


@dataclass
class FakeControlProtocol:
    """Stands in for ``txtorcon.TorControlProtocol``."""

    tor: FakeTor
    listeners: dict[str, list[Callable[[str], object]]] = field(default_factory=dict)

    def get_info(self, *keys: str) -> Deferred[dict[str, str]]:
        info = {"net/listeners/socks": self.tor.socks_listeners}
        return succeed({key: info[key] for key in keys if key in info})

    def add_event_listener(
        self, event: str, callback: Callable[[str], object]
    ) -> Deferred[None]:
        self.listeners.setdefault(event, []).append(callback)
        return succeed(None)

    def remove_event_listener(
        self, event: str, callback: Callable[[str], object]
    ) -> Deferred[None]:
        self.listeners[event].remove(callback)
        return succeed(None)

    def emit(self, event: str, text: str) -> None:
        for callback in list(self.listeners.get(event, [])):
            callback(text)

    def queue_command(self, command: str) -> Deferred[str]:
        self.tor.commands.append(command)
        words = command.split()
        if words[0] == "ADD_ONION":
            return self._add_onion(words[1:])
        if words[0] == "DEL_ONION":
            for onion in self.tor.onions:
                if onion.service_id == words[1]:
                    onion.removed = True
                    return succeed("")
            return fail(TorCommandRefused("552 Unknown Onion Service id"))
        return fail(TorCommandRefused(f"510 Unrecognized command {words[0]!r}"))

    def _add_onion(self, words: list[str]) -> Deferred[str]:
        if self.tor.refuse_publish:
            return fail(TorCommandRefused("512 Invalid argument"))
        key_blob, *keywords = words
        (port,) = [w for w in keywords if w.startswith("Port=")]
        keywords.remove(port)
        address = self.tor.publish_as or onion_address_of_key_blob(key_blob)
        service_id = address.removesuffix(".onion")
        self.tor.onions.append(FakeOnionService(service_id, key_blob, keywords, port))
        # Tor sends the UPLOAD events before its reply reaches us: the
        # transport must keep them until the reply names the service.
        for hsdir in HSDIRS:
            self.emit("HS_DESC", f"UPLOAD {service_id} UNKNOWN {hsdir} desc")
        if not self.tor.hang_publish:
            self.tor.reactor.callLater(0, self.finish_uploads, service_id)
        return succeed(f"ServiceID={service_id}\nOK")

    def finish_uploads(self, service_id: str) -> None:
        for index, hsdir in enumerate(HSDIRS):
            if index < self.tor.failed_uploads:
                self.emit(
                    "HS_DESC",
                    f"FAILED {service_id} UNKNOWN {hsdir} REASON=UPLOAD_REJECTED",
                )
            else:
                self.emit("HS_DESC", f"UPLOADED {service_id} UNKNOWN {hsdir}")


@dataclass
class FakeTor:
    """Stands in for a started ``txtorcon.Tor``.

    Uploads finish on ``reactor`` (a ``task.Clock`` or memory reactor) one
    tick after ADD_ONION's reply.
    """

    reactor: Any  # IReactorTime: a task.Clock or a memory reactor
    socks_listeners: str = '"127.0.0.1:9050"'
    publish_as: str | None = None
    hang_publish: bool = False
    refuse_publish: bool = False
    failed_uploads: int = 0
    onions: list[FakeOnionService] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    quit_called: bool = False
    _protocol: FakeControlProtocol | None = None

    @property
    def protocol(self) -> FakeControlProtocol:
        if self._protocol is None:
            self._protocol = FakeControlProtocol(self)
        return self._protocol

    def quit(self) -> Deferred[None]:
        self.quit_called = True
        return succeed(None)
