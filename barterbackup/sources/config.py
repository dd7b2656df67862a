"""The source folders the daemon backs up: validation and storage.

A source is an absolute folder path, a name and exclude patterns. Its files
are named ``NAME/relative/path`` in the file set, so the name must be one
valid file-name component and unique. Two sources may not be the same
folder or one inside the other (its files would be backed up twice under
two names; an exclude on the outer one says what is meant). A source may
contain the node directory, which the walk then skips, but may not lie
inside it.

The list lives in the node's sealed ``Metadata.sources``. ``new_source``
checks what only the request can tell (the folder exists now); a list read
back from Metadata is checked for structure only, because a folder may be
missing for a while (an unmounted disk, or a machine being recovered) and
that is the run's report to make, not a reason to lose the configuration.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from barterbackup._proto import storedpb_pb2
from barterbackup.content.names import InvalidFileName, validate_name
from barterbackup.sources.excludes import InvalidPattern, compile_excludes
from barterbackup.sources.walker import WalkRoot

MAX_SOURCES = 100
MAX_PATH_LENGTH = 4096


class InvalidSource(ValueError):
    """A source request or a stored source list is not acceptable."""


@dataclass(frozen=True)
class Source:
    """One source folder: absolute ``path``, ``name`` prefix, ``excludes``."""

    path: str
    name: str
    excludes: tuple[str, ...] = ()

    def walk_root(self) -> WalkRoot:
        """The folder as the walker takes it (excludes compiled)."""
        return WalkRoot(self.path, self.name, compile_excludes(self.excludes))

    def to_proto(self) -> storedpb_pb2.SourceConfig:
        return storedpb_pb2.SourceConfig(
            path=self.path, name=self.name, excludes=list(self.excludes)
        )


def _normalized_path(path: str) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidSource("a source needs the folder's path")
    if "\x00" in path:
        raise InvalidSource("the source path contains a NUL character")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_LENGTH:
        raise InvalidSource(f"the source path is longer than {MAX_PATH_LENGTH} bytes")
    if not path.startswith("/"):
        raise InvalidSource(
            f"the source path {path!r} is not absolute (the daemon has its own "
            "working directory; give the full path)"
        )
    # normpath keeps a leading "//" (POSIX allows it a meaning); Linux has none.
    return "/" + os.path.normpath(path).lstrip("/")


def _checked_name(name: str, path: str) -> str:
    if not name:
        raise InvalidSource(f"{path!r} has no base name; give the source a name")
    if "/" in name:
        raise InvalidSource(f"the source name {name!r} must not contain '/'")
    try:
        validate_name(name)
    except InvalidFileName as e:
        raise InvalidSource(f"the source name is not usable: {e}") from None
    return name


def _checked_excludes(excludes: Iterable[str]) -> tuple[str, ...]:
    patterns = tuple(excludes)
    try:
        compile_excludes(patterns)
    except InvalidPattern as e:
        raise InvalidSource(str(e)) from None
    return patterns


def source_from_fields(path: str, name: str, excludes: Iterable[str]) -> Source:
    """A structurally valid Source (the folder need not exist)."""
    normalized = _normalized_path(path)
    return Source(
        normalized,
        _checked_name(name, normalized),
        _checked_excludes(excludes),
    )


def new_source(
    path: str,
    name: str = "",
    excludes: Sequence[str] = (),
    *,
    node_dir: str | None = None,
) -> Source:
    """Validate a request to back up ``path``; raise InvalidSource if refused.

    ``name`` defaults to the folder's base name. The folder must be an
    existing directory (a symbolic link to one is fine) that the daemon can
    list, and not inside ``node_dir``.
    """
    normalized = _normalized_path(path)
    source = source_from_fields(
        normalized, name or os.path.basename(normalized), excludes
    )
    if not os.path.isdir(normalized):
        what = (
            "does not exist" if not os.path.lexists(normalized) else "is not a folder"
        )
        raise InvalidSource(f"{normalized} {what}")
    if not os.access(normalized, os.R_OK | os.X_OK):
        raise InvalidSource(f"the daemon cannot read {normalized}")
    if node_dir is not None and _inside(
        os.path.realpath(normalized), os.path.realpath(node_dir)
    ):
        raise InvalidSource(
            f"{normalized} is inside the node directory {node_dir}, which is "
            "never backed up"
        )
    return source


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _nested(inner: Source, outer: Source) -> InvalidSource:
    return InvalidSource(
        f"{inner.path} is inside the source {outer.path} ({outer.name!r}); "
        "exclude it there, or remove that source first"
    )


class SourceList:
    """A validated list of sources, sorted by name; changes return new lists."""

    def __init__(self, sources: Iterable[Source] = ()) -> None:
        ordered = sorted(sources, key=lambda source: source.name)
        if len(ordered) > MAX_SOURCES:
            raise InvalidSource(f"at most {MAX_SOURCES} sources")
        by_name: dict[str, Source] = {}
        for source in ordered:
            if source.name in by_name:
                first = by_name[source.name]
                raise InvalidSource(
                    f"two sources are named {source.name!r} ({first.path} and "
                    f"{source.path}); give one another name"
                )
            by_name[source.name] = source
        real = [(os.path.realpath(s.path), s) for s in ordered]
        for index, (path, source) in enumerate(real):
            for other_path, other in real[index + 1 :]:
                if path == other_path or source.path == other.path:
                    raise InvalidSource(
                        f"{source.path} and {other.path} are the same folder"
                    )
                if _inside(path, other_path):
                    raise _nested(source, other)
                if _inside(other_path, path):
                    raise _nested(other, source)
        self.sources: tuple[Source, ...] = tuple(ordered)

    def __iter__(self) -> Iterator[Source]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceList) and self.sources == other.sources

    def __repr__(self) -> str:
        return f"SourceList({list(self.sources)!r})"

    def find(self, path: str = "", name: str = "") -> Source:
        """The source with this path or name; raise InvalidSource if none."""
        if bool(path) == bool(name):
            raise InvalidSource("name the source by its path or by its name")
        wanted = _normalized_path(path) if path else name
        for source in self.sources:
            if (source.path if path else source.name) == wanted:
                return source
        raise InvalidSource(f"no source {wanted!r}")

    def added(self, source: Source, replace: bool = False) -> SourceList:
        """This list with ``source`` added, or replacing the one at its path."""
        kept = [s for s in self.sources if s.path != source.path]
        if len(kept) != len(self.sources) and not replace:
            raise InvalidSource(
                f"{source.path} is a source already; replace it to change its "
                "name or excludes"
            )
        return SourceList([*kept, source])

    def removed(self, path: str = "", name: str = "") -> tuple[SourceList, Source]:
        """This list without the named source, and that source."""
        gone = self.find(path, name)
        return SourceList(s for s in self.sources if s is not gone), gone

    def walk_roots(self) -> list[WalkRoot]:
        return [source.walk_root() for source in self.sources]

    def store(self, metadata: storedpb_pb2.Metadata) -> None:
        """Write the list into ``metadata.sources`` (replacing what was there)."""
        del metadata.sources[:]
        metadata.sources.extend(source.to_proto() for source in self.sources)

    @classmethod
    def load(cls, metadata: storedpb_pb2.Metadata) -> SourceList:
        """The list kept in ``metadata`` (structure checked, folders not)."""
        return cls(
            source_from_fields(s.path, s.name, s.excludes) for s in metadata.sources
        )
