"""The chat service of an unlocked node: sessions, offers, outbox, attachments.

The node (not the person) is the chat endpoint: a session is between two
nodes, and people *attach* to the conversation with a peer
(``barterbackup chat ONION`` is one attachment). So:

* A peer may open a session with us while nobody is attached. Its messages
  are acknowledged (delivered to this node) and held in memory, bounded,
  until someone attaches: they are shown then. Nothing is written to disk.
* Attaching opens a session if none of the wanted mode is open (dialling
  the peer if needed); each attachment sends on the first open session of
  its mode, either side's, so both people usually share one session. When
  two sessions exist (both sides opened one at once) each message still
  travels on exactly one of them.
* A message sent while the peer is offline, or that a session ending left
  unacknowledged, waits in the sealed outbox ("queued, peer offline"). When
  the peer connects, a session opens by itself and delivers the outbox in
  order; a session opened only for that stops once it is done.
* When the last attachment leaves, every session with that peer stops
  ("left the chat").

Offers: the ``OfferTable`` (ours) and ``IncomingOffers`` (theirs) live
here; EncryptedDownload is served from the table (``serve_download``) and
fetching an offer runs in the background, reporting progress to the
attachment that asked.

Threads: everything here runs on the reactor thread. Disk work (hashing a
file to offer, resuming and finishing a received file, every outbox write)
goes through the ``blocking`` runner; outbox writes are serialised.

Bounds (docs/chat.md): ``MAX_SESSIONS_PER_PEER`` and ``MAX_SESSIONS_TOTAL``
sessions (more calls are answered BUSY), ``MAX_ATTACHMENTS`` attachments,
``MAX_UNREAD_PER_PEER`` / ``MAX_UNREAD_TOTAL`` messages held for nobody
(the oldest are dropped, and the next attachment is told how many),
``MAX_FETCHES`` fetches and ``MAX_SERVING`` downloads served at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, DeferredLock
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.chat import peer_key as peer_keys
from barterbackup.chat.aead import KEY_MISMATCH_MESSAGE, ChatError, RandomBytes, Role
from barterbackup.chat.downloads import (
    OfferedFiles,
    StoredFiles,
    fetch_offer,
    serve_encrypted_download,
)
from barterbackup.chat.messages import validate_message
from barterbackup.chat.offers import (
    IncomingOffers,
    OfferRefused,
    OfferTable,
    ReceivedOffer,
)
from barterbackup.chat.outbox import Outbox, QueuedMessage
from barterbackup.chat.peer_key import PeerKey
from barterbackup.chat.pieces import Send
from barterbackup.chat.session import (
    ChatEvent,
    ChatFailed,
    ChatOpened,
    ChatSession,
    ChatStopped,
    FileOffered,
    FileOfferRefused,
    MessageDelivered,
    MessageReceived,
    Mode,
    choose_mode,
)
from barterbackup.chat.updates import (
    DELIVERED,
    DONE,
    FAILED,
    FETCHING,
    NOT_SENT,
    QUEUED,
    SENDING,
    SENT,
    ChatEnded,
    ChatOverview,
    ChatUpdate,
    FileInfo,
    MessageIn,
    MessageStatus,
    Notice,
    OfferIn,
    OfferOut,
    QueuedInfo,
    SessionClosed,
    SessionOpened,
    TransferProgress,
)
from barterbackup.chat.wire import IncomingCall, OutgoingCall
from barterbackup.keys.onion import onion_address_from_pubkey
from barterbackup.logs import get_logger
from barterbackup.sync.interfaces import Blocking, ReactorTime, authenticated_peer

log = get_logger("barterbackup.chat")

T = TypeVar("T")

MAX_SESSIONS_PER_PEER = 4
MAX_SESSIONS_TOTAL = 64
MAX_ATTACHMENTS = 4
MAX_UNREAD_PER_PEER = 256
MAX_UNREAD_TOTAL = 1024
MAX_FETCHES = 4
MAX_SERVING = 8
# A bbrpc connection no frame crosses for 10 minutes is closed; an open
# chat pings it well before that.
KEEPALIVE_SECONDS = 240.0
# Fetch progress reaches the attachment at most this often (and at the end).
PROGRESS_SECONDS = 0.25

Listener = Callable[[ChatUpdate], None]


class PeerConnections(Protocol):
    """What chat needs of the connection pool (peers/pool.py)."""

    def connection(self, pubkey: bytes) -> Any: ...

    def dial(self, pubkey: bytes, hint: str = "") -> Deferred[Any]: ...


class PeerKeyStore(Protocol):
    """Where chat keys live: the peer table (peers/records.py)."""

    def aead_key(self, pubkey: bytes) -> bytes | None: ...

    def set_aead_key(self, pubkey: bytes, key: bytes | None, now: int) -> Any: ...

    def endpoint(self, pubkey: bytes) -> str: ...

    def flush(self) -> Deferred[None]: ...


@dataclass(eq=False)
class _LiveToken:
    """A message an attachment sent, as the session's delivery token."""

    attachment: ChatAttachment
    action_id: int
    text: str
    encrypted: bool
    # told is True once a final state (delivered, queued, not sent) was told.
    told: bool = False


