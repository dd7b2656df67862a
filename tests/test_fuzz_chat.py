"""Fuzzing what the chat reads from a peer and from the user: sealed AEAD
frames (EncryptedChat and EncryptedDownload), chat keys typed or pasted,
offered file names and received text. See docs/wire-protocol.md, "Fuzzing".
"""

from __future__ import annotations

import os
import unicodedata
from typing import Any

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.chat import peer_key
from barterbackup.chat.aead import (
    FRAME_OVERHEAD,
    Direction,
    FrameOpener,
    FrameRefused,
    FrameSealer,
    StreamCut,
)
from barterbackup.chat.messages import (
    ALLOWED_CONTROLS,
    MAX_MESSAGE_BYTES,
    InvalidMessage,
    escape_received,
    validate_message,
)
from barterbackup.chat.offers import MAX_NAME_BYTES, UnsafeName, safe_name
from tests.fuzzing import HOSTILE_TEXT, fuzz_target, mutated, texts

KEY = bytes(range(32))
SESSION = bytes(16)
MAX_PLAINTEXT = 256


def _sealer(key: bytes = KEY, session: bytes = SESSION) -> FrameSealer:
    return FrameSealer(key, Direction.FROM_INITIATOR, b"chat", session, MAX_PLAINTEXT)


def _opener() -> FrameOpener:
    return FrameOpener(KEY, Direction.FROM_INITIATOR, b"chat", SESSION, MAX_PLAINTEXT)


def _stream(plaintexts: list[bytes]) -> list[bytes]:
    sealer = _sealer()
    last = len(plaintexts) - 1
    return [sealer.seal(p, final=i == last) for i, p in enumerate(plaintexts)]


# What an attacker on the stream may do to the frames the peer sealed.
ATTACKS = ("mutate", "drop", "replay", "swap", "foreign", "inject", "cut")


class ChatFrameFuzz(SynchronousTestCase):
    @fuzz_target(
        "chat.aead_frames",
        plaintexts=st.lists(st.binary(max_size=MAX_PLAINTEXT), min_size=1, max_size=5),
        attack=st.sampled_from(ATTACKS),
        where=st.integers(0, 2**16),
        data=st.data(),
    )
    def test_the_opener_yields_the_sealed_stream_or_refuses(
        self, plaintexts: list[bytes], attack: str, where: int, data: Any
    ) -> None:
        frames = _stream(plaintexts)
        position = where % len(frames)
        if attack == "mutate":
            frames[position] = data.draw(mutated(frames[position]))
        elif attack == "drop":
            del frames[position]
        elif attack == "replay":
            frames.insert(position + 1, frames[position])
        elif attack == "swap" and len(frames) > 1:
            other = (position + 1) % len(frames)
            frames[position], frames[other] = frames[other], frames[position]
        elif attack == "foreign":
            # A frame sealed under another key or for another session.
            key, session = data.draw(
                st.sampled_from([(bytes(32), SESSION), (KEY, b"\x01" * 16)])
            )
            frames[position] = _sealer(key, session).seal(plaintexts[0])
        elif attack == "inject":
            frames.insert(position, data.draw(st.binary(max_size=300)))
        else:
            del frames[position:]
        opener = _opener()
        opened: list[bytes] = []
        refused = False
        for frame in frames:
            try:
                got = opener.open(frame)
            except FrameRefused:
                refused = True
                break
            opened.append(got.plaintext)
            self.assertLessEqual(len(frame), MAX_PLAINTEXT + FRAME_OVERHEAD)
        # Only the true stream, in order, from its start: never a changed
        # byte, a reordered or a repeated frame.
        self.assertEqual(opened, plaintexts[: len(opened)])
        if refused:
            # Refused for good: nothing more opens, not even the true next.
            with self.assertRaises(FrameRefused):
                opener.open(_stream(plaintexts)[len(opened) % len(plaintexts)])
        if opened == plaintexts and not refused:
            opener.finish()  # the final frame came: the stream is whole
        else:
            # Cut short or refused: never taken for a whole stream.
            self.assertFalse(opener.ended and opened != plaintexts)
            if not opener.ended:
                self.assertRaises(StreamCut, opener.finish)


KEY_TEXT = peer_key.encode(KEY)
key_texts = st.one_of(
    st.just(KEY_TEXT),
    st.just(KEY_TEXT.lower().replace("-", " ")),
    mutated(KEY_TEXT.encode()).map(lambda b: b.decode("latin-1")),
    st.text(max_size=80),
    st.sampled_from(HOSTILE_TEXT),
)


class ChatTextFuzz(SynchronousTestCase):
    @fuzz_target("chat.peer_key", text=key_texts)
    def test_a_typed_key_decodes_to_itself_or_is_refused(self, text: str) -> None:
        try:
            key = peer_key.decode(text)
        except peer_key.PeerKeyError as error:
            # The reason never repeats the key.
            self.assertNotIn(KEY_TEXT[:9], str(error))
            return
        self.assertEqual(len(key), peer_key.KEY_LENGTH)
        # What decodes is exactly what encode() of that key gives, typed
        # with any case, spaces and dashes (a checksum catches typos).
        canonical = peer_key.encode(key)
        compact = "".join(c for c in text.upper() if not c.isspace() and c != "-")
        self.assertEqual(compact, canonical.replace("-", ""))

    @fuzz_target(
        "chat.offered_names",
        offered=st.one_of(texts(), st.text(), st.sampled_from(HOSTILE_TEXT)),
    )
    def test_an_offered_name_becomes_one_plain_file_name(self, offered: str) -> None:
        try:
            name = safe_name(offered)
        except UnsafeName:
            return
        self.assertTrue(name)
        self.assertLessEqual(len(name.encode("utf-8")), MAX_NAME_BYTES)
        self.assertFalse(set(name) & {"/", "\\", "\x00"})
        self.assertFalse(name.startswith((".", " ")))
        self.assertNotIn(name, (".", ".."))
        for character in name:
            self.assertNotIn(unicodedata.category(character), ("Cc", "Cf", "Cs"))
        self.assertEqual(os.path.basename(name), name)

    @fuzz_target(
        "chat.received_text",
        text=st.one_of(texts(), st.text(), st.binary(max_size=80)),
    )
    def test_received_text_is_shown_without_control_characters(
        self, text: str | bytes
    ) -> None:
        if isinstance(text, str):
            shown = escape_received(text)
            for character in shown:
                if unicodedata.category(character) == "Cc":
                    self.assertIn(character, ALLOWED_CONTROLS)
        try:
            sent = validate_message(text)
        except InvalidMessage:
            return
        self.assertTrue(sent)
        self.assertLessEqual(len(sent.encode("utf-8")), MAX_MESSAGE_BYTES)
        self.assertEqual(escape_received(sent), sent)
