"""One contract for both gallery backends: Qdrant Edge on disk, and qdrant-client (its local mode stands
in for a server here). Every answer is checked against numpy and a brute-force reading of the payloads."""

from __future__ import annotations

import socket
import uuid
from collections import Counter

import numpy as np
import pytest
import s2sphere

from geoloc.gallery.base import GalleryError, GalleryPoint, SearchFilter, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.gallery.open import open_gallery
from geoloc.gallery.server import ServerGallery
from geoloc.cells import leaf_range, token_at_level
from geoloc.geodesy import haversine_km
from geoloc.settings import Settings

DIM = 12
MODEL = "test-model-v1"
PLACES = {"paris": (48.85, 2.35), "tokyo": (35.68, 139.69), "nyc": (40.71, -74.0), "sydney": (-33.87, 151.21)}
COLLECTIONS = ("news", "archive", "ref")


def make_points(n: int = 240, seed: int = 0) -> list[GalleryPoint]:
    """Clusters around a few cities (so cells and circles hold some points, not all) plus points anywhere."""
    rng = np.random.default_rng(seed)
    centres = list(PLACES.values())
    points = []
    for i in range(n):
        if i % 6 == 5:
            lat, lon = float(np.degrees(np.arcsin(rng.uniform(-1, 1)))), float(rng.uniform(-180, 180))
        else:
            clat, clon = centres[i % len(centres)]
            lat, lon = clat + rng.normal(0, 1.0), clon + rng.normal(0, 1.0)
        payload = make_payload(COLLECTIONS[rng.integers(len(COLLECTIONS))], lat, lon, f"photo-{i}.jpg", MODEL,
                               f"{i:064x}")
        points.append(GalleryPoint(str(uuid.uuid5(uuid.NAMESPACE_URL, f"photo-{i}")), rng.normal(size=DIM), payload))
    return points


POINTS = make_points()


@pytest.fixture(params=["edge", "server"])
def backend(request):
    return request.param


@pytest.fixture
def opener(backend, tmp_path):
    """Opens the same gallery on disk each call, so a test can close and reopen it; closes what is left."""
    opened = []

    def open_(dim: int | None = DIM):
        if backend == "edge":
            gallery = EdgeGallery(tmp_path / "edge", dim)
        else:
            gallery = ServerGallery(None, dim, path=str(tmp_path / "local"))
        opened.append(gallery)
        return gallery

    yield open_
    for gallery in opened:
        gallery.close()


@pytest.fixture
def gallery(backend, tmp_path):
    """A fresh gallery; the server stand-in in memory, its quickest form."""
    g = EdgeGallery(tmp_path / "edge", DIM) if backend == "edge" else ServerGallery(None, DIM, location=":memory:")
    yield g
    g.close()


@pytest.fixture
def full(gallery):
    gallery.upsert(POINTS)
    return gallery


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def same_payload(got: dict, sent: dict) -> bool:
    """Equal, floats to 1e-12: Edge's JSON parsing may move a float's last bit."""
    if isinstance(sent, dict):
        return isinstance(got, dict) and got.keys() == sent.keys() and all(
            same_payload(got[k], sent[k]) for k in sent)
    if isinstance(sent, float):
        return got == pytest.approx(sent, rel=1e-12)
    return got == sent


def true_top_k(query: np.ndarray, points: list[GalleryPoint], k: int) -> tuple[list[str], np.ndarray]:
    scores = unit(np.stack([p.vector for p in points])) @ unit(query)
    order = np.argsort(-scores)[:k]
    return [points[i].id for i in order], scores[order]


def radius_between_points(lat: float, lon: float, near_km: float) -> float:
    """A radius about `near_km` that falls in the widest gap between point distances: no point sits on
    the boundary, where the engines' earth radius and ours could disagree."""
    d = np.sort([haversine_km(lat, lon, p.payload["location"]["lat"], p.payload["location"]["lon"])
                 for p in POINTS])
    candidates = [i for i in range(len(d) - 1) if near_km / 2 < d[i] < near_km * 2]
    i = max(candidates, key=lambda j: d[j + 1] - d[j])
    return float(d[i] + d[i + 1]) / 2


def matches(where: SearchFilter, payload: dict) -> bool:
    lat, lon = payload["location"]["lat"], payload["location"]["lon"]
    if where.collections is not None and payload["collection"] not in where.collections:
        return False
    if where.cell_ranges is not None and not any(lo <= payload["s2"] <= hi for lo, hi in where.cell_ranges):
        return False
    if where.radius is not None and haversine_km(lat, lon, where.radius[0], where.radius[1]) > where.radius[2]:
        return False
    if where.box is not None:
        south, west, north, east = where.box
        in_lon = west <= lon <= east if west <= east else (lon >= west or lon <= east)
        if not (south <= lat <= north and in_lon):
            return False
    return True


