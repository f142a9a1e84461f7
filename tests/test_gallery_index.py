"""Building the gallery's vector index: by command, by API job, and on its own after enough upserts; each leaves
every search answering as exact search does, and keeps the writes made while it ran. The search settings read
from the environment reach the engine."""

from __future__ import annotations

import json
import os
import signal
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient

from geoloc import job_store
from geoloc.cells import leaf_range
from geoloc.cli import main
from geoloc.gallery.base import DEFAULT_HNSW_EF, FULL_SCAN_KB, GalleryPoint, SearchFilter, make_payload
from geoloc.gallery.edge import OLD_SHARD_DIR, SEARCH_THREADS, SHARD_DIR, EdgeGallery
from geoloc.gallery.edge_index import BUILD_DIR
from geoloc.gallery.edge_meta import read_layout
from geoloc.gallery.open import open_gallery
from geoloc.gallery.server import ServerGallery
from geoloc.settings import GalleryTuning, Settings, SettingsError
from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from tests.api_helpers import wait_for_job
from tests.gallery_helpers import token_at_level
from tests.services import wait_until

DIM, MODEL = 16, "test-model-v1"
MANUAL = GalleryTuning(index_after_upserts=0)


def points(n: int, dim: int = DIM, model: str = MODEL, seed: int = 0) -> list[GalleryPoint]:
    """n photos in clusters around a few places, vectors near a few directions (as photos of one place are)."""
    rng = np.random.default_rng(seed)
    places = [(48.85, 2.35), (35.68, 139.69), (40.71, -74.0)]
    directions = rng.normal(size=(8, dim))
    made = []
    for i in range(n):
        lat, lon = places[i % 3]
        payload = make_payload("news", lat + rng.normal(0, 0.5), lon + rng.normal(0, 0.5), f"p{i}.jpg", model,
                               f"{seed}-{i}".rjust(64, "0"))
        vector = directions[i % 8] + rng.normal(0, 0.5, dim)
        made.append(GalleryPoint(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}-{i}")), vector, payload))
    return made


def assert_exact(gallery, queries) -> None:
    """Every search, unfiltered and inside a cell, ranks as exact scoring does."""
    cell = SearchFilter(cell_ranges=[leaf_range(token_at_level(48.85, 2.35, 6))])
    for q in queries:
        exact = [str(p.id) for p in gallery._query(gallery._vector(q), 10, None, exact=True)]
        assert [h.id for h in gallery.search(q, 10)] == exact
        flt = gallery._native_filter(cell)
        in_cell = [str(p.id) for p in gallery._query(gallery._vector(q), 10, flt, exact=True)]
        assert [h.id for h in gallery.search(q, 10, cell)] == in_cell and in_cell


def test_index_command_builds_every_store_and_keeps_exact_answers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path))
    gallery = open_gallery(Settings(), DIM, MODEL)
    gallery.upsert(points(300))
    gallery.close()
    assert main(["maintenance", "index", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["points"] == 300 and len(built["stores"]) == 1
    # a store this small is scanned whole: the narrowest breadth measured finds the exact top 10
    search = built["stores"][0]["search"]
    assert (search["hnsw_ef"], search["recall_at_10"], search["target_met"], search["probes"]) == (64, 1.0, True, 150)
    with open_gallery(Settings()) as gallery:
        assert gallery.count() == 300 and gallery.hnsw_ef == 64
        assert_exact(gallery, [p.vector for p in points(20, seed=1)])
        assert not (gallery.path / BUILD_DIR).exists() and not (gallery.path / OLD_SHARD_DIR).exists()
    assert main(["models", "list"]) == 0  # the layout, graph and measured breadth of each store
    assert "float32, graph m 16 ef_construct 100, searches 64 candidates" in capsys.readouterr().out


def test_api_index_job_for_admins_only(tmp_path, embedder):
    settings = Settings(home=tmp_path, broker_url=None, qdrant_url=None, gallery_shared=False, bundle=None,
                        require_keys=True)
    services = build_services(settings, embedder)
    try:
        _, admin = services.keys.create("admin", name="tests")
        _, reader = services.keys.create("reader", ["news"], name="desk")
        services.gallery().upsert(points(200, embedder.dim, embedder.model_id))
        with TestClient(create_app(services=services)) as client:
            refused = client.post("/v1/maintenance/index", headers={"Authorization": f"Bearer {reader}"})
            assert refused.status_code == 403
            headers = {"Authorization": f"Bearer {admin}"}
            accepted = client.post("/v1/maintenance/index", headers=headers)
            assert accepted.status_code == 202, accepted.text
            job = accepted.json()["job"]
            assert (job["kind"], job["collection"], job["total"]) == ("index", "*", 200)
            assert accepted.headers["Location"] == f"/v1/jobs/{job['id']}"
            done = wait_for_job(client, headers, job["id"])
            assert (done["state"], done["done"]) == ("succeeded", 200)
            [store] = done["report"]["stores"]  # what the build measured, for the admin who asked for it
            assert store["points"] == 200 and store["search"]["recall_at_10"] == 1.0
            assert_exact(services.gallery(), [p.vector for p in points(10, embedder.dim, seed=1)])
    finally:
        services.close()


def test_with_a_broker_the_api_builds_the_index_itself(tmp_path, embedder, redis_url):
    """No worker runs: a build handed to the broker would wait for ever (and a worker's time limit would cut a
    long one short); the API's own maintenance thread builds it. An index job a stopped server left behind is
    cancelled at start."""
    settings = Settings(home=tmp_path, broker_url=redis_url.rsplit("/", 1)[0] + "/5", qdrant_url=None,
                        gallery_shared=False, bundle=None)
    stale = job_store.open_job_store(settings).create("index", "*", 10, 1, "earlier")
    services = build_services(settings, embedder)
    try:
        assert services.jobs.get(stale)["state"] == "cancelled"
        services.gallery().upsert(points(200, embedder.dim, embedder.model_id))
        job_id = services.jobs.build_index("tests", 200)
        wait_until(lambda: services.jobs.get(job_id)["state"] == "succeeded", 60, "the index job")
        assert services.jobs.get(job_id)["done"] == 200
    finally:
        services.close()


def test_closing_the_api_ends_its_running_index_job_at_once(tmp_path, embedder):
    """The build's process is frozen (SIGSTOP), so only the close can end it: the job fails saying why, the
    gallery keeps every photo and no half-built copy."""
    settings = Settings(home=tmp_path, broker_url=None, qdrant_url=None, gallery_shared=False, bundle=None)
    services = build_services(settings, embedder)
    gallery = services.gallery()
    gallery.upsert(points(200, embedder.dim, embedder.model_id))
    job_id = services.jobs.build_index("tests", 200)
    try:
        wait_until(lambda: gallery.index._child is not None, 30, "the index build's process", poll_s=0.005)
        child = gallery.index._child
        os.kill(child.pid, signal.SIGSTOP)
    finally:
        services.close()
    assert child.poll() is not None
    job = services.jobs.store.get(job_id)
    assert job["state"] == "failed" and "closing" in job["error"]
    with EdgeGallery(gallery.path, tuning=MANUAL) as again:
        assert again.count() == 200 and not (again.path / BUILD_DIR).exists()


def test_index_builds_on_its_own_after_the_configured_upserts(tmp_path):
    gallery = EdgeGallery(tmp_path / "g", DIM, tuning=GalleryTuning(index_after_upserts=250))
    try:
        made = points(400)
        gallery.upsert(made[:200])
        assert not gallery.index.running and gallery.index.builds == 0
        gallery.upsert(made[200:260])
        gallery.index.wait()
        assert gallery.index.builds == 1 and gallery.count() == 260
        gallery.upsert(made[260:400])  # 140 since that build: not yet another
        gallery.index.wait()
        assert gallery.index.builds == 1 and gallery.count() == 400
        assert_exact(gallery, [p.vector for p in points(10, seed=1)])
    finally:
        gallery.close()


def test_a_closing_writer_lets_the_build_end_then_builds_what_is_due(tmp_path):
    gallery = EdgeGallery(tmp_path / "g", DIM, tuning=GalleryTuning(index_after_upserts=100))
    try:
        made = points(400)
        gallery.upsert(made[:150])  # a build starts in the background
        assert gallery.index.pending
        gallery.index.settle()
        assert not gallery.index.running and gallery.index.builds == 1 and not gallery.index.pending
        gallery.index.after_upserts = 0  # no build of its own: the next writes leave one due
        gallery.upsert(made[150:])
        gallery.index.after_upserts = 100
        assert gallery.index.pending and not gallery.index.running
        gallery.index.settle()
        assert gallery.index.builds == 2 and gallery.count() == 400 and not gallery.index.pending
    finally:
        gallery.close()


def test_the_index_command_leaves_no_build_to_be_discarded(tmp_path, monkeypatch, capsys):
    from tests.services import DATA, manifest_rows

    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GEOLOC_INDEX_AFTER_UPSERTS", "3")
    manifest = tmp_path / "photos.csv"
    manifest.write_text("filename,lat,lon\n" + "".join(f"{DATA / 'images' / r['filename']},{r['lat']},{r['lon']}\n"
                                                      for r in manifest_rows(5)))
    assert main(["index", str(manifest), "--collection", "news"]) == 0
    assert "building the gallery's search index" in capsys.readouterr().err
    with open_gallery(Settings()) as gallery:
        assert gallery.count() == 5 and not (gallery.path / BUILD_DIR).exists()


def test_writes_made_while_the_copy_is_indexed_are_kept(tmp_path):
    gallery = EdgeGallery(tmp_path / "g", DIM, tuning=MANUAL)
    made = points(300)
    gallery.upsert(made[:200])
    copy = gallery.path / BUILD_DIR
    gallery._copy_shard(copy)
    gallery.upsert(made[200:])
    gallery.delete(ids=[p.id for p in made[:50]])
    gallery._swap_in(copy, gallery.index._optimize_apart(copy))
    assert gallery.count() == 250 and not gallery.retrieve([made[0].id]) and gallery.retrieve([made[299].id])
    gallery.close()
    with EdgeGallery(tmp_path / "g", tuning=MANUAL) as again:
        assert again.count() == 250
        assert_exact(again, [p.vector for p in points(10, seed=1)])


@pytest.mark.parametrize("renamed", ["old only", "both"])
def test_a_gallery_stopped_in_the_middle_of_a_swap_opens_on_its_old_shard(tmp_path, renamed):
    """Stopped between its renames, or after them but before the writes made meanwhile were replayed."""
    with EdgeGallery(tmp_path / "g", DIM, tuning=MANUAL) as gallery:
        gallery.upsert(points(50))
    (tmp_path / "g" / SHARD_DIR).rename(tmp_path / "g" / OLD_SHARD_DIR)
    if renamed == "both":  # an indexed copy that lacks the last writes
        with EdgeGallery(tmp_path / "copy", DIM, tuning=MANUAL) as copy:
            copy.upsert(points(20))
        (tmp_path / "copy" / SHARD_DIR).rename(tmp_path / "g" / SHARD_DIR)
    with EdgeGallery(tmp_path / "g", tuning=MANUAL) as gallery:
        assert gallery.count() == 50 and not (gallery.path / OLD_SHARD_DIR).exists()


def test_closing_ends_a_running_build_and_keeps_the_gallery(tmp_path):
    gallery = EdgeGallery(tmp_path / "g", DIM, tuning=GalleryTuning(index_after_upserts=100))
    gallery.upsert(points(150))
    gallery.close()  # whether the build had finished or not
    with EdgeGallery(tmp_path / "g", tuning=MANUAL) as again:
        assert again.count() == 150 and not (again.path / BUILD_DIR).exists()


def test_search_settings_from_the_environment_reach_the_engine(tmp_path, monkeypatch):
    with EdgeGallery(tmp_path / "default", DIM) as gallery:  # unset and never measured: the default
        assert GalleryTuning().hnsw_ef is None and gallery._search_params(exact=False).hnsw_ef == DEFAULT_HNSW_EF
    monkeypatch.setenv("GEOLOC_HNSW_EF", "48")
    monkeypatch.setenv("GEOLOC_INDEX_AFTER_UPSERTS", "7")
    with open_gallery(Settings(home=tmp_path), DIM, MODEL) as gallery:
        assert gallery.index.after_upserts == 7
        params = gallery._search_params(exact=False)
        assert params.hnsw_ef == 48 and not params.exact and params.quantization.rescore
    server = ServerGallery(location=":memory:", dim=DIM)
    server._local = False  # parameters a real server would be sent (local mode takes none)
    assert server._search_params(exact=False).hnsw_ef == 48
    server.close()
    monkeypatch.setenv("GEOLOC_EDGE_QUANTIZATION", "turbo4")
    with open_gallery(Settings(home=tmp_path / "turbo4"), DIM, MODEL) as gallery:
        assert gallery.quantization == "turbo4" and gallery._config().quantization_config is not None
    monkeypatch.setenv("GEOLOC_EDGE_QUANTIZATION", "int4")
    with pytest.raises(SettingsError, match="GEOLOC_EDGE_QUANTIZATION"):
        Settings(home=tmp_path)
    monkeypatch.delenv("GEOLOC_EDGE_QUANTIZATION")
    monkeypatch.setenv("GEOLOC_EDGE_INT8", "1")
    with pytest.raises(SettingsError, match="GEOLOC_EDGE_QUANTIZATION=int8"):
        Settings(home=tmp_path)
    monkeypatch.delenv("GEOLOC_EDGE_INT8")
    monkeypatch.setenv("GEOLOC_INDEX_AFTER_UPSERTS", "-1")
    with pytest.raises(SettingsError, match="GEOLOC_INDEX_AFTER_UPSERTS"):
        Settings(home=tmp_path)


def test_a_new_store_builds_the_graph_its_settings_name_and_keeps_it(tmp_path):
    dense = GalleryTuning(hnsw_m=32, hnsw_ef_construct=256)
    with EdgeGallery(tmp_path / "edge", DIM, tuning=dense):
        pass
    config = json.loads((tmp_path / "edge" / SHARD_DIR / "edge_config.json").read_text())
    stored = config["hnsw_config"]
    assert (stored["m"], stored["ef_construct"]) == (32, 256)
    assert config["max_search_threads"] == SEARCH_THREADS
    with EdgeGallery(tmp_path / "edge", DIM):  # reopened with the defaults: the shard keeps its own graph
        pass
    assert json.loads((tmp_path / "edge" / SHARD_DIR / "edge_config.json").read_text())["hnsw_config"] == stored
    server = ServerGallery(location=":memory:", dim=DIM, tuning=dense)
    # what a real server is sent at creation (qdrant-client's local mode keeps no graph settings)
    assert (server._graph.m, server._graph.ef_construct) == (32, 256)
    server.close()


@pytest.mark.parametrize("layout", ["int8", "turbo4"])
def test_a_quantized_store_is_indexed_and_answers_with_the_originals_scores(tmp_path, layout):
    """Quantized copies only pick candidates: the float32 originals, kept on disk, score what is returned."""
    dim = 64
    stored = points(400, dim=dim)
    with EdgeGallery(tmp_path / layout, dim, tuning=MANUAL, quantization=layout) as gallery:
        gallery.upsert(stored)
        gallery.optimize()
    config = json.loads((tmp_path / layout / SHARD_DIR / "edge_config.json").read_text())
    assert {"int8": "scalar", "turbo4": "turbo"}[layout] in json.dumps(config["quantization_config"])
    listed = read_layout(tmp_path / layout)
    assert (listed["vectors"], listed["m"], listed["ef_construct"], listed["search"]["hnsw_ef"]) == (layout, 16, 100, 64)
    vectors = np.array([p.vector for p in stored])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with EdgeGallery(tmp_path / layout) as gallery:  # reopened: the store keeps its layout
        found = []
        for q in [p.vector for p in points(20, dim=dim, seed=3)]:
            cosines = vectors @ (q / np.linalg.norm(q))
            hits = gallery.search(q, 10)
            by_id = {p.id: c for p, c in zip(stored, cosines)}
            assert [h.score for h in hits] == pytest.approx([by_id[h.id] for h in hits], abs=1e-4)
            found.append(len({h.id for h in hits} & {stored[i].id for i in np.argsort(-cosines)[:10]}) / 10)
        assert np.mean(found) >= 0.95


def test_a_store_whose_files_cannot_be_read_lists_no_layout(tmp_path):
    (tmp_path / "garbled" / SHARD_DIR).mkdir(parents=True)
    (tmp_path / "garbled" / SHARD_DIR / "edge_config.json").write_text('["not", "a config"]')
    (tmp_path / "fifo" / SHARD_DIR).mkdir(parents=True)
    os.mkfifo(tmp_path / "fifo" / SHARD_DIR / "edge_config.json")  # read plainly, it would block for ever
    assert read_layout(tmp_path / "garbled") is None and read_layout(tmp_path / "fifo") is None
    assert read_layout(tmp_path / "none") is None


def test_settings_given_in_code_reach_the_gallery(tmp_path):
    settings = Settings(home=tmp_path, hnsw_ef=33, index_after_upserts=5, edge_quantization="int8")
    with open_gallery(settings, DIM, MODEL) as gallery:
        assert gallery._search_params(exact=False).hnsw_ef == 33
        assert gallery.index.after_upserts == 5 and gallery.quantization == "int8"


def test_stores_made_before_the_full_scan_threshold_keep_exact_cell_searches(tmp_path):
    """A new store scans cells whole below FULL_SCAN_KB, so the engine may plan its filtered searches; a store
    made with the engine's default threshold sends large cells to the graph, so its cell searches stay exact."""
    gallery = EdgeGallery(tmp_path / "g", DIM, tuning=MANUAL)
    assert gallery.plans_filters
    assert json.loads((gallery.path / "gallery.json").read_text())["full_scan_kb"] == FULL_SCAN_KB
    gallery.upsert(points(60))
    gallery.close()
    meta = tmp_path / "g" / "gallery.json"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "full_scan_kb"}))
    with EdgeGallery(tmp_path / "g", tuning=MANUAL) as older:
        assert not older.plans_filters
        assert_exact(older, [p.vector for p in points(5, seed=2)])
