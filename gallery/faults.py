"""Faults of the embedded gallery's disk, as errors a person can act on.

A gallery directory can go missing (deleted, its volume not mounted), be replaced by a file, become unreadable,
or be locked by another process. Each becomes GalleryUnavailable saying what happened and what to do, never a
bare OSError, a storage engine error or a wait without end: the API answers 503 with Retry-After, and jobs retry
with backoff before they fail their batch with the reason.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import Timeout

from geoloc.gallery.base import GalleryError


class GalleryUnavailable(GalleryError):
    """The gallery cannot be used now (missing, unreadable, replaced, locked); the same call may succeed later."""


def check_directory(path: str | Path) -> os.stat_result:
    """The gallery directory's stat if it is a directory this process may read and write."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise GalleryUnavailable(
            f"the gallery directory {path} is missing (deleted, or its volume is not mounted): restore it from a "
            f"backup or mount its volume again") from None
    except OSError as exc:
        raise GalleryUnavailable(f"cannot reach the gallery directory {path}: {exc.strerror}: check the disk and "
                                 f"the permissions of the folders above it") from None
    if not stat.S_ISDIR(info.st_mode):
        raise GalleryUnavailable(f"{path} should be the gallery directory but is a file: move that file away and "
                                 f"restore the gallery directory")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise GalleryUnavailable(f"the gallery directory {path} is not readable and writable by this process "
                                 f"(user id {os.getuid()}): give it back read, write and search permission")
    return info


def describe(path: str | Path, exc: BaseException) -> GalleryUnavailable:
    """An OSError, lock timeout or storage engine error met while using the gallery at `path`, explained."""
    if isinstance(exc, Timeout):
        return GalleryUnavailable(
            f"the gallery at {path} is locked by another process (waited for {exc.lock_file}, GEOLOC_GALLERY_LOCK_"
            f"TIMEOUT): retry shortly; if this lasts, look for a stuck process holding that file")
    try:
        check_directory(path)
    except GalleryUnavailable as fault:
        return fault
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return GalleryUnavailable(f"cannot read or write the gallery at {path}{where}: {exc.strerror or exc}: "
                                  f"check the disk, its free space and the files' permissions")
    return GalleryUnavailable(f"the gallery at {path} failed: {exc}: check the disk; if the gallery's files are "
                              f"damaged, restore them from a backup")


# qdrant-edge raises plain Exception for everything: these words mark its disk and runtime failures
_ENGINE_FAULT = re.compile(r"os error|io error|service runtime error|no such file|permission denied", re.I)


def is_fault(exc: BaseException) -> bool:
    """An error of the disk or of the storage engine, not a mistake of the caller."""
    return isinstance(exc, OSError) or (type(exc) is Exception and bool(_ENGINE_FAULT.search(str(exc))))


@contextmanager
def disk_faults(path: str | Path) -> Iterator[None]:
    """Check the gallery directory, then run the block: a disk fault or lock timeout in it, or any error
    while the directory is broken, becomes GalleryUnavailable; other errors pass unchanged."""
    check_directory(path)
    try:
        yield
    except GalleryError:
        raise
    except Exception as exc:
        try:
            check_directory(path)
        except GalleryUnavailable as fault:
            raise fault from exc
        if not is_fault(exc):
            raise
        raise describe(path, exc) from exc