PARIS_CELL = leaf_range(token_at_level(*PLACES["paris"], 5))
TOKYO_CELL = leaf_range(token_at_level(*PLACES["tokyo"], 4))
PARIS_RADIUS = (*PLACES["paris"], radius_between_points(*PLACES["paris"], 100.0))
NYC_BOX = (39.5, -75.5, 41.5, -73.0)
ANTIMERIDIAN_BOX = (-60.0, 150.0, 60.0, -170.0)

FILTERS = {
    "one collection": SearchFilter(collections=["news"]),
    "two collections": SearchFilter(collections=["news", "ref"]),
    "cell": SearchFilter(cell_ranges=[PARIS_CELL]),
    "two cells": SearchFilter(cell_ranges=[PARIS_CELL, TOKYO_CELL]),
    "radius": SearchFilter(radius=PARIS_RADIUS),
    "box": SearchFilter(box=NYC_BOX),
    "box over the antimeridian": SearchFilter(box=ANTIMERIDIAN_BOX),
    "collection and cell": SearchFilter(collections=["archive"], cell_ranges=[PARIS_CELL, TOKYO_CELL]),
    "cell and radius": SearchFilter(cell_ranges=[PARIS_CELL], radius=PARIS_RADIUS),
    "collections, cell and box": SearchFilter(collections=["news", "archive"], cell_ranges=[TOKYO_CELL],
                                              box=(34.0, 138.0, 37.0, 141.0)),
}


def test_filters_select_some_points_not_all():
    """Guards the data: a filter matching everything or nothing would prove little."""
    for name, where in FILTERS.items():
        n = sum(matches(where, p.payload) for p in POINTS)
        assert 0 < n < len(POINTS), name


def test_upsert_is_idempotent(gallery):
    gallery.upsert(POINTS)
    gallery.upsert(POINTS)
    assert gallery.count() == len(POINTS)
    moved = [GalleryPoint(p.id, p.vector, {**p.payload, "collection": "moved"}) for p in POINTS[:10]]
    gallery.upsert(moved)
    assert gallery.count() == len(POINTS)
    expected = Counter(p.payload["collection"] for p in moved + POINTS[10:])
    assert gallery.collections() == dict(expected)


def test_search_returns_the_true_cosine_top_k(full):
    rng = np.random.default_rng(1)
    for _ in range(5):
        query = rng.normal(size=DIM)
        ids, scores = true_top_k(query, POINTS, 10)
        hits = full.search(query, 10)
        assert [h.id for h in hits] == ids
        np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-5)
        by_id = {p.id: p.payload for p in POINTS}
        assert all(same_payload(h.payload, by_id[h.id]) for h in hits)


@pytest.mark.parametrize("name", FILTERS)
def test_filtered_count_scroll_and_search(full, name):
    where = FILTERS[name]
    inside = [p for p in POINTS if matches(where, p.payload)]
    assert full.count(where) == len(inside)
    assert sorted(h.id for h in full.scroll(where, batch=16)) == sorted(p.id for p in inside)
    query = np.random.default_rng(2).normal(size=DIM)
    ids, scores = true_top_k(query, inside, 10)
    hits = full.search(query, 10, where)
    assert [h.id for h in hits] == ids
    np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-5)


def test_empty_lists_match_nothing(full):
    for where in (SearchFilter(collections=[]), SearchFilter(cell_ranges=[])):
        assert full.count(where) == 0
        assert full.search(np.ones(DIM), 5, where) == []


def test_cell_ranges_are_exact_at_cell_edges(gallery):
    """Leaf ids at a cell's first and last leaf are in, its neighbours' leaves are out, at every level:
    the int64 ids survive Qdrant's f64 range bounds."""
    rng = np.random.default_rng(3)
    points, cells = [], {}
    for level in (1, 5, 10, 15, 20, 25):
        lo, hi = leaf_range(token_at_level(10.0, 20.0, level))
        cells[level] = (lo, hi)
        for s2 in (lo, hi, lo - 2, hi + 2):
            payload = {**make_payload(f"L{level}", 10.0, 20.0, "edge", MODEL, "0"), "s2": s2}
            points.append(GalleryPoint(str(uuid.uuid4()), rng.normal(size=DIM), payload))
    gallery.upsert(points)
    for level, (lo, hi) in cells.items():
        found = {h.payload["s2"] for h in gallery.scroll(SearchFilter(collections=[f"L{level}"],
                                                                       cell_ranges=[(lo, hi)]))}
        assert found == {lo, hi}, level


