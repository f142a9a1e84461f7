"""Each index build measures how many candidates the store's searches must keep to find 0.99 of the exact top 10,
with midpoints of its own photos as queries, and its searches keep that many unless GEOLOC_HNSW_EF says
otherwise."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

import geoloc.gallery.edge as edge
from geoloc.gallery.base import DEFAULT_HNSW_EF, GalleryPoint, make_payload
from geoloc.gallery.edge import EdgeGallery
from geoloc.gallery.search_breadth import LADDER, TARGET, Breadth, measure, midpoints
from geoloc.settings import GalleryTuning

DIM, MODEL = 1280, "test-model-v1"


def scripted(recalls: dict[int, float], k: int = 1000):
    """A search whose results at each breadth hold the given share of the exact top k (the rule under test is
    the choice among measured recalls; the engine's own recalls are measured below)."""
    truth = [f"t{i}" for i in range(k)]

    def search(vector, ef):
        found = k if ef is None else round(recalls[ef] * k)
        return truth[:found] + [f"x{i}" for i in range(k - found)]

    return search


def test_the_narrowest_breadth_that_reaches_the_target_is_chosen_and_no_wider_one_is_tried():
    recalls = {64: 0.5, 128: 0.8, 256: 0.9, 512: 0.99, 1024: 1.0}
    asked = []
    search = scripted(recalls)
    breadth = measure(np.ones((3, 4)), lambda v, ef: asked.append(ef) or search(v, ef))
    assert (breadth.hnsw_ef, breadth.recall_at_10, breadth.target_met, breadth.probes) == (512, 0.99, True, 3)
    assert list(breadth.recall_by_ef) == ["64", "128", "256", "512"] and 1024 not in asked


def test_short_of_the_target_the_breadth_where_recall_levels_off_is_chosen():
    levelling = {64: 0.3, 128: 0.6, 256: 0.8, 512: 0.9, 1024: 0.97, 2048: 0.973}
    chosen = measure(np.ones((2, 4)), scripted(levelling))
    assert (chosen.hnsw_ef, chosen.recall_at_10, chosen.target_met) == (1024, 0.97, False)
    assert chosen.recall_by_ef == {str(ef): r for ef, r in levelling.items()}
    climbing = levelling | {1024: 0.85, 2048: 0.95}
    assert measure(np.ones((2, 4)), scripted(climbing)).hnsw_ef == 2048


def test_an_empty_store_has_no_breadth_and_a_damaged_record_is_ignored():
    assert measure(np.ones((2, 4)), lambda v, ef: []) is None
    assert measure(np.empty((0, 4)), scripted({})) is None
    assert Breadth.from_dict(None) is None and Breadth.from_dict({"hnsw_ef": "many"}) is None
    whole = measure(np.ones((1, 4)), scripted({64: 1.0}))
    assert Breadth.from_dict(json.loads(json.dumps(whole.to_dict()))) == whole


def test_a_probe_is_the_midpoint_of_two_stored_photos():
    photos = np.random.default_rng(3).normal(size=(7, DIM))
    probes = midpoints(photos)  # the odd one out pairs with nothing
    assert probes.shape == (3, DIM) and np.allclose(np.linalg.norm(probes, axis=1), 1.0, atol=1e-5)
    unit = photos / np.linalg.norm(photos, axis=1, keepdims=True)
    assert np.isclose(probes[0] @ unit[0], probes[0] @ unit[3])  # as like the one photo as the other
    assert midpoints(np.stack([unit[0], -unit[0]])).shape == (0, DIM)  # opposites have no midpoint


@pytest.fixture
def graph_store(tmp_path, monkeypatch):
    """6,000 random 1280-d photos under a sparse graph that the engine searches (the full-scan threshold lowered
    for this store): random vectors are the graph's hardest case, so a narrow search misses most of the top 10."""
    monkeypatch.setattr(edge, "FULL_SCAN_KB", 10)  # read when the store is created, then kept by the shard
    gallery = EdgeGallery(tmp_path / "g", DIM, tuning=GalleryTuning(index_after_upserts=0, hnsw_m=4,
                                                                    hnsw_ef_construct=8))
    vectors = np.random.default_rng(0).normal(size=(6000, DIM)).astype(np.float32)
    gallery.upsert([GalleryPoint(str(uuid.uuid4()), v, make_payload("c", 45.0, 6.0, f"p{i}.jpg", MODEL, "0" * 64))
                    for i, v in enumerate(vectors)])
    return gallery


def test_an_index_build_measures_the_breadth_on_the_engine_and_searches_keep_it(graph_store, tmp_path):
    assert graph_store.hnsw_ef == DEFAULT_HNSW_EF and graph_store.breadth is None
    report = graph_store.optimize()
    recalls = [report["recall_by_ef"][str(ef)] for ef in LADDER if str(ef) in report["recall_by_ef"]]
    assert recalls[0] < 0.5 and recalls == sorted(recalls) and len(recalls) >= 3  # wider finds more, measured
    chosen = report["hnsw_ef"]
    assert report["recall_at_10"] == report["recall_by_ef"][str(chosen)]
    assert report["target_met"] == (report["recall_at_10"] >= TARGET)
    assert graph_store.hnsw_ef == chosen and graph_store._search_params(exact=False).hnsw_ef == chosen
    graph_store.close()
    assert json.loads((tmp_path / "g" / "gallery.json").read_text())["search"] == report
    with EdgeGallery(tmp_path / "g") as again:
        assert again.hnsw_ef == chosen and again.breadth.to_dict() == report
    with EdgeGallery(tmp_path / "g", tuning=GalleryTuning(hnsw_ef=48)) as told:  # GEOLOC_HNSW_EF wins
        assert told._search_params(exact=False).hnsw_ef == 48


def test_a_damaged_breadth_record_falls_back_to_the_default(tmp_path):
    EdgeGallery(tmp_path / "g", 8, tuning=GalleryTuning(index_after_upserts=0)).close()
    meta = tmp_path / "g" / "gallery.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "search": {"hnsw_ef": -3}}))
    with EdgeGallery(tmp_path / "g") as gallery:
        assert gallery.breadth is None and gallery.hnsw_ef == DEFAULT_HNSW_EF


def test_a_build_that_measured_nothing_keeps_the_breadth_measured_before_and_cells_never_search_narrower(tmp_path):
    gallery = EdgeGallery(tmp_path / "g", 8, tuning=GalleryTuning(index_after_upserts=0))
    vectors = np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32)
    gallery.upsert([GalleryPoint(str(uuid.uuid4()), v, make_payload("c", 45.0, 6.0, f"p{i}.jpg", MODEL, "0" * 64))
                    for i, v in enumerate(vectors)])
    measured = gallery.optimize()["hnsw_ef"]
    assert measured == 64 < DEFAULT_HNSW_EF
    # measured unfiltered: a cell the graph searches keeps at least the default, unless the user set a breadth
    assert gallery._search_params(exact=False, filtered=True).hnsw_ef == DEFAULT_HNSW_EF
    copy = tmp_path / "g" / "copy"
    gallery._copy_shard(copy)
    gallery._swap_in(copy, None)  # built, but its measurement failed
    assert gallery.hnsw_ef == measured
    gallery.close()
    with EdgeGallery(tmp_path / "g", tuning=GalleryTuning(hnsw_ef=48)) as told:
        assert told.breadth.hnsw_ef == measured and told._search_params(exact=False, filtered=True).hnsw_ef == 48
