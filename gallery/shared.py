"""The embedded gallery taken in turns by several processes on one host when none of them holds it open.

A Qdrant Edge shard can be held open by one process only (Edge locks its write-ahead log). When an API
serves, it holds the shard and the workers and commands beside it send it their operations
(gallery.remote, GEOLOC_GALLERY_VIA_API): no operation reloads the shard. This per-operation mode stays
for hosts where no process can own the gallery: several peer processes, none of them a serving API (a
script running geoloc commands side by side, or several API processes over one data home). It is asked
for explicitly (GEOLOC_GALLERY_SHARED). Every operation takes an exclusive lock on a file beside the shard,
loads the shard, runs, flushes and closes, so each pays a shard load and a flush: about 0.1 s at 1,000
points and a second at 50,000, growing with the gallery. The lock (filelock: flock on Unix) is not
reliable on network file systems: every process must run on the host that holds the gallery directory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock

from geoloc.gallery.base import Gallery, GalleryPoint, Hit, SearchFilter
from geoloc.gallery.edge import EdgeGallery
from geoloc.gallery.faults import disk_faults
from geoloc.settings import GalleryTuning

LOCK_FILE = "gallery.lock"


class SharedEdgeGallery(Gallery):
    """An EdgeGallery at `path`, opened under the lock for each call and closed before it returns."""

    def __init__(self, path: str | Path, dim: int | None = None, lock_timeout: float = -1,
                 tuning: GalleryTuning | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # each operation opens the shard afresh: upserts never add up to a build's threshold, and a build
        # started by one would be killed as it closes; `geoloc maintenance index` builds one here
        self.dim, self.tuning = dim, (tuning or GalleryTuning()).model_copy(update={"index_after_upserts": 0})
        # each thread takes the lock through its own descriptor, so threads of one process take turns too;
        # the lock goes with the process if it dies
        self._lock = FileLock(self.path / LOCK_FILE, timeout=lock_timeout)  # seconds; -1: wait for ever
        with self._open() as gallery:  # creates the gallery, or checks the dimension it was built with
            self.dim = gallery.dim

    @contextmanager
    def _open(self) -> Iterator[EdgeGallery]:
        with disk_faults(self.path), self._lock:  # a missing directory is reported, not created again
            gallery = EdgeGallery(self.path, self.dim, tuning=self.tuning)
            try:
                yield gallery
            finally:
                gallery.close()  # flushes: the next process to load the shard sees this operation

    def upsert(self, points: Sequence[GalleryPoint]) -> None:
        with self._open() as gallery:
            gallery.upsert(points)

    def search(self, vector: np.ndarray, k: int, where: SearchFilter | None = None) -> list[Hit]:
        with self._open() as gallery:
            return gallery.search(vector, k, where)

    def count(self, where: SearchFilter | None = None) -> int:
        with self._open() as gallery:
            return gallery.count(where)

    def collections(self) -> dict[str, int]:
        with self._open() as gallery:
            return gallery.collections()

    def delete(self, where: SearchFilter | None = None, ids: Sequence[str] | None = None) -> int:
        with self._open() as gallery:
            return gallery.delete(where, ids)

    def scroll(self, where: SearchFilter | None = None, with_vectors: bool = False,
               batch: int = 512) -> Iterator[Hit]:
        """Read whole under one lock, so a caller acting on each hit (deleting, upserting) cannot
        deadlock on the lock it would otherwise still hold."""
        with self._open() as gallery:
            return iter(list(gallery.scroll(where, with_vectors, batch)))

    def retrieve(self, ids: Sequence[str]) -> list[Hit]:
        with self._open() as gallery:
            return gallery.retrieve(ids)

    def embedding_model(self) -> str | None:
        with self._open() as gallery:  # one point, not the whole scroll
            return gallery.embedding_model()

    def optimize(self) -> dict:
        with self._open() as gallery:
            return gallery.optimize()

    def close(self) -> None:
        """Nothing is held between operations."""
