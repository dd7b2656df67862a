"""Chat message text: what may be sent, and how received text is shown.

A message is UTF-8 text of at most MAX_MESSAGE_BYTES (16 KiB) once encoded:
a long paragraph or a pasted log excerpt, not a file (files go by offer).
Control characters other than newline and tab are refused when sending, and
escaped (``\\x1b``) when received, so a peer cannot drive the terminal with
escape sequences.
"""

from __future__ import annotations

import unicodedata

from barterbackup.chat.aead import ChatError

MAX_MESSAGE_BYTES = 16 * 1024
ALLOWED_CONTROLS = frozenset("\n\t")


class InvalidMessage(ChatError):
    """A message cannot be sent as it is; nothing was sent or queued."""


def _is_refused_control(character: str) -> bool:
    return unicodedata.category(character) == "Cc" and character not in ALLOWED_CONTROLS


def validate_message(text: str | bytes) -> str:
    """``text`` as it will be sent, or InvalidMessage saying why not."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidMessage(
                f"a message is UTF-8 text; byte {error.start} is not valid UTF-8"
            ) from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise InvalidMessage(
            f"a message is UTF-8 text; character {error.start + 1} cannot be encoded"
        ) from None
    if not text:
        raise InvalidMessage("a message is not empty")
    if size > MAX_MESSAGE_BYTES:
        raise InvalidMessage(
            f"a message is at most {MAX_MESSAGE_BYTES} bytes of UTF-8, not {size}"
        )
    for position, character in enumerate(text, start=1):
        if _is_refused_control(character):
            raise InvalidMessage(
                f"character {position} is the control character "
                f"U+{ord(character):04X}; only newline and tab are allowed"
            )
    return text


def escape_received(text: str) -> str:
    """Received text with refused control characters shown as escapes."""
    if not any(_is_refused_control(c) for c in text):
        return text
    return "".join(
        character.encode("unicode_escape").decode("ascii")
        if _is_refused_control(character)
        else character
        for character in text
    )
