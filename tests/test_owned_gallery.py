"""The embedded gallery held open by the API and used by other processes over the socket it lends it on
(gallery.lending, gallery.remote): a real API served by uvicorn, real clients, other processes and threads.
The whole gallery contract runs again through the owner."""

from __future__ import annotations

import multiprocessing
import socket
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from geoloc import jobs
from geoloc.gallery.base import GalleryError, GalleryPoint, NoGallery, SearchFilter, make_payload
from geoloc.gallery.faults import GalleryUnavailable
from geoloc.gallery.open import OWNER_SOCKET, open_gallery, registered_stores
from geoloc.gallery.remote import OwnedGalleryClient, OwnerLink
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
    """The API served in a thread of this process on a free loopback port; it lends its gallery on `socket`."""

    def __init__(self, settings: Settings, embedder):
        self.services = build_services(settings, embedder)
        self.socket = settings.home / OWNER_SOCKET
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


def owner_settings(home, **overrides) -> Settings:
    return Settings(**{**dict(home=home, broker_url=None, qdrant_url=None, gallery_shared=False, bundle=None,
                              internal_token=TOKEN), **overrides})


@pytest.fixture(scope="module")
def owner(tmp_path_factory, embedder):
    api = Uvicorn(owner_settings(tmp_path_factory.mktemp("owner")), embedder)
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def gallery(owner):
    """A fresh store of the owner's gallery (a model of its own), reached through the owner."""
    client = OwnedGalleryClient(owner.socket, TOKEN, f"contract-{uuid.uuid4().hex}", DIM)
    yield client
    client.close()


def worker_settings(owner, **overrides) -> Settings:
    """A process beside the owner: the same data home and secret, its gallery the owner's."""
    return Settings(**{**dict(home=owner.services.settings.home, broker_url=None, qdrant_url=None, bundle=None,
                              gallery_via_api=True, internal_token=TOKEN), **overrides})


def lender_threads(api: Uvicorn) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("geoloc-gallery-len") and
            t.name.endswith(f":{api.socket}")]


def _writer(path: str, model: str, collection: str) -> None:
    with OwnedGalleryClient(path, TOKEN, model, DIM) as gallery:
        for chunk in range(4):
            gallery.upsert([p for p in POINTS if p.payload["collection"] == collection][chunk::4])
            gallery.search(np.ones(DIM), 3, SearchFilter(collections=[collection]))


def test_processes_write_through_the_owner_and_lose_nothing(owner):
    model = f"writers-{uuid.uuid4().hex}"
    names = sorted({p.payload["collection"] for p in POINTS})
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(owner.socket), model, name)) for name in names]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
        assert w.exitcode == 0
    expected = {name: sum(p.payload["collection"] == name for p in POINTS) for name in names}
    _, held = owner.services.runtime.held_store(model)  # the very store the owner holds open
    assert held.collections() == expected


def test_threads_share_one_client(owner):
    """A worker's or a replica's threads share one client: each operation gets an answer of its own."""
    with OwnedGalleryClient(owner.socket, TOKEN, f"threads-{uuid.uuid4().hex}", DIM) as gallery:
        gallery.upsert(POINTS)
        expected = {p.id: gallery.search(p.vector, 1)[0].id for p in POINTS[:24]}

        def ask(point: GalleryPoint) -> tuple[str, str, int]:
            return point.id, gallery.search(point.vector, 1)[0].id, gallery.count()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, POINTS[:24] * 4))
    assert all(found == expected[asked] and count == len(POINTS) for asked, found, count in answers)


def test_a_large_upsert_arrives_whole(owner):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(1100, 1280)).astype(np.float32)  # five messages of up to 1.3 MB
    points = [GalleryPoint(str(uuid.uuid4()), v, make_payload("big", 1.0, 2.0, f"{i}.jpg", "big-model", "ab" * 32))
              for i, v in enumerate(vectors)]
    with OwnedGalleryClient(owner.socket, TOKEN, f"large-{uuid.uuid4().hex}", 1280) as gallery:
        gallery.upsert(points)
        assert gallery.count() == len(points)
        back = gallery.retrieve([points[0].id, points[-1].id])
        assert np.allclose(back[0].vector / np.linalg.norm(back[0].vector), vectors[0] / np.linalg.norm(vectors[0]),
                           atol=1e-5)
        assert gallery.search(vectors[-1], 1)[0].id == points[-1].id


