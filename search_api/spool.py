"""Uploaded originals on disk, content-addressed by SHA-256, in a directory the workers share.

Workers read them to embed; they are kept afterwards so a collection can be re-embedded for a new model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from geoloc.ingest.records import sha256_hex


class Spool:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def put(self, data: bytes) -> tuple[str, Path]:
        """(sha256, path) of the stored bytes; storing the same bytes twice keeps one file."""
        digest = sha256_hex(data)
        path = self.directory / digest[:2] / digest
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)  # readers never see a partial file
        return digest, path
