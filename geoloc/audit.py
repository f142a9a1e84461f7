"""Append-only audit log of API requests: which key did what to which collections, when, how it was
answered (a locate or search: what was answered) or why it was refused.

One JSON object per line under the data home, appended under a file lock so API processes sharing the
data home never interleave lines. The photo itself, or anything derived from it, is never written.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = FileLock(self.path.with_name(self.path.name + ".lock"))

    def record(self, key_id: str | None, endpoint: str | None, collections: list[str] | None, **details) -> None:
        """`collections=None` is a search over every collection (an admin asking for none in particular);
        `key_id=None`, a key that proved nothing; `endpoint=None`, a request refused before it was routed."""
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "key": key_id,
                 "endpoint": endpoint, "collections": "all" if collections is None else list(collections),
                 **details}
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