@dataclass(frozen=True)
class _QueuedToken:
    """An outbox message being delivered."""

    message_id: int


@dataclass(eq=False)
class _Live:
    """One session with a peer, in either direction."""

    conversation: _Conversation
    mode: Mode
    initiated: bool
    call: OutgoingCall | IncomingCall
    # for_delivery is True for a session opened only to deliver the outbox.
    for_delivery: bool = False
    session: ChatSession | None = None
    opened: bool = False
    refused: str = ""
    failure: ChatFailed | None = None
    flushing: bool = False

    @property
    def usable(self) -> bool:
        return self.session is not None and self.session.state != "closed"

    def describe(self) -> str:
        who = "by us" if self.initiated else "by the peer"
        state = "open" if self.opened else "opening"
        return f"{self.mode.value}, opened {who}, {state}"


@dataclass(eq=False)
class _Conversation:
    """Everything about chatting with one peer."""

    peer: bytes
    address: str
    sessions: list[_Live] = field(default_factory=list)
    attachments: list[ChatAttachment] = field(default_factory=list)
    unread: deque[MessageIn] = field(default_factory=deque)
    dropped: int = 0
    # mismatched is True after an encrypted session failed on a key
    # mismatch, with the key we held then: no new session is opened for
    # messages until that key changes, someone attaches, or the peer
    # reconnects (the other side may have fixed its key).
    mismatched: bool = False
    mismatched_key: bytes | None = None

    def sending_session(self, mode: Mode) -> _Live | None:
        """The first usable session of ``mode``: where attachments send."""
        for live in self.sessions:
            if live.mode is mode and live.usable:
                return live
        return None

    def broadcast(self, update: ChatUpdate) -> None:
        for attachment in list(self.attachments):
            attachment.tell(update)

    @property
    def idle(self) -> bool:
        return not (self.sessions or self.attachments or self.unread)


