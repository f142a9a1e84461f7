"""geoloc's own copies of indexed photos, content-addressed by SHA-256 under the data home.

Uploads land here before their job runs; CLI and import ingests copy each usable photo here as they read
it. Re-embedding and serving a photo back read only these copies, never a path a source once named.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from geoloc.ingest.records import sha256_hex

_DIGEST = re.compile(r"[0-9a-f]{64}")


class OriginalStore:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @staticmethod
    def name(digest: str) -> str:
        """A stored photo's name relative to the store (what a payload's `extra.original` records)."""
        return f"{digest[:2]}/{digest}"

    def put(self, data: bytes) -> tuple[str, Path]:
        """(sha256, path) of the stored bytes; storing the same bytes twice keeps one file."""
        digest = sha256_hex(data)
        path = self.directory / self.name(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)  # readers never see a partial file
        return digest, path

    def find(self, digest: str) -> Path | None:
        """The stored copy of these bytes, or None (never stored, or not a digest at all)."""
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            return None
        path = self.directory / self.name(digest)
        return path if path.is_file() and not path.is_symlink() else None
