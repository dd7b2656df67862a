"""Receiving an offered file into a directory: ``NAME.part``, then ``NAME``.

- The bytes go to ``NAME.part``, created exclusively with mode 0600 (never
  through a symlink), at their offsets, never past the offered size. Each
  piece was authenticated by the AEAD layer before it gets here.
- Resuming after a cut: ``FileReceiver.start`` on an existing ``.part``
  re-hashes the bytes it already holds (a running SHA-256 state cannot be
  saved across restarts with hashlib) and asks from its size. That costs
  size / ~1.5 GB/s, so under a minute even at MAX_OFFER_SIZE; callers run
  ``start`` off the reactor for big files. A prefix cannot be checked
  against a whole-file hash, so a foreign or damaged ``.part`` is only found
  by the final check: the ``.part`` is then removed and the next try starts
  from 0.
- ``finish`` checks the size and the SHA-256 against the offer, fsyncs the
  file, links it to its final name (a hard link fails instead of replacing
  an existing file), removes the ``.part`` and fsyncs the directory.
- An existing file is never overwritten unless ``overwrite=True``: the
  file is stored as ``NAME (1).ext``, ``NAME (2).ext``… up to
  ``MAX_NUMBERED_NAMES``, then the receive fails.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from barterbackup.chat.aead import ChatError
from barterbackup.chat.offers import ReceivedOffer, safe_name
from barterbackup.logs import get_logger
from barterbackup.store.atomic import fsync_directory

PART_SUFFIX = ".part"
MAX_NUMBERED_NAMES = 999
REHASH_CHUNK_BYTES = 1024 * 1024

log = get_logger("barterbackup.chat.receiving")


class ReceiveError(ChatError):
    """A file cannot be received; nothing was renamed."""


class ReceivedFileMismatch(ReceiveError):
    """The received bytes do not hash to the offered SHA-256."""


def numbered_name(name: str, number: int) -> str:
    """``report.pdf`` → ``report (1).pdf``; ``README`` → ``README (1)``."""
    stem, dot, extension = name.rpartition(".")
    if not stem:
        return f"{name} ({number})"
    return f"{stem} ({number}){dot}{extension}"


class FileReceiver:
    """Writes one offered file; use ``start`` to create or resume one."""

    def __init__(
        self,
        directory: Path,
        offer: ReceivedOffer,
        fd: int,
        held: int,
        digest: hashlib._Hash,
    ) -> None:
        self.directory = directory
        self.offer = offer
        self.part_path = directory / (offer.name + PART_SUFFIX)
        self._fd: int | None = fd
        self._digest = digest
        self.offset = held

    @classmethod
    def start(
        cls, directory: Path, offer: ReceivedOffer, *, resume: bool = True
    ) -> FileReceiver:
        """Create ``NAME.part`` in ``directory``, or resume the one there.

        With ``resume`` False an existing ``.part`` is an error. Raises
        ReceiveError when the directory or the ``.part`` is unusable.
        """
        directory = Path(directory)
        if safe_name(offer.name) != offer.name:
            raise ReceiveError("the offer's name was not made safe")
        if not directory.is_dir():
            raise ReceiveError(f"{directory} is not a directory")
        part = directory / (offer.name + PART_SUFFIX)
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(part, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if not resume:
                raise ReceiveError(
                    f"{part} exists already; resume it or remove it"
                ) from None
            return cls._resume(directory, offer, part, flags)
        except OSError as error:
            raise ReceiveError(f"cannot create {part}: {error.strerror}") from None
        return cls(directory, offer, fd, 0, hashlib.sha256())

    @classmethod
    def _resume(
        cls, directory: Path, offer: ReceivedOffer, part: Path, flags: int
    ) -> FileReceiver:
        try:
            fd = os.open(part, flags)
        except OSError as error:
            raise ReceiveError(f"cannot reopen {part}: {error.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ReceiveError(f"{part} is not a regular file")
            if info.st_size > offer.size:
                raise ReceiveError(
                    f"{part} holds {info.st_size} bytes, more than the "
                    f"{offer.size} offered; remove it"
                )
            digest = hashlib.sha256()
            held = 0
            while held < info.st_size:
                chunk = os.pread(fd, REHASH_CHUNK_BYTES, held)
                if not chunk:
                    break
                digest.update(chunk)
                held += len(chunk)
        except BaseException:
            os.close(fd)
            raise
        log.info(
            "resuming {name} at {held} of {size} bytes",
            name=offer.name,
            held=held,
            size=offer.size,
        )
        return cls(directory, offer, fd, held, digest)

    @property
    def remaining(self) -> int:
        return self.offer.size - self.offset

    @property
    def complete(self) -> bool:
        return self.offset == self.offer.size

    def write_piece(self, offset: int, data: bytes | memoryview) -> None:
        """Write an authenticated piece; pieces arrive in order."""
        fd = self._open_fd()
        if offset != self.offset:
            raise ReceiveError(
                f"a piece at {offset} arrived, the file is held up to {self.offset}"
            )
        if offset + len(data) > self.offer.size:
            raise ReceiveError(
                f"a piece ends at {offset + len(data)}, past the offered "
                f"{self.offer.size} bytes"
            )
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.pwrite(fd, view[written:], offset + written)
        self._digest.update(view)
        self.offset += len(view)

    def finish(self, *, overwrite: bool = False) -> Path:
        """Verify, make durable and rename; the final path.

        A size or hash mismatch removes the ``.part`` and raises
        ReceivedFileMismatch.
        """
        fd = self._open_fd()
        if not self.complete:
            raise ReceiveError(
                f"{self.offset} of {self.offer.size} bytes are held; the file "
                "is not complete"
            )
        if self._digest.digest() != self.offer.sha256:
            self.discard()
            raise ReceivedFileMismatch(
                f"{self.offer.name} does not match the offered SHA-256; the "
                "partial file was removed, a new try starts from the beginning"
            )
        os.fsync(fd)
        self.close()
        final = self._install(overwrite)
        fsync_directory(self.directory)
        return final

    def _install(self, overwrite: bool) -> Path:
        if overwrite:
            final = self.directory / self.offer.name
            os.replace(self.part_path, final)
            return final
        for number in range(MAX_NUMBERED_NAMES + 1):
            name = (
                self.offer.name
                if number == 0
                else numbered_name(self.offer.name, number)
            )
            final = self.directory / name
            if _move_no_overwrite(self.part_path, final):
                return final
        raise ReceiveError(
            f"{self.offer.name} and its {MAX_NUMBERED_NAMES} numbered variants "
            f"exist already; the file stays as {self.part_path.name}"
        )

    def close(self) -> None:
        """Stop writing and keep the ``.part`` for a later resume."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Stop writing and remove the ``.part``."""
        self.close()
        self.part_path.unlink(missing_ok=True)
        fsync_directory(self.directory)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ReceiveError("this receive is closed")
        return self._fd

    def __repr__(self) -> str:
        return f"FileReceiver({self.offer.name!r}, {self.offset}/{self.offer.size})"


def _move_no_overwrite(source: Path, target: Path) -> bool:
    """Rename ``source`` to ``target`` unless it exists; False if it does."""
    try:
        os.link(source, target, follow_symlinks=False)
        source.unlink()
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (
            errno.EPERM,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.EMLINK,
        ):
            raise
    # No hard links on this file system: claim the name with an exclusive
    # create, then replace only that placeholder.
    try:
        os.close(
            os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        )
    except FileExistsError:
        return False
    os.replace(source, target)
    return True