def test_an_index_built_through_the_owner_reports_the_search_breadth_it_measured(gallery):
    gallery.upsert(POINTS)
    built = gallery.optimize()  # a store this small is scanned whole: the narrowest breadth finds the exact top 10
    assert (built["hnsw_ef"], built["recall_at_10"], built["probes"]) == (64, 1.0, len(POINTS) // 2)


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


def test_faults_are_the_gallery_faults_jobs_retry(owner, tmp_path):
    with pytest.raises(GalleryUnavailable, match="refused this process: wrong internal token"):
        OwnedGalleryClient(owner.socket, "wrong", None)
    with pytest.raises(GalleryUnavailable, match="GEOLOC_INTERNAL_TOKEN"):
        OwnedGalleryClient(owner.socket, None, None)
    started = time.monotonic()
    with pytest.raises(GalleryUnavailable, match="cannot be reached"):
        OwnedGalleryClient(tmp_path / OWNER_SOCKET, TOKEN, None)
    assert time.monotonic() - started < 5
    with pytest.raises(NoGallery):
        OwnedGalleryClient(owner.socket, TOKEN, f"never-made-{uuid.uuid4().hex}", None)
    with OwnedGalleryClient(owner.socket, TOKEN, f"faults-{uuid.uuid4().hex}", DIM) as gallery:
        with pytest.raises(ValueError):
            gallery.delete()
        with pytest.raises(ValueError, match="no gallery operation 'drop_everything'"):
            gallery._link.call("drop_everything", {})
        assert gallery.count() == 0  # the connection lives on after faults


def test_the_socket_is_the_owner_s_and_guarded(owner):
    assert stat.S_IMODE(owner.socket.stat().st_mode) == 0o600
    with pytest.raises(AuthenticationError):
        Client(str(owner.socket), family="AF_UNIX", authkey=b"guessed")
    link = OwnerLink(owner.socket, TOKEN)  # the owner goes on serving after a refusal
    assert owner.services.embedder.model_id in link.call("stores", {})[0]["stores"]
    link.close()
    schema = httpx.get(f"{owner.url}/openapi.json").json()
    assert not [path for path in schema["paths"] if path.startswith("/internal")]
    settings = worker_settings(owner, gallery_shared=True)
    assert TOKEN not in repr(settings) and not settings.edge_shared  # an owner wins over taking turns


def test_an_api_without_the_secret_lends_nothing(tmp_path, embedder):
    api = Uvicorn(owner_settings(tmp_path, internal_token=None), embedder)
    try:
        assert not api.socket.exists()
        with pytest.raises(GalleryUnavailable, match="GEOLOC_INTERNAL_TOKEN"):
            OwnedGalleryClient(api.socket, TOKEN, None)
    finally:
        api.stop()


def test_an_api_beside_the_owner_uses_its_gallery_and_lends_nothing(owner, embedder):
    """A second API process on the host (a replica) reads through the owner and leaves the owner's socket be,
    so no operation can go round in a loop."""
    services = build_services(worker_settings(owner, require_keys=False), embedder)
    with TestClient(create_app(services=services)) as replica:
        assert replica.get("/v1/collections").status_code == 200
    with OwnedGalleryClient(owner.socket, TOKEN) as gallery:  # still the owner's, served
        assert gallery.model_id == owner.services.embedder.model_id


def test_an_owner_away_is_a_fault_jobs_retry_and_the_api_answers_503(owner, embedder, tmp_path):
    settings = worker_settings(owner, home=tmp_path, require_keys=False)  # no API serves on this home
    with Runtime(settings, embedder) as worker:
        with pytest.raises(GalleryUnavailable) as away:
            worker.gallery()
    assert isinstance(away.value, jobs.RETRYABLE) and jobs.fault_reason(away.value) == "gallery_unavailable"
    services = build_services(settings, embedder)
    with TestClient(create_app(services=services)) as replica:
        answer = replica.get("/v1/collections")
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "gallery_unavailable"
        assert answer.headers["Retry-After"]


def test_an_owner_stopped_and_started_again(tmp_path, embedder):
    """Stopping ends every connection and removes the socket; clients fail as jobs retry, then carry on when
    the API is back, even over a socket file a killed API left behind."""
    api = Uvicorn(owner_settings(tmp_path), embedder)
    gallery = OwnedGalleryClient(api.socket, TOKEN, "restarted", DIM)
    gallery.upsert(POINTS[:5])
    assert len(lender_threads(api)) == 2  # accepting, and serving this client
    api.stop()
    assert not api.socket.exists() and lender_threads(api) == []
    with pytest.raises(GalleryUnavailable, match="cannot be reached"):
        gallery.count()
    with socket.socket(socket.AF_UNIX) as left:  # what an API killed with SIGKILL leaves
        left.bind(str(api.socket))
    api = Uvicorn(owner_settings(tmp_path), embedder)
    try:
        assert gallery.count() == 5
    finally:
        gallery.close()
        api.stop()
