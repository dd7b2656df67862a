"""One side of a chat session, independent of the transport.

The bbrpc side feeds what the peer sends (``receive``) and the end of the
peer's stream (``stream_ended``); the local user acts (``send_message``,
``offer_file``, ``stop``); the session sends frames through the injected
``send`` and tells the user what happened through ``on_event``.

States: ``opening`` → ``confirming`` (encrypted only) → ``open`` →
``closed``. Every session ends with exactly one ChatStopped event, preceded
by ChatFailed when it ended on an error (a key mismatch, a refused frame).
After ChatStopped the caller ends the call's stream.

Encrypted (EncryptedChat) is the mode whenever a key is set for the peer;
plain (Chat) only when asked for (``choose_mode``). See docs/chat.md for the
frames.

Why a plain class with one state object per state, not an Automat machine:
almost every input comes from the peer, and each one that does not fit the
state must end the session cleanly with a reason rather than raise
NoTransition; the states are a straight line; the per-state data (the key
confirmation, then the channel) still lives in the state objects, not in
Optional fields.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from twisted.internet import defer
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2
from barterbackup.chat.aead import (
    SESSION_ID_LENGTH,
    ChatError,
    ChatKeyMismatch,
    FrameRefused,
    KeyConfirmation,
    RandomBytes,
    Role,
    SecureChannel,
    StreamCut,
)
from barterbackup.chat.messages import (
    MAX_MESSAGE_BYTES,
    InvalidMessage,
    escape_received,
    validate_message,
)
from barterbackup.chat.offers import (
    Clock,
    IncomingOffers,
    Offer,
    OfferRefused,
    ReceivedOffer,
    escaped_for_display,
)
from barterbackup.chat.peer_key import PeerKey
from barterbackup.logs import get_logger

# A sealed chat frame holds one ChatRequest: a message of ≤ 16 KiB, or an
# offer with a name of ≤ 1 KiB, plus a few bytes of framing.
MAX_CHAT_PLAINTEXT = 64 * 1024
# Messages sent but not yet acknowledged, and actions held until the
# session opens; beyond these the user is told to wait.
MAX_UNACKNOWLEDGED = 256
MAX_HELD_BEFORE_OPEN = 256
MAX_REASON_CHARACTERS = 500
# Frames fed before start(): the peer's opening frames, no more.
MAX_EARLY_FRAMES = 2

log = get_logger("barterbackup.chat.session")

Frame = bbrpc_pb2.ChatRequest | bbrpc_pb2.EncryptedChatRequest
Send = Callable[[Any], "defer.Deferred[Any] | None"]


class Mode(enum.Enum):
    """Which call carries the session."""

    PLAIN = "plain"
    ENCRYPTED = "encrypted"


class NoChatKey(ChatError):
    """An encrypted chat was wanted but no key is set for the peer."""


def choose_mode(peer_key: PeerKey | None, *, plain: bool = False) -> Mode:
    """Encrypted whenever a key is set; plain only when asked for."""
    if plain:
        return Mode.PLAIN
    if peer_key is None:
        raise NoChatKey(
            "no chat key is set for this peer: set one with `barterbackup "
            "peers key ONION --set` (or ask for a plain chat)"
        )
    return Mode.ENCRYPTED


# Events for the local user.


@dataclass(frozen=True)
class ChatOpened:
    """The session is open; ``fingerprint`` is the key's, when encrypted."""

    encrypted: bool
    fingerprint: str | None


@dataclass(frozen=True)
class MessageReceived:
    """A message from the peer, control characters escaped."""

    text: str


@dataclass(frozen=True)
class MessageDelivered:
    """The peer acknowledged the message sent with ``token``."""

    token: object


@dataclass(frozen=True)
class FileOffered:
    """The peer offers a file (kept in the IncomingOffers table)."""

    offer: ReceivedOffer


@dataclass(frozen=True)
class FileOfferRefused:
    """The peer sent an offer we cannot use; the session goes on."""

    reason: str


@dataclass(frozen=True)
class ChatFailed:
    """The session ends on an error; ChatStopped follows."""

    reason: str
    key_mismatch: bool


@dataclass(frozen=True)
class Undelivered:
    """A message sent (or held) that the peer never acknowledged."""

    text: str
    token: object