class ChatService:
    """Chat for one unlocked node (reactor thread only)."""

    def __init__(
        self,
        *,
        clock: ReactorTime,
        blocking: Blocking[Any],
        random_bytes: RandomBytes,
        local_onion: bytes,
        keys: PeerKeyStore,
        connections: PeerConnections,
        outbox: Outbox,
        stored_files: StoredFiles | None = None,
    ) -> None:
        self._clock = clock
        self._blocking = blocking
        self._random_bytes = random_bytes
        self._local_onion = local_onion
        self._keys = keys
        self._connections = connections
        self._outbox = outbox
        self._outbox_lock = DeferredLock()
        # Offered bytes: local files, or files of our file set.
        self._files = OfferedFiles(stored_files)
        self.offers = OfferTable(clock, random_bytes)
        self.incoming = IncomingOffers(clock)
        self._conversations: dict[bytes, _Conversation] = {}
        # Outbox messages on their way: the session carrying each, or None
        # while its acknowledgement is being written.
        self._in_flight: dict[tuple[bytes, int], _Live | None] = {}
        self._unread_total = 0
        self._fetching: set[bytes] = set()
        self._serving = 0
        self._keepalive: Any = None
        self._stopped = False

    # -- keys ----------------------------------------------------------------

    def peer_key(self, peer: bytes) -> PeerKey | None:
        secret = self._keys.aead_key(peer)
        return PeerKey(secret) if secret is not None else None

    def generate_key(self) -> bytes:
        """A fresh chat key from the node's random source."""
        return peer_keys.generate(self._random_bytes)

    async def set_key(self, peer: bytes, key: bytes | None) -> None:
        """Store (or with None clear) the peer's key; durable on return.

        Sessions already open keep the key they opened with.
        """
        self._keys.set_aead_key(peer, key, int(self._clock.seconds()))
        await self._keys.flush()
        log.info(
            "chat key for {peer} {what}",
            peer=onion_address_from_pubkey(peer),
            what="set" if key is not None else "cleared",
        )

    # -- attachments ------------------------------------------------------------

    def attach(
        self, peer: bytes, listener: Listener, plain: bool = False
    ) -> ChatAttachment:
        """Attach ``listener`` to the conversation with ``peer``.

        Encrypted unless ``plain`` (NoChatKey when no key is set and plain
        was not asked for). Replays what arrived while nobody was attached,
        then opens a session, dialling the peer if needed (in the
        background: updates tell how it went).
        """
        if self._stopped:
            raise ChatError("the node is stopping")
        mode = choose_mode(self.peer_key(peer), plain=plain)
        attached = sum(len(c.attachments) for c in self._conversations.values())
        if attached >= MAX_ATTACHMENTS:
            raise ChatError(
                f"{MAX_ATTACHMENTS} chats are open on this node already; "
                "close one first"
            )
        conv = self._conversation(peer)
        conv.mismatched = False
        attachment = ChatAttachment(self, conv, mode, listener)
        conv.attachments.append(attachment)
        self._replay(conv, attachment)
        if conv.sending_session(mode) is None:
            conn = self._connections.connection(peer)
            if conn is not None:
                self._open_session(conv, conn, mode)
            else:
                self._dial_for(attachment)
        return attachment

    def _replay(self, conv: _Conversation, attachment: ChatAttachment) -> None:
        for live in conv.sessions:
            if live.opened and live.session is not None and live.usable:
                attachment.tell(self._opened_update(live))
        if conv.dropped:
            attachment.tell(
                Notice(
                    conv.address,
                    f"{conv.dropped} older messages were dropped: more than "
                    f"{MAX_UNREAD_PER_PEER} arrived while nobody was attached",
                )
            )
            conv.dropped = 0
        while conv.unread:
            held = conv.unread.popleft()
            self._unread_total -= 1
            attachment.tell(
                MessageIn(held.peer, held.text, held.received_at, held.encrypted, True)
            )
        for offer in self.incoming.pending(conv.peer):
            attachment.tell(OfferIn(conv.address, FileInfo.of_received(offer)))

    def _dial_for(self, attachment: ChatAttachment) -> None:
        conv = attachment.conversation
        attachment.tell(Notice(conv.address, f"connecting to {conv.address}…"))
        dialling = self._connections.dial(conv.peer, self._keys.endpoint(conv.peer))

        def failed(failure: Failure) -> None:
            if attachment.attached:
                attachment.tell(
                    Notice(
                        conv.address,
                        f"{conv.address} is offline ({failure.getErrorMessage()}): "
                        "messages are queued and delivered when it connects",
                    )
                )

        # Connected: peer_connected (the pool's listener) opens the session.
        dialling.addCallbacks(lambda conn: None, failed)

    def detach(
        self,
        attachment: ChatAttachment,
        reason: str,
        unread: Iterable[MessageIn] = (),
    ) -> None:
        """``attachment`` leaves; ``unread`` are messages it was never shown.

        They are kept for the next attachment when nobody else is attached
        (the others saw them). The last to leave stops every session with
        the peer.
        """
        conv = attachment.conversation
        if attachment not in conv.attachments:
            return
        conv.attachments.remove(attachment)
        attachment.tell(ChatEnded(conv.address, reason or "left the chat"))
        if not conv.attachments:
            for message in unread:
                self._hold(conv, replace(message, replayed=False))
            for live in list(conv.sessions):
                if live.session is not None:
                    live.session.stop(reason or "left the chat")
        self._forget_if_idle(conv)

    # -- connections -------------------------------------------------------------

    def peer_connected(self, conn: Any) -> None:
        """The pool's listener: reopen attached chats, deliver the outbox."""
        if self._stopped:
            return
        peer = authenticated_peer(conn)
        conv = self._conversations.get(peer)
        if conv is not None:
            conv.mismatched = False
            for mode in dict.fromkeys(a.mode for a in conv.attachments):
                if conv.sending_session(mode) is None:
                    self._open_session(conv, conn, mode)
        delivery = self._delivery_mode(peer)
        if delivery is None:
            return
        conv = self._conversation(peer)
        if not any(live.usable for live in conv.sessions):
            self._open_session(conv, conn, delivery, for_delivery=True)
        self._forget_if_idle(conv)

    def _delivery_mode(self, peer: bytes) -> Mode | None:
        """The mode able to deliver waiting messages, None if none can."""
        if self.peer_key(peer) is not None and self._deliverable(peer, Mode.ENCRYPTED):
            return Mode.ENCRYPTED
        if self._deliverable(peer, Mode.PLAIN):
            return Mode.PLAIN
        return None

    # -- sessions ------------------------------------------------------------------

    def _room_for_session(self, conv: _Conversation) -> str:
        """Why another session with this peer is refused, or ""."""
        if len(conv.sessions) >= MAX_SESSIONS_PER_PEER:
            return f"{MAX_SESSIONS_PER_PEER} chat sessions with this peer are open"
        total = sum(len(c.sessions) for c in self._conversations.values())
        if total >= MAX_SESSIONS_TOTAL:
            return f"{MAX_SESSIONS_TOTAL} chat sessions are open on this node"
        return ""

    def _open_session(
        self, conv: _Conversation, conn: Any, mode: Mode, for_delivery: bool = False
    ) -> _Live | None:
        full = self._room_for_session(conv)
        if full:
            conv.broadcast(Notice(conv.address, f"cannot open a chat: {full}"))
            return None
        call = OutgoingCall(conn, mode, self._clock)
        live = _Live(conv, mode, True, call, for_delivery)
        call.on_refused = partial(self._refused, live)
        session = self._new_session(live, Role.INITIATOR)
        call.bind(session)
        session.start()
        return live

    def _refused(self, live: _Live, reason: str) -> None:
        live.refused = f"the peer refused the chat: {reason}"

    def _new_session(self, live: _Live, role: Role) -> ChatSession:
        conv = live.conversation
        session = ChatSession(
            mode=live.mode,
            role=role,
            peer=conv.peer,
            local_onion=self._local_onion,
            peer_key=self.peer_key(conv.peer),
            send=live.call.send,
            on_event=partial(self._on_event, live),
            random_bytes=self._random_bytes,
            clock=self._clock,
            incoming_offers=self.incoming,
        )
        live.session = session
        conv.sessions.append(live)
        self._schedule_keepalive()
        return session

    def serve_call(
        self, conn: Any, request: Any, stream: Any, mode: Mode
    ) -> Deferred[None]:
        """A Chat or EncryptedChat call the peer opened (the handler's body)."""
        if self._stopped:
            raise PeerCallError(bbrpc_pb2.ERROR_CODE_BUSY, "the node is stopping")
        peer = authenticated_peer(conn)
        conv = self._conversation(peer)
        full = self._room_for_session(conv)
        if full:
            self._forget_if_idle(conv)
            raise PeerCallError(bbrpc_pb2.ERROR_CODE_BUSY, full)
        call = IncomingCall(stream, self._clock)
        live = _Live(conv, mode, False, call)
        session = self._new_session(live, Role.RESPONDER)
        call.start(session, request, session.start)
        return call.done

    def _on_event(self, live: _Live, event: ChatEvent) -> None:
        conv = live.conversation
        if isinstance(event, ChatOpened):
            live.opened = True
            conv.broadcast(self._opened_update(live))
            self._flush_outbox(live)
        elif isinstance(event, MessageReceived):
            self._received(live, event.text)
        elif isinstance(event, MessageDelivered):
            self._delivered(live, event.token)
        elif isinstance(event, FileOffered):
            conv.broadcast(OfferIn(conv.address, FileInfo.of_received(event.offer)))
        elif isinstance(event, FileOfferRefused):
            conv.broadcast(
                Notice(conv.address, f"refused an offer from the peer: {event.reason}")
            )
        elif isinstance(event, ChatFailed):
            live.failure = event
        elif isinstance(event, ChatStopped):
            self._stopped_session(live, event)

    def _opened_update(self, live: _Live) -> SessionOpened:
        key = self.peer_key(live.conversation.peer)
        fingerprint = key.fingerprint() if key and live.mode is Mode.ENCRYPTED else ""
        return SessionOpened(
            live.conversation.address,
            live.mode is Mode.ENCRYPTED,
            fingerprint,
            live.initiated,
        )

    def _received(self, live: _Live, text: str) -> None:
        conv = live.conversation
        update = MessageIn(
            conv.address, text, self._clock.seconds(), live.mode is Mode.ENCRYPTED
        )
        if conv.attachments:
            conv.broadcast(update)
            return
        self._hold(conv, update)

    def _hold(self, conv: _Conversation, update: MessageIn) -> None:
        """Keep a message for the next attachment, within the bounds."""
        if len(conv.unread) >= MAX_UNREAD_PER_PEER:
            self._drop_unread(conv)
        elif self._unread_total >= MAX_UNREAD_TOTAL:
            self._drop_unread(
                max(self._conversations.values(), key=lambda c: len(c.unread))
            )
        conv.unread.append(update)
        self._unread_total += 1

    def _drop_unread(self, conv: _Conversation) -> None:
        if conv.unread:
            conv.unread.popleft()
            conv.dropped += 1
            self._unread_total -= 1

    def _delivered(self, live: _Live, token: object) -> None:
        conv = live.conversation
        if isinstance(token, _LiveToken):
            token.told = True
            token.attachment.tell(
                MessageStatus(conv.address, token.action_id, DELIVERED)
            )
        elif isinstance(token, _QueuedToken):
            key = (conv.peer, token.message_id)
            self._in_flight[key] = None
            conv.broadcast(
                MessageStatus(
                    conv.address,
                    0,
                    DELIVERED,
                    "a queued message was delivered",
                    queued_id=token.message_id,
                )
            )

            def written(result: object) -> object:
                self._in_flight.pop(key, None)
                if isinstance(result, Failure):
                    log.failure(
                        "removing a delivered message from the outbox failed", result
                    )
                # The window of unacknowledged messages has room again.
                self._flush_outbox(live)
                self._stop_when_delivered(live)
                return None

            self._outbox_op(
                partial(self._outbox.acknowledge, conv.peer, token.message_id)
            ).addBoth(written)

    def _flush_outbox(self, live: _Live) -> None:
        """Send the outbox's messages for this peer on ``live``, in order."""
        conv = live.conversation
        session = live.session
        if session is None or session.state != "open" or live.flushing:
            return
        # Acknowledgements may come back inside send_message (the swarm's
        # links deliver synchronously): they must not start a second flush.
        live.flushing = True
        try:
            for message in self._deliverable(conv.peer, live.mode):
                key = (conv.peer, message.message_id)
                self._in_flight[key] = live
                try:
                    session.send_message(message.text, _QueuedToken(message.message_id))
                except ChatError:
                    # Too many wait for acknowledgements, or the session
                    # closed: the rest go later.
                    if self._in_flight.get(key) is live:
                        del self._in_flight[key]
                    break
        finally:
            live.flushing = False
        self._stop_when_delivered(live)

    def _deliverable(self, peer: bytes, mode: Mode) -> list[QueuedMessage]:
        """Outbox messages for ``peer`` that ``mode`` may carry, not on their
        way already."""
        return [
            message
            for message in self._outbox.pending(peer)
            if (peer, message.message_id) not in self._in_flight
            and (mode is Mode.ENCRYPTED or not message.encrypted)
        ]

    def _stop_when_delivered(self, live: _Live) -> None:
        """Stop a delivery-only session once nothing is left for it."""
        if (
            not live.for_delivery
            or live.flushing
            or live.conversation.attachments
            or not live.usable
            or any(carrier is live for carrier in self._in_flight.values())
            or self._deliverable(live.conversation.peer, live.mode)
        ):
            return
        assert live.session is not None
        live.session.stop("delivered the queued messages")

    def _stopped_session(self, live: _Live, event: ChatStopped) -> None:
        conv = live.conversation
        if live in conv.sessions:
            conv.sessions.remove(live)
        live.call.end()
        mismatch = live.failure is not None and live.failure.key_mismatch
        if mismatch:
            conv.mismatched = True
            conv.mismatched_key = self._keys.aead_key(conv.peer)
        for undelivered in event.undelivered:
            token = undelivered.token
            if isinstance(token, _QueuedToken):
                key = (conv.peer, token.message_id)
                if self._in_flight.get(key) is live:
                    del self._in_flight[key]
            elif isinstance(token, _LiveToken) and not token.told:
                self._queue(token)
        conv.broadcast(
            SessionClosed(
                conv.address,
                live.refused or event.reason,
                event.by_peer,
                event.cut,
                mismatch,
            )
        )
        self._forget_if_idle(conv)

    # -- the outbox ------------------------------------------------------------

    def _outbox_op(self, work: Callable[[], T]) -> Deferred[T]:
        """Run outbox disk work off the reactor, one operation at a time."""

        async def run() -> T:
            await self._outbox_lock.acquire()
            try:
                result: T = await self._blocking(work)
                return result
            finally:
                self._outbox_lock.release()

        return Deferred.fromCoroutine(run())

    def _queue(self, token: _LiveToken) -> None:
        """Put an attachment's message in the outbox and say so."""
        conv = token.attachment.conversation
        token.told = True
        online = self._connections.connection(conv.peer) is not None
        if self._mismatched(conv):
            detail = f"queued: {KEY_MISMATCH_MESSAGE}; it goes once they do"
        elif online:
            detail = "queued: the chat ended before the peer received it"
        else:
            detail = "queued, peer offline"

        def queued(message: QueuedMessage) -> None:
            token.attachment.tell(
                MessageStatus(
                    conv.address, token.action_id, QUEUED, detail, message.message_id
                )
            )

        def failed(failure: Failure) -> None:
            if failure.check(ChatError) is None:
                log.failure("queueing a chat message failed", failure)
            why = (
                failure.getErrorMessage()
                if failure.check(ChatError)
                else "internal error"
            )
            token.attachment.tell(
                MessageStatus(conv.address, token.action_id, NOT_SENT, why)
            )

        self._outbox_op(
            lambda: self._outbox.queue(conv.peer, token.text, encrypted=token.encrypted)
        ).addCallbacks(queued, failed)

    # -- EncryptedDownload ---------------------------------------------------------

    def serve_download(self, conn: Any, request: Any, send: Send) -> Deferred[None]:
        """An EncryptedDownload call (the handler's body)."""
        return Deferred.fromCoroutine(self._serve_download(conn, request, send))

    async def _serve_download(self, conn: Any, request: Any, send: Send) -> None:
        caller = authenticated_peer(conn)
        if self._serving >= MAX_SERVING:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_BUSY,
                f"{MAX_SERVING} offered files are being sent already; try again soon",
            )
        conv = self._conversations.get(caller)
        address = onion_address_from_pubkey(caller)
        self._serving += 1
        try:
            sent = await serve_encrypted_download(
                request,
                send,
                caller=caller,
                peer_key=self.peer_key(caller),
                local_onion=self._local_onion,
                offers=self.offers,
                random_bytes=self._random_bytes,
                blocking=self._blocking,
                files=self._files,
            )
        except PeerCallError as error:
            if conv is not None and error.message.startswith(KEY_MISMATCH_MESSAGE):
                conv.broadcast(
                    Notice(
                        address, f"the peer could not fetch an offer: {error.message}"
                    )
                )
            raise
        finally:
            self._serving -= 1
        if conv is not None:
            resumed = f" from byte {sent.offset}" if sent.offset else ""
            what = f"{sent.offer.name} ({sent.length} bytes{resumed})"
            conv.broadcast(Notice(address, f"the peer fetched {what}"))

    def _start_fetch(
        self,
        attachment: ChatAttachment,
        offer: ReceivedOffer,
        directory: Path,
        action_id: int,
    ) -> None:
        conv = attachment.conversation
        key = self.peer_key(conv.peer)
        if key is None:
            raise OfferRefused(
                "fetching an offer needs the chat key; none is set for this peer"
            )
        conn = self._connections.connection(conv.peer)
        if conn is None:
            raise ChatError(f"{conv.address} is not connected: fetch it once it is")
        if offer.offer_id in self._fetching:
            raise ChatError("that offer is being fetched already")
        if len(self._fetching) >= MAX_FETCHES:
            raise ChatError(
                f"{MAX_FETCHES} files are being fetched already; wait a moment"
            )
        self._fetching.add(offer.offer_id)
        Deferred.fromCoroutine(
            self._fetch(attachment, conn, offer, directory, key, action_id)
        )

    async def _fetch(
        self,
        attachment: ChatAttachment,
        conn: Any,
        offer: ReceivedOffer,
        directory: Path,
        key: PeerKey,
        action_id: int,
    ) -> None:
        conv = attachment.conversation
        last = [float("-inf")]

        def progress(phase: str, done: int, path: str = "", message: str = "") -> None:
            attachment.tell(
                TransferProgress(
                    conv.address,
                    action_id,
                    offer.id_text,
                    offer.name,
                    phase,
                    done,
                    offer.size,
                    path,
                    message,
                )
            )

        def report(done: int, total: int) -> None:
            now = self._clock.seconds()
            if now - last[0] >= PROGRESS_SECONDS or done == total:
                last[0] = now
                progress(FETCHING, done)

        try:
            path = await fetch_offer(
                conn,
                offer,
                directory,
                peer_key=key,
                local_onion=self._local_onion,
                random_bytes=self._random_bytes,
                blocking=self._blocking,
                report=report,
            )
        except ChatError as error:
            outcome, why = FAILED, str(error)
        except Exception:
            log.failure("fetching an offered file failed", Failure())
            outcome, why = FAILED, "internal error; see the daemon log"
        else:
            outcome, why = DONE, ""
            self.incoming.remove(offer.offer_id)
            log.info("received {name} ({size} bytes)", name=offer.name, size=offer.size)
        # Free the offer before saying so: whoever hears "failed" may fetch
        # it again at once.
        self._fetching.discard(offer.offer_id)
        if outcome == DONE:
            progress(DONE, offer.size, path=str(path))
        else:
            progress(FAILED, 0, message=why)

    def _start_offer(
        self, attachment: ChatAttachment, path: Path, action_id: int, stored: bool
    ) -> None:
        conv = attachment.conversation
        if self.peer_key(conv.peer) is None:
            raise OfferRefused(
                "offered files travel by EncryptedDownload, which needs the chat "
                "key; set one first"
            )
        offering = Deferred.fromCoroutine(
            self._offer(attachment, path, action_id, stored)
        )

        def failed(failure: Failure) -> None:
            if failure.check(ChatError) is None and failure.check(OSError) is None:
                log.failure("offering a file failed", failure)
            why = (
                f"cannot read {path}: {failure.value.strerror}"
                if isinstance(failure.value, OSError)
                else failure.getErrorMessage()
                if failure.check(ChatError)
                else "internal error; see the daemon log"
            )
            attachment.tell(
                Notice(conv.address, f"offer not made: {why}", action_id, True)
            )

        offering.addErrback(failed)

    async def _offer(
        self, attachment: ChatAttachment, path: Path, action_id: int, stored: bool
    ) -> None:
        conv = attachment.conversation
        size, sha256 = await self._blocking(partial(self._files.describe, path, stored))
        offer = self.offers.offer(conv.peer, path, size, sha256, stored=stored)
        try:
            live = self._session_for(attachment)
            if live is None or live.session is None:
                raise ChatError(f"{conv.address} is not connected: offer it once it is")
            live.session.offer_file(offer)
        except BaseException:
            self.offers.withdraw(offer.offer_id)
            raise
        attachment.tell(OfferOut(conv.address, action_id, FileInfo.of_offer(offer)))

    def _mismatched(self, conv: _Conversation) -> bool:
        return conv.mismatched and self._keys.aead_key(conv.peer) == conv.mismatched_key

    def _session_for(self, attachment: ChatAttachment) -> _Live | None:
        """The attachment's sending session, opened now if the peer is here."""
        conv = attachment.conversation
        live = conv.sending_session(attachment.mode)
        if live is not None:
            return live
        conn = self._connections.connection(conv.peer)
        if conn is None:
            return None
        if attachment.mode is Mode.ENCRYPTED and self._mismatched(conv):
            return None
        live = self._open_session(conv, conn, attachment.mode)
        return live if live is not None and live.usable else None

    # -- keep-alive, overview, stopping --------------------------------------------

    def _schedule_keepalive(self) -> None:
        if self._keepalive is None and not self._stopped:
            self._keepalive = self._clock.callLater(
                KEEPALIVE_SECONDS, self._ping_chat_peers
            )

    def _ping_chat_peers(self) -> None:
        self._keepalive = None
        peers = [peer for peer, conv in self._conversations.items() if conv.sessions]
        for peer in peers:
            conn = self._connections.connection(peer)
            if conn is not None:
                conn.ping().addErrback(lambda failure: None)
        if peers:
            self._schedule_keepalive()

    def overview(self) -> list[ChatOverview]:
        """Every peer chat knows something about, for ``chat --list``."""
        peers = dict.fromkeys(
            [
                *self._conversations,
                *self._outbox.peers(),
                *(o.peer for o in self.incoming.pending()),
                *(o.peer for o in self.offers.pending()),
            ]
        )
        result = []
        for peer in peers:
            conv = self._conversations.get(peer)
            key = self.peer_key(peer)
            result.append(
                ChatOverview(
                    peer=onion_address_from_pubkey(peer),
                    connected=self._connections.connection(peer) is not None,
                    key_fingerprint=key.fingerprint() if key else "",
                    sessions=[live.describe() for live in conv.sessions]
                    if conv
                    else [],
                    attached=len(conv.attachments) if conv else 0,
                    unread=len(conv.unread) if conv else 0,
                    queued=[
                        QueuedInfo(m.message_id, m.text, m.queued_at, m.encrypted)
                        for m in self._outbox.pending(peer)
                    ],
                    offers_received=[
                        FileInfo.of_received(o) for o in self.incoming.pending(peer)
                    ],
                    offers_made=[
                        FileInfo.of_offer(o) for o in self.offers.pending(peer)
                    ],
                )
            )
        return result

    def stop(self) -> None:
        """End every attachment and session (the node is stopping)."""
        self._stopped = True
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None
        for conv in list(self._conversations.values()):
            for attachment in list(conv.attachments):
                conv.attachments.remove(attachment)
                attachment.tell(ChatEnded(conv.address, "the node is stopping"))
            for live in list(conv.sessions):
                if live.session is not None:
                    live.session.stop("the node is stopping")

    def _conversation(self, peer: bytes) -> _Conversation:
        conv = self._conversations.get(peer)
        if conv is None:
            conv = _Conversation(peer, onion_address_from_pubkey(peer))
            self._conversations[peer] = conv
        return conv

    def _forget_if_idle(self, conv: _Conversation) -> None:
        if conv.idle and self._conversations.get(conv.peer) is conv:
            del self._conversations[conv.peer]


