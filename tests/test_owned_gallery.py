"""The embedded gallery held open by the API and used by other processes over its internal routes
(gallery.remote, search_api/routes/internal.py): a real API served by uvicorn on a loopback port, real
clients, other processes. The whole gallery contract runs again through the owner."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from geoloc import jobs
from geoloc.gallery.base import GalleryError, NoGallery, SearchFilter
from geoloc.gallery.faults import GalleryUnavailable
from geoloc.gallery.open import open_gallery, registered_stores
from geoloc.gallery.remote import PREFIX, TOKEN_HEADER, OwnedGalleryClient
from geoloc.runtime import Runtime
from geoloc.search_api.app import create_app
from geoloc.search_api.services import build_services
from geoloc.settings import Settings
from tests.gallery_helpers import DIM, POINTS
from tests.services import free_port, wait_until
from tests.test_gallery_contract import (  # noqa: F401  (the contract, run here on the owner's stores)
    test_cell_filter_matches_s2_containment,
    test_cell_ranges_are_exact_at_cell_edges,
    test_collections_and_delete_by_collection,
    test_delete_by_ids_and_by_filter,
    test_embedding_model_is_checked,
    test_empty_lists_match_nothing,
    test_filtered_count_scroll_and_search,
    test_retrieve_keeps_the_order_asked_and_skips_missing,
    test_scroll_yields_every_point_once,
    test_search_returns_the_true_cosine_top_k,
    test_upsert_is_idempotent,
    test_wrong_vector_size_is_refused,
)

TOKEN = "internal-secret-for-tests"


class Uvicorn:
    """The API served in a thread of this process on a free loopback port."""

    def __init__(self, settings: Settings, embedder):
        self.services = build_services(settings, embedder)
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(create_app(services=self.services), host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 120, "the API to start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.services.close()


@pytest.fixture(scope="module")
def owner(tmp_path_factory, embedder):
    settings = Settings(home=tmp_path_factory.mktemp("owner"), broker_url=None, qdrant_url=None, gallery_shared=False,
                        bundle=None, internal_token=TOKEN)
    api = Uvicorn(settings, embedder)
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def gallery(owner):
    """A fresh store of the owner's gallery (a model of its own), reached through the owner."""
    client = OwnedGalleryClient(owner.url, TOKEN, f"contract-{uuid.uuid4().hex}", DIM)
    yield client
    client.close()


def worker_settings(owner, **overrides) -> Settings:
    """A process beside the owner: the same data home, the owner's address and secret."""
    return Settings(**{**dict(home=owner.services.settings.home, broker_url=None, qdrant_url=None, bundle=None,
                              gallery_owner_url=owner.url, internal_token=TOKEN), **overrides})


def _writer(url: str, model: str, collection: str) -> None:
    with OwnedGalleryClient(url, TOKEN, model, DIM) as gallery:
        for chunk in range(4):
            gallery.upsert([p for p in POINTS if p.payload["collection"] == collection][chunk::4])
            gallery.search(np.ones(DIM), 3, SearchFilter(collections=[collection]))


def test_processes_write_through_the_owner_and_lose_nothing(owner):
    model = f"writers-{uuid.uuid4().hex}"
    names = sorted({p.payload["collection"] for p in POINTS})
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(owner.url, model, name)) for name in names]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
        assert w.exitcode == 0
    expected = {name: sum(p.payload["collection"] == name for p in POINTS) for name in names}
    _, held = owner.services.runtime.held_store(model)  # the very store the owner holds open
    assert held.collections() == expected