@dataclass(frozen=True)
class ChatStopped:
    """The session is over. ``cut`` when the stream ended without a stop."""

    reason: str
    by_peer: bool
    cut: bool
    undelivered: tuple[Undelivered, ...]


ChatEvent = (
    ChatOpened
    | MessageReceived
    | MessageDelivered
    | FileOffered
    | FileOfferRefused
    | ChatFailed
    | ChatStopped
)


# States. Each holds only what that state needs.


@dataclass
class _NotStarted:
    pass


@dataclass
class _AwaitingHello:
    handshake: KeyConfirmation


@dataclass
class _AwaitingInit:
    # The id the initiator proposed; None on the responder, which takes
    # the initiator's.
    proposed_session_id: bytes | None


@dataclass
class _Confirming:
    handshake: KeyConfirmation


@dataclass
class _Open:
    session_id: bytes
    # None in plain mode.
    channel: SecureChannel | None


@dataclass
class _Closed:
    reason: str


_State = _NotStarted | _AwaitingHello | _AwaitingInit | _Confirming | _Open | _Closed
_STATE_NAMES: dict[type, str] = {
    _NotStarted: "opening",
    _AwaitingHello: "opening",
    _AwaitingInit: "opening",
    _Confirming: "confirming",
    _Open: "open",
    _Closed: "closed",
}


@dataclass
class _Sent:
    # number is the message's place in the session, 0 while it is held.
    number: int
    text: str
    token: object


