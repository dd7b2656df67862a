"""A ChatSession on a bbrpc call streaming both ways (Chat, EncryptedChat).

``ChatSession`` knows nothing of bbrpc: it is given a ``send`` and fed
frames. The two classes here are that glue, one per end of the call:

* ``OutgoingCall``: we opened the call. The session's first frame opens it
  (``open_stream``), later ones go on its stream; the peer's items feed the
  session and the end of the peer's half (or its error) ends it.
* ``IncomingCall``: the peer opened it. The opening request is fed to the
  session before ``start``; the handler's Deferred (``done``) fires once
  the session stopped, our last frame went out and the caller ended its
  half, so a frame the caller had in flight reaches this call (and the
  closed session ignores it) instead of opening a new one.

Either way, ``end()`` is what the owner calls after ChatStopped. A peer
that never ends its half does not keep the call for ever: after
``LINGER_SECONDS`` the call is given up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.chat.session import Frame, Mode
from barterbackup.logs import get_logger
from barterbackup.sync.interfaces import ReactorTime

log = get_logger("barterbackup.chat.wire")

# How long a call waits for the peer to end its half after our stop.
LINGER_SECONDS = 30.0


def request_field(mode: Mode) -> str:
    """The Envelope field of the call carrying a session of ``mode``."""
    return "encrypted_chat_request" if mode is Mode.ENCRYPTED else "chat_request"


class SessionInput(Protocol):
    """What the call feeds: a ChatSession."""

    def receive(self, frame: Frame) -> None: ...

    def stream_ended(self) -> None: ...


class StreamConnection(Protocol):
    """What an outgoing call needs of a peer connection."""

    def open_stream(
        self, request_field: str, message: Message, on_item: Callable[[Any], object]
    ) -> Any: ...


class OutgoingCall:
    """Our half of a chat call we open on ``conn``.

    ``on_refused(reason)`` hears when the peer answered the call with an
    error (busy, not served) instead of a stream.
    """

    def __init__(self, conn: StreamConnection, mode: Mode, clock: ReactorTime) -> None:
        self._conn = conn
        self._field = request_field(mode)
        self._clock = clock
        self.on_refused: Callable[[str], None] = lambda reason: None
        self._stream: Any = None
        self._session: SessionInput | None = None
        self._peer_done = False
        self._linger: Any = None

    def bind(self, session: SessionInput) -> None:
        self._session = session

    def send(self, frame: Frame) -> Deferred[None] | None:
        """The session's ``send``: the first frame opens the call."""
        if self._stream is None:
            try:
                self._stream = self._conn.open_stream(self._field, frame, self._deliver)
            except Exception as error:
                return fail(error)
            self._stream.result.addBoth(self._peer_ended)
            return None
        sent: Deferred[None] = self._stream.send(frame)
        return sent

    def end(self) -> None:
        """End our half (after ChatStopped); give up on the peer's later."""
        if self._stream is None:
            return
        self._stream.end()
        if not self._peer_done and self._linger is None:
            self._linger = self._clock.callLater(LINGER_SECONDS, self._give_up)

    def _deliver(self, item: Frame) -> None:
        if self._session is not None:
            self._session.receive(item)

    def _peer_ended(self, result: object) -> None:
        self._peer_done = True
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if isinstance(result, Failure) and result.check(PeerCallError):
            error: PeerCallError = result.value  # type: ignore[assignment]
            self.on_refused(error.message)
        if self._session is not None:
            self._session.stream_ended()

    def _give_up(self) -> None:
        self._linger = None
        if not self._peer_done and self._stream is not None:
            log.info("a chat peer did not end its stream; cancelling the call")
            self._stream.result.cancel()


class IncomingCall:
    """Our half of a chat call the peer opened; ``done`` is the handler's."""

    def __init__(self, stream: Any, clock: ReactorTime) -> None:
        self._stream = stream
        self._clock = clock
        self._session: SessionInput | None = None
        self._last_send: Deferred[None] = succeed(None)
        self._caller_done = False
        self._ours_done = False
        self._linger: Any = None
        self.done: Deferred[None] = Deferred()

    def send(self, frame: Frame) -> Deferred[None]:
        """The session's ``send``."""
        sent: Deferred[None] = self._stream.send(frame)
        self._last_send = sent
        return sent

    def start(
        self, session: SessionInput, opening: Frame, start: Callable[[], None]
    ) -> None:
        """Feed the opening request, start the session, then the caller's items."""
        self._session = session
        session.receive(opening)
        start()
        self._stream.receive(session.receive).addBoth(self._caller_ended)

    def end(self) -> None:
        """The session stopped: finish once the caller's half is over too."""
        if self._ours_done:
            return
        self._ours_done = True
        if self._caller_done:
            self._finish()
        else:
            self._linger = self._clock.callLater(LINGER_SECONDS, self._finish)

    def _caller_ended(self, result: object) -> None:
        self._caller_done = True
        if self._session is not None:
            self._session.stream_ended()
        if self._ours_done:
            self._finish()

    def _finish(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if self.done.called:
            return
        # Our end of the call goes out after our last frame, never before.
        # (The session's own errback on that Deferred ran first: what
        # arrives here is never a failure left unhandled.)

        def finished(result: object) -> object:
            if not self.done.called:
                self.done.callback(None)
            return result

        self._last_send.addBoth(finished)