def test_cell_filter_matches_s2_containment(gallery):
    rng = np.random.default_rng(4)
    lats = np.degrees(np.arcsin(rng.uniform(-1, 1, 400)))
    lons = rng.uniform(-180, 180, 400)
    points = [GalleryPoint(str(uuid.uuid4()), rng.normal(size=DIM), make_payload("any", la, lo, "s", MODEL, "0"))
              for la, lo in zip(lats, lons)]
    gallery.upsert(points)
    leaves = {p.id: s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(*p.payload["location"].values()))
              for p in points}
    for level in (0, 1, 2, 3, 5, 8, 12):
        for i in rng.choice(len(points), 4, replace=False):
            token = token_at_level(lats[i], lons[i], level)
            cell = s2sphere.CellId.from_token(token)
            expected = {pid for pid, leaf in leaves.items() if cell.contains(leaf)}
            found = {h.id for h in gallery.scroll(SearchFilter(cell_ranges=[leaf_range(token)]))}
            assert found == expected, (level, token)


def test_collections_and_delete_by_collection(full):
    expected = Counter(p.payload["collection"] for p in POINTS)
    assert full.collections() == dict(expected)
    assert full.delete_collection("news") == expected["news"]
    del expected["news"]
    assert full.collections() == dict(expected)
    assert full.count() == len(POINTS) - sum(p.payload["collection"] == "news" for p in POINTS)
    assert full.delete(SearchFilter(collections=["news"])) == 0


def test_delete_by_ids_and_by_filter(full):
    ids = [p.id for p in POINTS[:3]]
    assert full.delete(ids=ids + [str(uuid.uuid4())]) == 3
    assert full.retrieve(ids) == []
    left = POINTS[3:]

    where = SearchFilter(radius=PARIS_RADIUS)
    n = sum(matches(where, p.payload) for p in left)
    assert full.delete(where) == n
    left = [p for p in left if not matches(where, p.payload)]
    assert full.count() == len(left)

    # both: only the listed ids that also match the filter go
    listed = [p.id for p in left[:30]]
    n = sum(p.payload["collection"] == "ref" for p in left[:30])
    assert full.delete(SearchFilter(collections=["ref"]), ids=listed) == n
    assert full.count() == len(left) - n

    with pytest.raises(ValueError):
        full.delete()
    assert full.delete(SearchFilter()) == len(left) - n
    assert full.count() == 0 and full.collections() == {}


def test_scroll_yields_every_point_once(full):
    hits = list(full.scroll(batch=7))
    assert sorted(h.id for h in hits) == sorted(p.id for p in POINTS)
    assert all(h.vector is None for h in hits)
    by_id = {p.id: p for p in POINTS}
    hits = list(full.scroll(with_vectors=True, batch=50))
    assert len(hits) == len(POINTS)
    for h in hits:
        assert same_payload(h.payload, by_id[h.id].payload)
        # cosine collections store unit vectors
        np.testing.assert_allclose(h.vector, unit(by_id[h.id].vector), atol=1e-5)


def test_retrieve_keeps_the_order_asked_and_skips_missing(full):
    wanted = [POINTS[5], POINTS[2], POINTS[100]]
    hits = full.retrieve([wanted[0].id, str(uuid.uuid4()), wanted[1].id, wanted[2].id])
    assert [h.id for h in hits] == [p.id for p in wanted]
    for h, p in zip(hits, wanted):
        assert same_payload(h.payload, p.payload)
        np.testing.assert_allclose(h.vector, unit(p.vector), atol=1e-5)


def test_embedding_model_is_checked(gallery):
    assert gallery.embedding_model() is None
    gallery.check_model("anything")  # an empty gallery takes any model
    gallery.upsert(POINTS[:5])
    assert gallery.embedding_model() == MODEL
    gallery.check_model(MODEL)
    with pytest.raises(GalleryError, match=MODEL):
        gallery.check_model("another-model")


def test_wrong_vector_size_is_refused(gallery):
    with pytest.raises(GalleryError):
        gallery.upsert([GalleryPoint(str(uuid.uuid4()), np.ones(DIM + 1), POINTS[0].payload)])
    with pytest.raises(GalleryError):
        gallery.search(np.ones(DIM - 1), 3)


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