class ChatAttachment:
    """One person's view of the conversation with one peer.

    Actions raise ChatError (InvalidMessage, OfferRefused, …) when they are
    refused outright; what happens later (delivery, a fetch's progress) is
    told to the listener as updates carrying the action's ``action_id``.
    """

    def __init__(
        self,
        service: ChatService,
        conversation: _Conversation,
        mode: Mode,
        listener: Listener,
    ) -> None:
        self._service = service
        self.conversation = conversation
        self.mode = mode
        self._listener = listener

    @property
    def peer(self) -> str:
        return self.conversation.address

    @property
    def attached(self) -> bool:
        return self in self.conversation.attachments

    def tell(self, update: ChatUpdate) -> None:
        try:
            self._listener(update)
        except Exception:
            log.failure("a chat listener failed", Failure())

    def send_message(self, text: str, action_id: int = 0) -> None:
        """Send ``text`` (queued in the outbox while the peer is offline)."""
        self._check_attached()
        text = validate_message(text)
        service = self._service
        token = _LiveToken(self, action_id, text, self.mode is Mode.ENCRYPTED)
        live = service._session_for(self)
        if live is not None and live.session is not None:
            try:
                live.session.send_message(text, token)
            except ChatError:
                if live.usable:
                    raise  # too many wait for acknowledgements: say so
                live = None
        if live is None:
            service._queue(token)
            return
        if not token.told:
            state = SENT if live.opened else SENDING
            self.tell(MessageStatus(self.peer, action_id, state))

    def offer_file(self, path: str, action_id: int = 0) -> None:
        """Offer the local file at ``path`` (absolute, as the daemon sees it)."""
        self._check_attached()
        target = Path(path)
        if not target.is_absolute():
            raise ChatError("give the file to offer as an absolute path")
        self._service._start_offer(self, target, action_id, stored=False)

    def offer_stored_file(self, name: str, action_id: int = 0) -> None:
        """Offer the file ``name`` of this node's file set (``files list``)."""
        self._check_attached()
        if not name or name.startswith("/"):
            raise ChatError("name a file of the file set as `files list` shows it")
        self._service._start_offer(self, Path(name), action_id, stored=True)

    def accept_file(self, offer_id: str, directory: str, action_id: int = 0) -> None:
        """Fetch the peer's offer named by ``offer_id`` (≥ 4 hex digits) into
        ``directory`` (absolute); progress comes as TransferProgress."""
        self._check_attached()
        target = Path(directory)
        if not target.is_absolute():
            raise ChatError(
                "give the directory to store the file in as an absolute path"
            )
        offer = self._service.incoming.find(offer_id, self.conversation.peer)
        self._service._start_fetch(self, offer, target, action_id)

    def stop(self, reason: str = "", unread: Iterable[MessageIn] = ()) -> None:
        """Leave the chat; the last to leave stops the sessions with the peer.

        ``unread`` are messages this attachment received but could not
        show (its client stopped reading): they wait for the next one.
        """
        self._service.detach(self, reason, unread)

    def _check_attached(self) -> None:
        if not self.attached:
            raise ChatError("this chat is closed")

    def __repr__(self) -> str:
        return f"ChatAttachment({self.peer}, {self.mode.value})"
