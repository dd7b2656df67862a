"""File names of the file set: what is accepted and why.

Names are relative paths with "/" separators, because recovery writes them
back under a directory: anything that could escape that directory or mean
different files on different systems is refused.
"""

from __future__ import annotations

MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255


class InvalidFileName(ValueError):
    """A file name is not a safe relative path."""


def validate_name(name: str) -> str:
    """Return ``name`` unchanged if it is acceptable, else raise."""
    if not isinstance(name, str):
        raise InvalidFileName("file name must be a string")
    if not name:
        raise InvalidFileName("file name is empty")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidFileName(f"file name {name!r} is not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidFileName(f"file name is longer than {MAX_NAME_BYTES} bytes")
    if "\x00" in name:
        raise InvalidFileName(f"file name {name!r} contains a NUL character")
    if "\\" in name:
        raise InvalidFileName(f"file name {name!r} contains a backslash; use '/'")
    if name.startswith("/"):
        raise InvalidFileName(f"file name {name!r} is absolute")
    for component in name.split("/"):
        if component == "":
            raise InvalidFileName(f"file name {name!r} has an empty component")
        if component in (".", ".."):
            raise InvalidFileName(f"file name {name!r} has a {component!r} component")
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise InvalidFileName(
                f"file name {name!r} has a component over {MAX_COMPONENT_BYTES} bytes"
            )
    return name
