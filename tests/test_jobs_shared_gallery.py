"""The embedded gallery taken in turns by peer processes on one host with no API holding it
(GEOLOC_GALLERY_SHARED): Edge itself lets one process hold the shard, SharedEdgeGallery serialises whole
operations under a file lock so several can take turns. With a serving API, see test_owned_gallery.py."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import numpy as np
import pytest

from geoloc.gallery.base import GalleryError, GalleryPoint, SearchFilter, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.gallery.shared import SharedEdgeGallery

DIM = 8


def _points(collection: str, n: int, seed: int) -> list[GalleryPoint]:
    rng = np.random.default_rng(seed)
    return [GalleryPoint(str(uuid.uuid4()), rng.standard_normal(DIM).astype(np.float32),
                         make_payload(collection, float(rng.uniform(-60, 60)), float(rng.uniform(-170, 170)),
                                      f"{collection}-{i}", "m", f"{seed:032d}{i:032d}"))
            for i in range(n)]


def _writer(path: str, collection: str, seed: int) -> None:
    gallery = SharedEdgeGallery(path)
    for chunk in range(4):
        gallery.upsert(_points(collection, 5, seed * 10 + chunk))
        gallery.search(np.ones(DIM), 3, SearchFilter(collections=[collection]))


def test_processes_take_turns_and_lose_nothing(tmp_path):
    SharedEdgeGallery(tmp_path, DIM)  # created once, with its dimension
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(tmp_path), f"c{i}", i)) for i in range(3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
        assert w.exitcode == 0
    assert SharedEdgeGallery(tmp_path).collections() == {"c0": 20, "c1": 20, "c2": 20}


def test_threads_take_turns_too(tmp_path):
    gallery = SharedEdgeGallery(tmp_path, DIM)
    threads = [threading.Thread(target=gallery.upsert, args=(_points("t", 5, i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gallery.count() == 20


def test_scroll_releases_the_lock_before_the_caller_acts(tmp_path):
    gallery = SharedEdgeGallery(tmp_path, DIM)
    gallery.upsert(_points("s", 6, 0))
    for hit in gallery.scroll(SearchFilter(collections=["s"]), batch=2):
        gallery.delete(ids=[hit.id])  # would deadlock if scroll still held the lock
    assert gallery.count() == 0 and gallery.embedding_model() is None


def test_dimension_is_kept_and_an_open_shard_is_not_shared(tmp_path):
    SharedEdgeGallery(tmp_path, DIM)
    with pytest.raises(GalleryError, match="8-d"):
        SharedEdgeGallery(tmp_path, DIM * 2)
    held = EdgeGallery(tmp_path)  # the plain embedded gallery keeps the shard open...
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            with pytest.raises(GalleryError, match="open in another process"):
                pool.apply(_count, (str(tmp_path),))
    finally:
        held.close()
    assert SharedEdgeGallery(tmp_path).count() == 0  # ...and once it is closed, others may take turns


def _count(path: str) -> int:
    return SharedEdgeGallery(path).count()
