"""One contract for both gallery backends: Qdrant Edge on disk, and qdrant-client (its local mode stands
in for a server here). Every answer is checked against numpy and a brute-force reading of the payloads."""

from __future__ import annotations

import uuid
from collections import Counter

import numpy as np
import pytest
import s2sphere

from geoloc.gallery.base import GalleryError, GalleryPoint, SearchFilter, make_payload
from geoloc.cells import leaf_range
from tests.gallery_helpers import DIM, FILTERS, MODEL, PARIS_RADIUS, POINTS, matches, same_payload, token_at_level, true_top_k, unit


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
