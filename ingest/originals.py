"""geoloc's own copies of indexed photos, content-addressed by SHA-256 under the data home.

Uploads land here before their job runs; CLI and import ingests copy each usable photo here as they read
it. Re-embedding and serving a photo back read only these copies, never a path a source once named. One copy
serves every collection holding the same bytes. Files made from a copy live beside it as `<digest>.<suffix>`
and go with it: each photo's thumbnail (ingest.thumbnails) is made as it is stored, or, for a copy stored
before thumbnails were made, when first asked for.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from geoloc.ingest.images import DEFAULT_MAX_PIXELS
from geoloc.ingest.records import sha256_hex
from geoloc.ingest.thumbnails import SUFFIX, make_thumbnail, thumbnail_of_bytes

_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredFile:
    path: Path
    digest: str | None  # the photo it belongs to; None for a write cut short (a temporary file)
    size: int
    mtime: float


class OriginalStore:
    def __init__(self, directory: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        """`max_pixels`: photos with more are stored without a thumbnail (an upload is stored before it is
        checked; its job refuses it)."""
        self.directory = Path(directory)
        self.max_pixels = max_pixels

    @staticmethod
    def name(digest: str) -> str:
        """A stored photo's name relative to the store (what a payload's `extra.original` records)."""
        return f"{digest[:2]}/{digest}"

    def put(self, data: bytes, image: Image.Image | None = None) -> tuple[str, Path]:
        """(sha256, path) of the stored bytes; storing the same bytes twice keeps one file, whose time is renewed
        (a sweep measures how long a copy has gone unneeded from it). With `image`, the photo as ingest decoded
        it (upright RGB), its thumbnail is made too. Every ingest (command line, upload, import) stores through
        here; an upload is stored undecoded, and its job, which decodes it, stores it again with the image."""
        digest = sha256_hex(data)
        path = self.directory / self.name(digest)
        try:
            os.utime(path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, data)
        if image is not None and not self._thumbnail_path(digest).is_file():
            _write(self._thumbnail_path(digest), make_thumbnail(image))
        return digest, path

    def thumbnail(self, digest: str) -> Path | None:
        """The thumbnail of a stored photo, made now if it has none yet (stored before thumbnails were made);
        None when geoloc holds no such photo or its bytes do not decode."""
        original = self.find(digest)
        if original is None:
            return None
        path = self._thumbnail_path(digest)
        if path.is_file() and not path.is_symlink():
            return path
        try:
            data = original.read_bytes()
        except OSError:  # removed meanwhile
            return None
        thumbnail = thumbnail_of_bytes(data, self.max_pixels)
        if thumbnail is None:
            return None
        _write(path, thumbnail)
        return path

    def _thumbnail_path(self, digest: str) -> Path:
        return self.directory / f"{self.name(digest)}.{SUFFIX}"

    def find(self, digest: str) -> Path | None:
        """The stored copy of these bytes, or None (never stored, or not a digest at all)."""
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            return None
        path = self.directory / self.name(digest)
        return path if path.is_file() and not path.is_symlink() else None

    def digest_of(self, path: str | Path) -> str | None:
        """The digest of a stored copy named by its path, or None for any other path."""
        path = Path(path)
        if _DIGEST.fullmatch(path.name) and path.parent == self.directory / path.name[:2]:
            return path.name
        return None

    def remove(self, digest: str) -> int:
        """Remove a stored photo and the files made from it; the bytes freed."""
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            return 0
        folder = self.directory / digest[:2]
        return sum(_unlink(path) for path in [folder / digest, *folder.glob(f"{digest}.*")])

    def files(self) -> Iterator[StoredFile]:
        """Every file in the store: copies, files made from them, and temporary files of interrupted writes."""
        if not self.directory.is_dir():
            return
        with os.scandir(self.directory) as folders:
            names = sorted(f.path for f in folders if len(f.name) == 2 and f.is_dir(follow_symlinks=False))
        for folder in names:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        stem = entry.name.split(".", 1)[0]
                        yield StoredFile(Path(entry.path), stem if _DIGEST.fullmatch(stem) else None,
                                         info.st_size, info.st_mtime)

    @staticmethod
    def discard(stored: StoredFile) -> int:
        """Remove one file of the store; the bytes freed."""
        return _unlink(stored.path)


def _write(path: Path, data: bytes) -> None:
    """Readers never see a partial file; a write cut short leaves a temporary file the sweep removes."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _unlink(path: Path) -> int:
    try:
        size = path.lstat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size
