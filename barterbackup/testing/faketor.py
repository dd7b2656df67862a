"""A fake of the few ``txtorcon.Tor`` calls TorTransport makes.

It computes the onion address from the key blob the way Tor does (public
key = scalar of the expanded key times the base point), so a test can tell
a correct key hand-over from a wrong one without running Tor. Pass
``publish_as`` to make it publish some other address, ``hang_publish`` to make
publishing never finish.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
from twisted.internet.defer import Deferred, succeed

from barterbackup.keys.onion import onion_address_from_pubkey

KEY_PREFIX = "ED25519-V3:"


def onion_address_of_key_blob(blob: str) -> str:
    """The address Tor publishes for an ``ED25519-V3:`` key blob."""
    if not blob.startswith(KEY_PREFIX):
        raise ValueError("not an ED25519-V3 key blob")
    expanded = base64.b64decode(blob[len(KEY_PREFIX) :])
    if len(expanded) != 64:
        raise ValueError("an expanded Ed25519 key is 64 bytes")
    pubkey = nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(expanded[:32])
    return onion_address_from_pubkey(pubkey)


@dataclass
class FakeOnionService:
    """What ``create_onion_service`` returns; records its removal."""

    hostname: str
    ports: list[tuple[int, int]]
    removed: bool = False

    def remove(self) -> Deferred[None]:
        self.removed = True
        return succeed(None)


@dataclass
class FakeControlProtocol:
    """Answers GETINFO from a dict, like ``TorControlProtocol.get_info``."""

    info: dict[str, str] = field(default_factory=dict)

    def get_info(self, *keys: str) -> Deferred[dict[str, str]]:
        return succeed({key: self.info[key] for key in keys if key in self.info})


@dataclass
class FakeTor:
    """Stands in for a started ``txtorcon.Tor``."""

    socks_listeners: str = '"127.0.0.1:9050"'
    publish_as: str | None = None
    hang_publish: bool = False
    onions: list[FakeOnionService] = field(default_factory=list)
    publish_calls: list[dict[str, Any]] = field(default_factory=list)
    quit_called: bool = False

    @property
    def protocol(self) -> FakeControlProtocol:
        return FakeControlProtocol({"net/listeners/socks": self.socks_listeners})

    def create_onion_service(
        self,
        ports: Sequence[tuple[int, int]],
        private_key: str | None = None,
        version: int = 3,
        progress: Callable[[float, str, str], None] | None = None,
        await_all_uploads: bool = False,
    ) -> Deferred[FakeOnionService]:
        self.publish_calls.append(
            {
                "ports": list(ports),
                "private_key": private_key,
                "version": version,
                "await_all_uploads": await_all_uploads,
            }
        )
        if self.hang_publish:
            return Deferred()
        if private_key is None:
            raise ValueError("the fake only publishes given keys")
        hostname = self.publish_as or onion_address_of_key_blob(private_key)
        if progress is not None:
            progress(100.0, "uploaded", "descriptor uploaded")
        onion = FakeOnionService(hostname, list(ports))
        self.onions.append(onion)
        return succeed(onion)

    def quit(self) -> Deferred[None]:
        self.quit_called = True
        return succeed(None)
