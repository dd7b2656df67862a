"""The peer network as a Twisted Service: the transport, our bbrpc server,
the connection pool.

``startService`` starts the transport (launching and bootstrapping Tor can
take a while) in the background and returns nothing the service tree
waits for; ``ready()`` fires once peers can reach us, or fails with why
they cannot. ``stopService`` closes every connection and stops the
transport (and the tor it launched).
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from barterbackup import errors
from barterbackup.bbrpc.factory import AdmissionLimits, PeerServerFactory
from barterbackup.keys import NodeKeys
from barterbackup.logs import get_logger
from barterbackup.peers.pool import ConnectionPool
from barterbackup.sync.interfaces import ReactorTime
from barterbackup.transport.base import Transport

log = get_logger("barterbackup.peers")


class PeerNetwork(Service):
    """Listens for peers and keeps the pool's connections, while running."""

    name = "peer-network"

    def __init__(
        self,
        clock: ReactorTime,
        keys: NodeKeys,
        transport: Transport,
        pool: ConnectionPool,
        admission: AdmissionLimits | None = None,
    ) -> None:
        self._admission = admission
        self._clock = clock
        self._keys = keys
        self.transport = transport
        self.pool = pool
        self._started: Deferred[None] | None = None
        self._listening: Any = None
        self._ready = False
        self.failure = ""
        self._waiting: list[Deferred[None]] = []

    @property
    def state(self) -> str:
        """The peer network: "starting", "ready" or "failed: <why>"."""
        if not self._ready:
            return "starting"
        return f"failed: {self.failure}" if self.failure else "ready"

    def ready(self) -> Deferred[None]:
        """Fires once the transport listens; fails if it could not start."""
        d: Deferred[None] = Deferred()
        if self._ready:
            self._fire_ready(d)
        else:
            self._waiting.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        self._started = Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        try:
            await self.transport.start()
            factory = PeerServerFactory(
                self._clock,
                self._keys,
                self.pool.handler,
                on_authenticated=self.pool.accepted,
                admission=self._admission or AdmissionLimits.for_this_process(),
            )
            self._listening = await self.transport.listen(cast(Any, factory))
        except Exception as e:
            self.failure = f"peer network failed to start: {e}"
            log.error("{failure}", failure=self.failure)
        else:
            log.info("peers reach us at {where}", where=self.transport.advertised)
        self._ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            self._fire_ready(d)
        if not self.failure and self.running:
            self.pool.reconnect_all_known()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.pool.stop()
        # The transport stops whatever it started, even while still starting.
        await self.transport.stop()

    def _fire_ready(self, d: Deferred[None]) -> None:
        if self.failure:
            d.errback(errors.Unavailable(self.failure))
        else:
            d.callback(None)