class ChatSession:
    """One side of one Chat or EncryptedChat call.

    ``role`` is INITIATOR on the side that opened the call. ``peer`` and
    ``local_onion`` are the 32-byte onion keys the bbrpc handshake
    authenticated. ``peer_key`` may be None even in encrypted mode (a peer
    opened an EncryptedChat with us and we hold no key): the key
    confirmation then fails on both sides with the same message.

    Input is handled strictly in order even when ``send`` or ``on_event``
    feed the session again from inside a call (two sessions wired directly
    to each other do): such frames wait in an inbox until the current one
    is done.
    """

    def __init__(
        self,
        *,
        mode: Mode,
        role: Role,
        peer: bytes,
        local_onion: bytes,
        peer_key: PeerKey | None,
        send: Send,
        on_event: Callable[[ChatEvent], None],
        random_bytes: RandomBytes,
        clock: Clock,
        incoming_offers: IncomingOffers,
    ) -> None:
        self.mode = mode
        self.role = role
        self.peer = peer
        self._local_onion = local_onion
        self._peer_key = peer_key
        self._send = send
        self._on_event = on_event
        self._random_bytes = random_bytes
        self._clock = clock
        self._incoming_offers = incoming_offers
        self._state: _State = _NotStarted()
        self._inbox: deque[Frame | None] = deque()
        self._draining = False
        # Messages (as _Sent) and offers the user sent before the session
        # opened, in order.
        self._held: list[_Sent | bbrpc_pb2.ChatRequest] = []
        self._unacknowledged: deque[_Sent] = deque()
        self._messages_sent = 0
        self._messages_received = 0

    # What the caller asks of the session.

    @property
    def state(self) -> str:
        return _STATE_NAMES[type(self._state)]

    @property
    def session_id(self) -> bytes | None:
        return self._state.session_id if isinstance(self._state, _Open) else None

    def start(self) -> None:
        """Send the opening frame(s); call once, as soon as the call exists.

        Encrypted: both sides send their hello. Plain: the initiator sends
        init with a fresh session id; the responder answers when it arrives.
        """
        if not isinstance(self._state, _NotStarted):
            raise ChatError("the session has started already")
        if self.mode is Mode.ENCRYPTED:
            handshake = KeyConfirmation(
                peer_key=self._peer_key,
                role=self.role,
                local_onion=self._local_onion,
                remote_onion=self.peer,
                random_bytes=self._random_bytes,
                max_plaintext=MAX_CHAT_PLAINTEXT,
            )
            self._state = _AwaitingHello(handshake)
            opening: Frame = bbrpc_pb2.EncryptedChatRequest(
                hello=bbrpc_pb2.ChatHello(nonce=handshake.local_nonce)
            )
        elif self.role is Role.INITIATOR:
            session_id = bytes(self._random_bytes(SESSION_ID_LENGTH))
            self._state = _AwaitingInit(session_id)
            opening = bbrpc_pb2.ChatRequest(
                session_id=session_id, init=bbrpc_pb2.ChatOpen(encrypted=False)
            )
        else:
            self._state = _AwaitingInit(None)
            self._drain()
            return
        self._draining = True
        try:
            self._transmit(opening)
        finally:
            self._draining = False
        self._drain()

    def send_message(self, text: str, token: object = None) -> None:
        """Send a message (held until the session opens).

        ``token`` comes back in MessageDelivered once the peer acknowledged
        it (an outbox message id, say). Raises InvalidMessage, or ChatError
        when the session is closed or too much waits already.
        """
        text = validate_message(text)
        self._check_usable()
        waiting = len(self._unacknowledged) + sum(
            isinstance(held, _Sent) for held in self._held
        )
        if waiting >= MAX_UNACKNOWLEDGED:
            raise ChatError(
                f"{MAX_UNACKNOWLEDGED} messages wait for the peer's "
                "acknowledgement; wait a moment"
            )
        state = self._state
        if not isinstance(state, _Open):
            self._hold(_Sent(0, text, token))
            return
        self._send_message_now(state, text, token)

    def offer_file(self, offer: Offer) -> None:
        """Announce ``offer`` (made in the OfferTable for this peer)."""
        self._check_usable()
        if offer.peer != self.peer:
            raise OfferRefused("this offer was made to another peer")
        if self._peer_key is None:
            raise OfferRefused(
                "offered files travel by EncryptedDownload, which needs the "
                "peer key; set one first"
            )
        request = bbrpc_pb2.ChatRequest(file=offer.to_proto(self._clock.seconds()))
        state = self._state
        if not isinstance(state, _Open):
            self._hold(request)
            return
        self._send_request(state, request)

    def stop(self, reason: str = "") -> None:
        """Close the session, telling the peer ``reason``.

        Before the session is open there is no authenticated way to say it:
        the caller ends the stream and the peer sees a cut.
        """
        state = self._state
        if isinstance(state, _Closed):
            return
        reason = reason[:MAX_REASON_CHARACTERS]
        self._state = _Closed(reason or "closed")
        if isinstance(state, _Open):
            stop = bbrpc_pb2.ChatRequest(stop=bbrpc_pb2.ChatClose(reason=reason))
            self._send_request(state, stop, final=True)
        self._finish(reason or "closed", by_peer=False, cut=False)

    # What the peer sends.

    def receive(self, frame: Frame) -> None:
        """Feed one frame from the peer's stream, in order.

        Frames fed before ``start`` (the one that opened the call, say) are
        kept and handled when it runs.
        """
        if isinstance(self._state, _Closed):
            # Frames in flight when we stopped: the peer learns of our stop.
            return
        if (
            isinstance(self._state, _NotStarted)
            and len(self._inbox) >= MAX_EARLY_FRAMES
        ):
            raise ChatError("start the session before feeding it more frames")
        self._inbox.append(frame)
        self._drain()

    def stream_ended(self) -> None:
        """The peer's stream ended (cleanly or not), after its last frame."""
        if isinstance(self._state, _Closed):
            return
        self._inbox.append(None)
        self._drain()

    # Inside.

    def _drain(self) -> None:
        if self._draining or isinstance(self._state, _NotStarted):
            return
        self._draining = True
        try:
            while self._inbox and not isinstance(self._state, _Closed):
                frame = self._inbox.popleft()
                if frame is None:
                    self._ended()
                else:
                    self._handle(frame)
        finally:
            self._draining = False
        if isinstance(self._state, _Closed):
            self._inbox.clear()

    def _handle(self, frame: Frame) -> None:
        try:
            if self.mode is Mode.ENCRYPTED:
                if not isinstance(frame, bbrpc_pb2.EncryptedChatRequest):
                    raise FrameRefused("an EncryptedChat stream carried a plain frame")
                self._receive_encrypted(frame)
            else:
                if not isinstance(frame, bbrpc_pb2.ChatRequest):
                    raise FrameRefused("a Chat stream carried an encrypted frame")
                self._receive_plain(frame)
        except ChatKeyMismatch as mismatch:
            self._fail(str(mismatch), key_mismatch=True)
        except (FrameRefused, InvalidMessage) as refusal:
            self._fail(f"refused a frame from the peer: {refusal}")

    def _ended(self) -> None:
        reason = "the chat was cut: the stream ended without a stop"
        state = self._state
        if isinstance(state, _Open) and state.channel is not None:
            try:
                state.channel.incoming.finish()
            except StreamCut as cut:
                reason = f"the chat was cut: {cut}"
        self._close(reason, by_peer=True, cut=True)

    def _receive_encrypted(self, frame: bbrpc_pb2.EncryptedChatRequest) -> None:
        kind = frame.WhichOneof("frame")
        state = self._state
        if isinstance(state, _AwaitingHello):
            if kind != "hello":
                raise FrameRefused(f"expected the peer's hello, got {kind}")
            confirmation = state.handshake.receive_hello(frame.hello.nonce)
            self._state = _Confirming(state.handshake)
            self._transmit(
                bbrpc_pb2.EncryptedChatRequest(key_confirmation=confirmation)
            )
        elif isinstance(state, _Confirming):
            if kind != "key_confirmation":
                raise FrameRefused(f"expected the peer's key confirmation, got {kind}")
            channel = state.handshake.receive_confirmation(frame.key_confirmation)
            self._opened(_Open(channel.session_id, channel))
        elif isinstance(state, _Open) and state.channel is not None:
            if kind != "sealed":
                raise FrameRefused(f"expected a sealed frame, got {kind}")
            opened = state.channel.incoming.open(frame.sealed)
            request = bbrpc_pb2.ChatRequest()
            try:
                request.ParseFromString(opened.plaintext)
            except DecodeError:
                raise FrameRefused("a sealed frame does not parse") from None
            if opened.final != (request.WhichOneof("action") == "stop"):
                raise FrameRefused("only a stop ends the stream")
            self._dispatch(request, state)
        else:
            raise FrameRefused(f"an encrypted frame in the {self.state} state")

    def _receive_plain(self, request: bbrpc_pb2.ChatRequest) -> None:
        state = self._state
        if isinstance(state, _AwaitingInit):
            if request.WhichOneof("action") != "init" or request.init.encrypted:
                raise FrameRefused("a plain chat opens with an unencrypted init")
            if len(request.session_id) != SESSION_ID_LENGTH:
                raise FrameRefused("a session id is 16 bytes")
            session_id = bytes(request.session_id)
            if state.proposed_session_id is None:
                self._state = opened = _Open(session_id, None)
                self._transmit(
                    bbrpc_pb2.ChatRequest(
                        session_id=session_id,
                        init=bbrpc_pb2.ChatOpen(encrypted=False),
                    )
                )
                self._opened(opened)
            elif session_id != state.proposed_session_id:
                raise FrameRefused("the peer answered with another session id")
            else:
                self._opened(_Open(session_id, None))
        elif isinstance(state, _Open):
            self._dispatch(request, state)
        else:
            raise FrameRefused(f"a plain frame in the {self.state} state")

    def _dispatch(self, request: bbrpc_pb2.ChatRequest, state: _Open) -> None:
        if request.session_id != state.session_id:
            raise FrameRefused("a frame names another session")
        action = request.WhichOneof("action")
        if action == "msg":
            self._received_message(state, request.msg)
        elif action == "ack":
            self._received_ack(request.ack)
        elif action == "file":
            self._received_offer(request.file)
        elif action == "stop":
            reason = escaped_for_display(request.stop.reason, MAX_REASON_CHARACTERS)
            self._close(reason or "closed by the peer", by_peer=True, cut=False)
        else:
            raise FrameRefused(
                f"unexpected {action or 'empty'} action in an open session"
            )

    def _received_message(self, state: _Open, text: str) -> None:
        if len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
            raise FrameRefused(f"a message is longer than {MAX_MESSAGE_BYTES} bytes")
        self._messages_received += 1
        self._send_request(state, bbrpc_pb2.ChatRequest(ack=self._messages_received))
        self._emit(MessageReceived(escape_received(text)))

    def _received_ack(self, count: int) -> None:
        acknowledged = self._messages_sent - len(self._unacknowledged)
        if not acknowledged <= count <= self._messages_sent:
            raise FrameRefused(
                f"the peer acknowledged {count} messages; {acknowledged} to "
                f"{self._messages_sent} are possible"
            )
        while self._unacknowledged and self._unacknowledged[0].number <= count:
            sent = self._unacknowledged.popleft()
            self._emit(MessageDelivered(sent.token))

    def _received_offer(self, offered: bbrpc_pb2.ChatFileOffer) -> None:
        if self._peer_key is None:
            self._emit(
                FileOfferRefused(
                    "the peer offered a file, but it can only be fetched with "
                    "a chat key and none is set for this peer"
                )
            )
            return
        try:
            received = self._incoming_offers.add(self.peer, offered)
        except OfferRefused as refusal:
            self._emit(FileOfferRefused(str(refusal)))
            return
        self._emit(FileOffered(received))

    def _opened(self, state: _Open) -> None:
        """Enter ``state`` (if not there already), tell the user, send held."""
        if self._state is not state and not isinstance(self._state, _Closed):
            self._state = state
        if self._state is not state:
            return
        fingerprint = (
            self._peer_key.fingerprint()
            if state.channel is not None and self._peer_key is not None
            else None
        )
        log.info(
            "chat with {peer} open ({mode})", peer=self.peer.hex(), mode=self.mode.value
        )
        self._emit(ChatOpened(state.channel is not None, fingerprint))
        while self._held and self._state is state:
            held = self._held.pop(0)
            if isinstance(held, _Sent):
                self._send_message_now(state, held.text, held.token)
            else:
                self._send_request(state, held)

    def _send_message_now(self, state: _Open, text: str, token: object) -> None:
        self._messages_sent += 1
        self._unacknowledged.append(_Sent(self._messages_sent, text, token))
        self._send_request(state, bbrpc_pb2.ChatRequest(msg=text))

    def _send_request(
        self, state: _Open, request: bbrpc_pb2.ChatRequest, final: bool = False
    ) -> None:
        request.session_id = state.session_id
        if state.channel is None:
            self._transmit(request)
        else:
            sealed = state.channel.outgoing.seal(
                request.SerializeToString(), final=final
            )
            self._transmit(bbrpc_pb2.EncryptedChatRequest(sealed=sealed))

    def _transmit(self, frame: Frame) -> None:
        result = self._send(frame)
        if isinstance(result, defer.Deferred):
            result.addErrback(self._send_failed)

    def _send_failed(self, failure: Failure) -> None:
        if not isinstance(self._state, _Closed):
            self._close(
                f"the chat stream failed: {failure.getErrorMessage()}",
                by_peer=False,
                cut=True,
            )

    def _hold(self, request: _Sent | bbrpc_pb2.ChatRequest) -> None:
        if len(self._held) >= MAX_HELD_BEFORE_OPEN:
            raise ChatError(
                f"{MAX_HELD_BEFORE_OPEN} actions wait for the session to open already"
            )
        self._held.append(request)

    def _check_usable(self) -> None:
        if isinstance(self._state, _Closed):
            raise ChatError(f"the chat is closed ({self._state.reason})")

    def _fail(self, reason: str, key_mismatch: bool = False) -> None:
        state = self._state
        if isinstance(state, _Closed):
            return
        self._state = _Closed(reason)
        if isinstance(state, _Open) and not _outgoing_ended(state):
            # Tell the peer why, authenticated, while our direction works.
            stop = bbrpc_pb2.ChatClose(reason=reason[:MAX_REASON_CHARACTERS])
            self._send_request(state, bbrpc_pb2.ChatRequest(stop=stop), final=True)
        self._emit(ChatFailed(reason, key_mismatch))
        self._finish(reason, by_peer=False, cut=False)

    def _close(self, reason: str, *, by_peer: bool, cut: bool) -> None:
        if isinstance(self._state, _Closed):
            return
        self._state = _Closed(reason)
        self._finish(reason, by_peer=by_peer, cut=cut)

    def _finish(self, reason: str, *, by_peer: bool, cut: bool) -> None:
        undelivered = tuple(
            Undelivered(sent.text, sent.token)
            for sent in [*self._unacknowledged, *self._held]
            if isinstance(sent, _Sent)
        )
        self._unacknowledged.clear()
        self._held.clear()
        log.info(
            "chat with {peer} ended: {reason}", peer=self.peer.hex(), reason=reason
        )
        self._emit(ChatStopped(reason, by_peer, cut, undelivered))

    def _emit(self, event: ChatEvent) -> None:
        self._on_event(event)

    def __repr__(self) -> str:
        return f"ChatSession({self.mode.value}, {self.role.value}, {self.state})"


def _outgoing_ended(state: _Open) -> bool:
    return state.channel is not None and state.channel.outgoing.ended
