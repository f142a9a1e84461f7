"""Reference collections declared through the API (name, description), beside those the gallery holds.

A collection exists once declared or once it holds photos (e.g. indexed from the command line), so a
mistyped name in an upload is refused rather than silently starting a new collection.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock


class CollectionRegistry:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = FileLock(self.path.with_suffix(".lock"))

    def all(self) -> dict[str, dict]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    @contextmanager
    def _writing(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            entries = self.all()
            yield entries
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries, indent=2))
            os.replace(tmp, self.path)

    def add(self, name: str, description: str = "") -> dict | None:
        """The new entry, or None if the name is taken."""
        with self._writing() as entries:
            if name in entries:
                return None
            entries[name] = {"description": description,
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            return entries[name]

    def remove(self, name: str) -> bool:
        with self._writing() as entries:
            return entries.pop(name, None) is not None
