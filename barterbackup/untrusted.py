"""Text from outside (a peer's error message, a name it chose) made safe to
show: bounded, with control and format characters as visible escapes, so
it can neither flood a log line nor move a terminal's cursor."""

from __future__ import annotations

import unicodedata

# Control (Cc), format (Cf: bidirectional overrides, zero-width), surrogate,
# private-use and unassigned characters are shown escaped, and so are the
# line and paragraph separators (Zl, Zp: U+2028, U+2029), which break a log
# line as a newline does.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(text: str, limit: int = 500) -> str:
    """``text`` cut to ``limit`` characters, odd characters escaped."""
    shown = []
    for character in text[:limit]:
        if unicodedata.category(character) in _ESCAPED_CATEGORIES:
            shown.append(character.encode("unicode_escape").decode("ascii"))
        else:
            shown.append(character)
    return "".join(shown) + ("…" if len(text) > limit else "")
