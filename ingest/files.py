"""Reading a file named by a source without trusting the name: regular files only, opened so that nothing
can block, bounded in bytes, and (for server-side imports) only inside the allowed roots once every
symlink is followed."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from geoloc.ingest.images import DEFAULT_MAX_PIXELS

DEFAULT_MAX_BYTES = 20 << 20
# O_NONBLOCK: a FIFO swapped in after the check still opens at once; O_NOFOLLOW: the resolved name's
# last part cannot have become a symlink in between
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class FileSkip(Exception):
    """The file is not read; the message is the skip reason."""


@dataclass(frozen=True)
class ReadPolicy:
    """What a photo read may do. roots None: any path (the command line, where the user owns the disk);
    otherwise every file must resolve, after all symlinks, inside one of them."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    roots: tuple[Path, ...] | None = None

    @classmethod
    def from_settings(cls, settings, roots=None) -> ReadPolicy:
        return cls(settings.max_photo_bytes, settings.max_pixels,
                   None if roots is None else tuple(Path(r).resolve() for r in roots))


def _inside(path: str, roots: tuple[Path, ...]) -> bool:
    return any(Path(path).is_relative_to(root) for root in roots)


def _check(info: os.stat_result, max_bytes: int | None) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise FileSkip("not_a_regular_file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise FileSkip("file_too_large")


def _check_opened(fd: int, roots: tuple[Path, ...]) -> None:
    """Where the open file really is (Linux names it in /proc): a folder on the way swapped for a symlink
    after the check cannot lead out of the roots."""
    try:
        actual = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the check made before opening stands alone
        return
    if not _inside(actual, roots):
        raise FileSkip("outside_import_root")


def open_regular(path: str | Path, roots: tuple[Path, ...] | None = None, max_bytes: int | None = None) -> BinaryIO:
    """The file opened for reading, after checking (before and after opening) that it is a regular file,
    not over `max_bytes`, and inside `roots` when given; raises FileSkip with the reason."""
    try:
        resolved = os.path.realpath(path)
        if roots is not None and not _inside(resolved, roots):
            raise FileSkip("outside_import_root")
        _check(os.stat(resolved), max_bytes)  # never open a device or a FIFO, even without blocking
        fd = os.open(resolved, _OPEN_FLAGS)
    except FileNotFoundError:
        raise FileSkip("missing_file") from None
    except (OSError, ValueError):  # permissions, symlink loops, a name with a NUL byte ...
        raise FileSkip("unreadable_file") from None
    try:
        _check(os.fstat(fd), max_bytes)
        if roots is not None:
            _check_opened(fd, roots)
    except FileSkip:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_bounded(path: str | Path, policy: ReadPolicy) -> bytes:
    """The bytes of a photo file under `policy`; raises FileSkip with the reason."""
    with open_regular(path, policy.roots, policy.max_bytes) as handle:
        try:
            data = handle.read(policy.max_bytes + 1)  # the file may have grown since it was checked
        except OSError:
            raise FileSkip("unreadable_file") from None
    if len(data) > policy.max_bytes:
        raise FileSkip("file_too_large")
    if not data:
        raise FileSkip("empty_file")  # as an upload says: no bytes at all, not bytes that fail to decode
    return data
