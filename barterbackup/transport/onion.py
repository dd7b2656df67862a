"""Publishing our ephemeral onion service, with Tor's defences against
floods turned on.

We issue ``ADD_ONION`` ourselves (txtorcon's helper has no way to pass the
defence keywords) and wait, from Tor's ``HS_DESC`` events, until every
descriptor upload Tor attempted has ended and at least one reached an
HSDir: then peers can connect at once.

The defences (tor ≥ 0.4.8, built with the ``pow`` module, as Debian's is):

* **Proof of work** (``PoWDefensesEnabled``): under load, clients must
  solve a puzzle whose effort Tor raises while introductions queue up, so
  a flood of introductions costs the flooder, not us. ``PoWQueueRate`` /
  ``PoWQueueBurst`` bound how many introductions per second Tor takes from
  the queue (and in a burst) when it is under attack.
* **Streams per circuit** (``MaxStreams`` with ``MaxStreamsCloseCircuit``):
  a peer needs one stream per connection; a circuit that opens more than
  this many is closed.

Intro-point rate limits (``HiddenServiceEnableIntroDoSDefense``) exist only
for onion services configured in torrc, not for ``ADD_ONION`` ones: they
are not available to an ephemeral service (docs/operator-guide.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from barterbackup.logs import get_logger
from barterbackup.transport.base import TransportError

log = get_logger("barterbackup.transport")


@dataclass(frozen=True)
class OnionDefences:
    """What Tor does against floods of our onion service."""

    proof_of_work: bool = True
    # Tor's own defaults for HiddenServicePoWQueueRate / ...QueueBurst.
    pow_queue_rate: int = 250
    pow_queue_burst: int = 2500
    # 0 means no limit.
    max_streams_per_circuit: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.pow_queue_rate <= 2**31 - 1:
            raise ValueError("the PoW queue rate must be at least 1 per second")
        if not self.pow_queue_rate <= self.pow_queue_burst <= 2**31 - 1:
            raise ValueError("the PoW queue burst must be at least the rate")
        if not 0 <= self.max_streams_per_circuit <= 65535:
            raise ValueError("max streams per circuit must be 0..65535")

    def keywords(self) -> list[str]:
        """The ADD_ONION keywords these defences give."""
        words = []
        if self.max_streams_per_circuit:
            words += [
                "Flags=MaxStreamsCloseCircuit",
                f"MaxStreams={self.max_streams_per_circuit}",
            ]
        if self.proof_of_work:
            words += [
                "PoWDefensesEnabled=1",
                f"PoWQueueRate={self.pow_queue_rate}",
                f"PoWQueueBurst={self.pow_queue_burst}",
            ]
        return words


class OnionPublishFailed(TransportError):
    """Tor refused the onion service or could not upload its descriptor."""


class PublishedOnion:
    """An onion service Tor serves for this control connection."""

    def __init__(self, control: Any, service_id: str) -> None:
        self._control = control
        self.service_id = service_id

    @property
    def hostname(self) -> str:
        return f"{self.service_id}.onion"

    def remove(self) -> Deferred[Any]:
        """Withdraw the service (DEL_ONION)."""
        result: Deferred[Any] = self._control.queue_command(
            f"DEL_ONION {self.service_id}"
        )
        return result


def add_onion_command(
    key_blob: str, virtual_port: int, local_port: int, defences: OnionDefences
) -> str:
    """The ADD_ONION command publishing ``key_blob`` with ``defences``."""
    if any(c in key_blob for c in " \r\n"):
        raise ValueError("a key blob has no spaces or line breaks")
    return " ".join(
        [
            "ADD_ONION",
            key_blob,
            *defences.keywords(),
            f"Port={virtual_port},127.0.0.1:{local_port}",
        ]
    )


async def publish_onion(
    control: Any,
    key_blob: str,
    virtual_port: int,
    local_port: int,
    defences: OnionDefences,
) -> PublishedOnion:
    """Publish the onion service and wait until its descriptor is up.

    ``control`` is a txtorcon TorControlProtocol (``queue_command``,
    ``add_event_listener``, ``remove_event_listener``). The caller bounds
    the wait. Raises OnionPublishFailed if Tor refuses the command or every
    attempted upload fails.
    """
    uploads = _Uploads()
    await control.add_event_listener("HS_DESC", uploads.event)
    try:
        try:
            reply = await control.queue_command(
                add_onion_command(key_blob, virtual_port, local_port, defences)
            )
        except Exception as error:
            raise OnionPublishFailed(
                f"tor refused the onion service: {error}"
            ) from None
        service_id = _service_id(str(reply))
        uploads.named(service_id)
        await uploads.done
    finally:
        await control.remove_event_listener("HS_DESC", uploads.event)
    log.info(
        "onion {address} published: {count} descriptor upload(s)",
        address=f"{service_id}.onion",
        count=len(uploads.uploaded),
    )
    return PublishedOnion(control, service_id)


def _service_id(reply: str) -> str:
    for line in reply.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "ServiceID" and value:
            return value
    raise OnionPublishFailed("tor's ADD_ONION reply named no ServiceID")


class _Uploads:
    """Descriptor uploads of one service, from HS_DESC events.

    Events may come before ADD_ONION's reply names the service; they are
    kept and matched once it does.
    """

    def __init__(self) -> None:
        self.service_id: str | None = None
        self.attempted: set[str] = set()
        self.uploaded: set[str] = set()
        self.failed: set[str] = set()
        self.done: Deferred[None] = Deferred()
        self._early: list[list[str]] = []

    def named(self, service_id: str) -> None:
        self.service_id = service_id
        early, self._early = self._early, []
        for words in early:
            self._take(words)

    def event(self, text: str) -> None:
        # HS_DESC Action HSAddress AuthType HsDir [DescriptorID] [REASON=…]
        words = text.split()
        if len(words) < 4:
            return
        if self.service_id is None:
            self._early.append(words)
            return
        self._take(words)

    def _take(self, words: list[str]) -> None:
        action, address, hsdir = words[0], words[1], words[3]
        if address != self.service_id or self.done.called:
            return
        if action == "UPLOAD":
            self.attempted.add(hsdir)
        elif action == "UPLOADED" and hsdir in self.attempted:
            self.uploaded.add(hsdir)
        elif action == "FAILED" and hsdir in self.attempted:
            self.failed.add(hsdir)
        else:
            return
        if self.attempted and self.uploaded | self.failed == self.attempted:
            if self.uploaded:
                self.done.callback(None)
            else:
                reasons = [w for w in words if w.startswith("REASON=")]
                self.done.errback(
                    OnionPublishFailed(
                        f"every descriptor upload failed ({' '.join(reasons)})"
                    )
                )
