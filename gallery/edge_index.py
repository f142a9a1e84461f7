"""Building the embedded gallery's vector index while it serves.

Edge's `optimize()` (merge segments, build HNSW) holds the shard and the Python interpreter lock for as long
as it runs, minutes per 100k photos: every thread of the process, searches included, would wait that long
(measured: bench/gallery_scale.py). So the shard is copied (writes wait meanwhile, searches go on), the copy
optimized by another process, and swapped in; writes made meanwhile are journaled and replayed onto it.
Searches pause only for the swap: as long as loading a shard. That process also measures, on the built copy,
how many candidates its searches must keep (gallery.search_breadth), so measuring slows no search either.

`python -m geoloc.gallery.edge_index SHARD_DIR` optimizes the shard in SHARD_DIR and prints the measured breadth
as JSON: what that process runs.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

from geoloc.gallery.base import VECTOR_NAME, GalleryError
from geoloc.gallery.search_breadth import K, PROBES, Breadth, measure, midpoints

if TYPE_CHECKING:
    from geoloc.gallery.edge import EdgeGallery

log = logging.getLogger(__name__)

BUILD_DIR = "shard.next"  # the copy being indexed


class IndexBuilder:
    """Builds the index of one gallery, one build at a time; starts one on its own (in a thread) once
    `after_upserts` points were upserted since the last (0: never)."""

    def __init__(self, gallery: EdgeGallery, after_upserts: int):
        self.gallery, self.after_upserts = gallery, after_upserts
        self.upserts = 0  # points upserted since the last build started
        self.builds = 0  # builds that swapped in an index
        self._one = threading.Lock()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen | None = None
        self._stopping = False
        self._starting = threading.Lock()
        self._spawning = threading.Lock()  # a child is started, or the builder stopped, never both at once

    def noticed(self, points: int) -> None:
        """Count upserted points; past the threshold, start a build in the background unless one runs."""
        with self._starting:
            self.upserts += points
            if not self._due or self.running or self._stopping:
                return
            self._thread = threading.Thread(target=self._build_quietly, name="geoloc-index", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> bool:
        return self.running or self._due

    @property
    def _due(self) -> bool:
        return bool(self.after_upserts) and self.upserts >= self.after_upserts

    def settle(self) -> None:
        """Wait for the build under way; then build if enough upserts came meanwhile (a one-shot command's end)."""
        self.wait()
        if self._due:
            self.build()

    def wait(self, timeout: float | None = None) -> None:
        """Until the build started in the background, if any, is done."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _build_quietly(self) -> None:
        try:
            self.build()
        except Exception as exc:  # a background build that fails leaves the old index serving
            log.warning("building the gallery index at %s failed: %s", self.gallery.path, exc)

    def build(self) -> dict:
        """Copy, index the copy in another process, swap it in; the search breadth measured on it (empty: none)."""
        with self._one:
            if self._stopping:
                raise GalleryError(f"the gallery at {self.gallery.path} is closing")
            self.upserts = 0
            gallery, copy = self.gallery, self.gallery.path / BUILD_DIR
            shutil.rmtree(copy, ignore_errors=True)
            gallery._copy_shard(copy)
            try:
                breadth = self._optimize_apart(copy)
                gallery._swap_in(copy, breadth)
            except BaseException:
                gallery._drop_journal()
                shutil.rmtree(copy, ignore_errors=True)
                raise
            self.builds += 1
            return breadth.to_dict() if breadth else {}

    def _optimize_apart(self, shard_dir) -> Breadth | None:
        with self._spawning:  # a stop() during the copy must not let the child start after it
            if self._stopping:
                raise GalleryError(f"the gallery at {self.gallery.path} is closing")
            self._child = subprocess.Popen([sys.executable, "-m", __name__, str(shard_dir)],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = self._child.communicate()
        if self._child.returncode != 0 and self._stopping:
            raise GalleryError(f"the index build was stopped: the gallery at {self.gallery.path} is closing")
        if self._child.returncode != 0:
            raise GalleryError(f"building the gallery index failed: {err.strip()[-500:] or self._child.returncode}")
        try:  # the last line: anything a library printed before it is not the measurement
            breadth = Breadth.from_dict(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            breadth = None
        if breadth is None and err.strip():  # an empty store has none to measure, and says nothing
            log.warning("the index of %s was built, but its search breadth was not measured: %s", self.gallery.path,
                        err.strip()[-300:])
        return breadth

    def stop(self) -> None:
        """End a running build (its copy is discarded; the index serving stays) and wait for it, whichever
        thread runs it (the background one, or a job's)."""
        with self._spawning:
            self._stopping = True
            child = self._child
            if child is not None and child.poll() is None:
                child.kill()
        self.wait()
        with self._one:  # a build past its child (swapping in) finishes before the gallery closes
            pass


def _optimize(shard_dir: str) -> Breadth | None:
    from qdrant_edge import EdgeShard

    shard = EdgeShard.load(shard_dir)
    try:
        shard.optimize()
        shard.flush()
        try:
            return _measure(shard)
        except Exception as exc:  # the index stands; its searches keep the breadth last measured
            log.warning("measuring the search breadth of %s failed: %s", shard_dir, exc)
            return None
    finally:
        shard.close()


def _measure(shard) -> Breadth | None:
    """The breadth `shard` needs, probed with the midpoints of its first 2 x PROBES points paired (ids are hashes:
    a sample of no order), each searched exactly and as the gallery searches it."""
    from qdrant_edge import Query, QueryRequest, ScrollRequest

    from geoloc.gallery.edge_query import EXACT, search_params

    records, _ = shard.scroll(ScrollRequest(limit=2 * PROBES, with_payload=False, with_vector=True))
    if len(records) < 2:
        return None

    def search(vector: list[float], ef: int | None) -> list[str]:
        params = EXACT if ef is None else search_params(False, ef)
        request = QueryRequest(limit=K, query=Query.Nearest(vector, using=VECTOR_NAME), with_payload=False,
                               params=params)
        return [str(p.id) for p in shard.query(request)]

    return measure(midpoints([r.vector[VECTOR_NAME] for r in records]), search)


if __name__ == "__main__":
    measured = _optimize(sys.argv[1])
    print(json.dumps(measured.to_dict() if measured else None))