def test_stores_are_named_by_model_and_opened_as_the_settings_say(owner):
    settings = worker_settings(owner)
    model = f"by-settings-{uuid.uuid4().hex}"
    with open_gallery(settings, DIM, model, {"backbone": "b"}) as gallery:
        assert isinstance(gallery, OwnedGalleryClient) and gallery.dim == DIM
        gallery.upsert(POINTS[:4])
    stores = registered_stores(settings)
    assert stores[model] == DIM and stores[owner.services.embedder.model_id] == owner.services.embedder.dim
    with open_gallery(settings) as serving:  # no model named: the store serving queries
        assert serving.model_id == owner.services.embedder.model_id
    with open_gallery(settings, DIM, model) as again:
        assert again.count() == 4
    with pytest.raises(GalleryError, match=f"{DIM}-d"):
        open_gallery(settings, DIM + 1, model)


def test_faults_are_the_gallery_faults_jobs_retry(owner):
    with pytest.raises(GalleryUnavailable, match="refused"):
        OwnedGalleryClient(owner.url, "wrong", None)
    with pytest.raises(GalleryUnavailable, match="refused"):
        OwnedGalleryClient(owner.url, None, None)
    started = time.monotonic()
    with pytest.raises(GalleryUnavailable, match="cannot be reached"):
        OwnedGalleryClient(f"http://127.0.0.1:{free_port()}", TOKEN, None)
    assert time.monotonic() - started < 5
    with pytest.raises(NoGallery):
        OwnedGalleryClient(owner.url, TOKEN, f"never-made-{uuid.uuid4().hex}", None)
    with OwnedGalleryClient(owner.url, TOKEN, f"faults-{uuid.uuid4().hex}", DIM) as gallery:
        with pytest.raises(ValueError):
            gallery.delete()


def test_internal_routes_are_hidden_and_guarded(owner):
    schema = httpx.get(f"{owner.url}/openapi.json").json()
    assert not [path for path in schema["paths"] if path.startswith("/internal")]
    no_token = httpx.post(f"{owner.url}{PREFIX}/stores", content=b"")
    assert no_token.status_code == 403 and no_token.json()["error"]["code"] == "forbidden"
    unknown = httpx.post(f"{owner.url}{PREFIX}/drop_everything", headers={TOKEN_HEADER: TOKEN}, content=b"")
    assert unknown.status_code == 404
    settings = worker_settings(owner, gallery_shared=True)
    assert TOKEN not in repr(settings) and not settings.edge_shared  # an owner wins over taking turns


def test_an_api_without_the_secret_lends_nothing(tmp_path, embedder):
    api = Uvicorn(Settings(home=tmp_path, broker_url=None, qdrant_url=None, gallery_shared=False, bundle=None),
                  embedder)
    try:
        with pytest.raises(GalleryUnavailable, match="GEOLOC_INTERNAL_TOKEN"):
            OwnedGalleryClient(api.url, TOKEN, None)
    finally:
        api.stop()


def test_an_api_beside_the_owner_uses_its_gallery_and_lends_nothing(owner, embedder):
    """A second API process on the host (a replica) reads through the owner; its own internal routes refuse,
    so no request can go round in a loop."""
    services = build_services(worker_settings(owner, require_keys=False), embedder)
    with TestClient(create_app(services=services)) as replica:
        assert replica.get("/v1/collections").status_code == 200
        refused = replica.post(f"{PREFIX}/stores", content=b"", headers={TOKEN_HEADER: TOKEN})
        assert refused.status_code == 503 and "does not hold" in refused.json()["error"]["message"]


def test_an_owner_away_is_a_fault_jobs_retry_and_the_api_answers_503(owner, embedder):
    settings = worker_settings(owner, gallery_owner_url=f"http://127.0.0.1:{free_port()}", require_keys=False)
    with Runtime(settings, embedder) as worker:
        with pytest.raises(GalleryUnavailable) as away:
            worker.gallery()
    assert isinstance(away.value, jobs.RETRYABLE) and jobs.fault_reason(away.value) == "gallery_unavailable"
    services = build_services(settings, embedder)
    with TestClient(create_app(services=services)) as replica:
        answer = replica.get("/v1/collections")
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "gallery_unavailable"
        assert answer.headers["Retry-After"]
