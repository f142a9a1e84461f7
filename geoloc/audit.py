"""Append-only audit log of API requests: which key did what to which collections, when, how it was
answered (a locate or search: what was answered) or why it was refused.

One JSON object per line under the data home. Each line is one write to the file opened for appending, under
an exclusive flock on that same file, so API processes sharing the data home never interleave lines (O_APPEND
alone does not promise that on every filesystem). The photo itself, or anything derived from it, is never written.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def record(self, key_id: str | None, endpoint: str | None, collections: list[str] | None, **details) -> None:
        """`collections=None` is a search over every collection (an admin asking for none in particular);
        `key_id=None`, a key that proved nothing; `endpoint=None`, a request refused before it was routed."""
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "key": key_id,
                 "endpoint": endpoint, "collections": "all" if collections is None else list(collections),
                 **details}
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until free, no polling; closing the file releases it
            os.write(fd, line)
        finally:
            os.close(fd)

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, 0o600)
        except FileNotFoundError:  # the first line (or the home was emptied): make its folder
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o600)
