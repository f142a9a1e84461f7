"""Both gallery backends over their lifetime: reopening, dimensions, optimising, one owner per Edge shard,
an unreachable server, picking the backend from settings, and cells finer than the payload can hold."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from geoloc.gallery.base import GalleryError, SearchFilter
from geoloc.gallery.edge import EdgeGallery
from geoloc.gallery.open import open_gallery
from geoloc.gallery.server import ServerGallery
from geoloc.cells import leaf_range
from geoloc.settings import Settings
from tests.gallery_helpers import DIM, FILTERS, POINTS, matches, token_at_level, true_top_k


def test_reopen_after_close_loses_nothing(opener):
    gallery = opener()
    gallery.upsert(POINTS)
    gallery.delete(ids=[POINTS[0].id])
    query = np.random.default_rng(5).normal(size=DIM)
    before = (gallery.count(), gallery.collections(), [h.id for h in gallery.search(query, 10, FILTERS["cell"])])
    gallery.close()
    reopened = opener()
    assert (reopened.count(), reopened.collections(),
            [h.id for h in reopened.search(query, 10, FILTERS["cell"])]) == before
    reopened.close()
    assert opener(dim=None).dim == DIM  # opened whatever its dimension


def test_wrong_dimension_is_refused(opener):
    opener().close()
    with pytest.raises(GalleryError, match=f"{DIM}-d"):
        opener(dim=DIM + 4)


def test_no_gallery_without_a_dimension(opener):
    with pytest.raises(GalleryError, match="no gallery"):
        opener(dim=None)


def test_optimize_keeps_answers(full):
    full.optimize()
    query = np.random.default_rng(6).normal(size=DIM)
    ids, _ = true_top_k(query, [p for p in POINTS if matches(FILTERS["cell"], p.payload)], 5)
    assert [h.id for h in full.search(query, 5, FILTERS["cell"])] == ids


def test_edge_gallery_is_held_by_one_process_at_a_time(tmp_path):
    with EdgeGallery(tmp_path / "g", DIM):
        with pytest.raises(GalleryError, match="another process"):
            EdgeGallery(tmp_path / "g", DIM)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_gallery_error():
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(GalleryError, match=f"server at {url} is unreachable"):
        ServerGallery(url, DIM, timeout=2)


def test_open_gallery_picks_the_backend(tmp_path):
    settings = Settings(home=tmp_path, qdrant_url=None)
    with open_gallery(settings, DIM) as gallery:
        assert isinstance(gallery, EdgeGallery) and gallery.path == settings.gallery_dir
    settings = Settings(home=tmp_path, qdrant_url=f"http://127.0.0.1:{_closed_port()}", qdrant_timeout=2)
    with pytest.raises(GalleryError, match="unreachable"):
        open_gallery(settings, DIM)


def test_cells_finer_than_level_25_are_refused(gallery):
    with pytest.raises(ValueError, match="level 25"):
        gallery.count(SearchFilter(cell_ranges=[leaf_range(token_at_level(10.0, 20.0, 28))]))
