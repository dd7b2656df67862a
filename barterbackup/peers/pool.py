"""Connections to peers: dial, de-duplicate, reconnect with backoff.

The pool keeps one authenticated connection per peer. A second connection
from the same key replaces the first. Peers we dialled (or that the table
says we reach) are reconnected after a loss, with exponential backoff and
jitter, until the pool stops. Listeners hear of every connection made and
lost (the contract book reacts to them). Only peers with a record in the
peer table (the user connected them, or a contract binds us) are redialled
after a restart.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from barterbackup.bbrpc.connection import PeerConnection
from barterbackup.bbrpc.factory import connect_peer
from barterbackup.keys import NodeKeys
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.peers.records import PeerRecords
from barterbackup.sync.interfaces import ReactorTime
from barterbackup.transport.base import Transport

log = get_logger("barterbackup.peers")

# Reconnect schedule: 2 s, 4 s, ... capped at 5 minutes, ±25 % jitter so
# that peers restarting together do not retry in lockstep.
RECONNECT_FIRST_DELAY = 2.0
RECONNECT_MAX_DELAY = 300.0
RECONNECT_JITTER = 0.25
# Dialling a Tor onion can take a while on a fresh circuit.
CONNECT_TIMEOUT = 120.0

ConnectionListener = Callable[[PeerConnection], object]


@dataclass
class _Reconnect:
    delay: float = RECONNECT_FIRST_DELAY
    call: Any = None  # an IDelayedCall while a retry is scheduled


class ConnectionPool:
    """The authenticated connections of one node (reactor thread only).

    ``clock`` schedules reconnects and timeouts; ``rng`` draws their
    jitter; ``now()`` gives wall-clock seconds for the peer table.
    """

    def __init__(
        self,
        clock: ReactorTime,
        keys: NodeKeys,
        transport: Transport,
        handler: object,
        records: PeerRecords,
        now: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._clock = clock
        self._keys = keys
        self._transport = transport
        self.handler = handler
        self._records = records
        self._now = now
        self._rng = rng
        self._connections: dict[bytes, PeerConnection] = {}
        self._reconnects: dict[bytes, _Reconnect] = {}
        # A dial in progress per peer, and who waits for it (every caller
        # dialling a peer already being dialled gets the same result).
        self._dialling: dict[bytes, _Dialling] = {}
        self._on_connected: list[ConnectionListener] = []
        self._on_lost: list[ConnectionListener] = []
        self._stopping = False

    # -- listeners ----------------------------------------------------------

    def when_connected(self, listener: ConnectionListener) -> None:
        self._on_connected.append(listener)

    def when_lost(self, listener: ConnectionListener) -> None:
        self._on_lost.append(listener)

    # -- queries ------------------------------------------------------------

    # A connection that is closing stays in the table until its close
    # callbacks ran (its calls fail first, and their errbacks may ask for
    # the peer again): only authenticated ones are handed out.

    def connection(self, pubkey: bytes) -> PeerConnection | None:
        conn = self._connections.get(pubkey)
        return conn if conn is not None and conn.authenticated else None

    def connections(self) -> dict[bytes, PeerConnection]:
        return {p: c for p, c in self._connections.items() if c.authenticated}

    def is_connected(self, pubkey: bytes) -> bool:
        return self.connection(pubkey) is not None

    # -- dialling -----------------------------------------------------------

    def dial(
        self, pubkey: bytes, hint: str = "", isolation: str | None = None
    ) -> Deferred[PeerConnection]:
        """Connect to ``pubkey`` (if not connected already) and keep it.

        From now on the peer is reconnected whenever the connection drops.
        ``isolation`` asks the transport for circuits of its own (Tor: a
        SOCKS isolation string; recovery fetches from each replica over
        its own circuit). Fails with the transport's or the handshake's
        error, or ``defer.TimeoutError`` after CONNECT_TIMEOUT.
        """
        self._reconnects.setdefault(pubkey, _Reconnect())
        conn = self.connection(pubkey)
        if conn is not None:
            return succeed(conn)
        return self._dial(pubkey, hint, isolation)

    def reconnect_all_known(self) -> None:
        """At start: dial every peer of the table the transport can reach."""
        for record in self._records:
            if record.endpoint or self._transport.reaches_by_address:
                pubkey = bytes(record.onion_pubkey)
                self._reconnects.setdefault(pubkey, _Reconnect())
                self._schedule_reconnect(pubkey, delay=0.0)

    def accepted(self, conn: PeerConnection) -> None:
        """An inbound connection authenticated (the server factory's hook)."""
        self._authenticated(conn)
        conn.when_closed().addCallback(self._lost)

    def stop(self) -> None:
        self._stopping = True
        for state in self._reconnects.values():
            if state.call is not None and state.call.active():
                state.call.cancel()
        for dialling in list(self._dialling.values()):
            dialling.source.cancel()
        for conn in list(self._connections.values()):
            conn.close()

    # -- internals ------------------------------------------------------------

    def _dial(
        self, pubkey: bytes, hint: str, isolation: str | None = None
    ) -> Deferred[PeerConnection]:
        if pubkey in self._dialling:
            return self._dialling[pubkey].follow()
        address = onion_address_from_pubkey(pubkey)
        try:
            transport: Any = self._transport
            if isolation is not None and getattr(transport, "isolates", False):
                endpoint = transport.client_endpoint(
                    address, hint or None, isolation=isolation
                )
            else:
                endpoint = self._transport.client_endpoint(address, hint or None)
        except Exception:
            return fail()
        dialling = connect_peer(
            self._clock, endpoint, self._keys, address, self.handler
        )
        dialling.addTimeout(CONNECT_TIMEOUT, self._clock)
        shared = _Dialling(dialling)
        self._dialling[pubkey] = shared

        def done(result: object) -> object:
            if self._dialling.get(pubkey) is shared:
                del self._dialling[pubkey]
            return result

        dialling.addBoth(done)
        dialling.addCallback(self._dialled)
        dialling.addBoth(shared.settle)
        return shared.follow()

    def _dialled(self, conn: PeerConnection) -> PeerConnection:
        self._authenticated(conn)
        conn.when_closed().addCallback(self._lost)
        return conn

    def _authenticated(self, conn: PeerConnection) -> None:
        pubkey = _pubkey(conn)
        previous = self._connections.get(pubkey)
        self._connections[pubkey] = conn
        if previous is not None and previous is not conn:
            previous.close()
        state = self._reconnects.get(pubkey)
        if state is not None:
            state.delay = RECONNECT_FIRST_DELAY
        # Known peers only: a stranger authenticating is not recorded.
        self._records.seen(pubkey, int(self._now()))
        conn.ping().addCallbacks(
            lambda seconds: self._records.seen(
                pubkey, int(self._now()), rtt_ms=int(seconds * 1000)
            ),
            lambda failure: None,
        )
        log.info("peer {peer} connected", peer=onion_address_from_pubkey(pubkey))
        for listener in list(self._on_connected):
            listener(conn)

    def _lost(self, conn: PeerConnection) -> None:
        pubkey = _pubkey(conn)
        if self._connections.get(pubkey) is not conn:
            return
        del self._connections[pubkey]
        log.info("peer {peer} disconnected", peer=onion_address_from_pubkey(pubkey))
        for listener in list(self._on_lost):
            listener(conn)
        if pubkey in self._reconnects:
            self._schedule_reconnect(pubkey)

    def _schedule_reconnect(self, pubkey: bytes, delay: float | None = None) -> None:
        if self._stopping:
            return
        state = self._reconnects.setdefault(pubkey, _Reconnect())
        if state.call is not None and state.call.active():
            return
        wait = state.delay if delay is None else delay
        wait *= 1 + self._rng.uniform(-RECONNECT_JITTER, RECONNECT_JITTER)
        state.call = self._clock.callLater(wait, self._reconnect, pubkey)

    def _reconnect(self, pubkey: bytes) -> None:
        state = self._reconnects[pubkey]
        state.call = None
        if self._stopping or pubkey in self._connections:
            return
        dialling = self._dial(pubkey, self._records.endpoint(pubkey))

        def failed(failure: Failure) -> None:
            state.delay = min(state.delay * 2, RECONNECT_MAX_DELAY)
            log.info(
                "reconnecting to {peer} failed ({why}); next try in {delay:.0f} s",
                peer=onion_address_from_pubkey(pubkey),
                why=failure.getErrorMessage(),
                delay=state.delay,
            )
            self._schedule_reconnect(pubkey)

        dialling.addErrback(failed)


def _pubkey(conn: PeerConnection) -> bytes:
    assert conn.peer_pubkey is not None, "only authenticated connections"
    return bytes(conn.peer_pubkey)


class _Dialling:
    """One dial in progress and the callers waiting for it.

    Each follower gets the dial's result, failures included: they share
    one relay at the end of the dial's chain, so no follower's handling
    changes what another sees (a chain of relays each swallowing the
    failure gave every follower after the first ``None``).
    """

    def __init__(self, source: Deferred[PeerConnection]) -> None:
        self.source = source
        self._followers: list[Deferred[PeerConnection]] = []
        self._settled = False
        self._result: PeerConnection | Failure | None = None

    def follow(self) -> Deferred[PeerConnection]:
        follower: Deferred[PeerConnection] = Deferred()
        if self._settled:
            # The dial ended already (a transport that connects at once).
            self._deliver(follower)
        else:
            self._followers.append(follower)
        return follower

    def settle(self, result: PeerConnection | Failure) -> None:
        self._settled, self._result = True, result
        followers, self._followers = self._followers, []
        for follower in followers:
            self._deliver(follower)

    def _deliver(self, follower: Deferred[PeerConnection]) -> None:
        result = self._result
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            assert result is not None
            follower.callback(result)
